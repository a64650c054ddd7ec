//! A device's rate limiter: a bytes bucket and an operations bucket, a clock, and a timerfd that
//! becomes readable when a throttled device may go on.

use std::fmt;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::bucket::TokenBucket;
use super::clock::{MonotonicClock, SharedClock};
use super::config::{ConfigError, RateLimiterConfig};
use super::shared::SharedRateLimiter;

/// The longest the timerfd is ever armed for (about 68 years): a longer wait is re-armed when it
/// fires, and every `time_t` can hold it.
const MAX_TIMER: Duration = Duration::from_secs(i32::MAX as u64);

/// Which of a limiter's two buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The bandwidth bucket (tokens are bytes).
    Bytes,
    /// The operations bucket (tokens are I/O commands or packets).
    Ops,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Bytes => "bytes",
            TokenKind::Ops => "ops",
        })
    }
}

/// A request was refused: the device should stop taking requests from its queue, keep the refused
/// one, and retry when the limiter's fd becomes readable (after exactly `retry_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry in {retry_after:?}")]
pub struct Throttled {
    /// How long until the refused request would be admitted, if nothing else takes tokens meanwhile.
    /// The limiter's timerfd is armed for exactly this long.
    pub retry_after: Duration,
}

/// Errors building a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// A bucket's configuration was rejected.
    #[error("{kind} limit: {source}")]
    Config {
        /// Which bucket.
        kind: TokenKind,
        /// Why.
        source: ConfigError,
    },
    /// The timerfd could not be created.
    #[error("cannot create the rate limiter's timerfd: {0}")]
    Timer(#[source] io::Error),
}

/// The bytes and ops buckets, either optional: the accounting shared by [`RateLimiter`] and
/// [`SharedRateLimiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Buckets {
    pub bytes: Option<TokenBucket>,
    pub ops: Option<TokenBucket>,
}

impl Buckets {
    pub fn new(config: &RateLimiterConfig, now: Duration) -> Result<Self, RateLimiterError> {
        let build = |kind, config: &Option<_>| {
            config
                .as_ref()
                .map(|c| TokenBucket::new(c, now))
                .transpose()
                .map_err(|source| RateLimiterError::Config { kind, source })
        };
        Ok(Self {
            bytes: build(TokenKind::Bytes, &config.bytes)?,
            ops: build(TokenKind::Ops, &config.ops)?,
        })
    }

    /// Refills both buckets to `now`; returns how long until `ops` operations moving `bytes` bytes
    /// are admitted by both (zero: now).
    pub fn wait(&mut self, now: Duration, ops: u64, bytes: u64) -> Duration {
        let bytes_wait = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.time_until(now, bytes));
        let ops_wait = self
            .ops
            .as_mut()
            .map_or(Duration::ZERO, |b| b.time_until(now, ops));
        bytes_wait.max(ops_wait)
    }

    /// Takes the tokens of a request `wait` admitted.
    pub fn take(&mut self, ops: u64, bytes: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes);
        }
        if let Some(b) = self.ops.as_mut() {
            b.take(ops);
        }
    }

    pub fn refund(&mut self, ops: u64, bytes: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.refund(bytes);
        }
        if let Some(b) = self.ops.as_mut() {
            b.refund(ops);
        }
    }
}

/// A device queue's rate limiter: optional bytes and ops buckets, and a timerfd to wake the device
/// when a throttled request may go.
///
/// The contract with a device's event loop:
/// 1. Before carrying out a request, call [`consume`](Self::consume) with its operation count and
///    byte count (zero bytes for a flush, say).
/// 2. On [`Throttled`], stop taking requests from that queue (leave the refused one at its head) and
///    go back to the event loop. The limiter's fd ([`AsRawFd`]) is armed to become readable after
///    exactly `retry_after`; there is nothing to poll.
/// 3. When the fd is readable, call [`on_timer_event`](Self::on_timer_event) and process the queue
///    again, starting with the refused request.
///
/// A [`LimiterChain`](super::LimiterChain) adds an instance-wide [`SharedRateLimiter`] on top.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Buckets,
    clock: SharedClock,
    timer: TimerFd,
    /// What the timer was last armed for, while it is armed.
    armed_for: Option<Duration>,
}

impl RateLimiter {
    /// A limiter on the real (monotonic) clock.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        Self::with_clock(config, MonotonicClock::shared())
    }

    /// A limiter reading time from `clock` (tests pass a [`ManualClock`](super::ManualClock)).
    /// Buckets start full.
    pub fn with_clock(
        config: &RateLimiterConfig,
        clock: SharedClock,
    ) -> Result<Self, RateLimiterError> {
        let buckets = Buckets::new(config, clock.now())?;
        let timer = TimerFd::new().map_err(|e| RateLimiterError::Timer(e.into()))?;
        Ok(Self {
            buckets,
            clock,
            timer,
            armed_for: None,
        })
    }

    /// A limiter that admits everything (for a device limited only by a shared limiter).
    pub fn unlimited(clock: SharedClock) -> Result<Self, RateLimiterError> {
        Self::with_clock(&RateLimiterConfig::unlimited(), clock)
    }

    /// Admits a request of `ops` operations moving `bytes` bytes, taking its tokens from both
    /// buckets, or refuses it without taking anything and arms the timer for exactly the time until
    /// it would be admitted.
    pub fn consume(&mut self, ops: u64, bytes: u64) -> Result<(), Throttled> {
        self.consume_with(ops, bytes, None)
    }

    /// [`consume`](Self::consume), also checking `shared`: both admit the request or neither takes
    /// anything. This limiter's buckets are checked first, then the shared ones under their lock;
    /// the tokens are taken from both only once both have said yes, so a refusal by the shared
    /// limiter loses no per-volume tokens. The wait is the longer of the two.
    pub(crate) fn consume_with(
        &mut self,
        ops: u64,
        bytes: u64,
        shared: Option<&SharedRateLimiter>,
    ) -> Result<(), Throttled> {
        let local_wait = self.buckets.wait(self.clock.now(), ops, bytes);
        let wait = match shared {
            None => {
                if local_wait.is_zero() {
                    self.buckets.take(ops, bytes);
                }
                local_wait
            }
            Some(shared) => shared.with_buckets(|shared_buckets, now| {
                let wait = local_wait.max(shared_buckets.wait(now, ops, bytes));
                if wait.is_zero() {
                    self.buckets.take(ops, bytes);
                    shared_buckets.take(ops, bytes);
                }
                wait
            }),
        };
        if wait.is_zero() {
            if self.armed_for.is_some() {
                // Admitted before the timer fired (e.g. a smaller request): don't leave a stale
                // wake-up behind.
                self.disarm();
            }
            Ok(())
        } else {
            self.arm(wait);
            Err(Throttled { retry_after: wait })
        }
    }

    /// Gives back the tokens of an admitted request that was not carried out.
    pub fn refund(&mut self, ops: u64, bytes: u64) {
        self.buckets.refund(ops, bytes);
    }

    /// Call when the limiter's fd is readable: clears the readiness (disarms the timer) so a
    /// level-triggered event loop does not spin. Then retry the queue. Harmless if spurious.
    pub fn on_timer_event(&mut self) {
        self.disarm();
    }

    /// Whether the last request was refused and the timer has not been handled yet.
    pub fn is_blocked(&self) -> bool {
        self.armed_for.is_some()
    }

    /// The duration the timer was last armed with, while it is armed (normally the last
    /// `retry_after`).
    pub fn armed_for(&self) -> Option<Duration> {
        self.armed_for
    }

    /// The bytes bucket, as of the last request.
    pub fn bytes_bucket(&self) -> Option<&TokenBucket> {
        self.buckets.bytes.as_ref()
    }

    /// The operations bucket, as of the last request.
    pub fn ops_bucket(&self) -> Option<&TokenBucket> {
        self.buckets.ops.as_ref()
    }

    /// The clock the limiter reads.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    fn arm(&mut self, wait: Duration) {
        // A zero duration would disarm a timerfd; `wait` is never zero here, but stay safe.
        let wait = wait.clamp(Duration::from_nanos(1), MAX_TIMER);
        match self.timer.reset(wait, None) {
            Ok(()) => self.armed_for = Some(wait),
            // Cannot happen with a valid fd and duration; the device can still use `retry_after`.
            Err(e) => log::error!("rate limiter: cannot arm the timerfd: {e}"),
        }
    }

    fn disarm(&mut self) {
        // Setting a zero expiry disarms the timer and resets its expiry count, so the fd stops
        // being readable without a (possibly blocking) read.
        if let Err(e) = self.timer.clear() {
            log::error!("rate limiter: cannot disarm the timerfd: {e}");
        }
        self.armed_for = None;
    }
}

impl AsRawFd for RateLimiter {
    /// The timerfd: becomes readable when a throttled request may be retried. Watch it for input
    /// (`EPOLLIN`) and call [`RateLimiter::on_timer_event`] when it fires.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    use super::*;
    use crate::rate_limiter::{BucketConfig, Clock, ManualClock};

    fn limiter(config: RateLimiterConfig) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::new();
        (
            RateLimiter::with_clock(&config, clock.shared()).unwrap(),
            clock,
        )
    }

    /// A greedy device on a manual clock: sends `(ops, bytes)` requests for `duration`, sleeping
    /// exactly `retry_after` when throttled. Returns how many requests went through.
    fn greedy(
        limiter: &mut RateLimiter,
        clock: &ManualClock,
        duration: Duration,
        ops: u64,
        bytes: u64,
    ) -> u64 {
        let end = clock.now() + duration;
        let mut done = 0;
        while clock.now() < end {
            match limiter.consume(ops, bytes) {
                Ok(()) => done += 1,
                Err(Throttled { retry_after }) => {
                    assert_eq!(limiter.armed_for(), Some(retry_after));
                    clock.advance(retry_after);
                    limiter.on_timer_event();
                }
            }
        }
        done
    }

    fn assert_within(actual: f64, expected: f64, tolerance: f64, what: &str) {
        let error = (actual - expected).abs() / expected;
        assert!(error <= tolerance, "{what}: {actual} vs {expected}");
    }

    #[test]
    fn the_tighter_bucket_governs() {
        // gp3-like caps: 125 MB/s and 3000 IOPS.
        let config = RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(125e6, 1 << 20)),
            ops: Some(BucketConfig::fixed(3000.0, 30)),
        };
        let minute = Duration::from_secs(60);
        // 16 KiB requests: the IOPS cap (3000/s, 49 MB/s) governs.
        let (mut l, clock) = limiter(config);
        let n = greedy(&mut l, &clock, minute, 1, 16384);
        assert_within(n as f64 / 60.0, 3000.0, 0.01, "16 KiB IOPS");
        // 1 MiB requests: the bandwidth cap governs (119 IOPS).
        let (mut l, clock) = limiter(config);
        let n = greedy(&mut l, &clock, minute, 1, 1 << 20);
        assert_within(n as f64 * 1048576.0 / 60.0, 125e6, 0.01, "1 MiB bandwidth");
        // 4 MiB requests, larger than the bucket: still the bandwidth cap.
        let (mut l, clock) = limiter(config);
        let n = greedy(&mut l, &clock, minute, 1, 4 << 20);
        assert_within(n as f64 * 4194304.0 / 60.0, 125e6, 0.01, "4 MiB bandwidth");
        // Batches of 100 operations, larger than the 30-op bucket: still 3000 IOPS.
        let (mut l, clock) = limiter(config);
        let n = greedy(&mut l, &clock, minute, 100, 4096);
        assert_within(n as f64 * 100.0 / 60.0, 3000.0, 0.01, "op batches");
    }

    #[test]
    fn refusal_takes_nothing_and_arms_exactly() {
        let config = RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(1000.0, 1000)),
            ops: Some(BucketConfig::fixed(10.0, 1)),
        };
        let (mut l, clock) = limiter(config);
        assert!(!l.is_blocked());
        l.consume(1, 100).unwrap();
        // The ops bucket is empty for 100 ms; the bytes bucket must not lose its 900 meanwhile.
        assert_eq!(
            l.consume(1, 100),
            Err(Throttled {
                retry_after: Duration::from_millis(100)
            })
        );
        assert!(l.is_blocked());
        assert_eq!(l.armed_for(), Some(Duration::from_millis(100)));
        assert_eq!(l.bytes_bucket().unwrap().tokens(), 900.0);
        clock.advance(Duration::from_millis(100) - Duration::from_nanos(1));
        assert_eq!(
            l.consume(1, 100),
            Err(Throttled {
                retry_after: Duration::from_nanos(1)
            })
        );
        assert_eq!(l.armed_for(), Some(Duration::from_nanos(1)));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(l.consume(1, 100), Ok(()));
        // Admitted: the stale timer is disarmed.
        assert!(!l.is_blocked());
        assert!(!l.timer.is_armed().unwrap());
        // Zero-length requests and unlimited kinds always pass.
        assert_eq!(l.consume(0, 0), Ok(()));
        let (mut u, _) = limiter(RateLimiterConfig::unlimited());
        assert_eq!(u.consume(u64::MAX, u64::MAX), Ok(()));
        assert_eq!(u.consume(u64::MAX, u64::MAX), Ok(()));
        // Refunds.
        l.refund(1, 100);
        assert_eq!(l.ops_bucket().unwrap().tokens(), 1.0);
    }

    #[test]
    fn extreme_requests_do_not_panic() {
        let config = RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(0.001, 1)),
            ops: Some(BucketConfig::fixed(1e15, u64::MAX)),
        };
        let (mut l, clock) = limiter(config);
        assert_eq!(l.consume(u64::MAX, u64::MAX), Ok(()));
        let wait = l.consume(u64::MAX, u64::MAX).unwrap_err().retry_after;
        assert_eq!(wait, Duration::from_nanos(u64::MAX));
        // The timer is armed for its longest, not for an invalid duration.
        assert_eq!(l.armed_for(), Some(MAX_TIMER));
        clock.set(Duration::ZERO);
        assert!(l.consume(1, 1).is_err());
        clock.advance(Duration::MAX);
        assert!(l.consume(1, 1).is_err());
        l.on_timer_event();
        assert!(!l.is_blocked());
    }

    #[test]
    fn config_errors_name_the_bucket() {
        let config = RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(1.0, 1)),
            ops: Some(BucketConfig::fixed(f64::NAN, 1)),
        };
        let err = RateLimiter::new(&config).unwrap_err();
        assert!(matches!(
            err,
            RateLimiterError::Config {
                kind: TokenKind::Ops,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "ops limit: rate NaN is not a positive finite number of tokens per second"
        );
    }

    #[test]
    fn limiters_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RateLimiter>();
        send_sync::<crate::rate_limiter::LimiterChain>();
        send_sync::<crate::rate_limiter::SharedRateLimiter>();
    }

    /// Whether `fd` is readable right now.
    fn readable(epoll: &Epoll) -> bool {
        let mut events = [EpollEvent::default(); 1];
        epoll.wait(0, &mut events).unwrap() > 0
    }

    fn watch(l: &RateLimiter) -> Epoll {
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        epoll
    }

    #[test]
    fn timerfd_wakes_the_device_after_retry_after() {
        // Real clock: 100 tokens/s, so a second token waits 10 ms.
        let config = RateLimiterConfig {
            bytes: None,
            ops: Some(BucketConfig::fixed(100.0, 1)),
        };
        let mut l = RateLimiter::new(&config).unwrap();
        let epoll = watch(&l);
        l.consume(1, 0).unwrap();
        let start = Instant::now();
        let retry = l.consume(1, 0).unwrap_err().retry_after;
        assert!(retry <= Duration::from_millis(10));
        assert!(!readable(&epoll));
        // Block in epoll until the timer fires.
        let mut events = [EpollEvent::default(); 1];
        assert_eq!(epoll.wait(1000, &mut events).unwrap(), 1);
        assert!(start.elapsed() >= retry);
        l.on_timer_event();
        // Handling the event clears the readiness without a blocking read.
        assert!(!readable(&epoll));
        assert!(!l.is_blocked());
        assert_eq!(l.consume(1, 0), Ok(()));
    }

    #[test]
    fn real_time_rate_has_no_fixed_stall() {
        // 20,000 bytes/s with a 1000-byte bucket, 1000-byte requests: each empties the bucket, which
        // refills in 50 ms. A limiter that re-checks only every 100 ms after an empty bucket would
        // manage 1000 bytes per 100 ms = 10,000 bytes/s at best. This one should be at the configured
        // rate, less scheduling latency: the lower bound leaves ~30 ms of wake-up latency per request
        // (a loaded 2-core host) and still fails any limiter with a fixed 100 ms stall.
        let config = RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(20_000.0, 1000)),
            ops: None,
        };
        let mut l = RateLimiter::new(&config).unwrap();
        let epoll = watch(&l);
        let mut events = [EpollEvent::default(); 1];
        l.consume(1, 1000).unwrap(); // drain the initial bucket
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < Duration::from_millis(400) {
            match l.consume(1, 1000) {
                Ok(()) => bytes += 1000,
                Err(_) => {
                    epoll.wait(1000, &mut events).unwrap();
                    l.on_timer_event();
                }
            }
        }
        let rate = bytes as f64 / start.elapsed().as_secs_f64();
        assert!(rate <= 20_000.0 * 1.01 + 2500.0, "rate {rate}");
        assert!(rate >= 12_000.0, "rate {rate}");
    }
}
