//! virtio-blk tests: request parsing and every error path against an in-process guest memory and
//! an in-memory disk, then the whole device (transport, worker thread, interrupts, reset) driven
//! through BAR accesses.

use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::request::{process_chain, process_chain_limited, Completion, Scratch, MAX_DESCRIPTORS};
use super::*;
use crate::pci::{MsiInterruptGroup, MsiMessage, PciDevice};
use crate::rate_limiter::{
    BucketConfig, LimiterChain, ManualClock, RateLimiter, RateLimiterConfig,
};
use crate::virtio::common::offsets;
use crate::virtio::pci::{DEVICE_CONFIG_OFFSET, ISR_OFFSET, NOTIFY_OFFSET};
use crate::virtio::queue::testing::{TestRing, F_INDIRECT, F_NEXT, F_WRITE};
use crate::virtio::VirtioPciDevice;

/// A disk in memory that counts flushes and can be told to fail.
#[derive(Default)]
struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    fail: AtomicBool,
    flushes: AtomicUsize,
    holes: Mutex<Vec<(u64, u64)>>,
}

struct Shared(Arc<MemDisk>);

impl MemDisk {
    fn check(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(io::Error::other("injected failure"))
        } else {
            Ok(())
        }
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let size = self.data.lock().unwrap().len() as u64;
        let end = offset.checked_add(len as u64).filter(|e| *e <= size);
        end.map(|e| offset as usize..e as usize)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

impl BlockIo for Shared {
    fn size(&self) -> u64 {
        self.0.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.0.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.check()?;
        let r = self.0.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.check()?;
        assert!(!self.0.read_only, "write to a read-only disk");
        let r = self.0.range(offset, buf.len())?;
        self.0.data.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.0.check()?;
        self.0.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.check()?;
        assert!(!self.0.read_only, "discard on a read-only disk");
        let r = self.0.range(offset, len as usize)?;
        self.0.data.lock().unwrap()[r].fill(0);
        self.0.holes.lock().unwrap().push((offset, len));
        Ok(())
    }
}

const RAM: u64 = 8 << 20;
const RING: u64 = 0x1000;
const HDR: u64 = 0x10000;
const STATUS: u64 = 0x11000;
const DATA: u64 = 0x20000;
const SECTORS: u64 = 128; // a 64 KiB disk

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

struct Harness {
    mem: GuestMemoryMmap,
    ring: TestRing,
    queue: Queue,
    disk: Disk,
    shared: Arc<MemDisk>,
    scratch: Scratch,
    writeback: bool,
}

impl Harness {
    fn new(read_only: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let ring = TestRing::new(&mem, RING, 256);
        let queue = ring.queue(true);
        let shared = Arc::new(MemDisk {
            data: Mutex::new(pattern((SECTORS * SECTOR_SIZE) as usize, 1)),
            read_only,
            ..Default::default()
        });
        let mut id = [0u8; 20];
        id[..9].copy_from_slice(b"disk-test");
        Self {
            disk: Disk {
                backend: Box::new(Shared(shared.clone())),
                sectors: SECTORS,
                read_only,
                id,
                failures: Default::default(),
            },
            mem,
            ring,
            queue,
            shared,
            scratch: Scratch::default(),
            writeback: true,
        }
    }

    fn header(&self, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    }

    /// Submits the chain `descs` (table indices from 0) and runs it.
    fn submit(&mut self, descs: &[(u64, u32, u16)]) -> Completion {
        let head = self.ring.chain(0, descs);
        self.run(head)
    }

    fn run(&mut self, head: u16) -> Completion {
        self.ring.publish(head);
        let chain = self.queue.pop_descriptor_chain(&self.mem).unwrap();
        process_chain(
            &self.mem,
            &self.disk,
            self.writeback,
            chain,
            &mut self.scratch,
        )
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn disk_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        self.shared.data.lock().unwrap()[offset..offset + len].to_vec()
    }

    fn read_request(&mut self, sector: u64, len: u32) -> Completion {
        self.header(VIRTIO_BLK_T_IN, sector);
        self.submit(&[(HDR, 16, 0), (DATA, len, F_WRITE), (STATUS, 1, F_WRITE)])
    }

    fn write_request(&mut self, sector: u64, data: &[u8]) -> Completion {
        self.header(VIRTIO_BLK_T_OUT, sector);
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.submit(&[
            (HDR, 16, 0),
            (DATA, data.len() as u32, 0),
            (STATUS, 1, F_WRITE),
        ])
    }
}

fn ok(head: u16, len: u32) -> Completion {
    Completion {
        head,
        len,
        status: Some(VIRTIO_BLK_S_OK as u8),
    }
}

fn ioerr() -> Completion {
    Completion {
        head: 0,
        len: 1,
        status: Some(VIRTIO_BLK_S_IOERR as u8),
    }
}

fn dropped() -> Completion {
    Completion {
        head: 0,
        len: 0,
        status: None,
    }
}

#[test]
fn read_write_flush_get_id() {
    let mut h = Harness::new(false);
    // Read sectors 2-3.
    assert_eq!(h.read_request(2, 1024), ok(0, 1025));
    assert_eq!(h.status(), 0);
    let mut buf = vec![0u8; 1024];
    h.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(buf, h.disk_bytes(1024, 1024));
    // Write sectors 10-17 and read them back from the disk.
    let data = pattern(4096, 99);
    assert_eq!(h.write_request(10, &data), ok(0, 1));
    assert_eq!(h.disk_bytes(5120, 4096), data);
    assert_eq!(
        h.shared.flushes.load(Ordering::SeqCst),
        0,
        "write-back: no flush"
    );
    // Flush.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]), ok(0, 1));
    assert_eq!(h.shared.flushes.load(Ordering::SeqCst), 1);
    // GET_ID: 20 bytes, NUL padded.
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    h.mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)]),
        ok(0, 21)
    );
    let mut id = [0u8; 20];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..9], b"disk-test");
    assert_eq!(&id[9..], &[0; 11]);
    // A short GET_ID buffer gets what fits.
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 4, F_WRITE), (STATUS, 1, F_WRITE)]),
        ok(0, 5)
    );
}

#[test]
fn write_through_without_flush_feature() {
    let mut h = Harness::new(false);
    h.writeback = false;
    assert_eq!(h.write_request(0, &[5; 512]), ok(0, 1));
    assert_eq!(h.shared.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn any_layout() {
    let mut h = Harness::new(false);
    // Header and data in one readable buffer; status in its own.
    let data = pattern(1024, 3);
    h.header(VIRTIO_BLK_T_OUT, 4);
    h.mem.write_slice(&data, GuestAddress(HDR + 16)).unwrap();
    assert_eq!(
        h.submit(&[(HDR, 16 + 1024, 0), (STATUS, 1, F_WRITE)]),
        ok(0, 1)
    );
    assert_eq!(h.disk_bytes(2048, 1024), data);
    // Data and status in one writable buffer, the header split in two.
    h.header(VIRTIO_BLK_T_IN, 4);
    let c = h.submit(&[(HDR, 5, 0), (HDR + 5, 11, 0), (DATA, 1025, F_WRITE)]);
    assert_eq!(c, ok(0, 1025));
    let mut buf = vec![0u8; 1025];
    h.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(&buf[..1024], &data[..]);
    assert_eq!(buf[1024], 0, "status is the last byte");
    // Data scattered over many small buffers.
    let descs: Vec<_> = std::iter::once((HDR, 16, 0))
        .chain((0..8).map(|i| (DATA + 0x1000 * i, 128u32, F_WRITE)))
        .chain(std::iter::once((STATUS, 1, F_WRITE)))
        .collect();
    h.header(VIRTIO_BLK_T_IN, 4);
    assert_eq!(h.submit(&descs), ok(0, 1025));
    for i in 0..8u64 {
        let mut piece = [0u8; 128];
        h.mem
            .read_slice(&mut piece, GuestAddress(DATA + 0x1000 * i))
            .unwrap();
        assert_eq!(&piece[..], &data[128 * i as usize..128 * (i as usize + 1)]);
    }
}

#[test]
fn requests_beyond_capacity_fail() {
    let mut h = Harness::new(false);
    let before = h.disk_bytes(0, (SECTORS * SECTOR_SIZE) as usize);
    for (sector, len) in [
        (SECTORS, 512u32),
        (SECTORS - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ] {
        assert_eq!(h.read_request(sector, len), ioerr(), "read {sector} {len}");
        assert_eq!(h.status(), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(
            h.write_request(sector, &vec![9; len as usize]),
            ioerr(),
            "write {sector}"
        );
    }
    // The last sector is fine.
    assert_eq!(h.read_request(SECTORS - 1, 512), ok(0, 513));
    // Not a whole number of sectors.
    assert_eq!(h.read_request(0, 511), ioerr());
    assert_eq!(h.write_request(0, &[1; 100]), ioerr());
    assert_eq!(h.disk_bytes(0, before.len()), before, "nothing written");
}

#[test]
fn read_only_disk_refuses_every_write() {
    let mut h = Harness::new(true);
    let before = h.disk_bytes(0, (SECTORS * SECTOR_SIZE) as usize);
    assert_eq!(h.write_request(0, &[1; 512]), ioerr());
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        h.header(t, 0);
        let mut seg = [0u8; 16];
        seg[8..12].copy_from_slice(&8u32.to_le_bytes());
        h.mem.write_slice(&seg, GuestAddress(HDR + 16)).unwrap();
        assert_eq!(h.submit(&[(HDR, 32, 0), (STATUS, 1, F_WRITE)]), ioerr());
    }
    // Reads and flushes work.
    assert_eq!(h.read_request(0, 512), ok(0, 513));
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]), ok(0, 1));
    assert_eq!(h.disk_bytes(0, before.len()), before);
}

fn discard_segments(h: &Harness, segs: &[(u64, u32, u32)]) -> u32 {
    for (i, (sector, count, flags)) in segs.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&sector.to_le_bytes());
        raw[8..12].copy_from_slice(&count.to_le_bytes());
        raw[12..16].copy_from_slice(&flags.to_le_bytes());
        h.mem
            .write_slice(&raw, GuestAddress(DATA + 16 * i as u64))
            .unwrap();
    }
    16 * segs.len() as u32
}

#[test]
fn discard_and_write_zeroes() {
    let mut h = Harness::new(false);
    let len = discard_segments(&h, &[(0, 8, 0), (16, 8, 0)]);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, len, 0), (STATUS, 1, F_WRITE)]),
        ok(0, 1)
    );
    assert_eq!(
        *h.shared.holes.lock().unwrap(),
        vec![(0, 4096), (8192, 4096)]
    );
    assert!(h.disk_bytes(0, 4096).iter().all(|b| *b == 0));
    // Write zeroes with the unmap flag.
    let len = discard_segments(&h, &[(100, 4, 1)]);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, len, 0), (STATUS, 1, F_WRITE)]),
        ok(0, 1)
    );
    assert!(h.disk_bytes(51200, 2048).iter().all(|b| *b == 0));
    h.shared.holes.lock().unwrap().clear();
    let unsupp = Completion {
        head: 0,
        len: 1,
        status: Some(VIRTIO_BLK_S_UNSUPP as u8),
    };
    for (t, segs, want) in [
        // Discard with the unmap flag, reserved flags: unsupported.
        (VIRTIO_BLK_T_DISCARD, vec![(0, 8, 1)], unsupp),
        (VIRTIO_BLK_T_WRITE_ZEROES, vec![(0, 8, 2)], unsupp),
        // A second segment past the end: nothing is discarded.
        (
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, 0), (SECTORS - 4, 8, 0)],
            ioerr(),
        ),
        (
            VIRTIO_BLK_T_DISCARD,
            vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
            ioerr(),
        ),
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0); 33], ioerr()),
        (VIRTIO_BLK_T_DISCARD, vec![], ioerr()),
    ] {
        let len = discard_segments(&h, &segs);
        h.header(t, 0);
        let descs: Vec<(u64, u32, u16)> = if len > 0 {
            vec![(HDR, 16, 0), (DATA, len, 0), (STATUS, 1, F_WRITE)]
        } else {
            vec![(HDR, 16, 0), (STATUS, 1, F_WRITE)]
        };
        assert_eq!(h.submit(&descs), want, "{t} {segs:?}");
        assert!(h.shared.holes.lock().unwrap().is_empty());
    }
    // A segment list that is not a multiple of 16 bytes.
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 20, 0), (STATUS, 1, F_WRITE)]),
        ioerr()
    );
}

#[test]
fn unknown_types_and_short_headers() {
    let mut h = Harness::new(false);
    for t in [2u32, 3, 10, 14, 0x8000_0000, u32::MAX] {
        h.header(t, 0);
        assert_eq!(
            h.submit(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]),
            Completion {
                head: 0,
                len: 1,
                status: Some(VIRTIO_BLK_S_UNSUPP as u8)
            },
            "type {t}"
        );
    }
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(HDR, 15, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]),
        ioerr()
    );
    // No header at all.
    assert_eq!(
        h.submit(&[(DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]),
        ioerr()
    );
}

#[test]
fn malformed_chains() {
    let mut h = Harness::new(false);
    let before = h.disk_bytes(0, 4096);
    // Data buffer outside RAM, straddling its end, or absurdly long: IOERR through the status.
    for (addr, len) in [
        (RAM + 0x1000, 512u32),
        (RAM - 512, 1024),
        (DATA, 0xffff_0000),
        (u64::MAX - 511, 512),
    ] {
        h.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            h.submit(&[(HDR, 16, 0), (addr, len, F_WRITE), (STATUS, 1, F_WRITE)]),
            ioerr()
        );
        h.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            h.submit(&[(HDR, 16, 0), (addr, len, 0), (STATUS, 1, F_WRITE)]),
            ioerr()
        );
    }
    // The header outside RAM.
    assert_eq!(h.submit(&[(RAM, 16, 0), (STATUS, 1, F_WRITE)]), ioerr());
    // Wrong direction: a readable buffer after a writable one.
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[
            (HDR, 16, 0),
            (STATUS, 1, F_WRITE),
            (DATA, 512, 0),
            (STATUS, 1, F_WRITE)
        ]),
        ioerr()
    );
    // Write-only data for a write: nothing to write (0 bytes), the rest is the status.
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)]),
        ok(0, 1)
    );
    // The status outside RAM, the chain ending in a readable buffer, no buffer at all: dropped.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (DATA, 512, F_WRITE), (RAM, 1, F_WRITE)]),
        dropped()
    );
    assert_eq!(h.submit(&[(HDR, 16, 0), (DATA, 512, 0)]), dropped());
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 0, F_WRITE)]), dropped());
    assert_eq!(h.status(), 0xaa, "nothing written for a dropped chain");
    // A loop: dropped, status untouched.
    h.ring.write_desc(0, HDR, 16, F_NEXT, 1);
    h.ring.write_desc(1, DATA, 512, F_NEXT | F_WRITE, 2);
    h.ring.write_desc(2, STATUS, 1, F_NEXT | F_WRITE, 0);
    assert_eq!(h.run(0), dropped());
    assert_eq!(h.status(), 0xaa);
    // next past the table.
    h.ring.write_desc(2, STATUS, 1, F_NEXT | F_WRITE, 300);
    assert_eq!(h.run(0), dropped());
    assert_eq!(h.disk_bytes(0, 4096), before);
    // The device still serves a good request afterwards.
    assert_eq!(h.read_request(0, 512), ok(0, 513));
}

#[test]
fn too_many_descriptors() {
    let mut h = Harness::new(false);
    // 257 descriptors in the ring (just over MAX_DESCRIPTORS = 256) cannot be: the ring has 256
    // entries. An indirect table can hold more.
    let table = 0x100000u64;
    let n = MAX_DESCRIPTORS as u16 + 1;
    for i in 0..n {
        let (addr, len, flags) = match i {
            0 => (HDR, 16, 0),
            i if i + 1 == n => (STATUS, 1, F_WRITE),
            i => (DATA + 512 * u64::from(i), 512, F_WRITE),
        };
        let flags = if i + 1 == n { flags } else { flags | F_NEXT };
        h.ring.write_desc_at(table, i, addr, len, flags, i + 1);
    }
    h.header(VIRTIO_BLK_T_IN, 0);
    h.ring
        .write_desc(0, table, 16 * u32::from(n), F_INDIRECT, 0);
    assert_eq!(h.run(0), ioerr());
    // Exactly MAX_DESCRIPTORS (empty data buffers around a flush) is accepted.
    let n = MAX_DESCRIPTORS as u16;
    for i in 0..n {
        let (addr, len, flags) = match i {
            0 => (HDR, 16, 0),
            i if i + 1 == n => (STATUS, 1, F_WRITE),
            i => (DATA + 64 * u64::from(i), 0, F_WRITE),
        };
        let flags = if i + 1 == n { flags } else { flags | F_NEXT };
        h.ring.write_desc_at(table, i, addr, len, flags, i + 1);
    }
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.ring
        .write_desc(0, table, 16 * u32::from(n), F_INDIRECT, 0);
    assert_eq!(h.run(0), ok(0, 1));
}

#[test]
fn indirect_table_of_65535_descriptors() {
    let mut h = Harness::new(false);
    let table = 0x100000u64;
    let n: u32 = 65535;
    let mut raw = vec![0u8; 16 * n as usize];
    for i in 0..n {
        let d = &mut raw[16 * i as usize..16 * (i as usize + 1)];
        let (addr, len, mut flags) = match i {
            0 => (HDR, 16u32, 0u16),
            i if i + 1 == n => (STATUS, 1, F_WRITE),
            _ => (DATA, 512, F_WRITE),
        };
        if i + 1 != n {
            flags |= F_NEXT;
        }
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
    }
    h.mem.write_slice(&raw, GuestAddress(table)).unwrap();
    h.header(VIRTIO_BLK_T_IN, 0);
    h.ring.write_desc(0, table, 16 * n, F_INDIRECT, 0);
    let started = Instant::now();
    assert_eq!(h.run(0), ioerr());
    assert!(started.elapsed() < Duration::from_secs(5));
    // 65536 descriptors: the table itself is refused, the chain dropped.
    h.ring.write_desc(0, table, 16 * 65536, F_INDIRECT, 0);
    assert_eq!(h.run(0), dropped());
}

#[test]
fn good_indirect_request() {
    let mut h = Harness::new(false);
    let table = 0x30000u64;
    h.ring.write_desc_at(table, 0, HDR, 16, F_NEXT, 1);
    h.ring
        .write_desc_at(table, 1, DATA, 2048, F_NEXT | F_WRITE, 2);
    h.ring.write_desc_at(table, 2, STATUS, 1, F_WRITE, 0);
    h.ring.write_desc(5, table, 48, F_INDIRECT, 0);
    h.header(VIRTIO_BLK_T_IN, 8);
    assert_eq!(h.run(5), ok(5, 2049));
    let mut buf = vec![0u8; 2048];
    h.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(buf, h.disk_bytes(4096, 2048));
}

#[test]
fn large_requests() {
    // 3 MiB + 512 in one buffer each way.
    let mut h = Harness::new(false);
    let len = 3 * (1 << 20) + 512;
    let sectors = (len as u64) / SECTOR_SIZE + 8;
    h.shared
        .data
        .lock()
        .unwrap()
        .resize((sectors * SECTOR_SIZE) as usize, 0);
    h.disk.sectors = sectors;
    let data = pattern(len, 17);
    let at = 0x10_0000u64;
    h.mem.write_slice(&data, GuestAddress(at)).unwrap();
    h.header(VIRTIO_BLK_T_OUT, 8);
    assert_eq!(
        h.submit(&[(HDR, 16, 0), (at, len as u32, 0), (STATUS, 1, F_WRITE)]),
        ok(0, 1)
    );
    assert_eq!(h.disk_bytes(4096, len), data);
    h.mem
        .write_slice(&vec![0u8; len], GuestAddress(at))
        .unwrap();
    h.header(VIRTIO_BLK_T_IN, 8);
    assert_eq!(
        h.submit(&[
            (HDR, 16, 0),
            (at, len as u32, F_WRITE),
            (STATUS, 1, F_WRITE)
        ]),
        ok(0, len as u32 + 1)
    );
    let mut back = vec![0u8; len];
    h.mem.read_slice(&mut back, GuestAddress(at)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn backend_failures_are_ioerr() {
    let mut h = Harness::new(false);
    h.shared.fail.store(true, Ordering::SeqCst);
    assert_eq!(h.read_request(0, 512), ioerr());
    assert_eq!(h.write_request(0, &[1; 512]), ioerr());
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]), ioerr());
    h.shared.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.read_request(0, 512), ok(0, 513));
}

/// A disk that notes the request's status byte in guest RAM at each write and flush: the status the
/// driver waits for must be written only after the data went to the file and fdatasync returned.
struct StatusWitness {
    mem: GuestMemoryMmap,
    seen: Arc<Mutex<Vec<(&'static str, u8)>>>,
}

impl StatusWitness {
    fn note(&self, what: &'static str) {
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        self.seen.lock().unwrap().push((what, status));
    }
}

impl BlockIo for StatusWitness {
    fn size(&self) -> u64 {
        SECTORS * SECTOR_SIZE
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        self.note("write");
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.note("flush");
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn status_is_written_after_the_data_and_the_flush() {
    let mut h = Harness::new(false);
    let seen = Arc::new(Mutex::new(Vec::new()));
    h.disk.backend = Box::new(StatusWitness {
        mem: h.mem.clone(),
        seen: seen.clone(),
    });
    assert_eq!(h.write_request(0, &[7; 1024]), ok(0, 1));
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[(HDR, 16, 0), (STATUS, 1, F_WRITE)]), ok(0, 1));
    // Write-through (no VIRTIO_BLK_F_FLUSH): the write's own fdatasync also precedes its status.
    h.writeback = false;
    assert_eq!(h.write_request(2, &[8; 512]), ok(0, 1));
    // 0xaa is the untouched status byte the harness puts before each request.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("write", 0xaa),
            ("flush", 0xaa),
            ("write", 0xaa),
            ("flush", 0xaa)
        ]
    );
    assert_eq!(h.status(), 0);
}

#[test]
fn ids_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let blk = VirtioBlk::new(&VirtioBlkConfig::new(&path)).unwrap();
    assert_eq!(blk.sectors(), 2048);
    let id = blk.id();
    assert_eq!(id.len(), 20);
    assert!(id.starts_with("flint-"));
    assert_eq!(default_disk_id(&path), id, "stable");
    assert_ne!(default_disk_id(&dir.path().join("other.img")), id);
    let f = blk.device_features();
    for bit in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert!(has_feature(f, bit), "bit {bit}");
    }
    assert!(!has_feature(f, VIRTIO_BLK_F_RO) && !has_feature(f, VIRTIO_BLK_F_MQ));
    let mut cap = [0u8; 8];
    blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    drop(blk);

    let mut cfg = VirtioBlkConfig::new(&path);
    cfg.read_only = true;
    cfg.id = Some("my disk".into());
    cfg.queues = 4;
    let blk = VirtioBlk::new(&cfg).unwrap();
    let f = blk.device_features();
    assert!(has_feature(f, VIRTIO_BLK_F_RO) && has_feature(f, VIRTIO_BLK_F_MQ));
    assert!(!has_feature(f, VIRTIO_BLK_F_DISCARD) && !has_feature(f, VIRTIO_BLK_F_WRITE_ZEROES));
    assert_eq!(blk.id(), "my disk");
    assert_eq!(blk.queue_max_sizes(), vec![256; 4]);
    let mut nq = [0u8; 2];
    blk.read_config(0x22, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 4);
    // Reads past the configuration leave the buffer alone.
    let mut past = [0x77u8; 4];
    blk.read_config(0x3a, &mut past);
    assert_eq!(past, [0, 0, 0x77, 0x77]);
    blk.read_config(u64::MAX, &mut past);
    drop(blk);

    for (id, ok) in [
        ("", false),
        ("a".repeat(21).as_str(), false),
        ("tab\there", false),
        ("a".repeat(20).as_str(), true),
    ] {
        assert_eq!(validate_disk_id(id).is_ok(), ok, "{id:?}");
    }
    let mut cfg = VirtioBlkConfig::new(&path);
    cfg.queues = 0;
    assert!(matches!(
        VirtioBlk::new(&cfg),
        Err(VirtioBlkError::Queues(0))
    ));
    let tiny = dir.path().join("tiny.img");
    std::fs::write(&tiny, [0u8; 511]).unwrap();
    let err = VirtioBlk::new(&VirtioBlkConfig::new(&tiny)).err().unwrap();
    assert!(
        err.to_string().contains("smaller than one 512-byte sector"),
        "{err}"
    );
    let err = VirtioBlk::new(&VirtioBlkConfig::new(dir.path().join("missing.img")))
        .err()
        .unwrap();
    assert!(matches!(err, VirtioBlkError::Block(_)));
}

// ---- The whole device: transport, worker thread, interrupts, reset. ----

#[derive(Default)]
struct Triggers(Mutex<Vec<u16>>);

impl MsiInterruptGroup for Triggers {
    fn update(&self, _vector: u16, _msg: MsiMessage, _masked: bool) -> io::Result<()> {
        Ok(())
    }
    fn trigger(&self, vector: u16) -> io::Result<()> {
        self.0.lock().unwrap().push(vector);
        Ok(())
    }
}

struct Driver {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    ring: TestRing,
    triggers: Arc<Triggers>,
    shared: Arc<MemDisk>,
    stats: Arc<SharedStats>,
}

fn bar_w(dev: &mut VirtioPciDevice, offset: u64, width: usize, value: u64) {
    dev.bar_write(0, offset, &value.to_le_bytes()[..width]);
}

fn bar_r(dev: &mut VirtioPciDevice, offset: u64, width: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(0, offset, &mut b[..width]);
    u64::from_le_bytes(b)
}

impl Driver {
    fn new(read_only: bool) -> Self {
        Self::with_limiter(read_only, None)
    }

    fn with_limiter(read_only: bool, limiter: Option<LimiterChain>) -> Self {
        Self::with_queues(read_only, limiter, 1)
    }

    fn with_queues(read_only: bool, limiter: Option<LimiterChain>, queues: u16) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let shared = Arc::new(MemDisk {
            data: Mutex::new(pattern((SECTORS * SECTOR_SIZE) as usize, 1)),
            read_only,
            ..Default::default()
        });
        let mut cfg = VirtioBlkConfig::new("/mem/disk");
        cfg.id = Some("drv".into());
        cfg.queues = queues;
        let mut blk = VirtioBlk::with_backend(&cfg, Box::new(Shared(shared.clone()))).unwrap();
        blk.set_rate_limiter(limiter);
        let stats = blk.throttle_stats_handle();
        let mut dev = VirtioPciDevice::new(Box::new(blk), mem.clone()).unwrap();
        let triggers = Arc::new(Triggers::default());
        let msix = dev.msix().unwrap();
        msix.set_group(triggers.clone());
        // Bus master and MSI-X on, every vector unmasked (the MSI-X capability is the last one).
        dev.config_write(0x04, &[0x06, 0x00]);
        let mut p = {
            let mut b = [0u8];
            dev.config_read(0x34, &mut b);
            u16::from(b[0])
        };
        loop {
            let mut b = [0u8; 2];
            dev.config_read(p, &mut b);
            if b[0] == 0x11 {
                break;
            }
            p = u16::from(b[1]);
        }
        dev.config_write(p + 3, &[0x80]);
        for v in 0..2u64 {
            msix.write_table(v * 16 + 12, &[0; 4]);
        }
        let ring = TestRing::new(&mem, RING, 16);
        Self {
            dev,
            mem,
            ring,
            triggers,
            shared,
            stats,
        }
    }

    /// The driver's initialisation sequence; returns the status read back at the end.
    fn init(&mut self, features_low: u64, queue_size: u16) -> u8 {
        let d = &mut self.dev;
        bar_w(d, offsets::DEVICE_STATUS, 1, 0);
        bar_w(d, offsets::DEVICE_STATUS, 1, 1);
        bar_w(d, offsets::DEVICE_STATUS, 1, 3);
        bar_w(d, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        bar_w(d, offsets::DRIVER_FEATURE, 4, features_low);
        bar_w(d, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        bar_w(d, offsets::DRIVER_FEATURE, 4, 1);
        bar_w(d, offsets::DEVICE_STATUS, 1, 0xb);
        bar_w(d, offsets::CONFIG_MSIX_VECTOR, 2, 0);
        bar_w(d, offsets::QUEUE_SELECT, 2, 0);
        bar_w(d, offsets::QUEUE_SIZE, 2, u64::from(queue_size));
        self.ring = TestRing::new(&self.mem, RING, queue_size);
        let d = &mut self.dev;
        bar_w(d, offsets::QUEUE_DESC, 8, self.ring.desc);
        bar_w(d, offsets::QUEUE_DRIVER, 8, self.ring.avail);
        bar_w(d, offsets::QUEUE_DEVICE, 8, self.ring.used);
        bar_w(d, offsets::QUEUE_MSIX_VECTOR, 2, 1);
        bar_w(d, offsets::QUEUE_ENABLE, 2, 1);
        bar_w(d, offsets::DEVICE_STATUS, 1, 0xf);
        bar_r(d, offsets::DEVICE_STATUS, 1) as u8
    }

    fn header(&self, at: u64, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn wait_used(&self, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ring.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "used idx stuck at {}",
                self.ring.used_idx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_triggers(&self, n: usize) -> Vec<u16> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.triggers.0.lock().unwrap().clone();
            if t.len() >= n {
                return t;
            }
            assert!(Instant::now() < deadline, "interrupts: {t:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn device_end_to_end() {
    let mut d = Driver::new(false);
    // Capacity through the device configuration.
    assert_eq!(bar_r(&mut d.dev, DEVICE_CONFIG_OFFSET, 8), SECTORS);
    assert_eq!(bar_r(&mut d.dev, DEVICE_CONFIG_OFFSET + 0x14, 4), 512);
    // Without EVENT_IDX, then with it.
    for (round, features) in [
        (0u16, 1u64 << VIRTIO_BLK_F_FLUSH),
        (1, 1 << VIRTIO_BLK_F_FLUSH | 1 << 29),
    ] {
        assert_eq!(d.init(features, 16), 0xf, "round {round}");
        d.triggers.0.lock().unwrap().clear();
        // Write a pattern to sectors 4..8, flush, read it back.
        let data = pattern(2048, 42 + round as u8);
        d.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        d.header(HDR, VIRTIO_BLK_T_OUT, 4);
        let head = d
            .ring
            .chain(0, &[(HDR, 16, 0), (DATA, 2048, 0), (STATUS, 1, F_WRITE)]);
        d.ring.publish(head);
        d.header(HDR + 0x100, VIRTIO_BLK_T_FLUSH, 0);
        let head = d
            .ring
            .chain(3, &[(HDR + 0x100, 16, 0), (STATUS + 1, 1, F_WRITE)]);
        d.ring.publish(head);
        d.header(HDR + 0x200, VIRTIO_BLK_T_IN, 4);
        let head = d.ring.chain(
            5,
            &[
                (HDR + 0x200, 16, 0),
                (DATA + 0x10000, 2048, F_WRITE),
                (STATUS + 2, 1, F_WRITE),
            ],
        );
        d.ring.publish(head);
        d.ring.set_used_event(2);
        bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
        d.wait_used(3);
        assert_eq!(d.ring.used_entry(0), (0, 1));
        assert_eq!(d.ring.used_entry(1), (3, 1));
        assert_eq!(d.ring.used_entry(2), (5, 2049));
        let mut st = [0xffu8; 3];
        d.mem.read_slice(&mut st, GuestAddress(STATUS)).unwrap();
        assert_eq!(st, [0, 0, 0]);
        let mut back = vec![0u8; 2048];
        d.mem
            .read_slice(&mut back, GuestAddress(DATA + 0x10000))
            .unwrap();
        assert_eq!(back, data);
        assert_eq!(d.shared.data.lock().unwrap()[2048..4096], data[..]);
        assert!(d.shared.flushes.load(Ordering::SeqCst) >= 1);
        assert_eq!(d.wait_triggers(1)[0], 1, "the queue's vector");
        assert_eq!(bar_r(&mut d.dev, ISR_OFFSET, 1) & 1, 1);
    }
}

#[test]
fn device_survives_bad_descriptors_and_resets() {
    let mut d = Driver::new(false);
    assert_eq!(d.init(1 << VIRTIO_BLK_F_FLUSH, 8), 0xf);
    // A read into memory that does not exist, then a loop, then a good read.
    d.header(HDR, VIRTIO_BLK_T_IN, 0);
    d.mem.write_slice(&[0xaa; 3], GuestAddress(STATUS)).unwrap();
    let head = d.ring.chain(
        0,
        &[
            (HDR, 16, 0),
            (RAM + 0x10000, 512, F_WRITE),
            (STATUS, 1, F_WRITE),
        ],
    );
    d.ring.publish(head);
    d.ring.write_desc(3, HDR, 16, F_NEXT, 3);
    d.ring.publish(3);
    let head = d.ring.chain(
        4,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS + 2, 1, F_WRITE)],
    );
    d.ring.publish(head);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    d.wait_used(3);
    let mut st = [0u8; 3];
    d.mem.read_slice(&mut st, GuestAddress(STATUS)).unwrap();
    assert_eq!(st, [VIRTIO_BLK_S_IOERR as u8, 0xaa, 0]);
    assert_eq!(
        d.ring.used_entry(1),
        (3, 0),
        "the loop is returned unwritten"
    );
    // The driver moves the available index more than a queue ahead: the device needs a reset.
    d.mem
        .write_obj(100u16, GuestAddress(d.ring.avail + 2))
        .unwrap();
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bar_r(&mut d.dev, offsets::DEVICE_STATUS, 1) & 0x40 == 0 {
        assert!(Instant::now() < deadline, "no DEVICE_NEEDS_RESET");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Reset and start again: everything works.
    assert_eq!(d.init(1 << VIRTIO_BLK_F_FLUSH, 8), 0xf);
    d.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    let head = d.ring.chain(
        0,
        &[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)],
    );
    d.ring.publish(head);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    d.wait_used(1);
    let mut id = [0u8; 4];
    d.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"drv\0");
}

#[test]
fn requests_wait_for_bus_master() {
    let mut d = Driver::new(false);
    assert_eq!(d.init(0, 8), 0xf);
    d.dev.config_write(0x04, &[0x02, 0x00]);
    d.header(HDR, VIRTIO_BLK_T_IN, 0);
    let head = d.ring.chain(
        0,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
    );
    d.ring.publish(head);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.ring.used_idx(), 0, "no DMA without bus master");
    d.dev.config_write(0x04, &[0x06, 0x00]);
    d.wait_used(1);
}

#[test]
fn queue_size_rejection_through_the_bar() {
    let mut d = Driver::new(false);
    bar_w(&mut d.dev, offsets::DEVICE_STATUS, 1, 3);
    bar_w(&mut d.dev, offsets::QUEUE_SELECT, 2, 0);
    assert_eq!(bar_r(&mut d.dev, offsets::QUEUE_SIZE, 2), 256);
    bar_w(&mut d.dev, offsets::QUEUE_SIZE, 2, 100);
    assert_eq!(bar_r(&mut d.dev, offsets::QUEUE_SIZE, 2), 256);
    // Legacy drivers (no VERSION_1) are refused.
    bar_w(&mut d.dev, offsets::DRIVER_FEATURE_SELECT, 4, 1);
    bar_w(&mut d.dev, offsets::DRIVER_FEATURE, 4, 0);
    bar_w(&mut d.dev, offsets::DEVICE_STATUS, 1, 0xb);
    assert_eq!(bar_r(&mut d.dev, offsets::DEVICE_STATUS, 1), 3);
    // Dropping an active device stops its worker.
    assert_eq!(d.init(0, 8), 0xf);
    drop(d);
}

// ---- Rate limits: requests wait in the ring for the limiter's timer. ----

/// Which requests are limited and what they cost.
#[test]
fn request_costs() {
    let mut h = Harness::new(false);
    let cost_of = |h: &mut Harness, request_type: u32, sector: u64, descs: &[(u64, u32, u16)]| {
        h.header(request_type, sector);
        let head = h.ring.chain(0, descs);
        h.ring.publish(head);
        let chain = h.queue.pop_descriptor_chain(&h.mem).unwrap();
        let mut seen = None;
        let done = process_chain_limited(&h.mem, &h.disk, true, chain, &mut h.scratch, |c| {
            seen = Some(c);
            true
        });
        assert!(done.is_some());
        seen
    };
    let read = [(HDR, 16, 0), (DATA, 2048, F_WRITE), (STATUS, 1, F_WRITE)];
    let write = [(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, F_WRITE)];
    let bare = [(HDR, 16, 0), (STATUS, 1, F_WRITE)];
    let c = |ops, bytes| Some(Cost { ops, bytes });
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_IN, 0, &read), c(1, 2048));
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_OUT, 8, &write), c(1, 1024));
    // Requests that will fail cost their operation only.
    assert_eq!(
        cost_of(&mut h, VIRTIO_BLK_T_IN, SECTORS - 1, &read),
        c(1, 0)
    );
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_IN, u64::MAX, &read), c(1, 0));
    // Hole punching moves no data.
    let seg = [(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, F_WRITE)];
    h.mem.write_slice(&[0u8; 16], GuestAddress(DATA)).unwrap();
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_DISCARD, 0, &seg), c(1, 0));
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg), c(1, 0));
    // Not limited.
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_FLUSH, 0, &bare), None);
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_GET_ID, 0, &read), None);
    assert_eq!(cost_of(&mut h, 99, 0, &bare), None);
    assert_eq!(
        cost_of(
            &mut h,
            VIRTIO_BLK_T_IN,
            0,
            &[(HDR, 8, 0), (STATUS, 1, F_WRITE)]
        ),
        None
    );
    // A read-only disk: writes cost no bytes.
    let mut h = Harness::new(true);
    assert_eq!(cost_of(&mut h, VIRTIO_BLK_T_OUT, 8, &write), c(1, 0));

    // A refused request is left untouched: no status, no data.
    let mut h = Harness::new(false);
    h.header(VIRTIO_BLK_T_IN, 0);
    h.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    let head = h.ring.chain(
        0,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
    );
    h.ring.publish(head);
    let chain = h.queue.pop_descriptor_chain(&h.mem).unwrap();
    let done = process_chain_limited(&h.mem, &h.disk, true, chain, &mut h.scratch, |_| false);
    assert_eq!(done, None);
    assert_eq!(h.status(), 0xaa);
    let mut data = [0u8; 512];
    h.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, [0x5a; 512]);
}

/// One descriptor: address, length, flags.
type Desc = (u64, u32, u16);

/// A limiter on `clock`: `ops` operations per second (bucket of 1), `bytes` per second (bucket of
/// `bytes_capacity`), either optional.
fn manual_limiter(
    clock: &ManualClock,
    ops: Option<f64>,
    bytes: Option<(f64, u64)>,
) -> LimiterChain {
    let config = RateLimiterConfig {
        ops: ops.map(|rate| BucketConfig::fixed(rate, 1)),
        bytes: bytes.map(|(rate, capacity)| BucketConfig::fixed(rate, capacity)),
    };
    LimiterChain::new(
        RateLimiter::with_clock(&config, clock.shared()).unwrap(),
        None,
    )
}

fn status_at(d: &Driver, at: u64) -> u8 {
    d.mem.read_obj(GuestAddress(at)).unwrap()
}

/// The real worker and timerfd, time from a manual clock: at 10 IOPS with a bucket of one, the
/// first read goes at once, the second stays in the ring (status untouched) however long real time
/// runs, and goes as soon as the clock has moved 100 ms; the worker sleeps in between (a handful of
/// timer wake-ups, no spinning).
#[test]
fn held_requests_stay_in_the_ring_until_the_limiter_allows_them() {
    let clock = ManualClock::new();
    let mut d = Driver::with_limiter(false, Some(manual_limiter(&clock, Some(10.0), None)));
    assert_eq!(d.init(1 << VIRTIO_BLK_F_FLUSH, 16), 0xf);
    for i in 0..3u64 {
        d.header(HDR + 0x100 * i, VIRTIO_BLK_T_IN, 2 * i);
        d.mem.write_obj(0xeeu8, GuestAddress(STATUS + i)).unwrap();
        let head = d.ring.chain(
            3 * i as u16,
            &[
                (HDR + 0x100 * i, 16, 0),
                (DATA + 0x1000 * i, 1024, F_WRITE),
                (STATUS + i, 1, F_WRITE),
            ],
        );
        d.ring.publish(head);
    }
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    d.wait_used(1);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        d.ring.used_idx(),
        1,
        "the clock has not moved: nothing else may go"
    );
    assert_eq!(
        status_at(&d, STATUS + 1),
        0xee,
        "a held request is untouched"
    );
    // The worker woke when its timer said (every 100 ms of real time, re-armed each time the
    // manual clock had not moved), not in a loop.
    let blk_stats = d.stats.get();
    assert!(
        blk_stats.held >= 2 && blk_stats.wakeups >= 2,
        "{blk_stats:?}"
    );
    assert!(blk_stats.wakeups <= 5, "the worker spins: {blk_stats:?}");
    // A notification for a held queue does not bypass the limiter.
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(d.ring.used_idx(), 1);
    clock.advance(Duration::from_millis(100));
    d.wait_used(2);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(d.ring.used_idx(), 2, "one token, one request");
    clock.advance(Duration::from_millis(100));
    d.wait_used(3);
    for i in 0..3u64 {
        assert_eq!(status_at(&d, STATUS + i), 0);
        let mut back = vec![0u8; 1024];
        d.mem
            .read_slice(&mut back, GuestAddress(DATA + 0x1000 * i))
            .unwrap();
        assert_eq!(
            back,
            d.shared.data.lock().unwrap()[(1024 * i) as usize..][..1024]
        );
    }
    assert_eq!(d.stats.get().admitted, 3);
}

/// Bytes are charged; FLUSH and GET_ID are not limited (they pass an empty bucket); the limiter and
/// its buckets outlive a device reset.
#[test]
fn bytes_limit_and_unlimited_requests() {
    let clock = ManualClock::new();
    let mut d = Driver::with_limiter(
        false,
        Some(manual_limiter(&clock, None, Some((4096.0, 4096)))),
    );
    assert_eq!(d.init(1 << VIRTIO_BLK_F_FLUSH, 16), 0xf);
    let requests: [(u32, &[Desc]); 4] = [
        (
            VIRTIO_BLK_T_IN,
            &[(HDR, 16, 0), (DATA, 4096, F_WRITE), (STATUS, 1, F_WRITE)],
        ),
        (
            VIRTIO_BLK_T_FLUSH,
            &[(HDR + 0x100, 16, 0), (STATUS + 1, 1, F_WRITE)],
        ),
        (
            VIRTIO_BLK_T_GET_ID,
            &[
                (HDR + 0x200, 16, 0),
                (DATA + 0x2000, 20, F_WRITE),
                (STATUS + 2, 1, F_WRITE),
            ],
        ),
        (
            VIRTIO_BLK_T_IN,
            &[
                (HDR + 0x300, 16, 0),
                (DATA + 0x3000, 512, F_WRITE),
                (STATUS + 3, 1, F_WRITE),
            ],
        ),
    ];
    let mut first = 0u16;
    for (i, (request_type, descs)) in requests.iter().enumerate() {
        d.header(HDR + 0x100 * i as u64, *request_type, 0);
        d.mem
            .write_obj(0xeeu8, GuestAddress(STATUS + i as u64))
            .unwrap();
        let head = d.ring.chain(first, descs);
        first += descs.len() as u16;
        d.ring.publish(head);
    }
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    d.wait_used(3);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.ring.used_idx(), 3, "the 4 KiB read emptied the bucket");
    assert_eq!(status_at(&d, STATUS + 3), 0xee);
    // 512 bytes at 4096 B/s: 125 ms.
    clock.advance(Duration::from_millis(124));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.ring.used_idx(), 3);
    clock.advance(Duration::from_millis(1));
    d.wait_used(4);
    // A reset gives the limiter back to the device and the next activation to the new worker:
    // its bucket is as the last request left it (empty), not refilled.
    assert_eq!(d.init(1 << VIRTIO_BLK_F_FLUSH, 16), 0xf);
    d.header(HDR, VIRTIO_BLK_T_IN, 0);
    let head = d.ring.chain(
        0,
        &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
    );
    d.ring.publish(head);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.ring.used_idx(), 0, "the bucket survived the reset");
    clock.advance(Duration::from_millis(125));
    d.wait_used(1);
}

/// Two queues behind one limiter take turns: at 10 IOPS (a bucket of one) with three reads waiting
/// on each queue, the full bucket admits the first read of the first queue served, whose second read
/// is then the first one refused; after that every 100 ms of clock admits one read, starting with the
/// refused one and alternating between the queues while both have work, so neither waits for the
/// other to drain.
#[test]
fn held_queues_take_turns() {
    let clock = ManualClock::new();
    let mut d = Driver::with_queues(false, Some(manual_limiter(&clock, Some(10.0), None)), 2);
    // The driver's initialisation with both queues (queue 1's ring at 0x3000).
    let mut second = TestRing::new(&d.mem, 0x3000, 16);
    {
        let dev = &mut d.dev;
        for status in [0u64, 1, 3] {
            bar_w(dev, offsets::DEVICE_STATUS, 1, status);
        }
        bar_w(dev, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        bar_w(
            dev,
            offsets::DRIVER_FEATURE,
            4,
            1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_MQ,
        );
        bar_w(dev, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        bar_w(dev, offsets::DRIVER_FEATURE, 4, 1);
        bar_w(dev, offsets::DEVICE_STATUS, 1, 0xb);
        for (q, ring) in [(0u64, &d.ring), (1, &second)] {
            bar_w(dev, offsets::QUEUE_SELECT, 2, q);
            bar_w(dev, offsets::QUEUE_SIZE, 2, 16);
            bar_w(dev, offsets::QUEUE_DESC, 8, ring.desc);
            bar_w(dev, offsets::QUEUE_DRIVER, 8, ring.avail);
            bar_w(dev, offsets::QUEUE_DEVICE, 8, ring.used);
            bar_w(dev, offsets::QUEUE_MSIX_VECTOR, 2, 1);
            bar_w(dev, offsets::QUEUE_ENABLE, 2, 1);
        }
        bar_w(dev, offsets::DEVICE_STATUS, 1, 0xf);
        assert_eq!(bar_r(dev, offsets::DEVICE_STATUS, 1), 0xf);
    }
    for (q, ring) in [(0u64, &mut d.ring), (1, &mut second)] {
        for i in 0..3u64 {
            let n = 3 * q + i;
            let hdr = HDR + 0x100 * n;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            d.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            let head = ring.chain(
                3 * i as u16,
                &[
                    (hdr, 16, 0),
                    (DATA + 0x1000 * n, 512, F_WRITE),
                    (STATUS + n, 1, F_WRITE),
                ],
            );
            ring.publish(head);
        }
    }
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    bar_w(&mut d.dev, NOTIFY_OFFSET + 4, 2, 1);
    let used = |d: &Driver, second: &TestRing| (d.ring.used_idx(), second.used_idx());
    let wait_total = |d: &Driver, second: &TestRing, total: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (a, b) = used(d, second);
            if a + b >= total {
                return (a, b);
            }
            assert!(
                Instant::now() < deadline,
                "stuck at {a} + {b}, want {total}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut order = vec![wait_total(&d, &second, 1)];
    for total in 2..=6u16 {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            used(&d, &second),
            *order.last().unwrap(),
            "one token, one read"
        );
        clock.advance(Duration::from_millis(100));
        order.push(wait_total(&d, &second, total));
    }
    // Which queue completed at each step (from nothing completed).
    order.insert(0, (0, 0));
    let winners: Vec<usize> = order
        .windows(2)
        .map(|w| if w[1].0 > w[0].0 { 0 } else { 1 })
        .collect();
    // The first queue served gets the full bucket's read and then leads with its refused one; the
    // next four alternate; the last is whatever is left.
    assert_eq!(winners[0], winners[1], "{order:?}");
    for pair in winners[1..5].windows(2) {
        assert_ne!(pair[0], pair[1], "a queue went twice in a row: {order:?}");
    }
    assert_eq!(*order.last().unwrap(), (3, 3));
}
