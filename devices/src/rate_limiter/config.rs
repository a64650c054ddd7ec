//! Plain-field configuration of a token bucket and its validation.
//!
//! Nothing here parses text: the CLI turns `iops=3000,throughput=125M` or an instance-type profile
//! into these structs, and [`BucketConfig::validate`] rejects what a bucket cannot honour (a zero
//! capacity, a zero, negative, NaN, infinite or absurdly large rate, a maximum below the baseline)
//! with an error instead of a panic.
//!
//! Internally a bucket counts in picotokens (10⁻¹² token) and nanoseconds, so a rate in tokens per
//! second is a whole number of picotokens per nanosecond once rounded to a thousandth of a token per
//! second ([`RATE_RESOLUTION`]). With integer rates and times every refill and every retry time is
//! exact, which is what lets a throttled device be woken at precisely the right nanosecond.

use std::time::Duration;

use super::limiter::{RateLimiterError, TokenKind};

/// Smallest rate step, in tokens per second: rates are rounded to a multiple of it, and a rate that
/// rounds to zero is rejected.
pub const RATE_RESOLUTION: f64 = 0.001;

/// Largest accepted rate, in tokens per second (10¹⁵ bytes/s is 8 Pbit/s, far above any device).
pub const MAX_RATE: f64 = 1e15;

/// How long EC2's EBS-optimized "up to" instance sizes can run at their maximum EBS bandwidth from a
/// full credit balance: "30 minutes at least once every 24 hours".
pub const EBS_BURST_DURATION: Duration = Duration::from_secs(30 * 60);

/// Picotokens per token.
pub(crate) const PICO: i128 = 1_000_000_000_000;

/// Largest credit depth in picotokens. Keeps `credits + rate * elapsed` far inside `i128` whatever
/// the clock does.
const MAX_DEPTH: i128 = i128::MAX / 4;

/// A token bucket: a short-term bucket of `capacity` tokens refilled at `rate`, optionally with EC2
/// "up to"-style burst credits that raise the refill rate to a maximum while they last.
///
/// A token is a byte for a bandwidth bucket and an operation for an IOPS (or packets) bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full: the most a device may take at once after being idle, and
    /// the level a request larger than the bucket waits for (see the module docs). Pick it at least
    /// as large as the device's largest request, and small against `rate` × the interval over which
    /// the rate must hold (e.g. 1–100 ms worth of tokens). At least 1.
    pub capacity: u64,
    /// Baseline rate in tokens per second: always available, whatever the credits.
    pub rate: f64,
    /// Burst credits; `None` for a plain token bucket refilled at `rate`.
    pub burst: Option<BurstConfig>,
}

/// EC2 "up to" burst credits: the bucket refills at `max_rate` while it has credits, and at the
/// baseline `rate` once they are spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstConfig {
    /// Maximum rate in tokens per second, allowed while credits last. At least the baseline rate.
    pub max_rate: f64,
    /// How long a full credit balance sustains `max_rate` (EBS: [`EBS_BURST_DURATION`]; tests use
    /// seconds). Sets the credit depth: `(max_rate − rate) × duration` tokens. Not zero.
    pub duration: Duration,
}

impl BucketConfig {
    /// A plain token bucket: `capacity` tokens refilled at `rate` tokens per second.
    pub fn fixed(rate: f64, capacity: u64) -> Self {
        Self {
            capacity,
            rate,
            burst: None,
        }
    }

    /// An EC2 "up to" bucket: `baseline` tokens per second always, `maximum` while credits last, a
    /// full credit balance lasting `burst_duration` at the maximum.
    pub fn burstable(baseline: f64, maximum: f64, burst_duration: Duration, capacity: u64) -> Self {
        Self {
            capacity,
            rate: baseline,
            burst: Some(BurstConfig {
                max_rate: maximum,
                duration: burst_duration,
            }),
        }
    }

    /// Checks that a bucket can be built from this configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params().map(|_| ())
    }

    /// The configuration in the bucket's integer units.
    pub(crate) fn params(&self) -> Result<BucketParams, ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        let base = rate_to_pt_per_ns(self.rate)?;
        let (max, depth) = match self.burst {
            None => (base, 0),
            Some(burst) => {
                let max = rate_to_pt_per_ns(burst.max_rate)?;
                if max < base {
                    return Err(ConfigError::MaxBelowBaseline {
                        baseline: self.rate,
                        max: burst.max_rate,
                    });
                }
                if burst.duration.is_zero() {
                    return Err(ConfigError::ZeroBurstDuration);
                }
                let depth = i128::try_from(burst.duration.as_nanos())
                    .ok()
                    .and_then(|ns| ns.checked_mul(max - base))
                    .filter(|depth| *depth <= MAX_DEPTH)
                    .ok_or(ConfigError::BurstTooLong {
                        duration: burst.duration,
                    })?;
                (max, depth)
            }
        };
        Ok(BucketParams {
            capacity: i128::from(self.capacity) * PICO,
            base,
            max,
            depth,
        })
    }
}

/// A validated bucket configuration in picotokens and picotokens per nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketParams {
    pub capacity: i128,
    pub base: i128,
    pub max: i128,
    pub depth: i128,
}

/// `rate` tokens/s as picotokens per nanosecond (= thousandths of a token per second).
fn rate_to_pt_per_ns(rate: f64) -> Result<i128, ConfigError> {
    // NaN fails both comparisons, so it lands in InvalidRate.
    if !(rate.is_finite() && rate > 0.0) {
        return Err(ConfigError::InvalidRate { rate });
    }
    if rate > MAX_RATE {
        return Err(ConfigError::RateTooLarge { rate });
    }
    // rate <= 1e15, so the product is at most 1e18 and the cast is exact enough and cannot wrap.
    let milli = (rate / RATE_RESOLUTION).round() as i128;
    if milli < 1 {
        return Err(ConfigError::RateBelowResolution { rate });
    }
    Ok(milli)
}

/// The two buckets of a [`RateLimiter`](super::RateLimiter); either may be absent (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimiterConfig {
    /// Bandwidth: tokens are bytes.
    pub bytes: Option<BucketConfig>,
    /// Operations per second (I/O commands, packets): tokens are operations.
    pub ops: Option<BucketConfig>,
}

impl RateLimiterConfig {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Checks both buckets (what [`RateLimiter::new`](super::RateLimiter::new) would reject, without
    /// creating anything). The error names the bucket.
    pub fn validate(&self) -> Result<(), RateLimiterError> {
        for (kind, bucket) in [(TokenKind::Bytes, &self.bytes), (TokenKind::Ops, &self.ops)] {
            if let Some(bucket) = bucket {
                bucket
                    .validate()
                    .map_err(|source| RateLimiterError::Config { kind, source })?;
            }
        }
        Ok(())
    }
}

/// Why a bucket configuration was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The bucket would hold nothing.
    #[error("bucket capacity must be at least 1")]
    ZeroCapacity,
    /// Zero, negative, NaN or infinite.
    #[error("rate {rate} is not a positive finite number of tokens per second")]
    InvalidRate {
        /// The rejected rate.
        rate: f64,
    },
    /// Positive but below [`RATE_RESOLUTION`].
    #[error("rate {rate} is below the resolution of {RATE_RESOLUTION} tokens per second")]
    RateBelowResolution {
        /// The rejected rate.
        rate: f64,
    },
    /// Above [`MAX_RATE`].
    #[error("rate {rate} is above the maximum of {MAX_RATE:e} tokens per second")]
    RateTooLarge {
        /// The rejected rate.
        rate: f64,
    },
    /// The burst maximum is below the baseline.
    #[error("maximum rate {max} is below the baseline rate {baseline}")]
    MaxBelowBaseline {
        /// The baseline rate.
        baseline: f64,
        /// The rejected maximum rate.
        max: f64,
    },
    /// A burst that lasts no time.
    #[error("burst duration must not be zero")]
    ZeroBurstDuration,
    /// The credit depth `(max_rate − rate) × duration` does not fit the bucket's counters.
    #[error("burst duration {duration:?} makes the credit depth overflow")]
    BurstTooLong {
        /// The rejected duration.
        duration: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_configurations() {
        let fixed = BucketConfig::fixed(3000.0, 300).params().unwrap();
        assert_eq!(fixed.capacity, 300 * PICO);
        assert_eq!(fixed.base, 3_000_000);
        assert_eq!(fixed.max, fixed.base);
        assert_eq!(fixed.depth, 0);

        // c5.large EBS: 650 Mbps baseline, 4,750 Mbps maximum, 30 minutes.
        let ebs = BucketConfig::burstable(81.25e6, 593.75e6, EBS_BURST_DURATION, 1 << 20);
        let p = ebs.params().unwrap();
        assert_eq!(p.base, 81_250_000_000);
        assert_eq!(p.max, 593_750_000_000);
        // (593.75e6 - 81.25e6) bytes/s * 1800 s, in picotokens.
        assert_eq!(p.depth, 512_500_000 * 1800 * PICO);

        // Equal maximum and baseline: a burst that buys nothing, but not an error.
        let flat = BucketConfig::burstable(10.0, 10.0, Duration::from_secs(1), 1);
        assert_eq!(flat.params().unwrap().depth, 0);

        // Fractional rates down to the resolution.
        assert_eq!(BucketConfig::fixed(0.001, 1).params().unwrap().base, 1);
        assert_eq!(
            BucketConfig::fixed(MAX_RATE, 1).params().unwrap().base,
            10i128.pow(18)
        );
        assert!(BucketConfig::fixed(1.0, u64::MAX).validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        let err = |c: BucketConfig| c.validate().unwrap_err();
        assert_eq!(err(BucketConfig::fixed(1.0, 0)), ConfigError::ZeroCapacity);
        for rate in [0.0, -0.0, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                err(BucketConfig::fixed(rate, 1)),
                ConfigError::InvalidRate { rate }
            );
        }
        assert!(matches!(
            err(BucketConfig::fixed(f64::NAN, 1)),
            ConfigError::InvalidRate { .. }
        ));
        assert_eq!(
            err(BucketConfig::fixed(0.0004, 1)),
            ConfigError::RateBelowResolution { rate: 0.0004 }
        );
        for rate in [1.1e15, 1e300, f64::MAX] {
            assert_eq!(
                err(BucketConfig::fixed(rate, 1)),
                ConfigError::RateTooLarge { rate }
            );
        }
        assert_eq!(
            err(BucketConfig::burstable(
                10.0,
                5.0,
                Duration::from_secs(1),
                1
            )),
            ConfigError::MaxBelowBaseline {
                baseline: 10.0,
                max: 5.0
            }
        );
        assert!(matches!(
            err(BucketConfig::burstable(
                10.0,
                f64::NAN,
                Duration::from_secs(1),
                1
            )),
            ConfigError::InvalidRate { .. }
        ));
        assert_eq!(
            err(BucketConfig::burstable(10.0, 20.0, Duration::ZERO, 1)),
            ConfigError::ZeroBurstDuration
        );
        assert_eq!(
            err(BucketConfig::burstable(1.0, MAX_RATE, Duration::MAX, 1)),
            ConfigError::BurstTooLong {
                duration: Duration::MAX
            }
        );
        // A limiter configuration names the bad bucket.
        let limiter = RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(-1.0, 1)),
            ops: None,
        };
        assert_eq!(
            limiter.validate().unwrap_err().to_string(),
            "bytes limit: rate -1 is not a positive finite number of tokens per second"
        );
        assert!(RateLimiterConfig::unlimited().validate().is_ok());
        // Errors print as one line.
        assert_eq!(
            ConfigError::RateTooLarge { rate: 2e15 }.to_string(),
            "rate 2000000000000000 is above the maximum of 1e15 tokens per second"
        );
    }
}
