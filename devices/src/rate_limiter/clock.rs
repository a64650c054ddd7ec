//! Where the rate limiter reads the time.
//!
//! Buckets only ever ask "how long since an arbitrary fixed origin", as a [`Duration`]. Devices use
//! [`MonotonicClock`] (backed by [`Instant`], i.e. `CLOCK_MONOTONIC`, the clock the limiter's timerfd
//! counts on); tests use [`ManualClock`] and move time by hand, so minutes of simulated I/O run in
//! milliseconds and every retry time can be checked to the nanosecond.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync + Debug {
    /// Time since the clock's fixed origin. Buckets tolerate a clock that goes backwards (they treat
    /// it as no time passing), but a real clock should not.
    fn now(&self) -> Duration;
}

/// A clock shared by a limiter and whoever else needs the same time base.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: time since the clock was created, from [`Instant`] (`CLOCK_MONOTONIC` on Linux,
/// the same clock the limiter's timerfd runs on).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// A new [`MonotonicClock`] behind an `Arc`, ready to hand to limiters.
    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that only moves when told to, for tests. Clones share the same time, so a test keeps one
/// clone and gives the others to limiters.
///
/// Time is kept in whole nanoseconds and saturates at `u64::MAX` ns (about 584 years).
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `to`, which may be earlier than now (tests use this to check that a clock
    /// going backwards does no harm).
    pub fn set(&self, to: Duration) {
        self.nanos.store(duration_to_nanos(to), Ordering::SeqCst);
    }

    /// This clock behind an `Arc<dyn Clock>`, sharing its time with `self`.
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX`.
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let shared = clock.shared();
        assert_eq!(shared.now(), Duration::ZERO);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(shared.now(), Duration::from_millis(1500));
        clock.set(Duration::from_millis(10));
        assert_eq!(shared.now(), Duration::from_millis(10));
        clock.advance(Duration::MAX);
        assert_eq!(shared.now(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn monotonic_clock_does_not_go_backwards() {
        let clock = MonotonicClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
