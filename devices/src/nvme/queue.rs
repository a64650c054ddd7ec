//! Submission and completion queue state: ring indexes, phase tags, wrap-around and full queues.
//!
//! A queue is a physically contiguous ring of `size` entries in guest RAM (CAP.CQR = 1). The guest
//! owns a submission queue's tail and a completion queue's head (it writes them through doorbells);
//! the controller owns the other end. One slot always stays empty, so `head == tail` means empty and
//! `tail + 1 == head` means full. Entries of a completion queue carry a phase tag that flips each time
//! the controller's tail wraps, which is how the guest tells new entries from old ones.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::command::{Command, CompletionEntry, CQ_ENTRY_SIZE, SQ_ENTRY_SIZE};

/// How far `to` is ahead of `from` on a ring of `size` entries.
pub(crate) fn ring_distance(from: u32, to: u32, size: u32) -> u32 {
    (to + size - from) % size
}

/// A submission queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubmissionQueue {
    /// Queue identifier (0 = admin).
    pub id: u16,
    /// Guest physical address of entry 0.
    pub base: GuestAddress,
    /// Number of entries.
    pub size: u32,
    /// Next entry the controller fetches.
    pub head: u32,
    /// One past the last entry the guest submitted.
    pub tail: u32,
    /// The completion queue its commands complete on.
    pub cqid: u16,
}

impl SubmissionQueue {
    pub fn new(id: u16, base: GuestAddress, size: u32, cqid: u16) -> Self {
        SubmissionQueue {
            id,
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
        }
    }

    /// Whether the guest submitted nothing the controller has not fetched.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Takes a new tail from a doorbell (or shadow doorbell). Returns false, changing nothing, for a
    /// value outside the ring.
    pub fn set_tail(&mut self, tail: u32) -> bool {
        if tail >= self.size {
            return false;
        }
        self.tail = tail;
        true
    }

    /// Fetches the entry at the head and advances the head. None when the queue is empty; Err when the
    /// entry cannot be read from guest memory (the head still advances, so a bad entry is skipped).
    #[cfg(test)]
    pub fn pop(&mut self, mem: &GuestMemoryMmap) -> Option<Result<Command, ()>> {
        let entry = self.peek(mem)?;
        self.advance();
        Some(entry)
    }

    /// Reads the entry at the head without taking it (a rate-limited queue looks at a command before
    /// it decides to run it). None when the queue is empty; Err when the entry cannot be read from
    /// guest memory.
    pub fn peek(&self, mem: &GuestMemoryMmap) -> Option<Result<Command, ()>> {
        if self.is_empty() {
            return None;
        }
        let addr = self
            .base
            .0
            .checked_add(u64::from(self.head) * SQ_ENTRY_SIZE);
        let mut raw = [0u8; 64];
        Some(match addr {
            Some(a) => mem
                .read_slice(&mut raw, GuestAddress(a))
                .map(|()| Command::from_bytes(&raw))
                .map_err(|_| ()),
            None => Err(()),
        })
    }

    /// Takes the entry at the head (after [`Self::peek`]); does nothing on an empty queue.
    pub fn advance(&mut self) {
        if !self.is_empty() {
            self.head = (self.head + 1) % self.size;
        }
    }
}

/// A completion queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompletionQueue {
    /// Queue identifier (0 = admin).
    pub id: u16,
    /// Guest physical address of entry 0.
    pub base: GuestAddress,
    /// Number of entries.
    pub size: u32,
    /// Oldest entry the guest has not consumed.
    pub head: u32,
    /// Next slot the controller fills.
    pub tail: u32,
    /// The phase tag the controller writes into entries on this lap.
    pub phase: bool,
    /// Whether posting an entry raises an interrupt (IEN; false = a polled queue).
    pub interrupts_enabled: bool,
    /// The MSI-X vector (IV).
    pub vector: u16,
    /// Entries were posted since the last interrupt.
    pub interrupt_pending: bool,
    /// A submission queue stopped fetching because this queue was full; when the guest frees a
    /// slot, the submission queues completing here are processed again.
    pub waiting: bool,
}

impl CompletionQueue {
    pub fn new(
        id: u16,
        base: GuestAddress,
        size: u32,
        interrupts_enabled: bool,
        vector: u16,
    ) -> Self {
        CompletionQueue {
            id,
            base,
            size,
            head: 0,
            tail: 0,
            phase: true,
            interrupts_enabled,
            vector,
            interrupt_pending: false,
            waiting: false,
        }
    }

    /// Whether every usable slot holds an entry the guest has not consumed.
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }

    /// Entries the guest has not consumed yet.
    pub fn used(&self) -> u32 {
        ring_distance(self.head, self.tail, self.size)
    }

    /// Takes a new head from a doorbell (or shadow doorbell). The head may only move forward over
    /// entries the controller posted; any other value changes nothing and returns false.
    pub fn set_head(&mut self, head: u32) -> bool {
        if head >= self.size || ring_distance(self.head, head, self.size) > self.used() {
            return false;
        }
        self.head = head;
        true
    }

    /// Writes `entry` (its phase tag replaced by this lap's) into the slot at the tail and advances the
    /// tail. Dword 3, which holds the phase tag, is written last with release ordering, so a guest
    /// that sees the new phase also sees the rest of the entry. Err when the queue is full or the slot
    /// is not in guest memory; nothing changes then.
    pub fn post(&mut self, mem: &GuestMemoryMmap, mut entry: CompletionEntry) -> Result<(), ()> {
        if self.is_full() {
            return Err(());
        }
        entry.phase = self.phase;
        let addr = self
            .base
            .0
            .checked_add(u64::from(self.tail) * CQ_ENTRY_SIZE)
            .ok_or(())?;
        mem.write_slice(&entry.low_bytes(), GuestAddress(addr))
            .map_err(|_| ())?;
        fence(Ordering::Release);
        mem.store(entry.dw3(), GuestAddress(addr + 12), Ordering::Release)
            .map_err(|_| ())?;
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
        self.interrupt_pending = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::status::Status;
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn entry(cid: u16) -> CompletionEntry {
        CompletionEntry {
            result: 0,
            sq_head: 0,
            sq_id: 1,
            cid,
            phase: false,
            status: Status::SUCCESS,
        }
    }

    fn read_entry(mem: &GuestMemoryMmap, base: u64, slot: u64) -> CompletionEntry {
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(base + slot * 16))
            .unwrap();
        CompletionEntry::from_bytes(&b)
    }

    #[test]
    fn sq_wraps_and_rejects_bad_tails() {
        let m = mem();
        let mut sq = SubmissionQueue::new(1, GuestAddress(0x1000), 4, 1);
        for i in 0..4u16 {
            m.write_slice(
                &Command::new(2, i).to_bytes(),
                GuestAddress(0x1000 + 64 * u64::from(i)),
            )
            .unwrap();
        }
        assert!(sq.pop(&m).is_none());
        assert!(!sq.set_tail(4));
        assert_eq!(sq.tail, 0);
        let mut seen = Vec::new();
        // Three laps of three entries each.
        for lap in 0..3u32 {
            assert!(sq.set_tail((sq.tail + 3) % 4));
            while let Some(c) = sq.pop(&m) {
                seen.push(c.unwrap().cid());
            }
            assert_eq!(sq.head, (3 * (lap + 1)) % 4);
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn sq_entry_outside_ram_is_an_error() {
        let m = mem();
        let mut sq = SubmissionQueue::new(1, GuestAddress(0xffc0), 4, 1);
        assert!(sq.set_tail(2));
        assert!(sq.pop(&m).unwrap().is_ok());
        assert!(sq.pop(&m).unwrap().is_err());
        assert!(sq.is_empty());
    }

    #[test]
    fn cq_phase_flips_on_wrap_and_full_is_refused() {
        let m = mem();
        let mut cq = CompletionQueue::new(1, GuestAddress(0x2000), 3, true, 1);
        cq.post(&m, entry(1)).unwrap();
        cq.post(&m, entry(2)).unwrap();
        assert!(cq.is_full());
        assert!(cq.post(&m, entry(3)).is_err());
        assert_eq!(read_entry(&m, 0x2000, 0).cid, 1);
        assert!(read_entry(&m, 0x2000, 0).phase);
        // A head beyond what was posted is refused.
        assert!(cq.set_head(0), "not moving is fine");
        assert!(!cq.set_head(3));
        assert!(cq.set_head(2));
        assert_eq!(cq.used(), 0);
        assert!(!cq.set_head(1), "the head cannot pass the tail");
        cq.post(&m, entry(3)).unwrap();
        assert_eq!(cq.tail, 0);
        assert!(!cq.phase);
        cq.post(&m, entry(4)).unwrap();
        let e = read_entry(&m, 0x2000, 0);
        assert_eq!((e.cid, e.phase), (4, false));
        let e = read_entry(&m, 0x2000, 2);
        assert_eq!((e.cid, e.phase), (3, true));
    }

    #[test]
    fn cq_slot_outside_ram_changes_nothing() {
        let m = mem();
        let mut cq = CompletionQueue::new(1, GuestAddress(0xfff0), 4, true, 1);
        cq.post(&m, entry(1)).unwrap();
        let before = cq.clone();
        assert!(cq.post(&m, entry(2)).is_err());
        assert_eq!(cq, before);
    }
}
