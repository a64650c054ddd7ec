//! Rate limiting of a volume's I/O (EBS-style caps): the controller side of the contract in
//! `docs/rate-limiter.md`.
//!
//! A controller may hold a [`LimiterChain`]: the volume's own buckets (gp3/io2-style IOPS and
//! throughput) in front of the instance's EBS cap, which every volume shares. Before a Read, Write,
//! Write Zeroes or Dataset Management command runs, the controller takes one operation and the
//! command's bytes from the chain. When the chain refuses, the command stays at the head of its
//! submission queue (not fetched, not completed), the queue joins the controller's waiting list, and
//! processing of that queue stops; the chain has armed its timerfd for exactly the time until the
//! command would be admitted. The worker watches that fd and calls
//! [`NvmeController::process_rate_limiter_timer`], which resumes the waiting queues.
//!
//! - Not limited: admin commands and Flush (and opcodes that fail at once). A Flush at the head of
//!   a queue runs even while the limiter is holding other queues back; behind a held command in the
//!   same queue it waits its turn (queues run in order).
//! - Cost: one operation, plus the bytes moved — the transfer length for Read and Write, the blocks
//!   zeroed for Write Zeroes (it writes them, whatever the backing file does), and none for Dataset
//!   Management (a deallocate moves no data; charging its ranges would stall the volume for minutes
//!   after a whole-device discard). A command that will fail validation (bad namespace, LBA range,
//!   over MDTS, a write to a read-only volume) costs its operation only.
//! - Fairness: while the limiter is holding a queue back, every other queue that reaches a limited
//!   command joins the waiting list instead of asking the limiter again, so a stream of small
//!   commands on one queue cannot starve a large command on another. When the timer fires, the
//!   waiting queues are served round robin, one command each per turn, starting with the one that
//!   was refused, until the limiter refuses again (that queue then leads the next round) or they run
//!   dry.
//! - No busy waiting and no fixed stall: between a refusal and the timer nothing runs for the
//!   limited queues; the wake-up is exact (the limiter's own timerfd, `CLOCK_MONOTONIC`).

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};

use super::command::{io_opcode as op, Command};
use super::controller::NvmeController;
use crate::rate_limiter::LimiterChain;
pub use crate::rate_limiter::ThrottleStats;

/// How a bounded run of one submission queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drained {
    /// The queue is empty.
    Empty,
    /// The command budget ran out with more commands queued.
    Budget,
    /// The completion queue is full; the guest's next head update resumes the queue.
    CqFull,
    /// The limiter held the command at the head back; the queue is on the waiting list.
    Throttled,
    /// The queue does not exist (deleted, or the controller was reset).
    Gone,
}

/// A controller's limiter and the queues waiting for it.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    pub limiter: Option<LimiterChain>,
    /// Submission queues whose head command waits for the limiter, in the order they are served.
    pub waiting: VecDeque<u16>,
    pub stats: ThrottleStats,
}

impl NvmeController {
    /// Limits this volume's I/O with `limiter` (None: no limit). Set it before the controller's
    /// worker starts watching [`Self::rate_limiter_fd`] ([`NvmePci::with_rate_limiter`] does so);
    /// queues waiting for a previous limiter are resumed at once.
    ///
    /// [`NvmePci::with_rate_limiter`]: super::pci::NvmePci::with_rate_limiter
    pub fn set_rate_limiter(&mut self, limiter: Option<LimiterChain>) {
        self.throttle.limiter = limiter;
        self.resume_waiting();
    }

    /// The volume's limiter, if any.
    pub fn rate_limiter(&self) -> Option<&LimiterChain> {
        self.throttle.limiter.as_ref()
    }

    /// The limiter's timerfd: readable when held-back commands may go. The worker watches it for
    /// input and calls [`Self::process_rate_limiter_timer`].
    pub fn rate_limiter_fd(&self) -> Option<RawFd> {
        self.throttle.limiter.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Counters of the limiter's activity.
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.throttle.stats
    }

    /// Submission queues whose head command is waiting for the limiter, in serving order.
    pub fn throttled_queues(&self) -> Vec<u16> {
        self.throttle.waiting.iter().copied().collect()
    }

    /// The limiter's fd became readable: clears it and resumes the waiting queues, round robin,
    /// until the limiter refuses again or they are empty. Harmless when spurious.
    pub fn process_rate_limiter_timer(&mut self) {
        let Some(limiter) = self.throttle.limiter.as_mut() else {
            return;
        };
        limiter.on_timer_event();
        self.throttle.stats.wakeups += 1;
        self.resume_waiting();
    }

    /// Serves the waiting queues one command each per turn, starting with the oldest.
    fn resume_waiting(&mut self) {
        if !self.regs.ready() {
            self.throttle.waiting.clear();
            return;
        }
        self.check_stray_doorbells();
        let mut turn = std::mem::take(&mut self.throttle.waiting);
        while let Some(qid) = turn.pop_front() {
            match self.drain_budget(qid, 1) {
                Drained::Budget => turn.push_back(qid),
                Drained::Throttled => {
                    // `admit` put `qid` first on the (empty) waiting list; the rest keep their
                    // order behind it.
                    for q in turn {
                        if !self.throttle.waiting.contains(&q) {
                            self.throttle.waiting.push_back(q);
                        }
                    }
                    break;
                }
                Drained::Empty | Drained::CqFull | Drained::Gone => {}
            }
        }
        self.raise_interrupts();
    }

    /// Whether I/O command `cmd` at the head of submission queue `qid` may run now. If not, the
    /// queue goes on the waiting list (the limiter's timer will resume it).
    pub(super) fn admit(&mut self, qid: u16, cmd: &Command) -> bool {
        if self.throttle.limiter.is_none() {
            return true;
        }
        let Some(bytes) = self.io_cost(cmd) else {
            return true;
        };
        let Some(limiter) = self.throttle.limiter.as_mut() else {
            return true;
        };
        // While the limiter holds a command back, nobody else asks it: the held command is served
        // first when its time comes.
        let admitted = !limiter.is_blocked() && limiter.consume(1, bytes).is_ok();
        let throttle = &mut self.throttle;
        if admitted {
            throttle.stats.admitted += 1;
        } else {
            throttle.stats.held += 1;
            if !throttle.waiting.contains(&qid) {
                throttle.waiting.push_back(qid);
            }
        }
        admitted
    }

    /// The bytes an I/O command costs, or None if the limiter does not apply to it.
    fn io_cost(&self, cmd: &Command) -> Option<u64> {
        let opcode = cmd.opcode();
        match opcode {
            op::READ | op::WRITE | op::WRITE_ZEROES => {
                let count = u64::from(cmd.dw(12) & 0xffff) + 1;
                let slba = u64::from(cmd.dw(10)) | (u64::from(cmd.dw(11)) << 32);
                let len = count << self.block_shift;
                let valid = cmd.nsid == 1
                    && cmd.fuse() == 0
                    && cmd.psdt() == 0
                    && slba
                        .checked_add(count)
                        .is_some_and(|end| end <= self.blocks)
                    && (opcode == op::READ || !self.read_only)
                    && (opcode == op::WRITE_ZEROES || len <= self.mdts_bytes);
                Some(if valid { len } else { 0 })
            }
            op::DATASET_MANAGEMENT => Some(0),
            _ => None,
        }
    }
}
