//! The controller: register file and enable/reset/shutdown state machine, doorbells (MMIO and
//! shadow), queue processing, completion posting, interrupts, asynchronous events and the error log.
//! The command handlers live in `admin` and `io`.

use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::command::{io_opcode, Command, Completion, CompletionEntry, CQ_ENTRY_SIZE};
use super::doorbell::Doorbells;
use super::identity::{self, ControllerIdentity, ERROR_LOG_ENTRIES, WARNING_TEMPERATURE};
use super::prp::{in_ram, Segment};
use super::queue::{CompletionQueue, SubmissionQueue};
use super::registers::{
    self, capabilities, decode_doorbell, AdminQueueAttributes, ControllerConfig, Doorbell,
    RegisterFile, CSTS_CFS, CSTS_RDY, CSTS_SHST_MASK, CSTS_SHST_SHIFT, DOORBELL_BASE,
    SHST_COMPLETE,
};
use super::status::Status;
use super::throttle::{Drained, Throttle};
use super::{NvmeConfig, NvmeError, NvmeInterrupts, MAX_MDTS, MAX_QUEUE_ENTRIES, MAX_QUEUE_PAIRS};
use crate::block::{BlockBackend, BlockIo, FailureLog};

/// Asynchronous event type: error status.
pub(super) const EVENT_ERROR: u8 = 0;
/// Asynchronous event type: SMART / health status.
pub(super) const EVENT_SMART: u8 = 1;
/// Error event: a doorbell write to a register of a queue that does not exist.
pub(super) const INFO_INVALID_DOORBELL_REGISTER: u8 = 0x00;
/// Error event: a doorbell value outside the queue (or a head passing the tail).
pub(super) const INFO_INVALID_DOORBELL_VALUE: u8 = 0x01;
/// Error event: a transient internal error (a backing-file I/O error).
pub(super) const INFO_TRANSIENT_INTERNAL_ERROR: u8 = 0x04;
/// SMART event: a temperature threshold was crossed.
pub(super) const INFO_TEMPERATURE_THRESHOLD: u8 = 0x01;
/// Log page: Error Information.
pub(super) const LOG_ERROR_INFORMATION: u8 = 0x01;
/// Log page: SMART / Health Information.
pub(super) const LOG_SMART_HEALTH: u8 = 0x02;
/// Log page: Firmware Slot Information.
pub(super) const LOG_FIRMWARE_SLOT: u8 = 0x03;

/// Events held while no Asynchronous Event Request is outstanding.
pub(super) const MAX_PENDING_EVENTS: usize = 16;
/// The only memory page size supported (CAP.MPSMIN = CAP.MPSMAX = 0).
pub(super) const PAGE_SIZE: u64 = 4096;

/// An asynchronous event waiting for an Asynchronous Event Request to complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AsyncEvent {
    pub event_type: u8,
    pub info: u8,
    pub log_page: u8,
}

impl AsyncEvent {
    /// Dword 0 of the Asynchronous Event Request completion.
    fn result(self) -> u32 {
        u32::from(self.event_type) | (u32::from(self.info) << 8) | (u32::from(self.log_page) << 16)
    }
}

/// Asynchronous Event Requests the guest left with the controller, events not yet reported, and the
/// event types masked until the guest reads their log page.
#[derive(Debug, Default)]
pub(super) struct AsyncEvents {
    pub outstanding: VecDeque<u16>,
    pub pending: VecDeque<AsyncEvent>,
    pub masked: u8,
}

/// Feature values (Get/Set Features). None is saveable; a controller reset restores the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Features {
    pub arbitration: u32,
    pub power_management: u32,
    /// Composite temperature thresholds in kelvins: over, under.
    pub temperature_over: u16,
    pub temperature_under: u16,
    pub error_recovery: u32,
    pub write_cache: bool,
    /// I/O submission and completion queues allocated (Number of Queues), as counts.
    pub sq_allocated: u16,
    pub cq_allocated: u16,
    pub interrupt_coalescing: u32,
    /// Interrupt Vector Configuration per vector (bit 16: coalescing disable).
    pub vector_config: Vec<u32>,
    pub write_atomicity: u32,
    pub async_event_config: u32,
    pub keep_alive: u32,
}

impl Features {
    pub fn defaults(queue_pairs: u16) -> Self {
        Features {
            arbitration: 0,
            power_management: 0,
            temperature_over: WARNING_TEMPERATURE,
            temperature_under: 0,
            error_recovery: 0,
            write_cache: true,
            sq_allocated: queue_pairs,
            cq_allocated: queue_pairs,
            interrupt_coalescing: 0,
            vector_config: (0..=queue_pairs).map(u32::from).collect(),
            write_atomicity: 0,
            async_event_config: 0,
            keep_alive: 0,
        }
    }
}

/// One Error Information log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ErrorEntry {
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    pub lba: u64,
    pub nsid: u32,
}

/// Counters for the SMART / Health log.
#[derive(Debug)]
pub(super) struct Health {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_commands: u64,
    pub write_commands: u64,
    pub started: Instant,
}

/// The shadow doorbell and event index buffers (Doorbell Buffer Config), one page each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shadow {
    pub doorbells: u64,
    pub event_indexes: u64,
}

impl Shadow {
    fn sq_slot(base: u64, qid: u16) -> GuestAddress {
        GuestAddress(base + u64::from(qid) * 8)
    }
    fn cq_slot(base: u64, qid: u16) -> GuestAddress {
        GuestAddress(base + u64::from(qid) * 8 + 4)
    }
}

/// An NVMe controller with one namespace (NSID 1) on a block backend.
pub struct NvmeController {
    pub(super) identify_controller: Vec<u8>,
    pub(super) volume_id: String,
    pub(super) backend: Box<dyn BlockIo>,
    pub(super) read_only: bool,
    pub(super) block_shift: u32,
    pub(super) blocks: u64,
    pub(super) mdts_bytes: u64,
    pub(super) max_queue_pairs: u16,
    pub(super) mem: GuestMemoryMmap,
    pub(super) irq: Box<dyn NvmeInterrupts>,
    pub(super) regs: RegisterFile,
    pub(super) doorbells: Arc<Doorbells>,
    pub(super) sqs: Vec<Option<SubmissionQueue>>,
    pub(super) cqs: Vec<Option<CompletionQueue>>,
    pub(super) features: Features,
    pub(super) events: AsyncEvents,
    pub(super) shadow: Option<Shadow>,
    pub(super) error_count: u64,
    pub(super) error_log: VecDeque<ErrorEntry>,
    pub(super) health: Health,
    pub(super) queues_created: bool,
    pub(super) segments: Vec<Segment>,
    pub(super) bounce: Vec<u8>,
    /// Rate-limited warnings about the disk file failing.
    pub(super) failures: FailureLog,
    /// The volume's rate limits and the submission queues waiting for them (`throttle.rs`).
    pub(super) throttle: Throttle,
}

fn validate(config: &NvmeConfig) -> Result<(), NvmeError> {
    if config.block_size != 512 && config.block_size != 4096 {
        return Err(NvmeError::BlockSize(config.block_size));
    }
    if config.max_queue_pairs == 0 || config.max_queue_pairs > MAX_QUEUE_PAIRS {
        return Err(NvmeError::QueuePairs(config.max_queue_pairs));
    }
    if config.mdts == 0 || config.mdts > MAX_MDTS {
        return Err(NvmeError::Mdts(config.mdts));
    }
    if let Some(id) = &config.volume_id {
        identity::validate_volume_id(id)?;
    }
    if let Some(name) = &config.device_name {
        identity::validate_device_name(name)?;
    }
    Ok(())
}

impl NvmeController {
    /// Opens `config.path` (read-only if `config.read_only`, locked against other processes) and
    /// builds a disabled controller on it. `mem` is guest RAM, `irq` how interrupts and worker
    /// wake-ups leave the controller.
    pub fn new(
        config: &NvmeConfig,
        mem: GuestMemoryMmap,
        irq: Box<dyn NvmeInterrupts>,
    ) -> Result<Self, NvmeError> {
        validate(config)?;
        let backend = BlockBackend::open(&config.path, config.read_only)?;
        Self::with_backend(config, Box::new(backend), mem, irq)
    }

    /// Builds a disabled controller on an already opened backend (`config.path` only names the
    /// volume). The namespace is read-only if `config.read_only` or the backend is.
    pub fn with_backend(
        config: &NvmeConfig,
        backend: Box<dyn BlockIo>,
        mem: GuestMemoryMmap,
        irq: Box<dyn NvmeInterrupts>,
    ) -> Result<Self, NvmeError> {
        validate(config)?;
        let blocks = backend.size() / u64::from(config.block_size);
        if blocks == 0 {
            return Err(NvmeError::TooSmall {
                path: config.path.clone(),
                size: backend.size(),
                block_size: config.block_size,
            });
        }
        let volume_id = config
            .volume_id
            .clone()
            .unwrap_or_else(|| identity::default_volume_id(&config.path));
        let identity = ControllerIdentity {
            volume_id: volume_id.clone(),
            device_name: config.device_name.clone(),
            mdts: config.mdts,
        };
        let queues = usize::from(config.max_queue_pairs) + 1;
        Ok(NvmeController {
            identify_controller: identity.identify_controller(),
            volume_id,
            read_only: config.read_only || backend.read_only(),
            backend,
            block_shift: config.block_size.trailing_zeros(),
            blocks,
            mdts_bytes: PAGE_SIZE << config.mdts,
            max_queue_pairs: config.max_queue_pairs,
            mem,
            irq,
            regs: RegisterFile {
                cap: capabilities((MAX_QUEUE_ENTRIES - 1) as u16, 20),
                ..Default::default()
            },
            doorbells: Arc::new(Doorbells::new(config.max_queue_pairs)),
            sqs: vec![None; queues],
            cqs: vec![None; queues],
            features: Features::defaults(config.max_queue_pairs),
            events: AsyncEvents::default(),
            shadow: None,
            error_count: 0,
            error_log: VecDeque::new(),
            health: Health {
                bytes_read: 0,
                bytes_written: 0,
                read_commands: 0,
                write_commands: 0,
                started: Instant::now(),
            },
            queues_created: false,
            segments: Vec::new(),
            bounce: Vec::new(),
            failures: FailureLog::default(),
            throttle: Throttle::default(),
        })
    }

    /// The volume id (`vol-…`); the serial number is this without its dash.
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// Namespace size in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        1 << self.block_shift
    }

    /// Whether the namespace is write protected.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Number of I/O queue pairs offered.
    pub fn max_queue_pairs(&self) -> u16 {
        self.max_queue_pairs
    }

    /// Number of MSI-X vectors the controller uses (one per queue pair plus the admin queue's).
    pub fn msix_vectors(&self) -> u16 {
        self.max_queue_pairs + 1
    }

    /// Bytes of BAR0 the registers and doorbells of every queue need (a power of two).
    pub fn register_space_len(&self) -> u64 {
        (registers::cq_head_doorbell(self.max_queue_pairs) + 4).next_power_of_two()
    }

    /// Whether the controller is enabled and ready (CSTS.RDY).
    pub fn is_ready(&self) -> bool {
        self.regs.ready()
    }

    /// The doorbell registers, for a transport that takes doorbell writes without the controller
    /// lock: it calls [`Doorbells::write`] and wakes the worker as told (see [`DoorbellWake`]).
    ///
    /// [`DoorbellWake`]: super::doorbell::DoorbellWake
    pub fn doorbells(&self) -> Arc<Doorbells> {
        self.doorbells.clone()
    }

    /// Whether the guest has configured shadow doorbells.
    pub fn shadow_doorbells_enabled(&self) -> bool {
        self.shadow.is_some()
    }

    // ---- registers ------------------------------------------------------------------------

    /// A guest read of `data.len()` bytes at BAR0 `offset`. Any offset and width: registers read as
    /// their little-endian bytes, reserved space and doorbells as zero.
    pub fn read_register(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                Some(addr) if addr < DOORBELL_BASE => {
                    (self.regs.read_dword(addr & !3) >> (8 * (addr & 3))) as u8
                }
                _ => 0,
            };
        }
    }

    /// A guest write of `data` at BAR0 `offset`. Any offset and width: the bytes are merged into the
    /// 32-bit registers they touch. Doorbell writes update the queue and call
    /// [`NvmeInterrupts::notify_worker`]; they never run commands on the caller's thread.
    pub fn write_register(&mut self, offset: u64, data: &[u8]) {
        let mut i = 0usize;
        while i < data.len() {
            let Some(addr) = offset.checked_add(i as u64) else {
                return;
            };
            let dword = addr & !3;
            let start = (addr & 3) as usize;
            let n = (4 - start).min(data.len() - i);
            let base = match dword {
                registers::INTMS | registers::INTMC => 0,
                d if d < DOORBELL_BASE => self.regs.read_dword(d),
                _ => 0,
            };
            let mut bytes = base.to_le_bytes();
            bytes[start..start + n].copy_from_slice(&data[i..i + n]);
            let value = u32::from_le_bytes(bytes);
            if dword >= DOORBELL_BASE {
                self.write_doorbell(dword, value);
            } else {
                self.write_dword(dword, value);
            }
            i += n;
        }
    }

    fn write_dword(&mut self, offset: u64, value: u32) {
        if offset == registers::CC {
            self.write_cc(value);
            return;
        }
        let regs = &mut self.regs;
        match offset {
            registers::INTMS => regs.intm |= value,
            registers::INTMC => regs.intm &= !value,
            registers::AQA => regs.aqa = value & 0x0fff_0fff,
            registers::ASQ => regs.asq = (regs.asq & !0xffff_ffff) | u64::from(value),
            o if o == registers::ASQ + 4 => {
                regs.asq = (regs.asq & 0xffff_ffff) | (u64::from(value) << 32)
            }
            registers::ACQ => regs.acq = (regs.acq & !0xffff_ffff) | u64::from(value),
            o if o == registers::ACQ + 4 => {
                regs.acq = (regs.acq & 0xffff_ffff) | (u64::from(value) << 32)
            }
            // CAP, VS, CSTS, NSSR (not supported) and reserved space.
            _ => {}
        }
    }

    fn write_cc(&mut self, value: u32) {
        let old = ControllerConfig(self.regs.cc);
        let new = ControllerConfig(value);
        self.regs.cc = value;
        if !old.enabled() && new.enabled() {
            self.enable();
        } else if old.enabled() && !new.enabled() {
            self.reset();
        }
        if new.shn() != 0 && old.shn() == 0 {
            self.shutdown();
        } else if new.shn() == 0 && old.shn() != 0 {
            self.regs.csts &= !(CSTS_SHST_MASK << CSTS_SHST_SHIFT);
        }
    }

    /// CC.EN 0 → 1: check the admin queue and CC, then create the admin queues and set CSTS.RDY, or
    /// set CSTS.CFS.
    fn enable(&mut self) {
        let cc = ControllerConfig(self.regs.cc);
        let aqa = AdminQueueAttributes(self.regs.aqa);
        let (asq, acq) = (self.regs.asq, self.regs.acq);
        let problem = if cc.css() != 0 {
            Some("CC.CSS is not the NVM command set")
        } else if cc.mps() != 0 {
            Some("CC.MPS is not 4 KiB")
        } else if cc.ams() != 0 {
            Some("CC.AMS is not round robin")
        } else if cc.iosqes() != 6 || cc.iocqes() != 4 {
            Some("CC.IOSQES/IOCQES are not 64/16 bytes")
        } else if aqa.sq_entries() < 2 || aqa.cq_entries() < 2 {
            Some("AQA gives an admin queue of fewer than 2 entries")
        } else if asq & (PAGE_SIZE - 1) != 0 || acq & (PAGE_SIZE - 1) != 0 {
            Some("ASQ/ACQ are not page aligned")
        } else if !in_ram(&self.mem, asq, u64::from(aqa.sq_entries()) * 64)
            || !in_ram(&self.mem, acq, u64::from(aqa.cq_entries()) * CQ_ENTRY_SIZE)
        {
            Some("the admin queues are not in guest RAM")
        } else {
            None
        };
        if let Some(problem) = problem {
            // Guest mistakes are answered through CSTS and completion statuses; logging them above
            // debug level would let a guest flood the host's log.
            log::debug!(
                "nvme {}: enable failed: {problem} (CC {:#x}, AQA {:#x}, ASQ {asq:#x}, ACQ {acq:#x})",
                self.volume_id,
                self.regs.cc,
                self.regs.aqa
            );
            self.regs.csts |= CSTS_CFS;
            return;
        }
        self.sqs[0] = Some(SubmissionQueue::new(
            0,
            GuestAddress(asq),
            aqa.sq_entries(),
            0,
        ));
        self.cqs[0] = Some(CompletionQueue::new(
            0,
            GuestAddress(acq),
            aqa.cq_entries(),
            true,
            0,
        ));
        self.doorbells.clear();
        self.doorbells.set_cq_present(0, true);
        self.regs.csts = CSTS_RDY;
    }

    /// CC.EN 1 → 0: a controller reset. Every queue is deleted, outstanding Asynchronous Event
    /// Requests and the shadow doorbells are dropped and the features return to their defaults.
    fn reset(&mut self) {
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.doorbells.clear();
        self.events = AsyncEvents::default();
        if self.shadow.take().is_some() {
            self.irq.shadow_doorbells_changed(false);
        }
        self.features = Features::defaults(self.max_queue_pairs);
        self.queues_created = false;
        // The queues are gone; the limiter keeps its tokens and credits (the volume's budget does not
        // reset with the controller), and a pending timer finds nothing to resume.
        self.throttle.waiting.clear();
        self.regs.csts &= !(CSTS_RDY | CSTS_CFS);
    }

    /// CC.SHN: make every completed write durable, then report shutdown complete. Commands run to
    /// completion inside the processing calls, so nothing is in flight here.
    fn shutdown(&mut self) {
        if let Err(e) = self.backend.flush() {
            log::warn!("nvme {}: flush at shutdown failed: {e}", self.volume_id);
        }
        self.regs.csts = (self.regs.csts & !(CSTS_SHST_MASK << CSTS_SHST_SHIFT))
            | (SHST_COMPLETE << CSTS_SHST_SHIFT);
    }

    // ---- doorbells ------------------------------------------------------------------------

    /// A doorbell write that reached [`Self::write_register`]: applied at once (an invalid value or
    /// queue is reported now), then the worker is asked to run the commands.
    fn write_doorbell(&mut self, offset: u64, value: u32) {
        if !self.regs.ready() {
            return;
        }
        self.doorbells.write(offset, value);
        self.check_stray_doorbells();
        match decode_doorbell(offset) {
            Some(Doorbell::SqTail(qid)) => {
                self.sync_sq_tail(qid);
                if self
                    .sqs
                    .get(usize::from(qid))
                    .and_then(Option::as_ref)
                    .is_some_and(|sq| !sq.is_empty())
                {
                    self.irq.notify_worker(qid);
                }
            }
            Some(Doorbell::CqHead(qid)) => {
                self.sync_cq_head(qid);
                self.cq_head_moved(qid, false);
            }
            None => {}
        }
    }

    fn doorbell_error(&mut self, info: u8) {
        log::debug!(
            "nvme {}: invalid doorbell write ({})",
            self.volume_id,
            if info == INFO_INVALID_DOORBELL_VALUE {
                "value"
            } else {
                "register"
            }
        );
        self.post_event(AsyncEvent {
            event_type: EVENT_ERROR,
            info,
            log_page: LOG_ERROR_INFORMATION,
        });
    }

    /// Reports a write to the doorbell of a queue id beyond the controller's.
    pub(super) fn check_stray_doorbells(&mut self) {
        if self.doorbells.take_stray() {
            self.doorbell_error(INFO_INVALID_DOORBELL_REGISTER);
        }
    }

    /// Applies a tail written to submission queue `qid`'s doorbell since the last look (reporting
    /// an invalid value or queue), then, with shadow doorbells, the tail in the shadow buffer.
    fn sync_sq_tail(&mut self, qid: u16) {
        if let Some(tail) = self.doorbells.take_sq_tail(qid) {
            match self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) {
                Some(sq) => {
                    if !sq.set_tail(tail) {
                        self.doorbell_error(INFO_INVALID_DOORBELL_VALUE);
                    }
                }
                None => self.doorbell_error(INFO_INVALID_DOORBELL_REGISTER),
            }
        }
        self.refresh_sq_tail(qid);
    }

    /// Applies a head written to completion queue `qid`'s doorbell since the last look (reporting
    /// an invalid value or queue), then, with shadow doorbells, the head in the shadow buffer.
    fn sync_cq_head(&mut self, qid: u16) {
        if let Some(head) = self.doorbells.take_cq_head(qid) {
            match self.cqs.get_mut(usize::from(qid)).and_then(Option::as_mut) {
                Some(cq) => {
                    if !cq.set_head(head) {
                        self.doorbell_error(INFO_INVALID_DOORBELL_VALUE);
                    }
                }
                None => self.doorbell_error(INFO_INVALID_DOORBELL_REGISTER),
            }
        }
        self.refresh_cq_head(qid);
    }

    /// A completion queue's head may have moved. If submission queues were waiting for room, process
    /// them (`inline`, on the worker) or ask the worker to (from a register write).
    fn cq_head_moved(&mut self, cqid: u16, inline: bool) {
        let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
            return;
        };
        if cq.waiting && !cq.is_full() {
            cq.waiting = false;
            self.doorbells.set_cq_present(cqid, true);
            let waiting: Vec<u16> = self
                .sqs
                .iter()
                .flatten()
                .filter(|sq| sq.cqid == cqid)
                .map(|sq| sq.id)
                .collect();
            for sqid in waiting {
                if inline {
                    self.drain(sqid);
                } else {
                    self.irq.notify_worker(sqid);
                }
            }
        }
        if cqid == 0 {
            self.deliver_events();
        }
        self.raise_interrupts();
    }

    /// With shadow doorbells, takes I/O submission queue `qid`'s tail from the shadow buffer.
    fn refresh_sq_tail(&mut self, qid: u16) {
        let Some(shadow) = self.shadow.filter(|_| qid != 0) else {
            return;
        };
        let Ok(tail) = self
            .mem
            .load::<u32>(Shadow::sq_slot(shadow.doorbells, qid), Ordering::Acquire)
        else {
            return;
        };
        if let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) {
            if tail != sq.tail && !sq.set_tail(tail) {
                self.doorbell_error(INFO_INVALID_DOORBELL_VALUE);
            }
        }
    }

    /// With shadow doorbells, takes I/O completion queue `qid`'s head from the shadow buffer.
    fn refresh_cq_head(&mut self, qid: u16) {
        let Some(shadow) = self.shadow.filter(|_| qid != 0) else {
            return;
        };
        let Ok(head) = self
            .mem
            .load::<u32>(Shadow::cq_slot(shadow.doorbells, qid), Ordering::Acquire)
        else {
            return;
        };
        if let Some(cq) = self.cqs.get_mut(usize::from(qid)).and_then(Option::as_mut) {
            if head != cq.head && !cq.set_head(head) {
                self.doorbell_error(INFO_INVALID_DOORBELL_VALUE);
            }
        }
    }

    /// Writes the event index of an I/O queue: the guest rings the MMIO doorbell only when its new
    /// value passes this one.
    fn write_event_index(&self, slot: GuestAddress, value: u32) {
        if let Err(e) = self.mem.store(value, slot, Ordering::Release) {
            log::debug!("nvme {}: cannot write event index: {e}", self.volume_id);
        }
    }

    // ---- queue processing -----------------------------------------------------------------

    /// Runs every command the guest submitted on submission queue `qid` (0 = admin) until the queue
    /// is empty or its completion queue is full, posts the completions, and signals each completion
    /// queue's vector once. With shadow doorbells the tail comes from the shadow buffer. Does nothing
    /// for a queue that does not exist or while the controller is not ready.
    pub fn process_submission_queue(&mut self, qid: u16) {
        if !self.regs.ready() {
            return;
        }
        self.check_stray_doorbells();
        self.drain(qid);
        self.raise_interrupts();
    }

    /// [`Self::process_submission_queue`] for the admin queue.
    pub fn process_admin_queue(&mut self) {
        self.process_submission_queue(0);
    }

    /// The guest moved completion queue `cqid`'s head (a [`Doorbells::write`] that asked for it, or
    /// a doorbell that went to an ioeventfd with shadow doorbells): takes the new head and resumes
    /// the submission queues that were waiting for room.
    pub fn process_completion_queue(&mut self, cqid: u16) {
        if !self.regs.ready() {
            return;
        }
        self.check_stray_doorbells();
        self.sync_cq_head(cqid);
        self.cq_head_moved(cqid, true);
    }

    /// Processes every existing submission queue, admin queue first.
    pub fn process_all(&mut self) {
        if !self.regs.ready() {
            return;
        }
        self.check_stray_doorbells();
        for qid in 0..=self.max_queue_pairs {
            if self.sqs[usize::from(qid)].is_some() {
                self.drain(qid);
            }
        }
        self.raise_interrupts();
    }

    fn drain(&mut self, qid: u16) {
        self.drain_budget(qid, usize::MAX);
    }

    /// Runs up to `budget` commands of submission queue `qid`: until the queue is empty, its
    /// completion queue is full, the volume's rate limiter holds back the command at its head (left
    /// in the queue, and the queue put on the limiter's waiting list), or the budget is spent.
    pub(super) fn drain_budget(&mut self, qid: u16, mut budget: usize) -> Drained {
        let shadowed = qid != 0 && self.shadow.is_some();
        loop {
            self.sync_sq_tail(qid);
            loop {
                let Some(sq) = self.sqs.get(usize::from(qid)).and_then(Option::as_ref) else {
                    return Drained::Gone;
                };
                if sq.is_empty() {
                    break;
                }
                if budget == 0 {
                    return Drained::Budget;
                }
                let cqid = sq.cqid;
                if !self.cq_has_room(cqid) {
                    return Drained::CqFull;
                }
                let Some(sq) = self.sqs[usize::from(qid)].as_ref() else {
                    return Drained::Gone;
                };
                match sq.peek(&self.mem) {
                    None => break,
                    Some(Ok(cmd)) => {
                        // Admin commands never wait for the limiter; I/O commands may.
                        if qid != 0 && !self.admit(qid, &cmd) {
                            return Drained::Throttled;
                        }
                        if let Some(sq) = self.sqs[usize::from(qid)].as_mut() {
                            sq.advance();
                        }
                        self.execute(qid, &cmd);
                        budget -= 1;
                    }
                    Some(Err(())) => {
                        if let Some(sq) = self.sqs[usize::from(qid)].as_mut() {
                            sq.advance();
                        }
                        log::debug!(
                            "nvme {}: submission queue {qid} entry not in guest RAM; skipped",
                            self.volume_id
                        );
                    }
                }
            }
            if !shadowed {
                return Drained::Empty;
            }
            // Publish the tail we have consumed up to, then look again: the guest may have queued
            // more after we read the shadow tail but before it saw the new event index.
            let (Some(shadow), Some((tail, size))) = (
                self.shadow,
                self.sqs[usize::from(qid)]
                    .as_ref()
                    .map(|sq| (sq.tail, sq.size)),
            ) else {
                return Drained::Gone;
            };
            self.write_event_index(Shadow::sq_slot(shadow.event_indexes, qid), tail);
            fence(Ordering::SeqCst);
            match self
                .mem
                .load::<u32>(Shadow::sq_slot(shadow.doorbells, qid), Ordering::Acquire)
            {
                // A new, valid tail: go round again. An invalid one was reported already.
                Ok(t) if t != tail && t < size => continue,
                _ => return Drained::Empty,
            }
        }
    }

    /// Whether completion queue `cqid` has a free slot. When it has none, marks it so that the
    /// guest's next head update wakes the worker (with shadow doorbells, also asks the guest through
    /// the event index to ring the MMIO doorbell on its next head update).
    fn cq_has_room(&mut self, cqid: u16) -> bool {
        match self.cqs.get(usize::from(cqid)).and_then(Option::as_ref) {
            Some(cq) if !cq.is_full() => return true,
            Some(_) => {}
            None => return false,
        }
        self.sync_cq_head(cqid);
        let Some(cq) = self.cqs[usize::from(cqid)].as_mut() else {
            return false;
        };
        if !cq.is_full() {
            return true;
        }
        cq.waiting = true;
        let head = cq.head;
        self.doorbells.set_cq_waiting(cqid);
        if let Some(shadow) = self.shadow.filter(|_| cqid != 0) {
            self.write_event_index(Shadow::cq_slot(shadow.event_indexes, cqid), head);
        }
        fence(Ordering::SeqCst);
        // A head written before the queue was marked did not wake anyone: look once more.
        self.sync_cq_head(cqid);
        match self.cqs[usize::from(cqid)].as_mut() {
            Some(cq) if !cq.is_full() => {
                cq.waiting = false;
                self.doorbells.set_cq_present(cqid, true);
                true
            }
            _ => false,
        }
    }

    fn execute(&mut self, qid: u16, cmd: &Command) {
        let completion = if qid == 0 {
            self.admin_command(cmd)
        } else {
            Some(self.io_command(cmd))
        };
        if let Some(completion) = completion {
            if !completion.status.is_success() {
                self.record_error(qid, cmd, completion.status);
            }
            self.post_completion(qid, cmd.cid(), completion);
        }
        // Events the command raised (or the Asynchronous Event Request it left) may complete a
        // request now that the command's own completion has its slot.
        self.deliver_events();
    }

    /// Posts the completion of command `cid` of submission queue `sqid` on its completion queue.
    /// Returns false (and drops it) if the queues are gone or the slot is not writable.
    pub(super) fn post_completion(&mut self, sqid: u16, cid: u16, completion: Completion) -> bool {
        let Some(sq) = self.sqs.get(usize::from(sqid)).and_then(Option::as_ref) else {
            return false;
        };
        let (sq_head, cqid) = (sq.head, sq.cqid);
        let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
            return false;
        };
        let entry = CompletionEntry {
            result: completion.result,
            sq_head: sq_head as u16,
            sq_id: sqid,
            cid,
            phase: false,
            status: completion.status,
        };
        if cq.post(&self.mem, entry).is_err() {
            log::debug!(
                "nvme {}: completion queue {cqid} is full or not in guest RAM; completion of \
                 command {cid} on queue {sqid} dropped",
                self.volume_id
            );
            return false;
        }
        true
    }

    /// Signals the vector of every completion queue that got entries since its last interrupt
    /// (polled queues only have the flag cleared).
    pub(super) fn raise_interrupts(&mut self) {
        for cq in self.cqs.iter_mut().flatten() {
            if cq.interrupt_pending {
                cq.interrupt_pending = false;
                if cq.interrupts_enabled {
                    self.irq.signal(cq.vector);
                }
            }
        }
    }

    // ---- asynchronous events and the error log ---------------------------------------------

    /// Queues an asynchronous event and completes an outstanding Asynchronous Event Request with it
    /// if one is waiting and the event's type is not masked.
    pub(super) fn post_event(&mut self, event: AsyncEvent) {
        self.queue_event(event);
        self.deliver_events();
        self.raise_interrupts();
    }

    /// Completes outstanding Asynchronous Event Requests with pending, unmasked events while the
    /// admin completion queue has room.
    pub(super) fn deliver_events(&mut self) {
        while !self.events.outstanding.is_empty() {
            let masked = self.events.masked;
            let Some(index) = self
                .events
                .pending
                .iter()
                .position(|e| masked & (1 << e.event_type) == 0)
            else {
                return;
            };
            if !self.cq_has_room(0) {
                return;
            }
            let (Some(event), Some(cid)) = (
                self.events.pending.remove(index),
                self.events.outstanding.pop_front(),
            ) else {
                return;
            };
            self.events.masked |= 1 << event.event_type;
            self.post_completion(0, cid, Completion::ok(event.result()));
        }
    }

    /// Adds an Error Information log entry for a failed command.
    fn record_error(&mut self, sqid: u16, cmd: &Command, status: Status) {
        self.error_count += 1;
        let lba = if sqid != 0
            && matches!(
                cmd.opcode(),
                io_opcode::READ | io_opcode::WRITE | io_opcode::WRITE_ZEROES
            ) {
            u64::from(cmd.dw(10)) | (u64::from(cmd.dw(11)) << 32)
        } else {
            0
        };
        self.error_log.push_front(ErrorEntry {
            count: self.error_count,
            sqid,
            cid: cmd.cid(),
            status,
            lba,
            nsid: cmd.nsid,
        });
        self.error_log.truncate(ERROR_LOG_ENTRIES);
    }
}
