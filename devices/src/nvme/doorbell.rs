//! Doorbell registers shared between the threads that write them (vCPUs) and the controller that
//! reads them, so that a doorbell write never waits for the controller lock (which the worker holds
//! while it does file I/O).
//!
//! A write stores the value and a "written" flag in atomics; the controller takes the value the next
//! time it looks at the queue, validates it (a value outside the queue, or for a queue that does not
//! exist, is ignored and reported as an asynchronous event) and applies it. [`Doorbells::write`]
//! tells the writer whether the worker must be woken:
//! - a submission queue tail always wakes it (there are new commands, or an invalid doorbell to
//!   report);
//! - a completion queue head wakes it only if a submission queue is waiting for room in that
//!   completion queue, or the queue does not exist; otherwise the controller picks the head up
//!   lazily the next time it needs room.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use super::registers::{decode_doorbell, Doorbell};

/// What the worker must do after a doorbell write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellWake {
    /// Nothing: the value is picked up when needed.
    None,
    /// Call [`super::NvmeController::process_submission_queue`] with this queue id.
    SubmissionQueue(u16),
    /// Call [`super::NvmeController::process_completion_queue`] with this queue id.
    CompletionQueue(u16),
}

#[derive(Default)]
struct Slot {
    value: AtomicU32,
    written: AtomicBool,
}

impl Slot {
    fn put(&self, value: u32) {
        self.value.store(value, Ordering::Release);
        self.written.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<u32> {
        self.written
            .swap(false, Ordering::AcqRel)
            .then(|| self.value.load(Ordering::Acquire))
    }
}

const CQ_ABSENT: u8 = 0;
const CQ_ACTIVE: u8 = 1;
const CQ_WAITING: u8 = 2;

/// The doorbell registers of one controller (queue ids 0 to `max_queue_id`).
pub struct Doorbells {
    sq_tails: Box<[Slot]>,
    cq_heads: Box<[Slot]>,
    cq_state: Box<[AtomicU8]>,
    /// A doorbell of a queue id beyond the controller's was written.
    stray: AtomicBool,
}

impl Doorbells {
    /// Doorbells for queues 0 to `max_queue_id`, all completion queues absent.
    pub fn new(max_queue_id: u16) -> Self {
        let n = usize::from(max_queue_id) + 1;
        Doorbells {
            sq_tails: (0..n).map(|_| Slot::default()).collect(),
            cq_heads: (0..n).map(|_| Slot::default()).collect(),
            cq_state: (0..n).map(|_| AtomicU8::new(CQ_ABSENT)).collect(),
            stray: AtomicBool::new(false),
        }
    }

    /// Records a guest write of `value` to the doorbell at BAR0 `offset` (dword aligned, at or past
    /// 0x1000; other offsets are ignored) and says whether to wake the worker.
    pub fn write(&self, offset: u64, value: u32) -> DoorbellWake {
        if offset & 3 != 0 {
            return DoorbellWake::None;
        }
        match decode_doorbell(offset) {
            Some(Doorbell::SqTail(qid)) => match self.sq_tails.get(usize::from(qid)) {
                Some(slot) => {
                    slot.put(value);
                    DoorbellWake::SubmissionQueue(qid)
                }
                None => self.stray_write(),
            },
            Some(Doorbell::CqHead(qid)) => match self.cq_heads.get(usize::from(qid)) {
                Some(slot) => {
                    slot.put(value);
                    let state = &self.cq_state[usize::from(qid)];
                    match state.load(Ordering::Acquire) {
                        CQ_ACTIVE => DoorbellWake::None,
                        CQ_WAITING => {
                            let _ = state.compare_exchange(
                                CQ_WAITING,
                                CQ_ACTIVE,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                            DoorbellWake::CompletionQueue(qid)
                        }
                        _ => DoorbellWake::CompletionQueue(qid),
                    }
                }
                None => self.stray_write(),
            },
            None => DoorbellWake::None,
        }
    }

    fn stray_write(&self) -> DoorbellWake {
        self.stray.store(true, Ordering::Release);
        DoorbellWake::SubmissionQueue(0)
    }

    /// The value last written to submission queue `qid`'s tail doorbell, if written since the last
    /// call.
    pub(super) fn take_sq_tail(&self, qid: u16) -> Option<u32> {
        self.sq_tails.get(usize::from(qid)).and_then(Slot::take)
    }

    /// The value last written to completion queue `qid`'s head doorbell, if written since the last
    /// call.
    pub(super) fn take_cq_head(&self, qid: u16) -> Option<u32> {
        self.cq_heads.get(usize::from(qid)).and_then(Slot::take)
    }

    /// Whether a doorbell beyond the last queue was written since the last call.
    pub(super) fn take_stray(&self) -> bool {
        self.stray.swap(false, Ordering::AcqRel)
    }

    /// Completion queue `qid` now exists (`true`) or not.
    pub(super) fn set_cq_present(&self, qid: u16, present: bool) {
        if let Some(s) = self.cq_state.get(usize::from(qid)) {
            s.store(
                if present { CQ_ACTIVE } else { CQ_ABSENT },
                Ordering::Release,
            );
        }
    }

    /// A submission queue waits for room in completion queue `qid`: its next head doorbell wakes the
    /// worker.
    pub(super) fn set_cq_waiting(&self, qid: u16) {
        if let Some(s) = self.cq_state.get(usize::from(qid)) {
            let _ = s.compare_exchange(CQ_ACTIVE, CQ_WAITING, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Forgets every write (controller enable and reset): all completion queues absent.
    pub(super) fn clear(&self) {
        for slot in self.sq_tails.iter().chain(self.cq_heads.iter()) {
            slot.written.store(false, Ordering::Release);
            slot.value.store(0, Ordering::Release);
        }
        for s in self.cq_state.iter() {
            s.store(CQ_ABSENT, Ordering::Release);
        }
        self.stray.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::registers::{cq_head_doorbell, sq_tail_doorbell};

    #[test]
    fn writes_are_taken_once() {
        let d = Doorbells::new(2);
        assert_eq!(
            d.write(sq_tail_doorbell(1), 5),
            DoorbellWake::SubmissionQueue(1)
        );
        d.write(sq_tail_doorbell(1), 6);
        assert_eq!(d.take_sq_tail(1), Some(6));
        assert_eq!(d.take_sq_tail(1), None);
        assert_eq!(d.take_sq_tail(9), None);
    }

    #[test]
    fn cq_heads_wake_only_when_needed() {
        let d = Doorbells::new(2);
        // Absent queue: wake, so the worker reports it.
        assert_eq!(
            d.write(cq_head_doorbell(1), 1),
            DoorbellWake::CompletionQueue(1)
        );
        d.set_cq_present(1, true);
        assert_eq!(d.write(cq_head_doorbell(1), 2), DoorbellWake::None);
        d.set_cq_waiting(1);
        assert_eq!(
            d.write(cq_head_doorbell(1), 3),
            DoorbellWake::CompletionQueue(1)
        );
        assert_eq!(d.write(cq_head_doorbell(1), 4), DoorbellWake::None);
        assert_eq!(d.take_cq_head(1), Some(4));
    }

    #[test]
    fn stray_and_misaligned_writes() {
        let d = Doorbells::new(2);
        assert_eq!(
            d.write(sq_tail_doorbell(3), 1),
            DoorbellWake::SubmissionQueue(0)
        );
        assert!(d.take_stray());
        assert!(!d.take_stray());
        assert_eq!(d.write(sq_tail_doorbell(1) + 1, 1), DoorbellWake::None);
        assert_eq!(d.write(0x20, 1), DoorbellWake::None);
        d.write(sq_tail_doorbell(1), 1);
        d.clear();
        assert_eq!(d.take_sq_tail(1), None);
    }
}
