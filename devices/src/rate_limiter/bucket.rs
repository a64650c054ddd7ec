//! One token bucket with EC2 "up to"-style burst credits.
//!
//! State: `tokens` (at most `capacity`; negative while a request larger than the bucket is being paid
//! off) and `credits` (between 0 and `depth`). Over an interval `dt` the bucket behaves as if:
//!
//! - the baseline `rate × dt` arrives, filling `tokens` first and then `credits`;
//! - while `tokens` is below capacity and credits remain, credits also flow into `tokens` at
//!   `max_rate − rate`, so `tokens` refills at the maximum rate;
//! - once `tokens` is full, the baseline goes to `credits` (up to `depth`); nothing else is lost.
//!
//! So credits change at `rate − usage`: they drain while the device uses more than the baseline and
//! refill while it uses less, which is how EC2 describes its EBS and network "up to" buckets. The
//! update is done in closed form with integers (picotokens and nanoseconds), so it is exact however
//! long or short the interval: see `advance`.
//!
//! Requests larger than the bucket: a request of `n` tokens is admitted once `tokens ≥ min(n,
//! capacity)`, and then `n` is subtracted. A request larger than the bucket therefore waits for a full
//! bucket and takes it into debt (`tokens` goes negative); the next request waits until the debt is
//! repaid by refill. Nothing is split, nothing deadlocks, and the long-run rate is exactly the
//! configured one.

use std::time::Duration;

use super::clock::duration_to_nanos;
use super::config::{BucketConfig, BucketParams, ConfigError, PICO};

/// A token bucket with a baseline rate and optional burst credits.
///
/// Time is passed in by the caller (a [`RateLimiter`](super::RateLimiter) reads its clock), as a
/// [`Duration`] since the clock's origin. Time that goes backwards counts as no time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    params: BucketParams,
    /// Picotokens available; at most `params.capacity`, negative while in debt.
    tokens: i128,
    /// Picotokens of burst credit, `0..=params.depth`.
    credits: i128,
    /// Clock reading (ns) of the last update.
    last: u64,
}

impl TokenBucket {
    /// A bucket built from `config`, full (tokens and credits) at time `now`. An EC2 instance also
    /// starts with a full burst balance.
    pub fn new(config: &BucketConfig, now: Duration) -> Result<Self, ConfigError> {
        let params = config.params()?;
        Ok(Self {
            params,
            tokens: params.capacity,
            credits: params.depth,
            last: duration_to_nanos(now),
        })
    }

    /// Refills the bucket for the time between the last update and `now`. If `now` is earlier than the
    /// last update (a clock going backwards), nothing happens and the later time is kept.
    pub fn update(&mut self, now: Duration) {
        let now = duration_to_nanos(now);
        if now > self.last {
            self.advance(i128::from(now - self.last));
            self.last = now;
        }
    }

    /// Refills for `dt` nanoseconds in closed form.
    ///
    /// With `b = rate·dt` (baseline) and `c = min(credits, (max − rate)·dt)` (credit convertible at the
    /// burst rate): if `b + c` fits below capacity, `tokens` grew the whole time (at the maximum
    /// while credits lasted, then at the baseline) and gains exactly `b + c` while credits lose `c`.
    /// Otherwise the bucket filled during `dt`; whatever did not go into `tokens` is either unspent
    /// credit or baseline earned after it filled, so by conservation credits end at
    /// `credits + b − room`, capped at the depth.
    fn advance(&mut self, dt: i128) {
        let p = &self.params;
        let b = p.base.saturating_mul(dt);
        let c = self.credits.min((p.max - p.base).saturating_mul(dt));
        let room = p.capacity - self.tokens;
        if b.saturating_add(c) <= room {
            self.tokens += b + c;
            self.credits -= c;
        } else {
            self.tokens = p.capacity;
            self.credits = self
                .credits
                .saturating_add(b)
                .saturating_sub(room)
                .min(p.depth);
        }
    }

    /// How long after the last update until a request of `tokens` is admitted, if nobody else takes
    /// tokens meanwhile: zero if it is admitted now. Exact, rounded up to the nanosecond.
    ///
    /// The bucket gains `min(max·t, rate·t + credits)` in `t`, so the wait is the larger of
    /// `need / max` and `(need − credits) / rate`.
    fn wait_for(&self, tokens: u64) -> Duration {
        if tokens == 0 {
            return Duration::ZERO;
        }
        let level = (i128::from(tokens) * PICO).min(self.params.capacity);
        if self.tokens >= level {
            return Duration::ZERO;
        }
        let need = level - self.tokens;
        let at_max = div_ceil(need, self.params.max);
        let at_base = div_ceil((need - self.credits).max(0), self.params.base);
        Duration::from_nanos(u64::try_from(at_max.max(at_base)).unwrap_or(u64::MAX))
    }

    /// Refills to `now` and returns how long until a request of `tokens` is admitted (zero: now).
    pub fn time_until(&mut self, now: Duration, tokens: u64) -> Duration {
        self.update(now);
        self.wait_for(tokens)
    }

    /// Refills to `now` and takes `tokens` if the request is admitted; otherwise takes nothing and
    /// returns how long until it would be.
    pub fn try_consume(&mut self, now: Duration, tokens: u64) -> Result<(), Duration> {
        let wait = self.time_until(now, tokens);
        if wait.is_zero() {
            self.take(tokens);
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Takes `tokens` unconditionally; only called after `wait_for` said yes, so the result stays
    /// above `capacity − u64::MAX` tokens.
    pub(crate) fn take(&mut self, tokens: u64) {
        self.tokens = self.tokens.saturating_sub(i128::from(tokens) * PICO);
    }

    /// Gives back `tokens` taken for a request that was not carried out (up to a full bucket).
    pub fn refund(&mut self, tokens: u64) {
        self.tokens = self
            .tokens
            .saturating_add(i128::from(tokens) * PICO)
            .min(self.params.capacity);
    }

    /// Capacity in tokens.
    pub fn capacity(&self) -> u64 {
        // Built from a u64.
        u64::try_from(self.params.capacity / PICO).unwrap_or(u64::MAX)
    }

    /// Baseline rate in tokens per second (rounded to the rate resolution).
    pub fn rate(&self) -> f64 {
        self.params.base as f64 / 1000.0
    }

    /// Maximum rate in tokens per second while credits last (the baseline if there is no burst).
    pub fn max_rate(&self) -> f64 {
        self.params.max as f64 / 1000.0
    }

    /// Tokens available at the last update (negative while paying off an oversized request).
    pub fn tokens(&self) -> f64 {
        self.tokens as f64 / PICO as f64
    }

    /// Burst credits, in tokens, at the last update.
    pub fn credits(&self) -> f64 {
        self.credits as f64 / PICO as f64
    }

    /// Credit depth in tokens: `(max_rate − rate) × burst duration`.
    pub fn credit_depth(&self) -> f64 {
        self.params.depth as f64 / PICO as f64
    }

    /// Credits left as a fraction of the depth, like EC2's `EBSByteBalance%`/`EBSIOBalance%` / 100
    /// (1.0 for a bucket without burst).
    pub fn credit_balance(&self) -> f64 {
        if self.params.depth == 0 {
            1.0
        } else {
            self.credits as f64 / self.params.depth as f64
        }
    }
}

/// `n / d` rounded up, for `n ≥ 0`, `d > 0`.
fn div_ceil(n: i128, d: i128) -> i128 {
    n / d + i128::from(n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A greedy device: from `start` to `end`, takes `size`-token requests as fast as the bucket
    /// admits them, sleeping exactly the time the bucket asks for. Returns the tokens taken.
    fn greedy(bucket: &mut TokenBucket, start: Duration, end: Duration, size: u64) -> u128 {
        let mut now = start;
        let mut taken = 0u128;
        while now < end {
            match bucket.try_consume(now, size) {
                Ok(()) => taken += u128::from(size),
                Err(wait) => now += wait,
            }
        }
        taken
    }

    fn assert_within(actual: f64, expected: f64, tolerance: f64, what: &str) {
        let error = (actual - expected).abs() / expected;
        assert!(
            error <= tolerance,
            "{what}: {actual} vs {expected} ({:.4}% off)",
            error * 100.0
        );
    }

    /// Like `greedy`, but returns the time of each admission.
    fn admissions(bucket: &mut TokenBucket, end: Duration, size: u64) -> Vec<Duration> {
        let mut now = Duration::ZERO;
        let mut times = Vec::new();
        while now < end {
            match bucket.try_consume(now, size) {
                Ok(()) => times.push(now),
                Err(wait) => now += wait,
            }
        }
        times
    }

    #[test]
    fn sustained_rate_is_the_configured_rate() {
        // 1 MB/s with a 64 KiB bucket, over two simulated minutes, with requests smaller than,
        // equal to and larger than the bucket.
        let rate = 1_000_000.0;
        let minutes = secs(120.0);
        for size in [512, 4096, 65536, 100_000, 1 << 20, 10 << 20] {
            let mut bucket =
                TokenBucket::new(&BucketConfig::fixed(rate, 65536), Duration::ZERO).unwrap();
            // Drain the initial full bucket first so only the refill is measured.
            let _ = bucket.try_consume(Duration::ZERO, 65536);
            let times = admissions(&mut bucket, minutes, size);
            // Over the whole run, counting only what the refill paid for (the last request may be
            // admitted just before the end, on credit for a larger request)...
            let paid = (times.len() as f64 - 1.0) * size as f64;
            let what = format!("{size}-byte requests");
            if size <= 1 << 20 {
                assert_within(paid / minutes.as_secs_f64(), rate, 0.01, &what);
            }
            // ...and between the first and the last admission, for every size.
            let span = (*times.last().unwrap() - times[0]).as_secs_f64();
            assert!(span >= 100.0, "{what}: {span} s");
            assert_within(paid / span, rate, 0.0001, &what);
        }
    }

    #[test]
    fn fractional_rates_are_exact() {
        // 2.5 ops/s: one op every 400 ms exactly, so 299 more in the 120 s after the first.
        let mut bucket = TokenBucket::new(&BucketConfig::fixed(2.5, 1), Duration::ZERO).unwrap();
        bucket.try_consume(Duration::ZERO, 1).unwrap();
        assert_eq!(
            bucket.try_consume(Duration::ZERO, 1),
            Err(Duration::from_millis(400))
        );
        let taken = greedy(&mut bucket, Duration::ZERO, secs(120.0), 1);
        assert_eq!(taken, 299);
    }

    #[test]
    fn burst_at_maximum_then_baseline_then_refill() {
        // Baseline 1000/s, maximum 4000/s, 10 s of burst: depth = 3000 * 10 = 30,000 credits.
        let config = BucketConfig::burstable(1000.0, 4000.0, secs(10.0), 100);
        let mut bucket = TokenBucket::new(&config, Duration::ZERO).unwrap();
        assert_eq!(bucket.credit_depth(), 30_000.0);
        assert_eq!(bucket.credit_balance(), 1.0);

        // Greedy at 10-token requests: the maximum for 10 s...
        let first = greedy(&mut bucket, Duration::ZERO, secs(1.0), 10);
        let burst = greedy(&mut bucket, secs(1.0), secs(9.0), 10);
        assert_within(burst as f64 / 8.0, 4000.0, 0.01, "burst rate");
        assert!(first <= 4000 + 100 + 10);
        // ...credits drain at max - baseline = 3000/s...
        assert_within(bucket.credits(), 3000.0, 0.01, "credits after 9 s");
        let _ = greedy(&mut bucket, secs(9.0), secs(11.0), 10);
        assert_eq!(bucket.credits(), 0.0);
        // ...then the baseline, for as long as the device keeps it up.
        let base = greedy(&mut bucket, secs(11.0), secs(71.0), 10);
        assert_within(base as f64 / 60.0, 1000.0, 0.01, "baseline rate");
        assert_eq!(bucket.credits(), 0.0);

        // Idle for 5 s: the bucket refills first (100 tokens at the baseline: 0.1 s; it was left with
        // at most one request's worth), then the credits at the baseline for the rest.
        let now = secs(71.0) + Duration::from_secs(5);
        bucket.update(now);
        assert_eq!(bucket.tokens(), 100.0);
        let credits = bucket.credits();
        assert!((4900.0..=4910.0).contains(&credits), "credits {credits}");

        // Those credits buy credits / (max - baseline) seconds at the maximum.
        let burst_secs = credits / 3000.0;
        let end = now + secs(burst_secs);
        let taken = greedy(&mut bucket, now, end, 10);
        assert_within(
            taken as f64,
            100.0 + 4000.0 * burst_secs,
            0.01,
            "second burst",
        );
        assert!(bucket.credits() < 15.0, "credits {}", bucket.credits());
    }

    #[test]
    fn credits_refill_at_baseline_minus_usage() {
        let config = BucketConfig::burstable(1000.0, 4000.0, secs(10.0), 100);
        let mut bucket = TokenBucket::new(&config, Duration::ZERO).unwrap();
        // Spend all the credits.
        let _ = greedy(&mut bucket, Duration::ZERO, secs(12.0), 100);
        assert_eq!(bucket.credits(), 0.0);
        // Use 600/s (below the 1000/s baseline) for 20 s, in 60-token requests every 100 ms.
        let start = secs(12.0);
        bucket.update(start);
        let (c0, t0) = (bucket.credits(), bucket.tokens());
        for i in 1..=200u32 {
            bucket
                .try_consume(start + Duration::from_millis(100) * i, 60)
                .unwrap();
        }
        // Credits and tokens together gained baseline - usage = (1000 - 600) * 20 = 8000.
        let gained = bucket.credits() + bucket.tokens() - c0 - t0;
        assert!((gained - 8000.0).abs() < 1e-6, "gained {gained}");
        assert_eq!(bucket.tokens(), 40.0);

        // Using exactly the baseline neither drains nor fills them.
        let start = start + secs(20.0);
        let before = bucket.credits() + bucket.tokens();
        for i in 1..=100u32 {
            bucket
                .try_consume(start + Duration::from_millis(100) * i, 100)
                .unwrap();
        }
        assert_eq!(bucket.credits() + bucket.tokens(), before);
        // Credits never exceed the depth.
        bucket.update(start + secs(3600.0));
        assert_eq!(bucket.credits(), 30_000.0);
    }

    #[test]
    fn retry_time_is_exact() {
        let mut bucket =
            TokenBucket::new(&BucketConfig::fixed(1000.0, 100), Duration::ZERO).unwrap();
        bucket.try_consume(Duration::ZERO, 100).unwrap();
        let wait = bucket.try_consume(Duration::ZERO, 10).unwrap_err();
        assert_eq!(wait, Duration::from_millis(10));
        let almost = wait - Duration::from_nanos(1);
        assert_eq!(bucket.try_consume(almost, 10), Err(Duration::from_nanos(1)));
        assert_eq!(bucket.try_consume(wait, 10), Ok(()));

        // Baseline 1000/s, maximum 4000/s, an empty bucket.
        let config = BucketConfig::burstable(1000.0, 4000.0, secs(1.0), 10);
        let mut bucket = TokenBucket::new(&config, Duration::ZERO).unwrap();
        bucket.tokens = 0;
        // Plenty of credits: 10 tokens at the maximum take 2.5 ms.
        bucket.credits = 100 * PICO;
        assert_eq!(
            bucket.time_until(Duration::ZERO, 10),
            Duration::from_micros(2500)
        );
        // Half a token of credit: 4000/s for 0.5/3000 s (0.667 tokens), then 9.333 tokens at
        // 1000/s: 9.5 ms in all.
        bucket.credits = PICO / 2;
        let wait = bucket.try_consume(Duration::ZERO, 10).unwrap_err();
        assert_eq!(wait, Duration::from_micros(9500));
        let mut early = bucket.clone();
        assert_eq!(
            early.try_consume(wait - Duration::from_nanos(1), 10),
            Err(Duration::from_nanos(1))
        );
        assert_eq!(bucket.try_consume(wait, 10), Ok(()));
        assert_eq!(bucket.credits(), 0.0);
    }

    #[test]
    fn oversized_requests_go_into_debt() {
        let mut bucket =
            TokenBucket::new(&BucketConfig::fixed(1000.0, 100), Duration::ZERO).unwrap();
        // 250 tokens from a full 100-token bucket: admitted, 150 in debt.
        assert_eq!(bucket.try_consume(Duration::ZERO, 250), Ok(()));
        assert_eq!(bucket.tokens(), -150.0);
        // Even a 1-token request waits for the debt: 151 tokens at 1000/s.
        assert_eq!(
            bucket.try_consume(Duration::ZERO, 1),
            Err(Duration::from_millis(151))
        );
        // Another oversized request waits for a full bucket: 250 tokens' worth.
        assert_eq!(
            bucket.try_consume(Duration::ZERO, 250),
            Err(Duration::from_millis(250))
        );
        assert_eq!(bucket.try_consume(Duration::from_millis(250), 250), Ok(()));
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut bucket = TokenBucket::new(&BucketConfig::fixed(0.001, 1), Duration::ZERO).unwrap();
        // Zero-length requests always pass.
        assert_eq!(bucket.try_consume(Duration::ZERO, 0), Ok(()));
        // u64::MAX tokens: admitted from a full bucket, the debt takes forever to repay.
        assert_eq!(bucket.try_consume(Duration::ZERO, u64::MAX), Ok(()));
        assert_eq!(
            bucket.try_consume(Duration::ZERO, u64::MAX),
            Err(Duration::from_nanos(u64::MAX))
        );
        assert_eq!(bucket.try_consume(Duration::ZERO, 0), Ok(()));
        bucket.update(Duration::MAX);
        bucket.update(Duration::MAX);

        // Largest rate, largest capacity, longest burst, largest time jumps.
        let config = BucketConfig::burstable(1.0, 1e15, Duration::from_secs(365 * 86400), u64::MAX);
        let mut bucket = TokenBucket::new(&config, Duration::ZERO).unwrap();
        assert_eq!(bucket.try_consume(Duration::ZERO, u64::MAX), Ok(()));
        assert!(bucket.try_consume(Duration::ZERO, u64::MAX).is_err());
        bucket.update(Duration::MAX);
        assert_eq!(bucket.tokens(), u64::MAX as f64);
        assert!(bucket.credits() <= bucket.credit_depth());
        assert_eq!(bucket.try_consume(Duration::MAX, u64::MAX), Ok(()));
        bucket.refund(u64::MAX);
        bucket.refund(u64::MAX);
        assert_eq!(bucket.capacity(), u64::MAX);
    }

    #[test]
    fn time_going_backwards_counts_as_no_time() {
        let mut bucket = TokenBucket::new(&BucketConfig::fixed(1000.0, 100), secs(10.0)).unwrap();
        bucket.try_consume(secs(10.0), 100).unwrap();
        // Back to 5 s: no refill, no panic, and the wait is still measured from 10 s.
        assert_eq!(
            bucket.try_consume(secs(5.0), 50),
            Err(Duration::from_millis(50))
        );
        assert_eq!(
            bucket.try_consume(Duration::ZERO, 1),
            Err(Duration::from_millis(1))
        );
        // Forward again: refilled from 10 s, not from 5 s or 0 s (no double counting).
        assert_eq!(
            bucket.try_consume(Duration::from_millis(10_050), 50),
            Ok(())
        );
        assert_eq!(bucket.tokens(), 0.0);
    }

    #[test]
    fn refund_restores_tokens_up_to_capacity() {
        let mut bucket =
            TokenBucket::new(&BucketConfig::fixed(1000.0, 100), Duration::ZERO).unwrap();
        bucket.try_consume(Duration::ZERO, 80).unwrap();
        bucket.refund(30);
        assert_eq!(bucket.tokens(), 50.0);
        bucket.refund(1000);
        assert_eq!(bucket.tokens(), 100.0);
    }
}
