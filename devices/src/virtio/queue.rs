//! Checking a descriptor chain before a device uses it.
//!
//! `virtio-queue` walks chains (following `next`, switching into an indirect table, stopping after
//! the queue size — or the indirect table's size — descriptors, refusing nested indirect tables and
//! chains of more than 4 GiB), but it reports every problem the same way: the walk just ends. A device
//! must tell a chain that ended properly from one that was cut short, and must not trust addresses.
//! [`collect_chain`] walks a whole chain and returns its buffers as readable and writable
//! [`Segment`]s, or a [`ChainFault`] saying what is wrong and, when the chain ended properly, its
//! last descriptor (where a device may still report an error status).

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Whether the queue's descriptor table, available ring and used ring all lie in guest RAM: what
/// `Queue::is_valid` checks, without the `error!` line virtio-queue logs for each bad ring (a guest
/// resetting and re-activating a device with a bad ring in a loop would fill the host's log).
pub fn rings_in_ram(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    let size = u64::from(queue.size());
    // Sizes from the virtio 1.2 split-ring layout: 16-byte descriptors; flags, idx, the ring and
    // used_event/avail_event; 8-byte used elements.
    let rings = [
        (queue.desc_table(), 16 * size),
        (queue.avail_ring(), 6 + 2 * size),
        (queue.used_ring(), 6 + 8 * size),
    ];
    queue.ready()
        && rings.iter().all(|&(addr, len)| {
            usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
        })
}

/// `Queue::add_used`, refusing a head index outside the ring itself: virtio-queue refuses it too,
/// but logs an `error!` line each time, and the head comes from the guest's available ring.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    if head >= queue.size() {
        return Err(virtio_queue::Error::InvalidDescriptorIndex);
    }
    queue.add_used(mem, head, len)
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A checked descriptor chain: device-readable buffers first, then device-writable ones, each
/// entirely inside guest RAM. Zero-length descriptors are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Index of the head descriptor (what goes back in the used ring).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

impl Chain {
    /// Total length of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total length of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// What is wrong with a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The chain has no descriptor, or did not end properly: a loop, a `next` past the table, an
    /// unreadable descriptor or indirect table, a nested indirect table, more than 4 GiB. Nothing
    /// in it can be trusted, including where it ends.
    Broken,
    /// More descriptors than the device accepts.
    TooLong,
    /// A device-readable descriptor after a device-writable one.
    WrongDirection,
    /// A buffer not entirely inside guest RAM.
    OutOfRange {
        /// The buffer's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
}

/// A chain [`collect_chain`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainFault {
    /// Index of the head descriptor.
    pub head: u16,
    /// What is wrong.
    pub error: ChainError,
    /// The chain's last descriptor when the chain ended properly (not [`ChainError::Broken`]), and
    /// whether it is device-writable.
    pub last: Option<(Segment, bool)>,
}

impl ChainFault {
    /// The address of the last byte of the chain, if the chain ended properly in a device-writable
    /// descriptor whose last byte is in guest RAM: where a device whose protocol ends a request in
    /// a status byte (virtio-blk) can still report the error.
    pub fn status_byte(&self, mem: &GuestMemoryMmap) -> Option<GuestAddress> {
        let (seg, writable) = self.last?;
        if !writable || seg.len == 0 {
            return None;
        }
        let addr = seg.addr.0.checked_add(u64::from(seg.len) - 1)?;
        GuestMemoryBackend::check_range(mem, GuestAddress(addr), 1).then_some(GuestAddress(addr))
    }
}

fn segment(desc: &Descriptor) -> Segment {
    Segment {
        addr: desc.addr(),
        len: desc.len(),
    }
}

/// Walks `chain` to its end and fills `out` (cleared first) with its buffers, keeping at most
/// `max_descriptors` of them. Errors, in order of precedence: [`ChainError::Broken`],
/// [`ChainError::TooLong`], [`ChainError::WrongDirection`], [`ChainError::OutOfRange`].
///
/// The walk itself is bounded by `virtio-queue` (queue size descriptors, plus at most 65535 from one
/// indirect table); a chain longer than `max_descriptors` is still walked to find its end, so a
/// device can report the error in its last descriptor.
pub fn collect_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    max_descriptors: usize,
    out: &mut Chain,
) -> Result<(), ChainFault>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    out.head = chain.head_index();
    out.readable.clear();
    out.writable.clear();
    let mut count = 0usize;
    let mut last: Option<Descriptor> = None;
    let mut wrong_direction = false;
    let mut out_of_range = None;
    for desc in chain {
        count += 1;
        if count <= max_descriptors {
            let seg = segment(&desc);
            if desc.is_write_only() {
                if seg.len > 0 {
                    out.writable.push(seg);
                }
            } else if !out.writable.is_empty()
                || last.is_some_and(|l: Descriptor| l.is_write_only())
            {
                wrong_direction = true;
            } else if seg.len > 0 {
                out.readable.push(seg);
            }
            if out_of_range.is_none()
                && seg.len > 0
                && !GuestMemoryBackend::check_range(mem, seg.addr, seg.len as usize)
            {
                out_of_range = Some(ChainError::OutOfRange {
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
        }
        last = Some(desc);
    }
    let fault = |error, last: Option<Descriptor>| ChainFault {
        head: out.head,
        error,
        last: last.map(|d| (segment(&d), d.is_write_only())),
    };
    match last {
        None => return Err(fault(ChainError::Broken, None)),
        Some(d) if d.has_next() => return Err(fault(ChainError::Broken, None)),
        Some(_) => {}
    }
    if count > max_descriptors {
        return Err(fault(ChainError::TooLong, last));
    }
    if wrong_direction {
        return Err(fault(ChainError::WrongDirection, last));
    }
    if let Some(error) = out_of_range {
        return Err(fault(error, last));
    }
    Ok(())
}

/// Test helpers: a split ring in a `GuestMemoryMmap` that tests fill with descriptors.
#[cfg(test)]
pub(crate) mod testing {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Descriptor flag: another descriptor follows.
    pub const F_NEXT: u16 = 1;
    /// Descriptor flag: device-writable.
    pub const F_WRITE: u16 = 2;
    /// Descriptor flag: the buffer is an indirect descriptor table.
    pub const F_INDIRECT: u16 = 4;

    /// A split ring of `size` entries: descriptor table at `base`, available ring at
    /// `base + 16 × size`, used ring 4 KiB-aligned after it.
    pub struct TestRing {
        pub mem: GuestMemoryMmap,
        pub size: u16,
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        avail_idx: u16,
    }

    impl TestRing {
        pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
            let ring = Self {
                mem: mem.clone(),
                size,
                desc,
                avail,
                used,
                avail_idx: 0,
            };
            mem.write_obj(0u16, GuestAddress(avail)).unwrap();
            mem.write_obj(0u16, GuestAddress(avail + 2)).unwrap();
            mem.write_obj(0u16, GuestAddress(used)).unwrap();
            mem.write_obj(0u16, GuestAddress(used + 2)).unwrap();
            ring
        }

        /// A ready queue on this ring.
        pub fn queue(&self, event_idx: bool) -> Queue {
            let mut q = Queue::new(self.size).unwrap();
            q.try_set_size(self.size).unwrap();
            q.try_set_desc_table_address(GuestAddress(self.desc))
                .unwrap();
            q.try_set_avail_ring_address(GuestAddress(self.avail))
                .unwrap();
            q.try_set_used_ring_address(GuestAddress(self.used))
                .unwrap();
            q.set_event_idx(event_idx);
            q.set_ready(true);
            assert!(q.is_valid(&self.mem));
            q
        }

        /// Writes descriptor `index` of the table at `table`.
        pub fn write_desc_at(
            &self,
            table: u64,
            index: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let at = GuestAddress(table + 16 * u64::from(index));
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, at).unwrap();
        }

        /// Writes descriptor `index` of the ring's own table.
        pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
            self.write_desc_at(self.desc, index, addr, len, flags, next);
        }

        /// Writes `descs` (addr, len, flags) as a chain at table indices `first..`, linking them
        /// with NEXT, and returns the head index.
        pub fn chain(&self, first: u16, descs: &[(u64, u32, u16)]) -> u16 {
            for (i, (addr, len, flags)) in descs.iter().enumerate() {
                let index = first + i as u16;
                let last = i + 1 == descs.len();
                let flags = if last { *flags } else { *flags | F_NEXT };
                self.write_desc(index, *addr, *len, flags, index.wrapping_add(1));
            }
            first
        }

        /// Makes head `head` available and bumps the available index.
        pub fn publish(&mut self, head: u16) {
            let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
                .unwrap();
        }

        /// The used ring's index.
        pub fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
        }

        /// Used ring entry `n`: (descriptor id, length).
        pub fn used_entry(&self, n: u16) -> (u32, u32) {
            let at = self.used + 4 + 8 * u64::from(n % self.size);
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        /// Sets the available ring's `used_event` (EVENT_IDX).
        pub fn set_used_event(&self, value: u16) {
            let at = self.avail + 4 + 2 * u64::from(self.size);
            self.mem.write_obj(value, GuestAddress(at)).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::Bytes;

    const MEM: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn collect(ring: &TestRing, head: u16, max: usize) -> Result<Chain, ChainFault> {
        // A fresh ring over the same descriptor table, with just this head available.
        let mut r = TestRing::new(&ring.mem, ring.desc, ring.size);
        r.publish(head);
        let mut q = r.queue(false);
        let chain = q.pop_descriptor_chain(&r.mem).expect("a chain");
        let mut out = Chain::default();
        collect_chain(chain, &r.mem, max, &mut out).map(|()| out)
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn good_chain_splits_by_direction() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        let head = ring.chain(
            0,
            &[
                (0x8000, 16, 0),
                (0x9000, 0, 0),
                (0xa000, 512, F_WRITE),
                (0xb000, 1, F_WRITE),
            ],
        );
        let c = collect(&ring, head, 16).unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.readable, vec![seg(0x8000, 16)]);
        assert_eq!(c.writable, vec![seg(0xa000, 512), seg(0xb000, 1)]);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
    }

    #[test]
    fn loops_and_dangling_next_are_broken() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        // 0 -> 1 -> 0 -> ...
        ring.write_desc(0, 0x8000, 16, F_NEXT, 1);
        ring.write_desc(1, 0x9000, 1, F_NEXT | F_WRITE, 0);
        let f = collect(&ring, 0, 1024).unwrap_err();
        assert_eq!((f.error, f.last), (ChainError::Broken, None));
        assert_eq!(f.status_byte(&m), None);
        // A self loop.
        ring.write_desc(2, 0x8000, 16, F_NEXT, 2);
        assert_eq!(
            collect(&ring, 2, 1024).unwrap_err().error,
            ChainError::Broken
        );
        // next past the table.
        ring.write_desc(3, 0x8000, 16, F_NEXT, 16);
        assert_eq!(
            collect(&ring, 3, 1024).unwrap_err().error,
            ChainError::Broken
        );
    }

    #[test]
    fn too_long_reports_the_tail() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        let descs: Vec<_> = (0..10)
            .map(|i| (0x8000 + 0x100 * i, 16u32, if i == 9 { F_WRITE } else { 0 }))
            .collect();
        let head = ring.chain(0, &descs);
        let f = collect(&ring, head, 4).unwrap_err();
        assert_eq!(f.error, ChainError::TooLong);
        assert_eq!(f.last, Some((seg(0x8900, 16), true)));
        assert_eq!(f.status_byte(&m), Some(GuestAddress(0x890f)));
        assert!(collect(&ring, head, 10).is_ok());
    }

    #[test]
    fn wrong_direction_and_out_of_range() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        let head = ring.chain(
            0,
            &[(0x8000, 16, F_WRITE), (0x9000, 16, 0), (0xa000, 1, F_WRITE)],
        );
        let f = collect(&ring, head, 16).unwrap_err();
        assert_eq!(f.error, ChainError::WrongDirection);
        assert_eq!(f.status_byte(&m), Some(GuestAddress(0xa000)));
        // A buffer outside RAM, another straddling its end, a huge length.
        for (addr, len) in [
            (MEM + 0x1000, 512u32),
            (MEM - 256, 512),
            (0x8000, 0xffff_0000),
        ] {
            let head = ring.chain(
                4,
                &[(0x8000, 16, 0), (addr, len, F_WRITE), (0xa000, 1, F_WRITE)],
            );
            let f = collect(&ring, head, 16).unwrap_err();
            assert_eq!(f.error, ChainError::OutOfRange { addr, len });
            assert_eq!(f.status_byte(&m), Some(GuestAddress(0xa000)));
        }
        // The status descriptor itself outside RAM: no status byte.
        let head = ring.chain(8, &[(0x8000, 16, 0), (MEM, 1, F_WRITE)]);
        let f = collect(&ring, head, 16).unwrap_err();
        assert_eq!(f.status_byte(&m), None);
        // Last descriptor readable: no status byte either.
        let head = ring.chain(10, &[(0x8000, 16, 0)]);
        assert!(collect(&ring, head, 16).is_ok());
    }

    #[test]
    fn indirect_tables() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        let table = 0x20000;
        ring.write_desc_at(table, 0, 0x8000, 16, F_NEXT, 1);
        ring.write_desc_at(table, 1, 0x9000, 4096, F_NEXT | F_WRITE, 2);
        ring.write_desc_at(table, 2, 0xa000, 1, F_WRITE, 0);
        ring.write_desc(0, table, 48, F_INDIRECT, 0);
        let c = collect(&ring, 0, 16).unwrap();
        assert_eq!(c.readable, vec![seg(0x8000, 16)]);
        assert_eq!(c.writable, vec![seg(0x9000, 4096), seg(0xa000, 1)]);
        // A nested indirect descriptor, a table length that is not a multiple of 16, a table
        // outside RAM, an empty table: all broken.
        ring.write_desc_at(table, 1, 0x30000, 16, F_INDIRECT, 0);
        assert_eq!(collect(&ring, 0, 16).unwrap_err().error, ChainError::Broken);
        ring.write_desc(1, table, 40, F_INDIRECT, 0);
        assert_eq!(collect(&ring, 1, 16).unwrap_err().error, ChainError::Broken);
        ring.write_desc(2, MEM + 0x1000, 48, F_INDIRECT, 0);
        assert_eq!(collect(&ring, 2, 16).unwrap_err().error, ChainError::Broken);
        ring.write_desc(3, table, 0, F_INDIRECT, 0);
        assert_eq!(collect(&ring, 3, 16).unwrap_err().error, ChainError::Broken);
        // A loop inside an indirect table.
        ring.write_desc_at(table, 0, 0x8000, 16, F_NEXT, 1);
        ring.write_desc_at(table, 1, 0x9000, 16, F_NEXT, 0);
        assert_eq!(collect(&ring, 0, 16).unwrap_err().error, ChainError::Broken);
    }

    #[test]
    fn indirect_table_of_65535_descriptors_is_capped() {
        // 65535 descriptors of 16 bytes each (the largest table virtio-queue accepts), all valid.
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let ring = TestRing::new(&m, 0x1000, 16);
        let table = 0x10_0000u64;
        let n: u32 = 65535;
        let mut raw = vec![0u8; 16 * n as usize];
        for i in 0..n {
            let d = &mut raw[16 * i as usize..16 * (i as usize + 1)];
            let last = i + 1 == n;
            d[0..8].copy_from_slice(&0x8000u64.to_le_bytes());
            d[8..12].copy_from_slice(&16u32.to_le_bytes());
            let flags: u16 = if last { F_WRITE } else { F_NEXT | F_WRITE };
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        }
        vm_memory::Bytes::write_slice(&m, &raw, GuestAddress(table)).unwrap();
        ring.write_desc(0, table, 16 * n, F_INDIRECT, 0);
        let f = collect(&ring, 0, 1024).unwrap_err();
        assert_eq!(f.error, ChainError::TooLong);
        assert_eq!(f.status_byte(&m), Some(GuestAddress(0x800f)));
        // One more (65536 = 1 MiB of descriptors) is refused by virtio-queue: broken.
        ring.write_desc(1, table, 16 * 65536, F_INDIRECT, 0);
        assert_eq!(
            collect(&ring, 1, 1024).unwrap_err().error,
            ChainError::Broken
        );
    }

    #[test]
    fn ring_helper_round_trip() {
        let m = mem();
        let mut ring = TestRing::new(&m, 0x1000, 8);
        let mut q = ring.queue(true);
        let head = ring.chain(0, &[(0x8000, 1, F_WRITE)]);
        ring.publish(head);
        let chain = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(chain.head_index(), 0);
        q.add_used(&m, 0, 1).unwrap();
        assert_eq!(ring.used_idx(), 1);
        assert_eq!(ring.used_entry(0), (0, 1));
        ring.set_used_event(0);
        assert!(q.needs_notification(&m).unwrap());
    }

    #[test]
    fn rings_in_ram_agrees_with_is_valid_without_logging() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        let mut q = ring.queue(false);
        assert!(rings_in_ram(&q, &m));
        // Each ring in turn past the end of RAM, or running off it.
        for (which, addr) in [
            (0, MEM),
            (1, MEM - 8),
            (2, MEM - 4096 + 4000),
            (2, u64::MAX - 4095),
        ] {
            let mut bad = ring.queue(false);
            let at = GuestAddress(addr & !0xf);
            match which {
                0 => bad.try_set_desc_table_address(at).unwrap(),
                1 => bad.try_set_avail_ring_address(at).unwrap(),
                _ => bad.try_set_used_ring_address(at).unwrap(),
            }
            assert!(!rings_in_ram(&bad, &m), "ring {which} at {addr:#x}");
            assert_eq!(rings_in_ram(&bad, &m), bad.is_valid(&m));
        }
        q.set_ready(false);
        assert!(!rings_in_ram(&q, &m));
    }

    #[test]
    fn add_used_refuses_a_head_outside_the_ring_and_writes_nothing() {
        let m = mem();
        let ring = TestRing::new(&m, 0x1000, 16);
        let mut q = ring.queue(false);
        for head in [16, 17, u16::MAX] {
            assert!(matches!(
                add_used(&mut q, &m, head, 1),
                Err(virtio_queue::Error::InvalidDescriptorIndex)
            ));
        }
        let used_idx: u16 = m.read_obj(GuestAddress(ring.used + 2)).unwrap();
        assert_eq!(used_idx, 0, "nothing reached the used ring");
        add_used(&mut q, &m, 15, 7).unwrap();
        let used_idx: u16 = m.read_obj(GuestAddress(ring.used + 2)).unwrap();
        assert_eq!(used_idx, 1);
    }
}
