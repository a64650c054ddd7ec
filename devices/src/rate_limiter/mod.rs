//! Token-bucket rate limiting for device queues (NVMe, virtio-blk, virtio-net rx and tx), with EC2
//! "up to"-style burst credits, an exact timerfd wake-up, and limits shared across devices.
//!
//! - [`TokenBucket`]: capacity, baseline rate, and optional burst credits (maximum rate, depth).
//! - [`RateLimiter`]: a bytes bucket and an ops bucket (either optional), a [`Clock`], and a timerfd
//!   armed for exactly the time until a refused request would be admitted.
//! - [`SharedRateLimiter`] and [`LimiterChain`]: an instance-wide cap shared by several devices, with
//!   per-device caps applied first.
//! - [`BucketConfig`], [`RateLimiterConfig`]: plain, validated configuration.
//!
//! The model, the formulas and the device contract are in `docs/rate-limiter.md`.
//!
//! ```
//! # use std::time::Duration;
//! use devices::rate_limiter::{BucketConfig, ManualClock, RateLimiter, RateLimiterConfig, Throttled};
//!
//! let clock = ManualClock::new();
//! let config = RateLimiterConfig {
//!     bytes: Some(BucketConfig::fixed(125e6, 1 << 20)), // 125 MB/s
//!     ops: Some(BucketConfig::fixed(3000.0, 30)),       // 3000 IOPS
//! };
//! let mut limiter = RateLimiter::with_clock(&config, clock.shared()).unwrap();
//! for _ in 0..30 {
//!     limiter.consume(1, 4096).unwrap();
//! }
//! // The 31st 4 KiB write waits exactly one operation's worth of refill: 1/3000 s.
//! assert_eq!(
//!     limiter.consume(1, 4096),
//!     Err(Throttled { retry_after: Duration::from_nanos(333_334) })
//! );
//! ```

mod bucket;
mod clock;
mod config;
mod limiter;
mod shared;

pub use bucket::TokenBucket;
pub use clock::{Clock, ManualClock, MonotonicClock, SharedClock};
pub use config::{
    BucketConfig, BurstConfig, ConfigError, RateLimiterConfig, EBS_BURST_DURATION, MAX_RATE,
    RATE_RESOLUTION,
};
pub use limiter::{RateLimiter, RateLimiterError, Throttled, TokenKind};
pub use shared::{LimiterChain, SharedRateLimiter};

/// What a block device's rate limiter has done so far, for tests and diagnostics (the NVMe
/// controller and virtio-blk count the same events).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Requests (NVMe commands) the limiter admitted.
    pub admitted: u64,
    /// Times a request was held back at the head of its queue.
    pub held: u64,
    /// Timer events handled (each resumes the waiting queues once).
    pub wakeups: u64,
}
