//! The NVMe controller as a PCI function: configuration space (Amazon 1d0f:8061, class 01/08/02),
//! BAR0 with the registers, doorbells, MSI-X table and PBA, and a worker thread that runs the
//! commands.
//!
//! BAR0 (64-bit, non-prefetchable) layout: registers at 0, doorbells from 0x1000 (one pair per
//! queue), the MSI-X table right after the doorbells, the PBA after the table; size a power of two
//! (16 KiB with 16 I/O queue pairs). One MSI-X vector per queue pair plus the admin queue's.
//!
//! Threads and locks: vCPU threads reach the device through the PCI root, which holds this wrapper's
//! lock. Register accesses take the controller's own lock too; doorbell writes do not: they go to the
//! shared [`Doorbells`] and wake the worker through an eventfd, so a doorbell write never waits for
//! file I/O. The worker thread takes only the controller lock (never the root's), runs the queues it
//! was woken for, and raises interrupts through [`Msix::notify`], which has its own lock. It waits in
//! epoll on its eventfd and, for a rate-limited volume, on the limiter's timerfd, which resumes the
//! queues the limiter held back (`throttle.rs`). No
//! ioeventfds are registered: without shadow doorbells the value written is needed, and with them the
//! guest rings the MMIO doorbell only when the controller has gone idle.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::doorbell::{DoorbellWake, Doorbells};
use super::identity::{AMAZON_VENDOR_ID, EBS_DEVICE_ID};
use super::registers::DOORBELL_BASE;
use super::{NvmeConfig, NvmeController, NvmeError, NvmeInterrupts};
use crate::block::BlockIo;
use crate::pci::{
    Msix, MsixLayout, PciBar, PciBarKind, PciConfigSpace, PciDevice, PciError, PciIds,
};
use crate::rate_limiter::LimiterChain;
use crate::worker::WorkerSpawner;

/// The BAR holding registers, doorbells and MSI-X structures.
pub const NVME_BAR: u8 = 0;
/// PCI class: mass storage.
const CLASS_STORAGE: u8 = 0x01;
/// PCI subclass: non-volatile memory.
const SUBCLASS_NVM: u8 = 0x08;
/// Programming interface: NVM Express.
const PROG_IF_NVME: u8 = 0x02;

/// Errors building the PCI function.
#[derive(Debug, thiserror::Error)]
pub enum NvmePciError {
    /// The controller could not be created (disk file, configuration).
    #[error(transparent)]
    Controller(#[from] NvmeError),
    /// The PCI layout was refused (a bug, not a user error).
    #[error("NVMe PCI layout: {0}")]
    Pci(#[from] PciError),
    /// The worker's eventfd or thread could not be created.
    #[error("cannot start the NVMe worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// What the worker has to do: queues flagged by doorbells or the controller, and a stop request.
struct WorkerWake {
    eventfd: EventFd,
    submission: Box<[AtomicBool]>,
    completion: Box<[AtomicBool]>,
    stop: AtomicBool,
}

impl WorkerWake {
    fn kick(&self) {
        if let Err(e) = self.eventfd.write(1) {
            log::warn!("nvme: cannot wake the worker: {e}");
        }
    }

    fn submission_queue(&self, qid: u16) {
        if let Some(flag) = self.submission.get(usize::from(qid)) {
            flag.store(true, Ordering::Release);
            self.kick();
        }
    }

    fn completion_queue(&self, qid: u16) {
        if let Some(flag) = self.completion.get(usize::from(qid)) {
            flag.store(true, Ordering::Release);
            self.kick();
        }
    }
}

/// Interrupts through MSI-X, wake-ups through the worker's eventfd.
struct PciInterrupts {
    msix: Msix,
    wake: Arc<WorkerWake>,
}

impl NvmeInterrupts for PciInterrupts {
    fn signal(&self, vector: u16) {
        self.msix.notify(vector);
    }

    fn notify_worker(&self, sqid: u16) {
        self.wake.submission_queue(sqid);
    }
}

fn lock(controller: &Mutex<NvmeController>) -> MutexGuard<'_, NvmeController> {
    controller.lock().unwrap_or_else(|p| p.into_inner())
}

/// Epoll token of the worker's eventfd.
const WAKE_TOKEN: u64 = 0;
/// Epoll token of the rate limiter's timerfd.
const LIMITER_TOKEN: u64 = 1;

/// The worker's epoll: its eventfd and, for a rate-limited volume, the limiter's timerfd.
fn worker_epoll(wake: &WorkerWake, limiter_fd: Option<i32>) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        wake.eventfd.as_raw_fd(),
        EpollEvent::new(EventSet::IN, WAKE_TOKEN),
    )?;
    if let Some(fd) = limiter_fd {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, LIMITER_TOKEN),
        )?;
    }
    Ok(epoll)
}

fn worker_loop(controller: Arc<Mutex<NvmeController>>, wake: Arc<WorkerWake>, epoll: Epoll) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let ready = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("nvme worker: cannot wait for work: {e}");
                return;
            }
        };
        let mut kicked = false;
        let mut timer = false;
        for event in &events[..ready.min(events.len())] {
            match event.data() {
                WAKE_TOKEN => kicked = true,
                LIMITER_TOKEN => timer = true,
                _ => {}
            }
        }
        if kicked {
            // Readable, so this does not block; it resets the count.
            if let Err(e) = wake.eventfd.read() {
                log::error!("nvme worker: cannot read its eventfd: {e}");
                return;
            }
        }
        if wake.stop.load(Ordering::Acquire) {
            return;
        }
        let mut ctrl = lock(&controller);
        if timer {
            ctrl.process_rate_limiter_timer();
        }
        if kicked {
            for (qid, flag) in wake.completion.iter().enumerate() {
                if flag.swap(false, Ordering::AcqRel) {
                    ctrl.process_completion_queue(qid as u16);
                }
            }
            for (qid, flag) in wake.submission.iter().enumerate() {
                if flag.swap(false, Ordering::AcqRel) {
                    ctrl.process_submission_queue(qid as u16);
                }
            }
        }
    }
}

/// An NVMe controller on the PCI bus, with its worker thread. Dropping it stops the worker.
pub struct NvmePci {
    config: PciConfigSpace,
    msix: Msix,
    controller: Arc<Mutex<NvmeController>>,
    doorbells: Arc<Doorbells>,
    register_len: u64,
    wake: Arc<WorkerWake>,
    worker: Option<JoinHandle<()>>,
}

impl NvmePci {
    /// Opens the volume `config` describes, builds the controller and its PCI function, and starts
    /// the worker thread. The volume's I/O is not rate limited.
    pub fn new(config: &NvmeConfig, mem: GuestMemoryMmap) -> Result<Self, NvmePciError> {
        Self::with_rate_limiter(config, mem, None)
    }

    /// [`Self::new`], with the volume's I/O limited by `limiter` (its own caps, usually chained to
    /// the instance's shared EBS cap): Read, Write, Write Zeroes and Dataset Management wait for it;
    /// the worker sleeps on the limiter's timerfd while it holds commands back.
    pub fn with_rate_limiter(
        config: &NvmeConfig,
        mem: GuestMemoryMmap,
        limiter: Option<LimiterChain>,
    ) -> Result<Self, NvmePciError> {
        Self::with_worker_spawner(config, mem, limiter, &WorkerSpawner::default())
    }

    /// [`Self::with_rate_limiter`], with the worker thread started through `spawner` (the VMM's
    /// sandboxed spawner, docs/security.md).
    pub fn with_worker_spawner(
        config: &NvmeConfig,
        mem: GuestMemoryMmap,
        limiter: Option<LimiterChain>,
        spawner: &WorkerSpawner,
    ) -> Result<Self, NvmePciError> {
        Self::build(
            config,
            |irq| NvmeController::new(config, mem, irq),
            limiter,
            Some(spawner),
        )
    }

    /// The PCI function on an already opened `backend` (`config.path` only names the volume) and
    /// without a worker thread: doorbell writes are recorded, but no command runs until the caller
    /// runs the queues through [`Self::controller`] (`process_all`, ...). For fuzzing and tests
    /// that must run commands on their own thread; a VM uses [`Self::new`].
    pub fn without_worker(
        config: &NvmeConfig,
        backend: Box<dyn BlockIo>,
        mem: GuestMemoryMmap,
    ) -> Result<Self, NvmePciError> {
        Self::build(
            config,
            |irq| NvmeController::with_backend(config, backend, mem, irq),
            None,
            None,
        )
    }

    /// The function; its worker started through `spawner`, or none without one.
    fn build(
        config: &NvmeConfig,
        controller: impl FnOnce(Box<dyn NvmeInterrupts>) -> Result<NvmeController, NvmeError>,
        limiter: Option<LimiterChain>,
        spawner: Option<&WorkerSpawner>,
    ) -> Result<Self, NvmePciError> {
        let queues = usize::from(config.max_queue_pairs) + 1;
        let vectors = config.max_queue_pairs.saturating_add(1);
        let register_len = (super::registers::cq_head_doorbell(config.max_queue_pairs) + 4)
            .next_power_of_two()
            .max(2 * DOORBELL_BASE);
        let table_len = u64::from(vectors) * crate::pci::MSIX_ENTRY_SIZE;
        let pba_offset = register_len + table_len.next_multiple_of(0x100);
        let pba_len = u64::from(vectors).div_ceil(64) * 8;
        let bar_len = (pba_offset + pba_len).next_power_of_two();
        let layout_err = |_| PciError::MsixLayout("BAR0 too large");
        let msix = Msix::new(MsixLayout {
            vectors,
            table_bar: NVME_BAR,
            table_offset: u32::try_from(register_len).map_err(layout_err)?,
            pba_bar: NVME_BAR,
            pba_offset: u32::try_from(pba_offset).map_err(layout_err)?,
        })?;
        let mut space = PciConfigSpace::new(PciIds {
            vendor: AMAZON_VENDOR_ID,
            device: EBS_DEVICE_ID,
            class: CLASS_STORAGE,
            subclass: SUBCLASS_NVM,
            prog_if: PROG_IF_NVME,
            revision: 0,
            subsystem_vendor: AMAZON_VENDOR_ID,
            subsystem_id: EBS_DEVICE_ID,
        });
        space.add_bar(NVME_BAR, bar_len, PciBarKind::Memory64, false)?;
        space.add_msix(&msix)?;

        let wake = Arc::new(WorkerWake {
            eventfd: EventFd::new(0)?,
            submission: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            completion: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        let interrupts = PciInterrupts {
            msix: msix.clone(),
            wake: wake.clone(),
        };
        let mut controller = controller(Box::new(interrupts))?;
        controller.set_rate_limiter(limiter);
        let epoll = if spawner.is_some() {
            Some(worker_epoll(&wake, controller.rate_limiter_fd())?)
        } else {
            None
        };
        let doorbells = controller.doorbells();
        let controller = Arc::new(Mutex::new(controller));
        let worker = match (epoll, spawner) {
            (Some(epoll), Some(spawner)) => {
                let (controller, wake) = (controller.clone(), wake.clone());
                Some(spawner.spawn(
                    "nvme-worker",
                    Box::new(move || worker_loop(controller, wake, epoll)),
                )?)
            }
            _ => None,
        };
        Ok(NvmePci {
            config: space,
            msix,
            controller,
            doorbells,
            register_len,
            wake,
            worker,
        })
    }

    /// The controller (for inspection; the worker and register accesses lock it too).
    pub fn controller(&self) -> Arc<Mutex<NvmeController>> {
        self.controller.clone()
    }
}

impl Drop for NvmePci {
    fn drop(&mut self) {
        self.wake.stop.store(true, Ordering::Release);
        self.wake.kick();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl PciDevice for NvmePci {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == NVME_BAR && offset < self.register_len {
            lock(&self.controller).read_register(offset, data);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != NVME_BAR || offset >= self.register_len {
            return;
        }
        // The doorbell fast path: an aligned dword, no controller lock.
        if offset >= DOORBELL_BASE && offset % 4 == 0 && data.len() == 4 {
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            match self.doorbells.write(offset, value) {
                DoorbellWake::SubmissionQueue(qid) => self.wake.submission_queue(qid),
                DoorbellWake::CompletionQueue(qid) => self.wake.completion_queue(qid),
                DoorbellWake::None => {}
            }
            return;
        }
        lock(&self.controller).write_register(offset, data);
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }

    fn msix(&self) -> Option<Msix> {
        Some(self.msix.clone())
    }

    fn reset(&mut self) {
        // CC.EN = 0: a controller reset.
        lock(&self.controller).write_register(super::registers::CC, &[0; 4]);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::nvme::command::{admin_opcode, Command, CompletionEntry};
    use crate::nvme::registers;
    use crate::nvme::Status;
    use crate::pci::{MsiInterruptGroup, MsiMessage};

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

    fn config_u32(dev: &mut NvmePci, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        dev.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_bar_and_msix_capability() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut dev = NvmePci::new(&NvmeConfig::new(disk.path()), mem).unwrap();
        assert_eq!(config_u32(&mut dev, 0), 0x8061_1d0f);
        assert_eq!(config_u32(&mut dev, 8) >> 8, 0x01_08_02, "class");
        assert_eq!(config_u32(&mut dev, 0x2c), 0x8061_1d0f, "subsystem");
        let bars = dev.bars();
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].index, 0);
        assert_eq!(bars[0].size, 0x4000);
        assert_eq!(bars[0].kind, PciBarKind::Memory64);
        // Walk the capability list to MSI-X: 17 vectors, table and PBA in BAR0 past the doorbells.
        let mut cap = config_u32(&mut dev, 0x34) as u16 & 0xff;
        while cap != 0 && config_u32(&mut dev, cap) & 0xff != 0x11 {
            cap = (config_u32(&mut dev, cap) >> 8) as u16 & 0xff;
        }
        assert_ne!(cap, 0, "MSI-X capability present");
        let control = config_u32(&mut dev, cap) >> 16;
        assert_eq!(control & 0x7ff, 16, "17 vectors");
        assert_eq!(
            config_u32(&mut dev, cap + 4),
            0x2000,
            "table at 0x2000 in BAR0"
        );
        assert_eq!(
            config_u32(&mut dev, cap + 8),
            0x2200,
            "PBA at 0x2200 in BAR0"
        );
        let mut cap_reg = [0u8; 4];
        dev.bar_read(0, 0x8, &mut cap_reg);
        assert_eq!(u32::from_le_bytes(cap_reg), 0x0001_0400, "VS through BAR0");
        // Accesses past the registers or to other BARs are ignored.
        dev.bar_write(0, 0x3000, &[1, 2, 3, 4]);
        dev.bar_write(2, 0x14, &[1, 0, 0, 0]);
        let mut b = [0xaau8; 4];
        dev.bar_read(2, 0, &mut b);
        assert_eq!(b, [0xaa; 4]);
    }

    #[test]
    fn worker_runs_admin_commands_and_interrupts() {
        const ASQ: u64 = 0x10000;
        const ACQ: u64 = 0x11000;
        const BUF: u64 = 0x12000;
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut config = NvmeConfig::new(disk.path());
        config.volume_id = Some("vol-0abc".into());
        let mut dev = NvmePci::new(&config, mem.clone()).unwrap();
        let triggers = Arc::new(Triggers::default());
        dev.msix.set_group(triggers.clone());
        // Bus master on, MSI-X enabled, vector 0 unmasked.
        dev.config_write(0x04, &[0x06, 0x00]);
        let mut cap = config_u32(&mut dev, 0x34) as u16 & 0xff;
        while config_u32(&mut dev, cap) & 0xff != 0x11 {
            cap = (config_u32(&mut dev, cap) >> 8) as u16 & 0xff;
        }
        dev.config_write(cap + 3, &[0x80]);
        dev.msix.write_table(12, &[0, 0, 0, 0]);

        dev.bar_write(0, registers::AQA, &0x0003_0003u32.to_le_bytes());
        dev.bar_write(0, registers::ASQ, &ASQ.to_le_bytes());
        dev.bar_write(0, registers::ACQ, &ACQ.to_le_bytes());
        dev.bar_write(
            0,
            registers::CC,
            &(1u32 | (6 << 16) | (4 << 20)).to_le_bytes(),
        );
        let mut csts = [0u8; 4];
        dev.bar_read(0, registers::CSTS, &mut csts);
        assert_eq!(csts[0] & 1, 1, "ready");

        let mut identify = Command::new(admin_opcode::IDENTIFY, 42);
        identify.cdw[0] = 1;
        identify.prp1 = BUF;
        mem.write_slice(&identify.to_bytes(), GuestAddress(ASQ))
            .unwrap();
        dev.bar_write(0, registers::sq_tail_doorbell(0), &1u32.to_le_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        let entry = loop {
            let mut b = [0u8; 16];
            mem.read_slice(&mut b, GuestAddress(ACQ)).unwrap();
            let e = CompletionEntry::from_bytes(&b);
            if e.phase {
                break e;
            }
            assert!(Instant::now() < deadline, "no completion from the worker");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!((entry.cid, entry.status), (42, Status::SUCCESS));
        let mut serial = [0u8; 7];
        mem.read_slice(&mut serial, GuestAddress(BUF + 4)).unwrap();
        assert_eq!(&serial, b"vol0abc");
        while triggers.0.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no interrupt");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(triggers.0.lock().unwrap()[0], 0);
        dev.bar_write(0, registers::cq_head_doorbell(0), &1u32.to_le_bytes());
        drop(dev);
    }

    #[test]
    fn without_worker_records_doorbells_and_runs_nothing_until_asked() {
        const ASQ: u64 = 0x10000;
        const ACQ: u64 = 0x11000;
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(1 << 20).unwrap();
        let backend = crate::block::BlockBackend::open(disk.path(), false).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut dev = NvmePci::without_worker(
            &NvmeConfig::new(disk.path()),
            Box::new(backend),
            mem.clone(),
        )
        .unwrap();
        assert!(dev.worker.is_none());
        assert_eq!(config_u32(&mut dev, 0), 0x8061_1d0f);
        assert_eq!(dev.bars()[0].size, 0x4000, "the same BAR0 as NvmePci::new");
        dev.bar_write(0, registers::AQA, &0x0003_0003u32.to_le_bytes());
        dev.bar_write(0, registers::ASQ, &ASQ.to_le_bytes());
        dev.bar_write(0, registers::ACQ, &ACQ.to_le_bytes());
        let cc = 1u32 | (6 << 16) | (4 << 20);
        dev.bar_write(0, registers::CC, &cc.to_le_bytes());
        let mut identify = Command::new(admin_opcode::IDENTIFY, 7);
        identify.cdw[0] = 1;
        identify.prp1 = 0x12000;
        mem.write_slice(&identify.to_bytes(), GuestAddress(ASQ))
            .unwrap();
        dev.bar_write(0, registers::sq_tail_doorbell(0), &1u32.to_le_bytes());
        let completion = |mem: &GuestMemoryMmap| {
            let mut b = [0u8; 16];
            mem.read_slice(&mut b, GuestAddress(ACQ)).unwrap();
            CompletionEntry::from_bytes(&b)
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!completion(&mem).phase, "nothing runs without a worker");
        lock(&dev.controller()).process_all();
        let entry = completion(&mem);
        assert!(entry.phase);
        assert_eq!((entry.cid, entry.status), (7, Status::SUCCESS));
    }

    /// A driver on the test thread (the "vCPU") against the worker thread: queues of every kind
    /// submitted through BAR0 doorbells, completions polled from guest memory.
    struct Driver {
        dev: NvmePci,
        mem: GuestMemoryMmap,
        queues: Vec<(u64, u64, u32, u32, u32, bool, u32)>, // sq, cq, sq entries, tail, head, phase, cq entries
        cid: u16,
    }

    impl Driver {
        fn submit(&mut self, qid: usize, mut cmd: Command) {
            self.cid = self.cid.wrapping_add(1);
            cmd.cdw0 = (cmd.cdw0 & 0xffff) | (u32::from(self.cid) << 16);
            let (sq, _, entries, tail, _, _, _) = &mut self.queues[qid];
            self.mem
                .write_slice(&cmd.to_bytes(), GuestAddress(*sq + u64::from(*tail) * 64))
                .unwrap();
            *tail = (*tail + 1) % *entries;
            let t = *tail;
            self.dev
                .bar_write(0, registers::sq_tail_doorbell(qid as u16), &t.to_le_bytes());
        }

        /// Waits for at least one completion, takes all there are, rings the head doorbell.
        fn reap(&mut self, qid: usize) -> Vec<CompletionEntry> {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut out = Vec::new();
            loop {
                let (_, cq, _, _, head, phase, entries) = &mut self.queues[qid];
                let mut b = [0u8; 16];
                self.mem
                    .read_slice(&mut b, GuestAddress(*cq + u64::from(*head) * 16))
                    .unwrap();
                let e = CompletionEntry::from_bytes(&b);
                if e.phase == *phase {
                    out.push(e);
                    *head += 1;
                    if *head == *entries {
                        *head = 0;
                        *phase = !*phase;
                    }
                    continue;
                }
                if !out.is_empty() {
                    let h = *head;
                    self.dev.bar_write(
                        0,
                        registers::cq_head_doorbell(qid as u16),
                        &h.to_le_bytes(),
                    );
                    return out;
                }
                if Instant::now() >= deadline {
                    let c = self.dev.controller();
                    let c = lock(&c);
                    panic!(
                        "queue {qid}: no completion; driver {:?}; sq {:?}; cq {:?}",
                        self.queues[qid], c.sqs[qid], c.cqs[qid]
                    );
                }
                std::thread::yield_now();
            }
        }

        fn admin(&mut self, cmd: Command) -> CompletionEntry {
            self.submit(0, cmd);
            let done = self.reap(0);
            assert_eq!(done.len(), 1);
            done[0]
        }
    }

    #[test]
    fn io_through_bar0_doorbells_and_the_worker() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(4 << 20).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let dev = NvmePci::new(&NvmeConfig::new(disk.path()), mem.clone()).unwrap();
        let mut d = Driver {
            dev,
            mem: mem.clone(),
            queues: vec![(0x10000, 0x11000, 4, 0, 0, true, 4)],
            cid: 0,
        };
        d.dev
            .bar_write(0, registers::AQA, &0x0003_0003u32.to_le_bytes());
        d.dev
            .bar_write(0, registers::ASQ, &0x10000u64.to_le_bytes());
        d.dev
            .bar_write(0, registers::ACQ, &0x11000u64.to_le_bytes());
        d.dev.bar_write(
            0,
            registers::CC,
            &(1u32 | (6 << 16) | (4 << 20)).to_le_bytes(),
        );
        // Two queue pairs: one with a small completion queue (it fills up), one with shadow
        // doorbells configured afterwards.
        for (qid, sq_entries, cq_entries) in [(1u32, 32u32, 4u32), (2, 16, 16)] {
            let (sq, cq) = (
                0x100000 * u64::from(qid),
                0x100000 * u64::from(qid) + 0x80000,
            );
            let mut c = Command::new(admin_opcode::CREATE_IO_CQ, 0);
            c.cdw[0] = qid | ((cq_entries - 1) << 16);
            c.cdw[1] = 1;
            c.prp1 = cq;
            assert_eq!(d.admin(c).status, Status::SUCCESS);
            let mut c = Command::new(admin_opcode::CREATE_IO_SQ, 0);
            c.cdw[0] = qid | ((sq_entries - 1) << 16);
            c.cdw[1] = 1 | (qid << 16);
            c.prp1 = sq;
            assert_eq!(d.admin(c).status, Status::SUCCESS);
            d.queues.push((sq, cq, sq_entries, 0, 0, true, cq_entries));
        }

        // Queue 1: bursts of up to 20 writes then reads against a 4-entry completion queue.
        let mut done = 0;
        for round in 0..20u64 {
            let n = 1 + (round % 20) as usize;
            let data: Vec<u8> = (0..512).map(|i| (i as u64 * 7 + round) as u8).collect();
            mem.write_slice(&data, GuestAddress(0x30000)).unwrap();
            for i in 0..n {
                let mut w = Command::new(crate::nvme::command::io_opcode::WRITE, 0);
                w.nsid = 1;
                w.prp1 = 0x30000;
                w.cdw[0] = (round * 32 + i as u64) as u32;
                d.submit(1, w);
            }
            let mut got = 0;
            while got < n {
                let entries = d.reap(1);
                assert!(entries.iter().all(|e| e.status == Status::SUCCESS));
                got += entries.len();
            }
            done += got;
            let mut r = Command::new(crate::nvme::command::io_opcode::READ, 0);
            r.nsid = 1;
            r.prp1 = 0x31000;
            r.cdw[0] = (round * 32 + n as u64 - 1) as u32;
            d.submit(1, r);
            assert_eq!(d.reap(1)[0].status, Status::SUCCESS);
            let mut back = vec![0u8; 512];
            mem.read_slice(&mut back, GuestAddress(0x31000)).unwrap();
            assert_eq!(back, data);
        }
        assert_eq!(done, 210);

        // Shadow doorbells from here on (the guest must then keep the shadow values current).
        let mut dbbc = Command::new(admin_opcode::DOORBELL_BUFFER_CONFIG, 0);
        dbbc.prp1 = 0x20000;
        dbbc.prp2 = 0x21000;
        assert_eq!(d.admin(dbbc).status, Status::SUCCESS);

        // Queue 2 with shadow doorbells, driven the way Linux does: shadow tail first, then the MMIO
        // doorbell only when the event index asks for it.
        let mut mmio_writes = 0;
        for i in 0..200u32 {
            let (sq, _, entries, tail, _, _, _) = &mut d.queues[2];
            let mut r = Command::new(crate::nvme::command::io_opcode::READ, (i % 1000) as u16);
            r.nsid = 1;
            r.prp1 = 0x32000;
            r.cdw[0] = i;
            mem.write_slice(&r.to_bytes(), GuestAddress(*sq + u64::from(*tail) * 64))
                .unwrap();
            let old = *tail;
            *tail = (*tail + 1) % *entries;
            let new = *tail;
            mem.store(new, GuestAddress(0x20000 + 2 * 8), Ordering::SeqCst)
                .unwrap();
            std::sync::atomic::fence(Ordering::SeqCst);
            let event: u32 = mem
                .load(GuestAddress(0x21000 + 2 * 8), Ordering::SeqCst)
                .unwrap();
            let need = (new.wrapping_sub(event).wrapping_sub(1) & 0xffff)
                < (new.wrapping_sub(old) & 0xffff);
            if need {
                mmio_writes += 1;
                d.dev
                    .bar_write(0, registers::sq_tail_doorbell(2), &new.to_le_bytes());
            }
            let entries = d.reap(2);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].status, Status::SUCCESS);
        }
        assert!(mmio_writes > 0);
        drop(d);
    }

    /// A driver with the admin queue and I/O queue pair 1 (32 entries, interrupts on vector 1).
    fn driver_with_one_queue(dev: NvmePci, mem: &GuestMemoryMmap) -> Driver {
        let mut d = Driver {
            dev,
            mem: mem.clone(),
            queues: vec![(0x10000, 0x11000, 4, 0, 0, true, 4)],
            cid: 0,
        };
        d.dev
            .bar_write(0, registers::AQA, &0x0003_0003u32.to_le_bytes());
        d.dev
            .bar_write(0, registers::ASQ, &0x10000u64.to_le_bytes());
        d.dev
            .bar_write(0, registers::ACQ, &0x11000u64.to_le_bytes());
        d.dev.bar_write(
            0,
            registers::CC,
            &(1u32 | (6 << 16) | (4 << 20)).to_le_bytes(),
        );
        let (sq, cq) = (0x100000, 0x180000);
        let mut c = Command::new(admin_opcode::CREATE_IO_CQ, 0);
        c.cdw[0] = 1 | (31 << 16);
        c.cdw[1] = 1 | (1 << 16);
        c.prp1 = cq;
        assert_eq!(d.admin(c).status, Status::SUCCESS);
        let mut c = Command::new(admin_opcode::CREATE_IO_SQ, 0);
        c.cdw[0] = 1 | (31 << 16);
        c.cdw[1] = 1 | (1 << 16);
        c.prp1 = sq;
        assert_eq!(d.admin(c).status, Status::SUCCESS);
        d.queues.push((sq, cq, 32, 0, 0, true, 32));
        d
    }

    #[test]
    fn the_worker_sleeps_on_the_limiter_timer_and_resumes_exactly() {
        use crate::rate_limiter::{
            BucketConfig, RateLimiter, RateLimiterConfig, SharedRateLimiter,
        };
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(4 << 20).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        // 50 IOPS on the volume, one at a time, under a generous shared instance cap.
        let local = RateLimiter::new(&RateLimiterConfig {
            bytes: None,
            ops: Some(BucketConfig::fixed(50.0, 1)),
        })
        .unwrap();
        let shared = SharedRateLimiter::new(&RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(1e9, 1 << 22)),
            ops: None,
        })
        .unwrap();
        let dev = NvmePci::with_rate_limiter(
            &NvmeConfig::new(disk.path()),
            mem.clone(),
            Some(shared.chain(local)),
        )
        .unwrap();
        let mut d = driver_with_one_queue(dev, &mem);
        // Eleven reads at once: the first goes at once, the other ten one per 20 ms.
        for i in 0..11u32 {
            let mut r = Command::new(crate::nvme::command::io_opcode::READ, 0);
            r.nsid = 1;
            r.prp1 = 0x30000;
            r.cdw[0] = i;
            d.submit(1, r);
        }
        let mut times = Vec::new();
        let mut cids = std::collections::BTreeSet::new();
        while times.len() < 11 {
            for e in d.reap(1) {
                assert_eq!(e.status, Status::SUCCESS);
                assert!(cids.insert(e.cid), "completed twice: {e:?}");
                times.push(Instant::now());
            }
        }
        let span = times[10] - times[0];
        assert!(
            span >= Duration::from_millis(195) && span < Duration::from_millis(400),
            "ten throttled reads at 50/s took {span:?}"
        );
        let stats = lock(&d.dev.controller()).throttle_stats();
        // One exact wake-up per held read; no polling, no extra wake-ups.
        assert_eq!(stats.admitted, 11, "{stats:?}");
        assert!(
            (10..=12).contains(&stats.wakeups) && stats.held <= 2 * stats.wakeups + 2,
            "{stats:?}"
        );
        drop(d);
    }
}
