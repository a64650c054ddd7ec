//! Controller tests: a small driver (like the guest's) runs the controller against an in-process
//! guest memory and a temporary disk file.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::command::{admin_opcode, io_opcode, Command, CompletionEntry};
use super::doorbell::DoorbellWake;
use super::registers::{self, cq_head_doorbell, sq_tail_doorbell};
use super::*;
use crate::block::{BlockBackend, BlockIo};

/// Rate-limited I/O (the volume's limiter, `throttle.rs`).
mod rate_limit;

const RAM: u64 = 16 << 20;
const PAGE: u64 = 4096;
const ASQ: u64 = 0x10000;
const ACQ: u64 = 0x11000;
const ADMIN_ENTRIES: u32 = 8;
const BUF: u64 = 0x20000;
const LISTS: u64 = 0x30000;
const DBS: u64 = 0x40000;
const EIS: u64 = 0x41000;
const SQ_AREA: u64 = 0x100000;
const CQ_AREA: u64 = 0x300000;
const DATA: u64 = 0x400000;
const DATA2: u64 = 0x800000;

const CC_GOOD: u32 = 1 | (6 << 16) | (4 << 20);

#[derive(Default)]
struct Calls {
    signals: Vec<u16>,
    kicks: Vec<u16>,
    shadow: Vec<bool>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Calls>>);

impl Recorder {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.0.lock().unwrap()
    }
}

impl NvmeInterrupts for Recorder {
    fn signal(&self, vector: u16) {
        self.calls().signals.push(vector);
    }
    fn notify_worker(&self, sqid: u16) {
        self.calls().kicks.push(sqid);
    }
    fn shadow_doorbells_changed(&self, enabled: bool) {
        self.calls().shadow.push(enabled);
    }
}

/// A backend that fails every operation with the OS error `errno` while it is not 0.
struct Flaky {
    inner: BlockBackend,
    errno: Arc<AtomicI32>,
}

impl Flaky {
    fn check(&self) -> io::Result<()> {
        match self.errno.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// A backend that notes, at each write and flush, how many completions the guest can already see
/// in one completion queue: the durability contract is that the data and the fdatasync come first.
struct CompletionWitness {
    inner: BlockBackend,
    mem: GuestMemoryMmap,
    /// The watched completion queue (first lap: a posted entry has phase tag 1).
    cq: u64,
    cq_entries: u64,
    log: Arc<Mutex<Vec<(&'static str, usize)>>>,
}

impl CompletionWitness {
    fn note(&self, what: &'static str) {
        let posted = (0..self.cq_entries)
            .filter(|i| {
                let dw3: u32 = self
                    .mem
                    .read_obj(GuestAddress(self.cq + i * 16 + 12))
                    .unwrap();
                dw3 & (1 << 16) != 0
            })
            .count();
        self.log.lock().unwrap().push((what, posted));
    }
}

impl BlockIo for CompletionWitness {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)?;
        self.note("write");
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()?;
        self.note("flush");
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
}

impl BlockIo for Flaky {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check()?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.write_zeroes(offset, len)
    }
}

/// The driver's view of one queue pair.
struct DriverQueue {
    sq: u64,
    cq: u64,
    sq_entries: u32,
    cq_entries: u32,
    tail: u32,
    head: u32,
    phase: bool,
}

struct Guest {
    ctrl: NvmeController,
    mem: GuestMemoryMmap,
    rec: Recorder,
    disk: tempfile::NamedTempFile,
    queues: BTreeMap<u16, DriverQueue>,
    next_cid: u16,
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn disk(len: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn rw(opcode: u8, slba: u64, blocks: u32, prp1: u64, prp2: u64) -> Command {
    let mut c = Command::new(opcode, 0);
    c.nsid = 1;
    c.prp1 = prp1;
    c.prp2 = prp2;
    c.cdw[0] = slba as u32;
    c.cdw[1] = (slba >> 32) as u32;
    c.cdw[2] = blocks - 1;
    c
}

fn admin_cmd(opcode: u8, cdw10: u32, cdw11: u32) -> Command {
    let mut c = Command::new(opcode, 0);
    c.cdw[0] = cdw10;
    c.cdw[1] = cdw11;
    c
}

fn write_list(mem: &GuestMemoryMmap, at: u64, entries: &[u64]) {
    for (i, e) in entries.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(at + 8 * i as u64)).unwrap();
    }
}

impl Guest {
    fn new() -> Self {
        Self::with_config(disk(8 << 20), |_| {})
    }

    fn with_config(disk: tempfile::NamedTempFile, edit: impl FnOnce(&mut NvmeConfig)) -> Self {
        let mut config = NvmeConfig::new(disk.path());
        edit(&mut config);
        let rec = Recorder::default();
        let m = mem();
        let ctrl = NvmeController::new(&config, m.clone(), Box::new(rec.clone())).unwrap();
        Guest {
            ctrl,
            mem: m,
            rec,
            disk,
            queues: BTreeMap::new(),
            next_cid: 1,
        }
    }

    fn with_backend(backend: Box<dyn BlockIo>, disk: tempfile::NamedTempFile) -> Self {
        let config = NvmeConfig::new(disk.path());
        let rec = Recorder::default();
        let m = mem();
        let ctrl = NvmeController::with_backend(&config, backend, m.clone(), Box::new(rec.clone()))
            .unwrap();
        Guest {
            ctrl,
            mem: m,
            rec,
            disk,
            queues: BTreeMap::new(),
            next_cid: 1,
        }
    }

    /// An enabled controller with I/O queue pair 1 (16 entries) on a 1 MiB disk behind a [`Flaky`]
    /// backend, and the errno that makes the backend fail while it is not 0.
    fn with_flaky_backend() -> (Self, Arc<AtomicI32>) {
        let d = disk(1 << 20);
        let errno = Arc::new(AtomicI32::new(0));
        let backend = Flaky {
            inner: BlockBackend::open(d.path(), false).unwrap(),
            errno: errno.clone(),
        };
        let mut g = Guest::with_backend(Box::new(backend), d);
        g.enable();
        g.create_pair(1, 16, 16);
        (g, errno)
    }

    fn read32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ctrl.read_register(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn read64(&mut self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.ctrl.read_register(offset, &mut b);
        u64::from_le_bytes(b)
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.ctrl.write_register(offset, &value.to_le_bytes());
    }

    fn write64(&mut self, offset: u64, value: u64) {
        self.ctrl.write_register(offset, &value.to_le_bytes());
    }

    fn csts(&mut self) -> u32 {
        self.read32(registers::CSTS)
    }

    fn program_admin_queues(&mut self) {
        self.write32(
            registers::AQA,
            (ADMIN_ENTRIES - 1) | ((ADMIN_ENTRIES - 1) << 16),
        );
        self.write64(registers::ASQ, ASQ);
        self.write64(registers::ACQ, ACQ);
    }

    fn enable(&mut self) {
        // A driver clears its completion queues before handing them over.
        self.mem
            .write_slice(&[0u8; ADMIN_ENTRIES as usize * 16], GuestAddress(ACQ))
            .unwrap();
        self.program_admin_queues();
        self.write32(registers::CC, CC_GOOD);
        assert_eq!(self.csts() & 3, 1, "ready, not fatal");
        self.queues.insert(
            0,
            DriverQueue {
                sq: ASQ,
                cq: ACQ,
                sq_entries: ADMIN_ENTRIES,
                cq_entries: ADMIN_ENTRIES,
                tail: 0,
                head: 0,
                phase: true,
            },
        );
    }

    /// Writes `cmd` (with a fresh command id) at the queue's tail; no doorbell.
    fn submit(&mut self, qid: u16, mut cmd: Command) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        cmd.cdw0 = (cmd.cdw0 & 0xffff) | (u32::from(cid) << 16);
        let q = self.queues.get_mut(&qid).unwrap();
        self.mem
            .write_slice(&cmd.to_bytes(), GuestAddress(q.sq + u64::from(q.tail) * 64))
            .unwrap();
        q.tail = (q.tail + 1) % q.sq_entries;
        cid
    }

    fn ring(&mut self, qid: u16) {
        let tail = self.queues[&qid].tail;
        self.write32(sq_tail_doorbell(qid), tail);
    }

    /// Collects the new completion entries of queue `qid` without telling the controller.
    fn peek(&mut self, qid: u16) -> Vec<CompletionEntry> {
        let q = self.queues.get_mut(&qid).unwrap();
        let mut out = Vec::new();
        loop {
            let mut b = [0u8; 16];
            self.mem
                .read_slice(&mut b, GuestAddress(q.cq + u64::from(q.head) * 16))
                .unwrap();
            let e = CompletionEntry::from_bytes(&b);
            if e.phase != q.phase {
                break;
            }
            out.push(e);
            q.head += 1;
            if q.head == q.cq_entries {
                q.head = 0;
                q.phase = !q.phase;
            }
        }
        out
    }

    /// Collects the new completion entries of queue `qid` and writes its head doorbell.
    fn reap(&mut self, qid: u16) -> Vec<CompletionEntry> {
        let out = self.peek(qid);
        if !out.is_empty() {
            let head = self.queues[&qid].head;
            self.write32(cq_head_doorbell(qid), head);
        }
        out
    }

    fn run(&mut self, qid: u16, cmd: Command) -> CompletionEntry {
        let cid = self.submit(qid, cmd);
        self.ring(qid);
        self.ctrl.process_submission_queue(qid);
        let done = self.reap(qid);
        assert_eq!(done.len(), 1, "one completion for command {cid}: {done:?}");
        assert_eq!(done[0].cid, cid);
        assert_eq!(done[0].sq_id, qid);
        done[0]
    }

    /// Runs `cmd` and returns every completion that arrived (events may come with it).
    fn run_all(&mut self, qid: u16, cmd: Command) -> (u16, Vec<CompletionEntry>) {
        let cid = self.submit(qid, cmd);
        self.ring(qid);
        self.ctrl.process_submission_queue(qid);
        (cid, self.reap(qid))
    }

    fn admin(&mut self, cmd: Command) -> CompletionEntry {
        self.run(0, cmd)
    }

    fn admin_status(&mut self, cmd: Command) -> Status {
        self.admin(cmd).status
    }

    fn set_queue_count(&mut self, count: u16) -> u32 {
        let n = u32::from(count - 1);
        let e = self.admin(admin_cmd(admin_opcode::SET_FEATURES, 0x07, n | (n << 16)));
        assert_eq!(e.status, Status::SUCCESS);
        e.result
    }

    fn create_cq(&mut self, qid: u16, entries: u32, flags: u32) -> Status {
        let mut c = admin_cmd(
            admin_opcode::CREATE_IO_CQ,
            u32::from(qid) | ((entries - 1) << 16),
            flags,
        );
        c.prp1 = CQ_AREA + u64::from(qid) * 0x4000;
        self.admin_status(c)
    }

    fn create_sq(&mut self, qid: u16, entries: u32, cqid: u16) -> Status {
        let mut c = admin_cmd(
            admin_opcode::CREATE_IO_SQ,
            u32::from(qid) | ((entries - 1) << 16),
            1 | (u32::from(cqid) << 16),
        );
        c.prp1 = SQ_AREA + u64::from(qid) * 0x10000;
        self.admin_status(c)
    }

    /// Creates I/O queue pair `qid` (completion queue with interrupts on vector `qid`).
    fn create_pair(&mut self, qid: u16, sq_entries: u32, cq_entries: u32) {
        self.create_pair_with(qid, sq_entries, cq_entries, 0x3 | (u32::from(qid) << 16));
    }

    fn create_pair_with(&mut self, qid: u16, sq_entries: u32, cq_entries: u32, cq_flags: u32) {
        self.mem
            .write_slice(
                &vec![0u8; cq_entries as usize * 16],
                GuestAddress(CQ_AREA + u64::from(qid) * 0x4000),
            )
            .unwrap();
        assert_eq!(self.create_cq(qid, cq_entries, cq_flags), Status::SUCCESS);
        assert_eq!(self.create_sq(qid, sq_entries, qid), Status::SUCCESS);
        self.queues.insert(
            qid,
            DriverQueue {
                sq: SQ_AREA + u64::from(qid) * 0x10000,
                cq: CQ_AREA + u64::from(qid) * 0x4000,
                sq_entries,
                cq_entries,
                tail: 0,
                head: 0,
                phase: true,
            },
        );
    }

    fn io(&mut self, cmd: Command) -> Status {
        self.run(1, cmd).status
    }

    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let all = std::fs::read(self.disk.path()).unwrap();
        all[offset as usize..offset as usize + len].to_vec()
    }

    fn get_log(&mut self, lid: u8, len: u32, retain: bool) -> (Status, Vec<u8>) {
        let dwords = len / 4 - 1;
        let mut c = admin_cmd(
            admin_opcode::GET_LOG_PAGE,
            u32::from(lid) | (u32::from(retain) << 15) | ((dwords & 0xffff) << 16),
            dwords >> 16,
        );
        c.prp1 = BUF;
        c.prp2 = BUF + PAGE;
        let status = self.admin_status(c);
        (status, self.guest_bytes(BUF, len as usize))
    }
}

// ---- registers and the enable handshake ----------------------------------------------------

#[test]
fn capabilities_and_version() {
    let mut g = Guest::new();
    let cap = g.read64(registers::CAP);
    assert_eq!(cap & 0xffff, u64::from(MAX_QUEUE_ENTRIES - 1), "MQES");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert_ne!((cap >> 24) & 0xff, 0, "TO");
    assert_eq!((cap >> 32) & 0xf, 0, "DSTRD");
    assert_eq!((cap >> 37) & 1, 1, "CSS NVM");
    assert_eq!((cap >> 48) & 0xff, 0, "MPSMIN/MPSMAX 4 KiB");
    assert_eq!(g.read32(registers::VS), 0x0001_0400);
    // The same bytes read one at a time, and from odd offsets.
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().enumerate() {
        let mut one = [0u8; 1];
        g.ctrl.read_register(i as u64, &mut one);
        *b = one[0];
    }
    assert_eq!(u64::from_le_bytes(bytes), cap);
    let mut odd = [0u8; 3];
    g.ctrl.read_register(0x9, &mut odd);
    assert_eq!(odd, [0x04, 0x01, 0x00]);
    assert_eq!(g.csts(), 0);
    assert_eq!(g.read32(0x1000), 0, "doorbells read as zero");
    assert_eq!(g.read32(0xf00), 0, "reserved space reads as zero");
}

#[test]
fn enable_handshake_and_bad_configurations() {
    let mut g = Guest::new();
    g.enable();
    // Disable: a reset.
    g.write32(registers::CC, 0);
    assert_eq!(g.csts() & 1, 0);

    let bad_cc = [
        CC_GOOD & !(0xf << 16) | (7 << 16), // IOSQES 128 bytes
        CC_GOOD & !(0xf << 20) | (5 << 20), // IOCQES 32 bytes
        CC_GOOD | (1 << 7),                 // MPS 8 KiB
        CC_GOOD | (1 << 4),                 // CSS
        CC_GOOD | (1 << 11),                // AMS weighted round robin
    ];
    for cc in bad_cc {
        g.write32(registers::CC, cc);
        assert_eq!(g.csts() & 3, 2, "CC {cc:#x}: CFS, not ready");
        g.write32(registers::CC, 0);
        assert_eq!(g.csts() & 3, 0, "reset clears CFS");
    }
    let bad_queues: [(u32, u64, u64); 4] = [
        (0, ASQ, ACQ),                  // one-entry admin queues
        (0x0007_0007, ASQ + 0x40, ACQ), // ASQ not page aligned
        (0x0007_0007, ASQ, RAM),        // ACQ outside guest RAM
        (0x0007_0007, RAM - 0x100, ACQ),
    ];
    for (aqa, asq, acq) in bad_queues {
        g.write32(registers::AQA, aqa);
        g.write64(registers::ASQ, asq);
        g.write64(registers::ACQ, acq);
        g.write32(registers::CC, CC_GOOD);
        assert_eq!(g.csts() & 3, 2, "AQA {aqa:#x} ASQ {asq:#x} ACQ {acq:#x}");
        g.write32(registers::CC, 0);
    }
    assert_eq!(g.read64(registers::ASQ), RAM - 0x100, "ASQ reads back");
    g.enable();
    // Identify works after all that.
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 1, 0);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);

    // Shutdown: SHST complete, then cleared with SHN.
    g.write32(registers::CC, CC_GOOD | (1 << 14));
    assert_eq!((g.csts() >> 2) & 3, 2, "shutdown complete");
    assert_eq!(g.csts() & 1, 1, "still ready");
    g.write32(registers::CC, CC_GOOD);
    assert_eq!((g.csts() >> 2) & 3, 0);
    g.write32(registers::CC, 0);
    assert_eq!(g.csts(), 0);
    // Interrupt mask set/clear.
    g.write32(registers::INTMS, 0x5);
    g.write32(registers::INTMC, 0x1);
    assert_eq!(g.read32(registers::INTMS), 0x4);
}

#[test]
fn enable_in_pieces_and_reset_deletes_queues() {
    let mut g = Guest::new();
    g.program_admin_queues();
    // CC written a byte at a time: the enable bit lands with the first byte, the entry sizes later,
    // so the first enable fails; then a full write after a reset succeeds.
    for (i, b) in CC_GOOD.to_le_bytes().iter().enumerate() {
        g.ctrl.write_register(registers::CC + i as u64, &[*b]);
    }
    assert_eq!(g.csts() & 3, 2);
    g.write32(registers::CC, 0);
    g.enable();
    g.create_pair(1, 16, 16);
    g.write32(registers::CC, 0);
    g.queues.clear();
    g.enable();
    // Queue 1 is gone: creating it again works, and its doorbell before that is an invalid one.
    g.write32(sq_tail_doorbell(1), 1);
    g.create_pair(1, 16, 16);
}

#[test]
fn register_accesses_of_any_offset_and_width_never_panic() {
    let mut g = Guest::new();
    g.enable();
    let mut seed = 0x1234_5678u32;
    for offset in (0..0x1100u64).chain([0x1ff_fffc, u64::MAX - 3, u64::MAX]) {
        for width in [0usize, 1, 2, 3, 4, 8, 16] {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let data: Vec<u8> = (0..width).map(|i| (seed >> (i % 4 * 8)) as u8).collect();
            if offset.saturating_add(width as u64) > registers::CC && offset < 0x18 {
                continue; // keep the controller enabled
            }
            g.ctrl.write_register(offset, &data);
            let mut back = vec![0u8; width];
            g.ctrl.read_register(offset, &mut back);
        }
    }
    g.ctrl.process_all();
    g.write32(registers::CC, 0);
    g.queues.clear();
    g.enable();
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 1, 0);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
}

// ---- admin commands --------------------------------------------------------------------------

#[test]
fn identify_reports_the_ebs_identity() {
    let mut g = Guest::with_config(disk(8 << 20), |c| {
        c.volume_id = Some("vol-0123456789abcdef0".into());
        c.device_name = Some("sdf".into());
    });
    g.enable();
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 1, 0);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    let id = g.guest_bytes(BUF, 4096);
    assert_eq!(&id[0..2], &[0x0f, 0x1d], "VID");
    assert_eq!(&id[2..4], &[0x0f, 0x1d], "SSVID");
    assert_eq!(&id[4..24], b"vol0123456789abcdef0");
    assert_eq!(&id[24..64], b"Amazon Elastic Block Store              ");
    assert_eq!(&id[64..72], b"1.0     ");
    assert_eq!(id[77], DEFAULT_MDTS);
    assert_eq!(&id[3072..3104], b"sdf                             ");
    assert_eq!(u16::from_le_bytes([id[256], id[257]]) & (1 << 8), 1 << 8);

    // Identify Namespace: 8 MiB of 512-byte blocks.
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 0, 0);
    c.nsid = 1;
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    let ns = g.guest_bytes(BUF, 4096);
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 16384);
    assert_eq!(ns[130], 9, "LBADS");
    assert_eq!(ns[99], 0, "not write protected");

    // Active namespace list.
    g.mem.write_slice(&[0xff; 8], GuestAddress(BUF)).unwrap();
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 2, 0);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    assert_eq!(g.guest_bytes(BUF, 8), [1, 0, 0, 0, 0, 0, 0, 0]);
    c.nsid = 1;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    assert!(g.guest_bytes(BUF, 4096).iter().all(|&b| b == 0));
    c.nsid = 0xffff_ffff;
    assert_eq!(g.admin_status(c), Status::INVALID_NAMESPACE);

    // Namespace identification descriptors: an empty list.
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 3, 0);
    c.nsid = 1;
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);

    // The NVM command set specific structures: all zeroes; another command set is refused.
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 6, 0);
    c.prp1 = BUF;
    g.mem.write_slice(&[0xff; 8], GuestAddress(BUF)).unwrap();
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    assert!(g.guest_bytes(BUF, 4096).iter().all(|&b| b == 0));
    c.cdw[1] = 2 << 24;
    assert_eq!(g.admin_status(c), Status::INVALID_FIELD);
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 5, 0);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::INVALID_NAMESPACE);
    c.nsid = 1;
    assert_eq!(g.admin_status(c), Status::SUCCESS);

    // Errors.
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 0, 0);
    c.nsid = 2;
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::INVALID_NAMESPACE);
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 0x10, 0);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::INVALID_FIELD);
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 1, 0);
    c.prp1 = RAM;
    assert_eq!(g.admin_status(c), Status::DATA_TRANSFER_ERROR);

    // Identify Controller into two half pages (PRP1 at an offset, PRP2 the next page).
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 1, 0);
    c.prp1 = DATA + 0x800;
    c.prp2 = DATA2;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    assert_eq!(g.guest_bytes(DATA + 0x800 + 4, 20), b"vol0123456789abcdef0");
    assert_eq!(g.guest_bytes(DATA2 + 3072 - 0x800, 3), b"sdf");
}

#[test]
fn admin_queue_wraps_over_several_laps() {
    let mut g = Guest::new();
    g.enable();
    for _ in 0..30 {
        let e = g.admin(admin_cmd(admin_opcode::GET_FEATURES, 0x07, 0));
        assert_eq!(e.status, Status::SUCCESS);
        assert_eq!(e.result, 0x000f_000f, "16 queue pairs");
    }
    // A full queue's worth (7 of 8 entries) at once.
    let cids: Vec<u16> = (0..7)
        .map(|_| g.submit(0, Command::new(admin_opcode::KEEP_ALIVE, 0)))
        .collect();
    g.ring(0);
    g.ctrl.process_admin_queue();
    let done = g.reap(0);
    assert_eq!(done.iter().map(|e| e.cid).collect::<Vec<_>>(), cids);
    assert!(done.iter().all(|e| e.status == Status::SUCCESS));
    assert_eq!(done.last().unwrap().sq_head, g.queues[&0].tail as u16);
    assert!(g.rec.calls().signals.iter().all(|&v| v == 0));
    assert!(!g.rec.calls().signals.is_empty());
}

#[test]
fn queue_creation_and_deletion_errors() {
    let mut g = Guest::new();
    g.enable();
    assert_eq!(g.set_queue_count(4), 0x0003_0003);
    let cq = |qid: u16, entries: u32, flags: u32, prp1: u64| {
        let mut c = admin_cmd(
            admin_opcode::CREATE_IO_CQ,
            u32::from(qid) | ((entries - 1) << 16),
            flags,
        );
        c.prp1 = prp1;
        c
    };
    let base = CQ_AREA + 0x4000;
    assert_eq!(g.admin_status(cq(0, 16, 3, base)), Status::INVALID_QUEUE_ID);
    assert_eq!(
        g.admin_status(cq(5, 16, 3, base)),
        Status::INVALID_QUEUE_ID,
        "beyond the 4 allocated"
    );
    assert_eq!(
        g.admin_status(cq(1, 1, 3, base)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        g.admin_status(cq(1, MAX_QUEUE_ENTRIES + 1, 3, base)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        g.admin_status(cq(1, 16, 3, base + 0x100)),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        g.admin_status(cq(1, 16, 3 | (17 << 16), base)),
        Status::INVALID_INTERRUPT_VECTOR
    );
    assert_eq!(g.admin_status(cq(1, 16, 2, base)), Status::INVALID_FIELD);
    assert_eq!(g.admin_status(cq(1, 16, 3, RAM)), Status::INVALID_FIELD);
    assert_eq!(
        g.admin_status(cq(1, 16, 1 | (17 << 16), base)),
        Status::SUCCESS,
        "the vector is ignored for a polled queue"
    );
    assert_eq!(
        g.admin_status(cq(1, 16, 3, base)),
        Status::INVALID_QUEUE_ID,
        "already exists"
    );

    let sq = |qid: u16, entries: u32, flags: u32, prp1: u64| {
        let mut c = admin_cmd(
            admin_opcode::CREATE_IO_SQ,
            u32::from(qid) | ((entries - 1) << 16),
            flags,
        );
        c.prp1 = prp1;
        c
    };
    let base = SQ_AREA + 0x10000;
    let on_cq1 = 1 | (1 << 16);
    assert_eq!(
        g.admin_status(sq(0, 16, on_cq1, base)),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(
        g.admin_status(sq(5, 16, on_cq1, base)),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(g.admin_status(sq(1, 16, 1, base)), Status::INVALID_CQ);
    assert_eq!(
        g.admin_status(sq(1, 16, 1 | (2 << 16), base)),
        Status::INVALID_CQ
    );
    assert_eq!(
        g.admin_status(sq(1, 16, 1 | (0xffff << 16), base)),
        Status::INVALID_CQ
    );
    assert_eq!(
        g.admin_status(sq(1, 1, on_cq1, base)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        g.admin_status(sq(1, 2000, on_cq1, base)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        g.admin_status(sq(1, 16, on_cq1, base + 8)),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        g.admin_status(sq(1, 16, 1 << 16, base)),
        Status::INVALID_FIELD
    );
    assert_eq!(
        g.admin_status(sq(1, 128, on_cq1, RAM - 0x1000)),
        Status::INVALID_FIELD
    );
    assert_eq!(g.admin_status(sq(1, 16, on_cq1, base)), Status::SUCCESS);
    assert_eq!(
        g.admin_status(sq(1, 16, on_cq1, base)),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(
        g.admin_status(sq(2, 16, on_cq1, base + 0x10000)),
        Status::SUCCESS,
        "two submission queues may share a completion queue"
    );

    // Number of Queues cannot change once queues exist.
    assert_eq!(
        g.admin_status(admin_cmd(admin_opcode::SET_FEATURES, 0x07, 0)),
        Status::COMMAND_SEQUENCE_ERROR
    );

    let del_sq = |qid: u32| admin_cmd(admin_opcode::DELETE_IO_SQ, qid, 0);
    let del_cq = |qid: u32| admin_cmd(admin_opcode::DELETE_IO_CQ, qid, 0);
    assert_eq!(g.admin_status(del_cq(1)), Status::INVALID_QUEUE_DELETION);
    assert_eq!(g.admin_status(del_cq(0)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_cq(3)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_cq(0xffff)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_sq(0)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_sq(3)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_sq(0xffff)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_sq(1)), Status::SUCCESS);
    assert_eq!(g.admin_status(del_sq(1)), Status::INVALID_QUEUE_ID);
    assert_eq!(g.admin_status(del_cq(1)), Status::INVALID_QUEUE_DELETION);
    assert_eq!(g.admin_status(del_sq(2)), Status::SUCCESS);
    assert_eq!(g.admin_status(del_cq(1)), Status::SUCCESS);
    assert_eq!(g.admin_status(del_cq(1)), Status::INVALID_QUEUE_ID);

    // Every failure left an Error Information entry, newest first.
    let (status, log) = g.get_log(0x01, 64 * 2, false);
    assert_eq!(status, Status::SUCCESS);
    let count = u64::from_le_bytes(log[0..8].try_into().unwrap());
    assert_eq!(count, 31, "9 + 11 creation, 1 sequence, 10 deletion errors");
    assert_eq!(
        u16::from_le_bytes([log[12], log[13]]) >> 1,
        Status::INVALID_QUEUE_ID.raw()
    );
    assert_eq!(u64::from_le_bytes(log[64..72].try_into().unwrap()), 30);
}

#[test]
fn features_and_log_pages() {
    let mut g = Guest::new();
    g.enable();
    let get = |fid: u32, sel: u32, cdw11: u32| {
        admin_cmd(admin_opcode::GET_FEATURES, fid | (sel << 8), cdw11)
    };
    let set = |fid: u32, cdw11: u32| admin_cmd(admin_opcode::SET_FEATURES, fid, cdw11);
    assert_eq!(g.admin(get(0x06, 0, 0)).result, 1, "write cache on");
    assert_eq!(g.admin_status(set(0x06, 0)), Status::SUCCESS);
    assert_eq!(g.admin(get(0x06, 0, 0)).result, 0);
    assert_eq!(g.admin(get(0x06, 1, 0)).result, 1, "default");
    assert_eq!(g.admin(get(0x06, 3, 0)).result, 0x4, "changeable");
    assert_eq!(g.admin_status(get(0x06, 4, 0)), Status::INVALID_FIELD);
    assert_eq!(
        g.admin_status(set(0x06 | (1 << 31), 1)),
        Status::FEATURE_NOT_SAVEABLE
    );
    // Temperature threshold: composite sensor only.
    assert_eq!(g.admin(get(0x04, 0, 0)).result, 343);
    assert_eq!(g.admin_status(set(0x04, 350)), Status::SUCCESS);
    assert_eq!(g.admin(get(0x04, 0, 0)).result, 350);
    assert_eq!(g.admin_status(set(0x04, 200 | (1 << 20))), Status::SUCCESS);
    assert_eq!(g.admin(get(0x04, 0, 1 << 20)).result, 200);
    assert_eq!(
        g.admin_status(set(0x04, 300 | (1 << 16))),
        Status::INVALID_FIELD
    );
    assert_eq!(
        g.admin_status(set(0x04, 300 | (2 << 20))),
        Status::INVALID_FIELD
    );
    for (fid, value) in [
        (0x01, 0x0302_0103),
        (0x08, 0x0a05),
        (0x0b, 0x1ff),
        (0x0a, 1),
    ] {
        assert_eq!(g.admin_status(set(fid, value)), Status::SUCCESS, "{fid:#x}");
        assert_eq!(g.admin(get(fid, 0, 0)).result, value, "{fid:#x}");
    }
    assert_eq!(g.admin_status(set(0x02, 0)), Status::SUCCESS);
    assert_eq!(g.admin_status(set(0x02, 1)), Status::INVALID_FIELD);
    assert_eq!(g.admin_status(set(0x09, 3 | (1 << 16))), Status::SUCCESS);
    assert_eq!(g.admin(get(0x09, 0, 3)).result, 3 | (1 << 16));
    assert_eq!(g.admin_status(set(0x09, 17)), Status::INVALID_FIELD);
    assert_eq!(g.admin_status(set(0x80, 0)), Status::INVALID_FIELD);
    assert_eq!(g.admin_status(get(0x80, 0, 0)), Status::INVALID_FIELD);
    assert_eq!(
        g.admin_status(set(0x07, 0xffff)),
        Status::INVALID_FIELD,
        "0xFFFF queues"
    );
    assert_eq!(g.set_queue_count(100), 0x000f_000f, "capped at 16");
    assert_eq!(
        g.admin_status(Command::new(admin_opcode::KEEP_ALIVE, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        g.admin_status(Command::new(0x80, 0)),
        Status::INVALID_OPCODE
    );
    let mut fused = Command::new(admin_opcode::KEEP_ALIVE, 0);
    fused.cdw0 |= 1 << 8;
    assert_eq!(g.admin_status(fused), Status::INVALID_FIELD);

    // Log pages.
    g.create_pair(1, 16, 16);
    g.mem
        .write_slice(&pattern(4096, 1), GuestAddress(DATA))
        .unwrap();
    assert_eq!(g.io(rw(io_opcode::WRITE, 0, 8, DATA, 0)), Status::SUCCESS);
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA, 0)), Status::SUCCESS);
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA, 0)), Status::SUCCESS);
    let (status, smart) = g.get_log(0x02, 512, false);
    assert_eq!(status, Status::SUCCESS);
    assert_eq!(u16::from_le_bytes([smart[1], smart[2]]), 310);
    assert_eq!(smart[3], 100);
    let at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    assert_eq!(at(&smart, 32), 1, "data units read (rounded up)");
    assert_eq!(at(&smart, 48), 1, "data units written");
    assert_eq!(at(&smart, 64), 2, "read commands");
    assert_eq!(at(&smart, 80), 1, "write commands");
    assert_eq!(smart[0], 0, "no critical warning");
    let (status, fw) = g.get_log(0x03, 512, false);
    assert_eq!(status, Status::SUCCESS);
    assert_eq!(fw[0], 1);
    assert_eq!(&fw[8..16], b"1.0     ");
    assert_eq!(g.get_log(0x04, 512, false).0, Status::INVALID_LOG_PAGE);
    // An offset past the page, an unaligned offset, and a length over MDTS.
    let mut c = admin_cmd(admin_opcode::GET_LOG_PAGE, 0x02 | (127 << 16), 0);
    c.prp1 = BUF;
    c.cdw[2] = 516;
    assert_eq!(g.admin_status(c), Status::INVALID_FIELD);
    c.cdw[2] = 2;
    assert_eq!(g.admin_status(c), Status::INVALID_FIELD);
    c.cdw[2] = 256;
    g.mem.write_slice(&[0xee; 512], GuestAddress(BUF)).unwrap();
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    let tail = g.guest_bytes(BUF, 512);
    assert!(tail[256..].iter().all(|&b| b == 0), "zero past the page");
    let mut c = admin_cmd(admin_opcode::GET_LOG_PAGE, 0x02, 0x10);
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::INVALID_FIELD);
}

#[test]
fn temperature_event_when_a_threshold_is_crossed() {
    let mut g = Guest::new();
    g.enable();
    assert_eq!(
        g.admin_status(admin_cmd(admin_opcode::SET_FEATURES, 0x0b, 0x2)),
        Status::SUCCESS
    );
    let aer = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    assert!(g.reap(0).is_empty(), "held");
    // Over-temperature threshold below the 310 K the controller reports: the Set Features
    // completes, then the event.
    let (cid, done) = g.run_all(0, admin_cmd(admin_opcode::SET_FEATURES, 0x04, 300));
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].cid, done[0].status), (cid, Status::SUCCESS));
    assert_eq!(done[1].cid, aer);
    assert_eq!(
        done[1].result, 0x0002_0101,
        "SMART, temperature, log page 2"
    );
    let (_, smart) = g.get_log(0x02, 512, false);
    assert_eq!(smart[0], 0x2, "critical warning: temperature");
}

#[test]
fn asynchronous_events_limits_and_abort() {
    let mut g = Guest::new();
    g.enable();
    let aers: Vec<u16> = (0..4)
        .map(|_| g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0)))
        .collect();
    g.ring(0);
    g.ctrl.process_admin_queue();
    assert!(g.reap(0).is_empty());
    let e = g.admin(Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    assert_eq!(e.status, Status::AER_LIMIT_EXCEEDED);
    // Abort the second request: it completes with Abort Requested, the Abort with dword 0 = 0.
    let cid = g.submit(
        0,
        admin_cmd(admin_opcode::ABORT, u32::from(aers[1]) << 16, 0),
    );
    g.ring(0);
    g.ctrl.process_admin_queue();
    let done = g.reap(0);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].cid, aers[1]);
    assert_eq!(done[0].status, Status::ABORT_REQUESTED);
    assert_eq!(done[1].cid, cid);
    assert_eq!(done[1].result, 0);
    // Aborting something that is not outstanding: dword 0 bit 0 set.
    let e = g.admin(admin_cmd(admin_opcode::ABORT, 0x1234 << 16, 0));
    assert_eq!((e.status, e.result), (Status::SUCCESS, 1));
    // A controller reset drops the requests: nothing completes.
    g.write32(registers::CC, 0);
    assert!(g.peek(0).is_empty());
}

// ---- doorbells -------------------------------------------------------------------------------

#[test]
fn invalid_doorbell_writes_are_ignored_and_reported() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    let aer = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    assert!(g.reap(0).is_empty());

    // A tail beyond the queue: ignored, reported as Invalid Doorbell Write Value.
    g.write32(sq_tail_doorbell(1), 16);
    g.ctrl.process_submission_queue(1);
    assert!(g.peek(1).is_empty(), "nothing was run");
    let done = g.reap(0);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].cid, aer);
    assert_eq!(
        done[0].result, 0x0001_0100,
        "error, invalid value, error log"
    );

    // Error events are masked until the error log is read: a new one waits.
    let aer2 = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    g.write32(sq_tail_doorbell(5), 1); // a queue that does not exist
    assert!(g.reap(0).is_empty());
    let (status, _) = g.get_log(0x01, 64, true);
    assert_eq!(
        status,
        Status::SUCCESS,
        "RAE keeps the mask: one completion"
    );
    let mut log = admin_cmd(admin_opcode::GET_LOG_PAGE, 0x01 | (15 << 16), 0);
    log.prp1 = BUF;
    let (cid, done) = g.run_all(0, log);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].cid, cid);
    assert_eq!(done[1].cid, aer2);
    assert_eq!(done[1].result, 0x0001_0000, "error, invalid register");

    // A completion queue head beyond the queue or beyond the posted entries, and doorbells of
    // queues past the controller's last: all reported, none applied.
    g.get_log(0x01, 64, false);
    let aer3 = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    g.write32(cq_head_doorbell(1), 100);
    let done = g.reap(0);
    assert_eq!((done[0].cid, done[0].result), (aer3, 0x0001_0100));
    g.get_log(0x01, 64, false);
    let aer4 = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    g.write32(cq_head_doorbell(1), 5);
    let done = g.reap(0);
    assert_eq!((done[0].cid, done[0].result), (aer4, 0x0001_0100));
    g.get_log(0x01, 64, false);
    let aer5 = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    g.write32(sq_tail_doorbell(200), 1);
    let done = g.reap(0);
    assert_eq!((done[0].cid, done[0].result), (aer5, 0x0001_0000));

    // The controller still serves I/O.
    assert_eq!(g.io(rw(io_opcode::READ, 0, 1, DATA, 0)), Status::SUCCESS);
}

#[test]
fn doorbells_without_the_controller_lock() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    let doorbells = g.ctrl.doorbells();
    let cids: Vec<u16> = (0..3)
        .map(|i| g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0)))
        .collect();
    let kicks_before = g.rec.calls().kicks.len();
    assert_eq!(
        doorbells.write(sq_tail_doorbell(1), 3),
        DoorbellWake::SubmissionQueue(1)
    );
    assert_eq!(g.rec.calls().kicks.len(), kicks_before, "no callback");
    g.ctrl.process_submission_queue(1);
    let done = g.peek(1);
    assert_eq!(done.iter().map(|e| e.cid).collect::<Vec<_>>(), cids);
    // The head is taken lazily: no wake while nobody waits for room.
    assert_eq!(doorbells.write(cq_head_doorbell(1), 3), DoorbellWake::None);
    // A bad value through this path is reported when the worker looks.
    let aer = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    assert_eq!(
        doorbells.write(sq_tail_doorbell(1), 99),
        DoorbellWake::SubmissionQueue(1)
    );
    g.ctrl.process_submission_queue(1);
    let done = g.reap(0);
    assert_eq!((done[0].cid, done[0].result), (aer, 0x0001_0100));
}

#[test]
fn io_queue_wraps_over_several_laps() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 8, 8);
    let data = pattern(64 * 512, 9);
    g.disk.as_file().write_all_at(&data, 0).unwrap();
    let mut seen = 0;
    for batch in 0..13u64 {
        let n = 1 + (batch % 7) as u32;
        let mut cids = Vec::new();
        for i in 0..n {
            let lba = (batch * 5 + u64::from(i)) % 64;
            let addr = DATA + u64::from(i) * PAGE;
            cids.push(g.submit(1, rw(io_opcode::READ, lba, 1, addr, 0)));
        }
        g.ring(1);
        g.ctrl.process_submission_queue(1);
        let done = g.reap(1);
        assert_eq!(done.iter().map(|e| e.cid).collect::<Vec<_>>(), cids);
        for (i, e) in done.iter().enumerate() {
            assert_eq!(e.status, Status::SUCCESS);
            let lba = (batch * 5 + i as u64) % 64;
            assert_eq!(
                g.guest_bytes(DATA + i as u64 * PAGE, 512),
                &data[lba as usize * 512..lba as usize * 512 + 512]
            );
        }
        seen += done.len();
    }
    assert_eq!(seen, 49, "more than six laps of an 8-entry queue");
}

#[test]
fn full_completion_queue_holds_submissions_back() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 4);
    let cids: Vec<u16> = (0..10)
        .map(|i| g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0)))
        .collect();
    g.ring(1);
    assert_eq!(g.rec.calls().kicks.last(), Some(&1));
    g.ctrl.process_submission_queue(1);
    let first = g.peek(1);
    assert_eq!(first.len(), 3, "a 4-entry queue holds 3 completions");
    assert_eq!(first.last().unwrap().sq_head, 3, "only 3 fetched");
    g.ctrl.process_submission_queue(1);
    assert!(g.peek(1).is_empty(), "still full");

    // Freeing the slots through the MMIO doorbell asks the worker to go on.
    let kicks = g.rec.calls().kicks.len();
    let head = g.queues[&1].head;
    g.write32(cq_head_doorbell(1), head);
    assert_eq!(&g.rec.calls().kicks[kicks..], &[1]);
    g.ctrl.process_submission_queue(1);
    let second = g.peek(1);
    assert_eq!(second.len(), 3);

    // Freeing them through the lock-free doorbells wakes the completion queue's worker call.
    let head = g.queues[&1].head;
    assert_eq!(
        g.ctrl.doorbells().write(cq_head_doorbell(1), head),
        DoorbellWake::CompletionQueue(1)
    );
    g.ctrl.process_completion_queue(1);
    let third = g.peek(1);
    assert_eq!(third.len(), 3);
    let head = g.queues[&1].head;
    g.write32(cq_head_doorbell(1), head);
    g.ctrl.process_submission_queue(1);
    let last = g.reap(1);
    let all: Vec<u16> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .chain(&last)
        .map(|e| e.cid)
        .collect();
    assert_eq!(all, cids);
    assert!(first
        .iter()
        .chain(&second)
        .chain(&third)
        .chain(&last)
        .all(|e| e.status == Status::SUCCESS));
}

#[test]
fn shadow_doorbells() {
    let mut g = Guest::new();
    g.enable();
    let dbbc = |dbs: u64, eis: u64| {
        let mut c = Command::new(admin_opcode::DOORBELL_BUFFER_CONFIG, 0);
        c.prp1 = dbs;
        c.prp2 = eis;
        c
    };
    assert_eq!(g.admin_status(dbbc(DBS + 8, EIS)), Status::INVALID_FIELD);
    assert_eq!(
        g.admin_status(dbbc(DBS, EIS + 0x100)),
        Status::INVALID_FIELD
    );
    assert_eq!(g.admin_status(dbbc(RAM, EIS)), Status::INVALID_FIELD);
    assert_eq!(g.admin_status(dbbc(DBS, RAM)), Status::INVALID_FIELD);
    assert_eq!(g.admin_status(dbbc(DBS, DBS)), Status::INVALID_FIELD);
    assert!(!g.ctrl.shadow_doorbells_enabled());
    assert_eq!(g.admin_status(dbbc(DBS, EIS)), Status::SUCCESS);
    assert!(g.ctrl.shadow_doorbells_enabled());
    assert_eq!(g.rec.calls().shadow, vec![true]);
    g.create_pair(1, 16, 4);

    // Submit through the shadow tail only: no MMIO write at all.
    let cids: Vec<u16> = (0..3)
        .map(|i| g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0)))
        .collect();
    g.mem
        .write_obj(g.queues[&1].tail, GuestAddress(DBS + 8))
        .unwrap();
    g.ctrl.process_submission_queue(1);
    let done = g.peek(1);
    assert_eq!(done.iter().map(|e| e.cid).collect::<Vec<_>>(), cids);
    let event_index: u32 = g.mem.read_obj(GuestAddress(EIS + 8)).unwrap();
    assert_eq!(event_index, 3, "the event index follows the consumed tail");

    // The completion queue is full (3 of 4): more submissions wait for the shadow head.
    for i in 0..2 {
        g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0));
    }
    g.mem
        .write_obj(g.queues[&1].tail, GuestAddress(DBS + 8))
        .unwrap();
    g.ctrl.process_submission_queue(1);
    assert!(g.peek(1).is_empty());
    let cq_event_index: u32 = g.mem.read_obj(GuestAddress(EIS + 12)).unwrap();
    assert_eq!(
        cq_event_index, 0,
        "asks for a doorbell on the next head move"
    );
    g.mem
        .write_obj(g.queues[&1].head, GuestAddress(DBS + 12))
        .unwrap();
    g.ctrl.process_completion_queue(1);
    assert_eq!(g.peek(1).len(), 2);

    // A value beyond the queue in the shadow buffer is reported, not used.
    let aer = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    g.mem.write_obj(500u32, GuestAddress(DBS + 8)).unwrap();
    g.ctrl.process_submission_queue(1);
    let done = g.reap(0);
    assert_eq!((done[0].cid, done[0].result), (aer, 0x0001_0100));
    g.mem
        .write_obj(g.queues[&1].tail, GuestAddress(DBS + 8))
        .unwrap();

    // The admin queue keeps using MMIO doorbells.
    assert_eq!(
        g.admin_status(Command::new(admin_opcode::KEEP_ALIVE, 0)),
        Status::SUCCESS
    );
    // A reset drops the buffers.
    g.write32(registers::CC, 0);
    assert!(!g.ctrl.shadow_doorbells_enabled());
    assert_eq!(g.rec.calls().shadow, vec![true, false]);
}

// ---- I/O -------------------------------------------------------------------------------------

#[test]
fn write_flush_read_back() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 32, 32);
    let data = pattern(4096, 3);
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(g.io(rw(io_opcode::WRITE, 100, 8, DATA, 0)), Status::SUCCESS);
    let mut flush = Command::new(io_opcode::FLUSH, 0);
    flush.nsid = 1;
    assert_eq!(g.io(flush), Status::SUCCESS);
    flush.nsid = 0xffff_ffff;
    assert_eq!(g.io(flush), Status::SUCCESS);
    flush.nsid = 7;
    assert_eq!(g.io(flush), Status::INVALID_NAMESPACE);
    assert_eq!(g.file_bytes(100 * 512, 4096), data);
    assert_eq!(g.io(rw(io_opcode::READ, 100, 8, DATA2, 0)), Status::SUCCESS);
    assert_eq!(g.guest_bytes(DATA2, 4096), data);
    // Force Unit Access, and the write cache switched off.
    let mut fua = rw(io_opcode::WRITE, 200, 1, DATA, 0);
    fua.cdw[2] |= 1 << 30;
    assert_eq!(g.io(fua), Status::SUCCESS);
    assert_eq!(
        g.admin_status(admin_cmd(admin_opcode::SET_FEATURES, 0x06, 0)),
        Status::SUCCESS
    );
    assert_eq!(g.io(rw(io_opcode::WRITE, 300, 1, DATA, 0)), Status::SUCCESS);
    assert_eq!(g.file_bytes(300 * 512, 512), &data[..512]);
}

#[test]
fn four_kib_blocks() {
    let mut g = Guest::with_config(disk(1 << 20), |c| c.block_size = 4096);
    assert_eq!(g.ctrl.blocks(), 256);
    g.enable();
    g.create_pair(1, 16, 16);
    let data = pattern(8192, 5);
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 254, 2, DATA, DATA + PAGE)),
        Status::SUCCESS
    );
    assert_eq!(g.file_bytes(254 * 4096, 8192), data);
    assert_eq!(
        g.io(rw(io_opcode::READ, 255, 2, DATA, DATA + PAGE)),
        Status::LBA_OUT_OF_RANGE
    );
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 0, 0);
    c.nsid = 1;
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    assert_eq!(g.guest_bytes(BUF + 130, 1), [12]);
}

#[test]
fn every_prp_form() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    let data = pattern(64 * 1024, 7);
    g.disk.as_file().write_all_at(&data, 0).unwrap();
    let check = |g: &Guest, segments: &[(u64, usize)], lba: usize| {
        let mut at = lba * 512;
        for &(addr, len) in segments {
            assert_eq!(g.guest_bytes(addr, len), &data[at..at + len], "{addr:#x}");
            at += len;
        }
    };

    // PRP1 only, at an offset in its page.
    assert_eq!(
        g.io(rw(io_opcode::READ, 3, 2, DATA + 0x200, 0)),
        Status::SUCCESS
    );
    check(&g, &[(DATA + 0x200, 1024)], 3);

    // PRP1 and PRP2: 4 KiB starting half way through a page.
    assert_eq!(
        g.io(rw(io_opcode::READ, 8, 8, DATA + 0x800, DATA2 + 0x5000)),
        Status::SUCCESS
    );
    check(&g, &[(DATA + 0x800, 2048), (DATA2 + 0x5000, 2048)], 8);

    // A PRP list: 16 KiB over scattered pages.
    write_list(&g.mem, LISTS, &[DATA2 + 0x3000, DATA + 0x9000, DATA2]);
    assert_eq!(
        g.io(rw(io_opcode::READ, 16, 32, DATA + 0x1000, LISTS)),
        Status::SUCCESS
    );
    check(
        &g,
        &[
            (DATA + 0x1000, 4096),
            (DATA2 + 0x3000, 4096),
            (DATA + 0x9000, 4096),
            (DATA2, 4096),
        ],
        16,
    );

    // Chained lists: the first list starts two entries before the end of its page, so it holds one
    // data page and a pointer to the next list page.
    let list = LISTS + 0x2000 - 16;
    write_list(&g.mem, list, &[DATA + 0x20000, LISTS + 0x5000]);
    write_list(
        &g.mem,
        LISTS + 0x5000,
        &[DATA + 0x30000, DATA + 0x40000, DATA + 0x50000],
    );
    assert_eq!(
        g.io(rw(io_opcode::READ, 40, 40, DATA2 + 0x10000, list)),
        Status::SUCCESS
    );
    check(
        &g,
        &[
            (DATA2 + 0x10000, 4096),
            (DATA + 0x20000, 4096),
            (DATA + 0x30000, 4096),
            (DATA + 0x40000, 4096),
            (DATA + 0x50000, 4096),
        ],
        40,
    );

    // And a write through a chained list lands in the file in order.
    let fresh = pattern(5 * 4096, 11);
    for (i, addr) in [
        DATA2 + 0x10000,
        DATA + 0x20000,
        DATA + 0x30000,
        DATA + 0x40000,
        DATA + 0x50000,
    ]
    .iter()
    .enumerate()
    {
        g.mem
            .write_slice(&fresh[i * 4096..(i + 1) * 4096], GuestAddress(*addr))
            .unwrap();
    }
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 80, 40, DATA2 + 0x10000, list)),
        Status::SUCCESS
    );
    assert_eq!(g.file_bytes(80 * 512, fresh.len()), fresh);

    // The largest transfer MDTS allows (512 KiB) works, one block more does not.
    let pages: Vec<u64> = (1..128).map(|i| DATA + i * PAGE).collect();
    write_list(&g.mem, LISTS + 0x8000, &pages);
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 1024, DATA, LISTS + 0x8000)),
        Status::SUCCESS
    );
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 1025, DATA, LISTS + 0x8000)),
        Status::INVALID_FIELD
    );
}

#[test]
fn malformed_prps_fail_the_command_only() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    let before = std::fs::read(g.disk.path()).unwrap();
    // PRP1 outside guest RAM.
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 8, RAM, 0)),
        Status::DATA_TRANSFER_ERROR
    );
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 0, 8, RAM - 0x200, RAM)),
        Status::DATA_TRANSFER_ERROR
    );
    // PRP2 outside guest RAM.
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 16, DATA, RAM + PAGE)),
        Status::DATA_TRANSFER_ERROR
    );
    // PRP1 not dword aligned, PRP2 not page aligned.
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 1, DATA + 2, 0)),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 16, DATA, DATA2 + 0x10)),
        Status::PRP_OFFSET_INVALID
    );
    // A list entry that is not page aligned, and one outside RAM.
    write_list(&g.mem, LISTS, &[DATA2, DATA2 + 0x1008]);
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 0, 24, DATA, LISTS)),
        Status::PRP_OFFSET_INVALID
    );
    write_list(&g.mem, LISTS, &[DATA2, RAM]);
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 0, 24, DATA, LISTS)),
        Status::DATA_TRANSFER_ERROR
    );
    // A list outside RAM.
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 24, DATA, RAM + 0x100)),
        Status::DATA_TRANSFER_ERROR
    );
    // A chain that loops: the last entry of a list page points back at the page.
    let list = LISTS + 0x2000 - 16;
    write_list(&g.mem, list, &[DATA2, LISTS + 0x1000]);
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 64, DATA, list)),
        Status::DATA_TRANSFER_ERROR
    );
    // None of the failed writes touched the file, and a good read still works.
    assert_eq!(std::fs::read(g.disk.path()).unwrap(), before);
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA, 0)), Status::SUCCESS);
    // Each failure is in the error log with its LBA.
    let (_, log) = g.get_log(0x01, 64, false);
    assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 9);
    assert_eq!(u16::from_le_bytes([log[8], log[9]]), 1, "SQID");
}

#[test]
fn out_of_range_and_invalid_io_commands() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    let blocks = g.ctrl.blocks();
    assert_eq!(
        g.io(rw(io_opcode::READ, blocks - 1, 1, DATA, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        g.io(rw(io_opcode::READ, blocks - 1, 2, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        g.io(rw(io_opcode::WRITE, blocks, 1, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        g.io(rw(io_opcode::READ, u64::MAX, 1, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        g.io(rw(io_opcode::WRITE_ZEROES, blocks - 4, 8, 0, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    let mut dsm = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
    dsm.nsid = 1;
    dsm.prp1 = BUF;
    dsm.cdw[0] = 1; // two ranges
    dsm.cdw[1] = 1 << 2;
    let mut ranges = [0u8; 32];
    ranges[4..8].copy_from_slice(&8u32.to_le_bytes());
    ranges[20..24].copy_from_slice(&8u32.to_le_bytes());
    ranges[24..32].copy_from_slice(&(blocks - 4).to_le_bytes());
    g.mem.write_slice(&ranges, GuestAddress(BUF)).unwrap();
    assert_eq!(g.io(dsm), Status::LBA_OUT_OF_RANGE);

    let mut c = rw(io_opcode::READ, 0, 1, DATA, 0);
    c.nsid = 2;
    assert_eq!(g.io(c), Status::INVALID_NAMESPACE);
    c.nsid = 0;
    assert_eq!(g.io(c), Status::INVALID_NAMESPACE);
    assert_eq!(g.io(rw(0x7f, 0, 1, DATA, 0)), Status::INVALID_OPCODE);
    let mut sgl = rw(io_opcode::READ, 0, 1, DATA, 0);
    sgl.cdw0 |= 1 << 14;
    assert_eq!(g.io(sgl), Status::INVALID_FIELD);
    let mut fused = rw(io_opcode::READ, 0, 1, DATA, 0);
    fused.cdw0 |= 1 << 8;
    assert_eq!(g.io(fused), Status::INVALID_FIELD);
    // DSM without the deallocate attribute is only a hint.
    dsm.cdw[1] = 0;
    assert_eq!(g.io(dsm), Status::SUCCESS);
    assert_eq!(g.io(rw(io_opcode::READ, 0, 1, DATA, 0)), Status::SUCCESS);
}

#[test]
fn read_only_volume_rejects_writes_and_leaves_the_file_alone() {
    let d = disk(0);
    let data = pattern(1 << 20, 13);
    std::fs::write(d.path(), &data).unwrap();
    let mtime = std::fs::metadata(d.path()).unwrap().mtime_nsec();
    let mut g = Guest::with_config(d, |c| c.read_only = true);
    assert!(g.ctrl.read_only());
    g.enable();
    g.create_pair(1, 16, 16);
    let mut c = admin_cmd(admin_opcode::IDENTIFY, 0, 0);
    c.nsid = 1;
    c.prp1 = BUF;
    assert_eq!(g.admin_status(c), Status::SUCCESS);
    assert_eq!(g.guest_bytes(BUF + 99, 1), [1], "NSATTR write protected");

    g.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 0, 8, DATA, 0)),
        Status::NAMESPACE_WRITE_PROTECTED
    );
    assert_eq!(
        g.io(rw(io_opcode::WRITE_ZEROES, 0, 8, 0, 0)),
        Status::NAMESPACE_WRITE_PROTECTED
    );
    let mut dsm = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
    dsm.nsid = 1;
    dsm.prp1 = BUF;
    dsm.cdw[1] = 1 << 2;
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    g.mem.write_slice(&range, GuestAddress(BUF)).unwrap();
    assert_eq!(g.io(dsm), Status::NAMESPACE_WRITE_PROTECTED);
    let mut flush = Command::new(io_opcode::FLUSH, 0);
    flush.nsid = 1;
    assert_eq!(g.io(flush), Status::SUCCESS);
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA, 0)), Status::SUCCESS);
    assert_eq!(g.guest_bytes(DATA, 4096), &data[..4096]);
    g.write32(registers::CC, CC_GOOD | (1 << 14));
    assert_eq!(std::fs::read(g.disk.path()).unwrap(), data);
    assert_eq!(
        std::fs::metadata(g.disk.path()).unwrap().mtime_nsec(),
        mtime
    );
}

#[test]
fn deallocate_punches_holes_and_reads_back_zeroes() {
    let d = disk(0);
    std::fs::write(d.path(), pattern(4 << 20, 17)).unwrap();
    d.as_file().sync_all().unwrap();
    let mut g = Guest::with_config(d, |_| {});
    g.enable();
    g.create_pair(1, 16, 16);
    let allocated = || std::fs::metadata(g.disk.path()).unwrap().blocks();
    let before = allocated();

    // Deallocate 1 MiB at LBA 0 and 1 MiB at LBA 4096.
    let mut ranges = [0u8; 32];
    ranges[4..8].copy_from_slice(&2048u32.to_le_bytes());
    ranges[20..24].copy_from_slice(&2048u32.to_le_bytes());
    ranges[24..32].copy_from_slice(&4096u64.to_le_bytes());
    g.mem.write_slice(&ranges, GuestAddress(BUF)).unwrap();
    let mut dsm = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
    dsm.nsid = 1;
    dsm.prp1 = BUF;
    dsm.cdw[0] = 1;
    dsm.cdw[1] = 1 << 2;
    assert_eq!(g.io(dsm), Status::SUCCESS);
    let after = std::fs::metadata(g.disk.path()).unwrap();
    assert_eq!(after.len(), 4 << 20, "size kept");
    assert!(
        after.blocks() + 2 * 2048 <= before,
        "allocated 512-byte blocks {before} -> {}",
        after.blocks()
    );
    g.mem
        .write_slice(&[0xaa; 4096], GuestAddress(DATA))
        .unwrap();
    assert_eq!(g.io(rw(io_opcode::READ, 4096, 8, DATA, 0)), Status::SUCCESS);
    assert!(g.guest_bytes(DATA, 4096).iter().all(|&b| b == 0));
    // Write Zeroes too.
    let mut wz = rw(io_opcode::WRITE_ZEROES, 2048, 16, 0, 0);
    wz.cdw[2] |= 1 << 25; // DEAC
    assert_eq!(g.io(wz), Status::SUCCESS);
    assert!(g.file_bytes(2048 * 512, 8192).iter().all(|&b| b == 0));
    assert_ne!(g.file_bytes(2064 * 512, 512), vec![0u8; 512]);
}

#[test]
fn backing_file_errors_become_internal_errors() {
    let (mut g, errno) = Guest::with_flaky_backend();
    let aer = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    errno.store(5, Ordering::SeqCst); // EIO
    let status = g.io(rw(io_opcode::READ, 0, 8, DATA, 0));
    assert_eq!(status, Status::INTERNAL_ERROR);
    assert!(!status.do_not_retry(), "the host may retry");
    let done = g.reap(0);
    assert_eq!(
        (done[0].cid, done[0].result),
        (aer, 0x0001_0400),
        "transient internal error event"
    );
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 0, 8, DATA, 0)),
        Status::INTERNAL_ERROR
    );
    let mut flush = Command::new(io_opcode::FLUSH, 0);
    flush.nsid = 1;
    assert_eq!(g.io(flush), Status::INTERNAL_ERROR);
    assert_eq!(
        g.io(rw(io_opcode::WRITE_ZEROES, 0, 8, 0, 0)),
        Status::INTERNAL_ERROR
    );
    errno.store(0, Ordering::SeqCst);
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA, 0)), Status::SUCCESS);
    assert_eq!(g.io(rw(io_opcode::WRITE, 0, 8, DATA, 0)), Status::SUCCESS);
}

/// A full host file system (ENOSPC, or a quota: EDQUOT) is Capacity Exceeded, retryable, with no
/// internal-error event; the controller keeps serving and the data written before is intact.
#[test]
fn a_full_host_file_system_is_capacity_exceeded() {
    let (mut g, errno) = Guest::with_flaky_backend();
    let data = pattern(4096, 3);
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(g.io(rw(io_opcode::WRITE, 0, 8, DATA, 0)), Status::SUCCESS);
    let aer = g.submit(0, Command::new(admin_opcode::ASYNC_EVENT_REQUEST, 0));
    g.ring(0);
    g.ctrl.process_admin_queue();
    for errno_full in [28, 122] {
        errno.store(errno_full, Ordering::SeqCst); // ENOSPC, EDQUOT
        let status = g.io(rw(io_opcode::WRITE, 8, 8, DATA, 0));
        assert_eq!(status, Status::CAPACITY_EXCEEDED, "errno {errno_full}");
        assert!(!status.do_not_retry(), "space may be freed on the host");
        assert_eq!(
            g.io(rw(io_opcode::WRITE_ZEROES, 8, 8, 0, 0)),
            Status::CAPACITY_EXCEEDED
        );
    }
    assert!(g.reap(0).is_empty(), "no event: {aer} is still held");
    errno.store(0, Ordering::SeqCst);
    g.mem
        .write_slice(&[0u8; 4096], GuestAddress(DATA2))
        .unwrap();
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA2, 0)), Status::SUCCESS);
    assert_eq!(g.guest_bytes(DATA2, 4096), data);
}

/// Writes reach the file and Flush's fdatasync returns before the guest can see the completions:
/// two writes and a Flush submitted with one doorbell; at each backend call the completion queue
/// holds only the completions of the commands before it.
#[test]
fn completions_are_posted_after_the_data_and_the_flush() {
    let d = disk(1 << 20);
    let m = mem();
    let log = Arc::new(Mutex::new(Vec::new()));
    let qid = 1u16;
    let backend = CompletionWitness {
        inner: BlockBackend::open(d.path(), false).unwrap(),
        mem: m.clone(),
        cq: CQ_AREA + u64::from(qid) * 0x4000,
        cq_entries: 16,
        log: log.clone(),
    };
    let config = NvmeConfig::new(d.path());
    let rec = Recorder::default();
    let ctrl =
        NvmeController::with_backend(&config, Box::new(backend), m.clone(), Box::new(rec.clone()))
            .unwrap();
    let mut g = Guest {
        ctrl,
        mem: m,
        rec,
        disk: d,
        queues: BTreeMap::new(),
        next_cid: 1,
    };
    g.enable();
    g.create_pair(qid, 16, 16);
    let data = pattern(8192, 9);
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    g.submit(qid, rw(io_opcode::WRITE, 0, 8, DATA, 0));
    g.submit(qid, rw(io_opcode::WRITE, 8, 8, DATA + 4096, 0));
    let mut flush = Command::new(io_opcode::FLUSH, 0);
    flush.nsid = 1;
    g.submit(qid, flush);
    g.ring(qid);
    g.ctrl.process_submission_queue(qid);
    let done = g.reap(qid);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|c| c.status == Status::SUCCESS));
    assert_eq!(
        *log.lock().unwrap(),
        [("write", 0), ("write", 1), ("flush", 2)],
        "(backend call, completions already visible to the guest)"
    );
    assert_eq!(g.file_bytes(0, 8192), data);
}

#[test]
fn interrupts_follow_each_completion_queue() {
    let mut g = Guest::new();
    g.enable();
    g.create_pair_with(1, 16, 16, 0x3 | (5 << 16));
    g.create_pair_with(2, 16, 16, 0x1); // polled
    g.rec.calls().signals.clear();
    assert_eq!(g.io(rw(io_opcode::READ, 0, 1, DATA, 0)), Status::SUCCESS);
    assert_eq!(g.rec.calls().signals, vec![5]);
    // Several completions in one batch: one interrupt.
    for i in 0..4 {
        g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0));
    }
    g.ring(1);
    g.ctrl.process_submission_queue(1);
    assert_eq!(g.reap(1).len(), 4);
    assert_eq!(g.rec.calls().signals, vec![5, 5]);
    // The polled queue completes without an interrupt.
    let e = g.run(2, rw(io_opcode::READ, 0, 1, DATA, 0));
    assert_eq!(e.status, Status::SUCCESS);
    assert_eq!(g.rec.calls().signals, vec![5, 5]);
    g.admin(Command::new(admin_opcode::KEEP_ALIVE, 0));
    assert_eq!(g.rec.calls().signals, vec![5, 5, 0]);
}

// ---- construction ----------------------------------------------------------------------------

#[test]
fn configuration_is_checked() {
    let d = disk(1 << 20);
    let make = |edit: &dyn Fn(&mut NvmeConfig)| {
        let mut c = NvmeConfig::new(d.path());
        edit(&mut c);
        NvmeController::new(&c, mem(), Box::new(Recorder::default()))
    };
    assert!(matches!(
        make(&|c| c.block_size = 1024),
        Err(NvmeError::BlockSize(1024))
    ));
    assert!(matches!(
        make(&|c| c.max_queue_pairs = 0),
        Err(NvmeError::QueuePairs(0))
    ));
    assert!(matches!(make(&|c| c.mdts = 0), Err(NvmeError::Mdts(0))));
    assert!(matches!(
        make(&|c| c.volume_id = Some("vol-XYZ".into())),
        Err(NvmeError::Identity(_))
    ));
    assert!(matches!(
        make(&|c| c.device_name = Some("no spaces".into())),
        Err(NvmeError::Identity(_))
    ));
    let tiny = disk(100);
    let err = NvmeController::new(
        &NvmeConfig::new(tiny.path()),
        mem(),
        Box::new(Recorder::default()),
    )
    .err()
    .unwrap();
    assert!(matches!(err, NvmeError::TooSmall { size: 100, .. }));

    let first = make(&|_| {}).unwrap();
    assert_eq!(first.volume_id(), default_volume_id(d.path()));
    assert_eq!(first.msix_vectors(), 17);
    assert_eq!(first.register_space_len(), 0x2000);
    let second = make(&|_| {}).err().unwrap();
    assert_eq!(
        second.to_string(),
        format!("disk {} is in use by another process", d.path().display())
    );
}
