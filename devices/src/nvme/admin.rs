//! Admin command set (NVMe 1.4 §5): Identify, queue creation and deletion, features, log pages,
//! asynchronous events, Abort, Keep Alive and Doorbell Buffer Config.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::command::{admin_opcode as op, Command, Completion};
use super::controller::{
    AsyncEvent, Features, NvmeController, Shadow, EVENT_ERROR, EVENT_SMART,
    INFO_TEMPERATURE_THRESHOLD, LOG_ERROR_INFORMATION, LOG_FIRMWARE_SLOT, LOG_SMART_HEALTH,
    MAX_PENDING_EVENTS, PAGE_SIZE,
};
use super::identity::{
    identify_namespace, AER_LIMIT, COMPOSITE_TEMPERATURE, ERROR_LOG_ENTRIES, FIRMWARE_REVISION,
    IDENTIFY_SIZE,
};
use super::prp::{in_ram, map_prps, write_to_guest};
use super::queue::{CompletionQueue, SubmissionQueue};
use super::status::Status;
use super::MAX_QUEUE_ENTRIES;

/// Feature identifiers.
mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// Get Features Select: supported capabilities.
const SEL_SUPPORTED: u32 = 3;
/// Supported capabilities: the feature is changeable.
const CAPABILITY_CHANGEABLE: u32 = 1 << 2;
/// Async Event Configuration bit enabling temperature SMART events.
const AEC_TEMPERATURE: u32 = 1 << 1;
/// SMART critical warning bit: temperature outside a threshold.
const CRITICAL_TEMPERATURE: u8 = 1 << 1;

type AdminResult = Result<Completion, Status>;

fn queue_id(cmd: &Command) -> u16 {
    cmd.dw(10) as u16
}

/// Queue size in entries (QSIZE is 0-based).
fn queue_entries(cmd: &Command) -> u32 {
    (cmd.dw(10) >> 16) + 1
}

fn put_u128(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 16].copy_from_slice(&u128::from(value).to_le_bytes());
}

impl NvmeController {
    /// Runs one admin command. None means the command is held (an Asynchronous Event Request).
    pub(super) fn admin_command(&mut self, cmd: &Command) -> Option<Completion> {
        if cmd.fuse() != 0 || cmd.psdt() != 0 {
            return Some(Status::INVALID_FIELD.into());
        }
        let result = match cmd.opcode() {
            op::DELETE_IO_SQ => self.delete_io_sq(cmd),
            op::CREATE_IO_SQ => self.create_io_sq(cmd),
            op::GET_LOG_PAGE => self.get_log_page(cmd),
            op::DELETE_IO_CQ => self.delete_io_cq(cmd),
            op::CREATE_IO_CQ => self.create_io_cq(cmd),
            op::IDENTIFY => self.identify(cmd),
            op::ABORT => self.abort(cmd),
            op::SET_FEATURES => self.set_features(cmd),
            op::GET_FEATURES => self.get_features(cmd),
            op::ASYNC_EVENT_REQUEST => return self.async_event_request(cmd),
            op::KEEP_ALIVE => Ok(Completion::OK),
            op::DOORBELL_BUFFER_CONFIG => self.doorbell_buffer_config(cmd),
            _ => Err(Status::INVALID_OPCODE),
        };
        Some(result.into())
    }

    /// Copies `data` into the host buffer the command's PRPs describe.
    fn send_to_host(&mut self, cmd: &Command, data: &[u8]) -> Result<(), Status> {
        let mut segments = std::mem::take(&mut self.segments);
        let result = map_prps(
            &self.mem,
            cmd.prp1,
            cmd.prp2,
            data.len() as u64,
            PAGE_SIZE,
            &mut segments,
        )
        .and_then(|()| write_to_guest(&self.mem, &segments, data));
        self.segments = segments;
        result
    }

    // ---- Identify -------------------------------------------------------------------------

    fn identify(&mut self, cmd: &Command) -> AdminResult {
        let data = match cmd.dw(10) & 0xff {
            // Identify Namespace.
            0x00 => {
                if cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify_namespace(self.blocks, self.block_size(), self.read_only)
            }
            // Identify Controller.
            0x01 => self.identify_controller.clone(),
            // Active Namespace ID list: the active NSIDs greater than cmd.nsid.
            0x02 => {
                if cmd.nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                let mut list = vec![0u8; IDENTIFY_SIZE];
                if cmd.nsid == 0 {
                    list[0..4].copy_from_slice(&1u32.to_le_bytes());
                }
                list
            }
            // Namespace Identification Descriptor list: none (like EBS, no EUI64/NGUID/UUID).
            0x03 => {
                if cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                vec![0u8; IDENTIFY_SIZE]
            }
            // I/O Command Set specific Identify Namespace and Controller for the NVM command set
            // (CSI 0): no NVM-specific limits or features to report, so all zeroes. Linux 6.x asks
            // for the controller one.
            0x05 | 0x06 => {
                if cmd.dw(11) >> 24 != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                if cmd.dw(10) & 0xff == 0x05 && cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                vec![0u8; IDENTIFY_SIZE]
            }
            _ => return Err(Status::INVALID_FIELD),
        };
        self.send_to_host(cmd, &data)?;
        Ok(Completion::OK)
    }

    // ---- queues ---------------------------------------------------------------------------

    fn create_io_cq(&mut self, cmd: &Command) -> AdminResult {
        let qid = queue_id(cmd);
        let entries = queue_entries(cmd);
        let flags = cmd.dw(11);
        let contiguous = flags & 1 != 0;
        let interrupts = flags & 2 != 0;
        let vector = (flags >> 16) as u16;
        if qid == 0 || qid > self.features.cq_allocated || self.cqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QUEUE_ID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&entries) {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        if cmd.prp1 & (PAGE_SIZE - 1) != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        if interrupts && vector >= self.msix_vectors() {
            return Err(Status::INVALID_INTERRUPT_VECTOR);
        }
        if !contiguous || !in_ram(&self.mem, cmd.prp1, u64::from(entries) * 16) {
            return Err(Status::INVALID_FIELD);
        }
        self.cqs[usize::from(qid)] = Some(CompletionQueue::new(
            qid,
            GuestAddress(cmd.prp1),
            entries,
            interrupts,
            vector,
        ));
        // A head written before the queue existed (and reported then) must not apply to it.
        let _ = self.doorbells.take_cq_head(qid);
        self.doorbells.set_cq_present(qid, true);
        self.queues_created = true;
        Ok(Completion::OK)
    }

    fn create_io_sq(&mut self, cmd: &Command) -> AdminResult {
        let qid = queue_id(cmd);
        let entries = queue_entries(cmd);
        let flags = cmd.dw(11);
        let contiguous = flags & 1 != 0;
        let cqid = (flags >> 16) as u16;
        if qid == 0 || qid > self.features.sq_allocated || self.sqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QUEUE_ID);
        }
        if cqid == 0
            || self
                .cqs
                .get(usize::from(cqid))
                .and_then(Option::as_ref)
                .is_none()
        {
            return Err(Status::INVALID_CQ);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&entries) {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        if cmd.prp1 & (PAGE_SIZE - 1) != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        if !contiguous || !in_ram(&self.mem, cmd.prp1, u64::from(entries) * 64) {
            return Err(Status::INVALID_FIELD);
        }
        self.sqs[usize::from(qid)] = Some(SubmissionQueue::new(
            qid,
            GuestAddress(cmd.prp1),
            entries,
            cqid,
        ));
        let _ = self.doorbells.take_sq_tail(qid);
        self.queues_created = true;
        Ok(Completion::OK)
    }

    fn delete_io_sq(&mut self, cmd: &Command) -> AdminResult {
        let qid = queue_id(cmd);
        match self.sqs.get_mut(usize::from(qid)) {
            Some(slot @ Some(_)) if qid != 0 => {
                // Commands run to completion when fetched, so none is outstanding; entries not
                // fetched yet are dropped with the queue.
                *slot = None;
                Ok(Completion::OK)
            }
            _ => Err(Status::INVALID_QUEUE_ID),
        }
    }

    fn delete_io_cq(&mut self, cmd: &Command) -> AdminResult {
        let qid = queue_id(cmd);
        if qid == 0
            || self
                .cqs
                .get(usize::from(qid))
                .and_then(Option::as_ref)
                .is_none()
        {
            return Err(Status::INVALID_QUEUE_ID);
        }
        if self.sqs.iter().flatten().any(|sq| sq.cqid == qid) {
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        self.cqs[usize::from(qid)] = None;
        self.doorbells.set_cq_present(qid, false);
        Ok(Completion::OK)
    }

    // ---- features -------------------------------------------------------------------------

    fn set_features(&mut self, cmd: &Command) -> AdminResult {
        let dw10 = cmd.dw(10);
        let value = cmd.dw(11);
        if dw10 & (1 << 31) != 0 {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        let vectors = self.msix_vectors();
        let f = &mut self.features;
        let mut result = 0;
        match dw10 as u8 {
            fid::ARBITRATION => f.arbitration = value,
            fid::POWER_MANAGEMENT => {
                // One power state (NPSS = 0).
                if value & 0x1f != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                f.power_management = value & 0xff;
            }
            fid::TEMPERATURE_THRESHOLD => {
                let threshold = value as u16;
                match temperature_selector(value)? {
                    false => f.temperature_over = threshold,
                    true => f.temperature_under = threshold,
                }
                self.check_temperature();
            }
            fid::ERROR_RECOVERY => {
                // Deallocated or Unwritten Logical Block Error is not supported.
                if value & (1 << 16) != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                f.error_recovery = value & 0xffff;
            }
            fid::VOLATILE_WRITE_CACHE => {
                let enable = value & 1 != 0;
                if f.write_cache && !enable {
                    // Turning the cache off makes what it held durable.
                    if let Err(e) = self.backend.flush() {
                        log::warn!("nvme {}: flush failed: {e}", self.volume_id);
                        return Err(Status::INTERNAL_ERROR);
                    }
                }
                self.features.write_cache = enable;
            }
            fid::NUMBER_OF_QUEUES => {
                if self.queues_created {
                    return Err(Status::COMMAND_SEQUENCE_ERROR);
                }
                let (sqs, cqs) = (value & 0xffff, value >> 16);
                if sqs == 0xffff || cqs == 0xffff {
                    return Err(Status::INVALID_FIELD);
                }
                let max = u32::from(self.max_queue_pairs);
                f.sq_allocated = (sqs + 1).min(max) as u16;
                f.cq_allocated = (cqs + 1).min(max) as u16;
                result = number_of_queues(f);
            }
            fid::INTERRUPT_COALESCING => f.interrupt_coalescing = value & 0xffff,
            fid::INTERRUPT_VECTOR_CONFIG => {
                let vector = value as u16;
                if vector >= vectors {
                    return Err(Status::INVALID_FIELD);
                }
                f.vector_config[usize::from(vector)] = value & 0x1_ffff;
            }
            fid::WRITE_ATOMICITY => f.write_atomicity = value & 1,
            fid::ASYNC_EVENT_CONFIG => f.async_event_config = value,
            fid::KEEP_ALIVE_TIMER => f.keep_alive = value,
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(Completion::ok(result))
    }

    fn get_features(&mut self, cmd: &Command) -> AdminResult {
        let dw10 = cmd.dw(10);
        let value = cmd.dw(11);
        let fid = dw10 as u8;
        let select = (dw10 >> 8) & 0x7;
        if select > SEL_SUPPORTED {
            return Err(Status::INVALID_FIELD);
        }
        let defaults;
        // Nothing is saveable, so the saved value is the default.
        let f = if select == 1 || select == 2 {
            defaults = Features::defaults(self.max_queue_pairs);
            &defaults
        } else {
            &self.features
        };
        let result = match fid {
            fid::ARBITRATION => f.arbitration,
            fid::POWER_MANAGEMENT => f.power_management,
            fid::TEMPERATURE_THRESHOLD => match temperature_selector(value)? {
                false => u32::from(f.temperature_over),
                true => u32::from(f.temperature_under),
            },
            fid::ERROR_RECOVERY => f.error_recovery,
            fid::VOLATILE_WRITE_CACHE => u32::from(f.write_cache),
            fid::NUMBER_OF_QUEUES => number_of_queues(f),
            fid::INTERRUPT_COALESCING => f.interrupt_coalescing,
            fid::INTERRUPT_VECTOR_CONFIG => *f
                .vector_config
                .get(usize::from(value as u16))
                .ok_or(Status::INVALID_FIELD)?,
            fid::WRITE_ATOMICITY => f.write_atomicity,
            fid::ASYNC_EVENT_CONFIG => f.async_event_config,
            fid::KEEP_ALIVE_TIMER => f.keep_alive,
            _ => return Err(Status::INVALID_FIELD),
        };
        if select == SEL_SUPPORTED {
            return Ok(Completion::ok(CAPABILITY_CHANGEABLE));
        }
        Ok(Completion::ok(result))
    }

    /// SMART critical warning bits that currently apply.
    fn critical_warning(&self) -> u8 {
        let f = &self.features;
        if COMPOSITE_TEMPERATURE > f.temperature_over || COMPOSITE_TEMPERATURE < f.temperature_under
        {
            CRITICAL_TEMPERATURE
        } else {
            0
        }
    }

    /// Queues a SMART event if the temperature is now outside a threshold and the guest asked for
    /// temperature events.
    fn check_temperature(&mut self) {
        if self.critical_warning() & CRITICAL_TEMPERATURE != 0
            && self.features.async_event_config & AEC_TEMPERATURE != 0
        {
            self.queue_event(AsyncEvent {
                event_type: EVENT_SMART,
                info: INFO_TEMPERATURE_THRESHOLD,
                log_page: LOG_SMART_HEALTH,
            });
        }
    }

    // ---- log pages ------------------------------------------------------------------------

    fn get_log_page(&mut self, cmd: &Command) -> AdminResult {
        let dw10 = cmd.dw(10);
        let lid = dw10 as u8;
        let retain_event = dw10 & (1 << 15) != 0;
        let dwords = ((u64::from(cmd.dw(11) & 0xffff) << 16) | u64::from(dw10 >> 16)) + 1;
        let len = dwords * 4;
        let offset = u64::from(cmd.dw(12)) | (u64::from(cmd.dw(13)) << 32);
        if len > self.mdts_bytes || offset & 3 != 0 {
            return Err(Status::INVALID_FIELD);
        }
        let (log, event_type) = match lid {
            LOG_ERROR_INFORMATION => (self.error_log_page(), Some(EVENT_ERROR)),
            LOG_SMART_HEALTH => (self.smart_log_page(), Some(EVENT_SMART)),
            LOG_FIRMWARE_SLOT => (firmware_log_page(), None),
            _ => return Err(Status::INVALID_LOG_PAGE),
        };
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset > log.len() {
            return Err(Status::INVALID_FIELD);
        }
        let mut out = vec![0u8; len as usize];
        let n = (log.len() - offset).min(out.len());
        out[..n].copy_from_slice(&log[offset..offset + n]);
        self.send_to_host(cmd, &out)?;
        if let (false, Some(t)) = (retain_event, event_type) {
            // Reading the log page re-arms events of its type.
            self.events.masked &= !(1 << t);
        }
        Ok(Completion::OK)
    }

    fn error_log_page(&self) -> Vec<u8> {
        let mut b = vec![0u8; ERROR_LOG_ENTRIES * 64];
        for (e, chunk) in self.error_log.iter().zip(b.chunks_exact_mut(64)) {
            chunk[0..8].copy_from_slice(&e.count.to_le_bytes());
            chunk[8..10].copy_from_slice(&e.sqid.to_le_bytes());
            chunk[10..12].copy_from_slice(&e.cid.to_le_bytes());
            // Status field in bits 15:1, phase tag (bit 0) zero.
            chunk[12..14].copy_from_slice(&(e.status.raw() << 1).to_le_bytes());
            // Parameter error location: not reported.
            chunk[14..16].copy_from_slice(&0xffffu16.to_le_bytes());
            chunk[16..24].copy_from_slice(&e.lba.to_le_bytes());
            chunk[24..28].copy_from_slice(&e.nsid.to_le_bytes());
        }
        b
    }

    fn smart_log_page(&self) -> Vec<u8> {
        let h = &self.health;
        let mut b = vec![0u8; 512];
        b[0] = self.critical_warning();
        b[1..3].copy_from_slice(&COMPOSITE_TEMPERATURE.to_le_bytes());
        b[3] = 100; // available spare
        b[4] = 10; // available spare threshold
                   // Data units are thousands of 512-byte units, rounded up.
        put_u128(&mut b, 32, h.bytes_read.div_ceil(512_000));
        put_u128(&mut b, 48, h.bytes_written.div_ceil(512_000));
        put_u128(&mut b, 64, h.read_commands);
        put_u128(&mut b, 80, h.write_commands);
        put_u128(&mut b, 112, 1); // power cycles
        put_u128(&mut b, 128, h.started.elapsed().as_secs() / 3600);
        put_u128(&mut b, 176, self.error_count);
        b
    }

    // ---- asynchronous events, abort -------------------------------------------------------

    fn async_event_request(&mut self, cmd: &Command) -> Option<Completion> {
        if self.events.outstanding.len() >= AER_LIMIT {
            return Some(Status::AER_LIMIT_EXCEEDED.into());
        }
        self.events.outstanding.push_back(cmd.cid());
        // Completed by deliver_events once an event is pending (after this command is done).
        None
    }

    /// Queues an event without delivering it; the processing loop delivers after the current
    /// command's completion is posted, so that completion keeps the slot it was promised.
    pub(super) fn queue_event(&mut self, event: AsyncEvent) {
        if !self.events.pending.contains(&event) && self.events.pending.len() < MAX_PENDING_EVENTS {
            self.events.pending.push_back(event);
        }
    }

    fn abort(&mut self, cmd: &Command) -> AdminResult {
        let sqid = cmd.dw(10) as u16;
        let cid = (cmd.dw(10) >> 16) as u16;
        // Only held Asynchronous Event Requests are ever outstanding; everything else has already
        // completed by the time an Abort is fetched. Abort one only if the admin completion queue
        // has room for both its completion and the Abort's.
        let room = self.cqs[0]
            .as_ref()
            .is_some_and(|cq| cq.size - 1 - cq.used() >= 2);
        if sqid == 0 && room {
            if let Some(i) = self.events.outstanding.iter().position(|&c| c == cid) {
                self.events.outstanding.remove(i);
                self.post_completion(0, cid, Status::ABORT_REQUESTED.into());
                return Ok(Completion::ok(0));
            }
        }
        // Dword 0 bit 0 set: the command was not aborted.
        Ok(Completion::ok(1))
    }

    // ---- shadow doorbells -----------------------------------------------------------------

    fn doorbell_buffer_config(&mut self, cmd: &Command) -> AdminResult {
        let (doorbells, event_indexes) = (cmd.prp1, cmd.prp2);
        let page_mask = PAGE_SIZE - 1;
        if doorbells & page_mask != 0
            || event_indexes & page_mask != 0
            || doorbells == event_indexes
            || !in_ram(&self.mem, doorbells, PAGE_SIZE)
            || !in_ram(&self.mem, event_indexes, PAGE_SIZE)
        {
            return Err(Status::INVALID_FIELD);
        }
        // Start the buffers from the doorbell values the controller has now.
        let store = |addr: GuestAddress, v: u32| {
            let _ = self.mem.store(v, addr, Ordering::Release);
        };
        for sq in self.sqs.iter().flatten().filter(|q| q.id != 0) {
            store(GuestAddress(doorbells + u64::from(sq.id) * 8), sq.tail);
            store(GuestAddress(event_indexes + u64::from(sq.id) * 8), sq.tail);
        }
        for cq in self.cqs.iter().flatten().filter(|q| q.id != 0) {
            store(GuestAddress(doorbells + u64::from(cq.id) * 8 + 4), cq.head);
            store(
                GuestAddress(event_indexes + u64::from(cq.id) * 8 + 4),
                cq.head,
            );
        }
        let had = self
            .shadow
            .replace(Shadow {
                doorbells,
                event_indexes,
            })
            .is_some();
        if !had {
            self.irq.shadow_doorbells_changed(true);
        }
        Ok(Completion::OK)
    }
}

/// Decodes TMPSEL/THSEL of the Temperature Threshold feature: Ok(false) for the composite
/// temperature's over-temperature threshold, Ok(true) for its under-temperature threshold.
fn temperature_selector(value: u32) -> Result<bool, Status> {
    let sensor = (value >> 16) & 0xf;
    let kind = (value >> 20) & 0x3;
    // Only the composite temperature (0, or 0xF for "all") is implemented.
    if sensor != 0 && sensor != 0xf {
        return Err(Status::INVALID_FIELD);
    }
    match kind {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Number of Queues result: NCQA (31:16) and NSQA (15:0), both 0-based.
fn number_of_queues(f: &Features) -> u32 {
    (u32::from(f.cq_allocated - 1) << 16) | u32::from(f.sq_allocated - 1)
}

fn firmware_log_page() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1; // active firmware: slot 1
    b[8..16].fill(b' ');
    b[8..8 + FIRMWARE_REVISION.len()].copy_from_slice(FIRMWARE_REVISION.as_bytes());
    b
}
