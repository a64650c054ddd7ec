//! Rate limiting of a virtio-blk device's requests (`--disk ...,iops=N,throughput=RATE`): the
//! device side of the contract in `docs/rate-limiter.md`, the same model as the NVMe controller's
//! (`devices/src/nvme/throttle.rs`).
//!
//! - Before a request that moves data runs, the worker takes its [`Cost`] (one operation and its
//!   bytes) from the limiter. When the limiter refuses, the chain goes back to the head of the
//!   available ring untouched (`go_to_previous_position`: nothing read, nothing written, no used
//!   entry), the queue joins the waiting list and stops; the limiter has armed its timerfd for
//!   exactly the time until the request fits.
//! - While the limiter holds a request back, every other queue that reaches a limited request joins
//!   the waiting list instead of asking the limiter again, so small requests on one queue cannot
//!   starve a large one on another.
//! - When the timer fires the waiting queues are served round robin, one request per queue per
//!   turn, starting with the one that was refused, until the limiter refuses again (that queue then
//!   leads the next round) or they run dry.
//! - FLUSH, GET_ID, unknown types and malformed chains are not limited: a FLUSH at the head of a
//!   queue runs even while another queue is held; behind a held request it waits its turn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::request::Cost;
use super::{Drained, WorkerLoop};
use crate::rate_limiter::LimiterChain;
pub use crate::rate_limiter::ThrottleStats;

/// [`ThrottleStats`] the worker updates and the device (or a test) reads.
#[derive(Debug, Default)]
pub struct SharedStats {
    admitted: AtomicU64,
    held: AtomicU64,
    wakeups: AtomicU64,
}

impl SharedStats {
    /// A snapshot.
    pub fn get(&self) -> ThrottleStats {
        ThrottleStats {
            admitted: self.admitted.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
        }
    }
}

/// Whether a request costing `cost` may run now. Without a limiter, always.
pub(super) fn admit(
    limiter: &mut Option<LimiterChain>,
    stats: &Arc<SharedStats>,
    cost: Cost,
) -> bool {
    let Some(limiter) = limiter.as_mut() else {
        return true;
    };
    // While the limiter holds a request back nobody else asks it: the held one goes first when its
    // time comes.
    let admitted = !limiter.is_blocked() && limiter.consume(cost.ops, cost.bytes).is_ok();
    let counter = if admitted {
        &stats.admitted
    } else {
        &stats.held
    };
    counter.fetch_add(1, Ordering::Relaxed);
    admitted
}

impl WorkerLoop {
    /// The limiter's timerfd is readable: clear it and resume the waiting queues.
    pub(super) fn on_limiter_timer(&mut self) {
        let Some(limiter) = self.limiter.as_mut() else {
            return;
        };
        limiter.on_timer_event();
        self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        self.resume_waiting();
    }

    /// Serves the waiting queues one request each per turn, starting with the oldest, until the
    /// limiter refuses again or they are empty.
    fn resume_waiting(&mut self) {
        let mut turn = std::mem::take(&mut self.waiting);
        while let Some(index) = turn.pop_front() {
            if self.stop.load(Ordering::Acquire) {
                // The worker is being stopped; the rest stays queued for nobody.
                return;
            }
            match self.run_queue(index, 1) {
                Drained::Budget => turn.push_back(index),
                Drained::Throttled => {
                    // `run_queue` put `index` first on the (empty) waiting list; the others keep
                    // their order behind it.
                    for q in turn {
                        if !self.waiting.contains(&q) {
                            self.waiting.push_back(q);
                        }
                    }
                    return;
                }
                Drained::Empty | Drained::Idle => {}
            }
        }
    }
}
