//! Limits shared by several devices: the instance's EBS cap over all its volumes, with each
//! volume's own caps on top.
//!
//! A [`SharedRateLimiter`] is a pair of buckets behind an `Arc<Mutex<..>>`; cloning it shares it. Each
//! device wraps its own [`RateLimiter`] and the shared one in a [`LimiterChain`]. A request is checked
//! against the per-volume buckets first, then against the shared ones while holding the shared lock,
//! and its tokens are taken from both only if both admit it; so a refusal by either loses no tokens
//! from the other, and no other volume can slip in between the check and the take.
//!
//! Wake-ups belong to each device: the chain arms its own limiter's timerfd for the longer of the two
//! waits. The shared limiter has no timer.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::bucket::TokenBucket;
use super::clock::{MonotonicClock, SharedClock};
use super::config::RateLimiterConfig;
use super::limiter::{Buckets, RateLimiter, RateLimiterError, Throttled};

#[derive(Debug)]
struct Inner {
    buckets: Buckets,
    clock: SharedClock,
}

/// Bytes and ops buckets shared by several devices (clones share the same buckets).
#[derive(Debug, Clone)]
pub struct SharedRateLimiter {
    inner: Arc<Mutex<Inner>>,
}

impl SharedRateLimiter {
    /// A shared limiter on the real (monotonic) clock.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        Self::with_clock(config, MonotonicClock::shared())
    }

    /// A shared limiter reading time from `clock`. Buckets start full.
    pub fn with_clock(
        config: &RateLimiterConfig,
        clock: SharedClock,
    ) -> Result<Self, RateLimiterError> {
        let buckets = Buckets::new(config, clock.now())?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner { buckets, clock })),
        })
    }

    /// Puts `local` (a device's own limiter) in front of this shared one.
    pub fn chain(&self, local: RateLimiter) -> LimiterChain {
        LimiterChain::new(local, Some(self.clone()))
    }

    /// A snapshot of the bytes bucket, refilled to now.
    pub fn bytes_bucket(&self) -> Option<TokenBucket> {
        self.snapshot(|b| b.bytes.clone())
    }

    /// A snapshot of the ops bucket, refilled to now.
    pub fn ops_bucket(&self) -> Option<TokenBucket> {
        self.snapshot(|b| b.ops.clone())
    }

    fn snapshot(&self, f: impl FnOnce(&Buckets) -> Option<TokenBucket>) -> Option<TokenBucket> {
        let inner = self.lock();
        let now = inner.clock.now();
        let mut bucket = f(&inner.buckets)?;
        bucket.update(now);
        Some(bucket)
    }

    /// Runs `f` on the buckets and the current time with the lock held.
    pub(crate) fn with_buckets<R>(&self, f: impl FnOnce(&mut Buckets, Duration) -> R) -> R {
        let mut inner = self.lock();
        let now = inner.clock.now();
        f(&mut inner.buckets, now)
    }

    fn refund(&self, ops: u64, bytes: u64) {
        self.lock().buckets.refund(ops, bytes);
    }

    /// Locks even if a thread panicked while holding the lock: each update leaves the buckets
    /// consistent, and one device's panic must not wedge the others.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A device's own limiter, optionally followed by a shared one. This is what a device queue holds.
///
/// Same contract as [`RateLimiter`]: [`consume`](Self::consume) before each request; on [`Throttled`]
/// stop the queue and wait for the fd; on the fd, [`on_timer_event`](Self::on_timer_event) and retry.
#[derive(Debug)]
pub struct LimiterChain {
    local: RateLimiter,
    shared: Option<SharedRateLimiter>,
}

impl LimiterChain {
    /// `local` in front of `shared` (if any).
    pub fn new(local: RateLimiter, shared: Option<SharedRateLimiter>) -> Self {
        Self { local, shared }
    }

    /// Admits a request of `ops` operations moving `bytes` bytes if both the per-volume and the
    /// shared limits allow it, taking tokens from both; otherwise takes nothing from either and arms
    /// the timer for the longer of the two waits.
    pub fn consume(&mut self, ops: u64, bytes: u64) -> Result<(), Throttled> {
        self.local.consume_with(ops, bytes, self.shared.as_ref())
    }

    /// Gives back the tokens of an admitted request that was not carried out, to both limiters.
    pub fn refund(&mut self, ops: u64, bytes: u64) {
        self.local.refund(ops, bytes);
        if let Some(shared) = &self.shared {
            shared.refund(ops, bytes);
        }
    }

    /// Call when the fd is readable; see [`RateLimiter::on_timer_event`].
    pub fn on_timer_event(&mut self) {
        self.local.on_timer_event();
    }

    /// Whether the last request was refused and the timer has not been handled yet.
    pub fn is_blocked(&self) -> bool {
        self.local.is_blocked()
    }

    /// The device's own limiter.
    pub fn local(&self) -> &RateLimiter {
        &self.local
    }

    /// The shared limiter, if any.
    pub fn shared(&self) -> Option<&SharedRateLimiter> {
        self.shared.as_ref()
    }
}

impl AsRawFd for LimiterChain {
    /// The device's own limiter's timerfd, armed for the chain's waits.
    fn as_raw_fd(&self) -> RawFd {
        self.local.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::{BucketConfig, Clock, ManualClock};

    fn ops_limit(rate: f64, capacity: u64) -> RateLimiterConfig {
        RateLimiterConfig {
            bytes: None,
            ops: Some(BucketConfig::fixed(rate, capacity)),
        }
    }

    /// Runs greedy devices on one manual clock, as an event loop would: each retries when its own
    /// timer would fire. Returns the requests each got through in `duration`.
    fn run(
        chains: &mut [LimiterChain],
        clock: &ManualClock,
        duration: Duration,
        ops: &[u64],
    ) -> Vec<u64> {
        let end = clock.now() + duration;
        let mut next = vec![clock.now(); chains.len()];
        let mut done = vec![0; chains.len()];
        loop {
            // The device whose wake-up comes first (ties: the lower index).
            let (i, &t) = next.iter().enumerate().min_by_key(|(_, t)| **t).unwrap();
            if t >= end {
                return done;
            }
            clock.set(t);
            match chains[i].consume(ops[i], 0) {
                Ok(()) => done[i] += 1,
                Err(Throttled { retry_after }) => {
                    assert_eq!(chains[i].local().armed_for(), Some(retry_after));
                    chains[i].on_timer_event();
                    next[i] = t + retry_after;
                }
            }
        }
    }

    #[test]
    fn shared_cap_over_per_volume_caps() {
        let clock = ManualClock::new();
        // Instance: 1000 ops/s; each volume: 600 ops/s.
        let shared = SharedRateLimiter::with_clock(&ops_limit(1000.0, 10), clock.shared()).unwrap();
        let mut chains: Vec<_> = (0..2)
            .map(|_| {
                shared.chain(RateLimiter::with_clock(&ops_limit(600.0, 6), clock.shared()).unwrap())
            })
            .collect();
        let minute = Duration::from_secs(60);
        // One volume alone: its own cap.
        let done = run(&mut chains[..1], &clock, minute, &[1]);
        assert!((done[0] as f64 / 60.0 - 600.0).abs() <= 6.0, "{done:?}");
        // Both busy: the instance cap in total, neither above its own cap.
        let done = run(&mut chains, &clock, minute, &[1, 1]);
        let total = (done[0] + done[1]) as f64 / 60.0;
        assert!((total - 1000.0).abs() <= 10.0, "{done:?}");
        assert!(done.iter().all(|d| *d as f64 / 60.0 <= 606.0), "{done:?}");
        // Larger requests (batches of 8 ops, more than a volume's 6-op bucket) still progress.
        let done = run(&mut chains, &clock, minute, &[8, 1]);
        let total = (done[0] * 8 + done[1]) as f64 / 60.0;
        assert!((total - 1000.0).abs() <= 10.0, "{done:?}");
        assert!(done[0] > 0 && done[1] > 0, "{done:?}");
    }

    #[test]
    fn a_refusal_loses_no_tokens() {
        let clock = ManualClock::new();
        let shared = SharedRateLimiter::with_clock(&ops_limit(100.0, 1), clock.shared()).unwrap();
        let mut a =
            shared.chain(RateLimiter::with_clock(&ops_limit(1000.0, 5), clock.shared()).unwrap());
        let mut b =
            shared.chain(RateLimiter::with_clock(&ops_limit(1000.0, 5), clock.shared()).unwrap());
        // A takes the shared token; B is refused by the shared bucket after passing its own.
        a.consume(1, 0).unwrap();
        assert_eq!(
            b.consume(1, 0),
            Err(Throttled {
                retry_after: Duration::from_millis(10)
            })
        );
        assert_eq!(b.local().ops_bucket().unwrap().tokens(), 5.0);
        assert_eq!(shared.ops_bucket().unwrap().tokens(), 0.0);
        // A is refused by its own bucket: the shared one keeps its token for B.
        clock.advance(Duration::from_millis(10));
        let mut a_local = RateLimiter::with_clock(&ops_limit(1000.0, 1), clock.shared()).unwrap();
        a_local.consume(1, 0).unwrap();
        let mut a = shared.chain(a_local);
        assert_eq!(
            a.consume(1, 0),
            Err(Throttled {
                retry_after: Duration::from_millis(1)
            })
        );
        assert_eq!(shared.ops_bucket().unwrap().tokens(), 1.0);
        assert_eq!(b.consume(1, 0), Ok(()));
        // Both refuse: the wait is the longer one.
        assert_eq!(
            a.consume(1, 0),
            Err(Throttled {
                retry_after: Duration::from_millis(10)
            })
        );
        // Refunds go back to both.
        b.refund(1, 0);
        assert_eq!(shared.ops_bucket().unwrap().tokens(), 1.0);
        assert_eq!(b.local().ops_bucket().unwrap().tokens(), 5.0);
    }

    #[test]
    fn chain_without_shared_is_the_local_limiter() {
        let clock = ManualClock::new();
        let mut chain = LimiterChain::new(
            RateLimiter::with_clock(&ops_limit(10.0, 1), clock.shared()).unwrap(),
            None,
        );
        assert!(chain.shared().is_none());
        chain.consume(1, 0).unwrap();
        assert!(chain.consume(1, 0).is_err());
        assert!(chain.is_blocked());
        assert_eq!(chain.as_raw_fd(), chain.local().as_raw_fd());
        clock.advance(Duration::from_millis(100));
        assert_eq!(chain.consume(1, 0), Ok(()));
        assert!(!chain.is_blocked());
    }

    #[test]
    fn unlimited_local_with_shared_cap() {
        let clock = ManualClock::new();
        let shared = SharedRateLimiter::with_clock(
            &RateLimiterConfig {
                bytes: Some(BucketConfig::fixed(1e6, 4096)),
                ops: None,
            },
            clock.shared(),
        )
        .unwrap();
        let mut chain = shared.chain(RateLimiter::unlimited(clock.shared()).unwrap());
        chain.consume(1, 4096).unwrap();
        assert_eq!(
            chain.consume(1, 1000),
            Err(Throttled {
                retry_after: Duration::from_millis(1)
            })
        );
    }
}
