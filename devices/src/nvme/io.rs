//! NVM command set (NVMe 1.4 §6): Flush, Write, Read, Write Zeroes and Dataset Management on
//! namespace 1.
//!
//! Every failure is a status and the controller keeps serving: an LBA range past the namespace is
//! LBA Out of Range, a transfer over MDTS is Invalid Field, a PRP problem is Data Transfer Error or
//! PRP Offset Invalid, a write-type command on a read-only volume is Namespace is Write Protected (the
//! file is never touched), a write-type command the host file system has no room for (ENOSPC,
//! EDQUOT) is Capacity Exceeded, and any other failure of the backing file is Internal Error (plus a
//! transient internal error asynchronous event).

use std::io;

use super::command::{io_opcode as op, Command, Completion};
use super::controller::{
    AsyncEvent, NvmeController, EVENT_ERROR, INFO_TRANSIENT_INTERNAL_ERROR, LOG_ERROR_INFORMATION,
    PAGE_SIZE,
};
use super::prp::{map_prps, read_from_guest, write_to_guest, Segment};
use super::status::Status;

type IoResult = Result<Completion, Status>;

/// Dataset Management attribute: deallocate.
const DSM_DEALLOCATE: u32 = 1 << 2;
/// Read/Write: Force Unit Access.
const FUA: u32 = 1 << 30;
/// The broadcast namespace id, accepted by Flush.
const NSID_ALL: u32 = 0xffff_ffff;

fn starting_lba(cmd: &Command) -> u64 {
    u64::from(cmd.dw(10)) | (u64::from(cmd.dw(11)) << 32)
}

/// Number of logical blocks (NLB is 0-based).
fn block_count(cmd: &Command) -> u64 {
    u64::from(cmd.dw(12) & 0xffff) + 1
}

impl NvmeController {
    /// Runs one I/O command.
    pub(super) fn io_command(&mut self, cmd: &Command) -> Completion {
        if cmd.fuse() != 0 || cmd.psdt() != 0 {
            return Status::INVALID_FIELD.into();
        }
        let result = match cmd.opcode() {
            op::FLUSH => self.flush(cmd),
            op::WRITE => self.read_write(cmd, true),
            op::READ => self.read_write(cmd, false),
            op::WRITE_ZEROES => self.write_zeroes(cmd),
            op::DATASET_MANAGEMENT => self.dataset_management(cmd),
            _ => Err(Status::INVALID_OPCODE),
        };
        result.into()
    }

    fn check_namespace(&self, nsid: u32) -> Result<(), Status> {
        if nsid == 1 {
            Ok(())
        } else {
            Err(Status::INVALID_NAMESPACE)
        }
    }

    fn check_writable(&self) -> Result<(), Status> {
        if self.read_only {
            Err(Status::NAMESPACE_WRITE_PROTECTED)
        } else {
            Ok(())
        }
    }

    /// The byte offset and length of `count` blocks from `lba`, if they lie in the namespace.
    fn byte_range(&self, lba: u64, count: u64) -> Result<(u64, u64), Status> {
        match lba.checked_add(count) {
            Some(end) if end <= self.blocks => {
                Ok((lba << self.block_shift, count << self.block_shift))
            }
            _ => Err(Status::LBA_OUT_OF_RANGE),
        }
    }

    /// Logs a backing-file failure and returns its status: Capacity Exceeded when the host file
    /// system is full (the guest's file system then sees ENOSPC), else Internal Error with a transient
    /// internal error event.
    fn backend_error(&mut self, what: &str, offset: u64, e: io::Error) -> Status {
        self.failures.warn(|| {
            format!(
                "nvme {}: {what} at byte {offset} of the disk file failed: {e}",
                self.volume_id
            )
        });
        if matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) {
            return Status::CAPACITY_EXCEEDED;
        }
        self.queue_event(AsyncEvent {
            event_type: EVENT_ERROR,
            info: INFO_TRANSIENT_INTERNAL_ERROR,
            log_page: LOG_ERROR_INFORMATION,
        });
        Status::INTERNAL_ERROR
    }

    fn flush(&mut self, cmd: &Command) -> IoResult {
        if cmd.nsid != NSID_ALL {
            self.check_namespace(cmd.nsid)?;
        }
        if let Err(e) = self.backend.flush() {
            return Err(self.backend_error("flush", 0, e));
        }
        Ok(Completion::OK)
    }

    fn read_write(&mut self, cmd: &Command, write: bool) -> IoResult {
        self.check_namespace(cmd.nsid)?;
        if write {
            self.check_writable()?;
        }
        let (offset, len) = self.byte_range(starting_lba(cmd), block_count(cmd))?;
        if len > self.mdts_bytes {
            return Err(Status::INVALID_FIELD);
        }
        let mut segments = std::mem::take(&mut self.segments);
        let mut buffer = std::mem::take(&mut self.bounce);
        let result = self.transfer(cmd, write, offset, len, &mut segments, &mut buffer);
        self.segments = segments;
        self.bounce = buffer;
        result
    }

    fn transfer(
        &mut self,
        cmd: &Command,
        write: bool,
        offset: u64,
        len: u64,
        segments: &mut Vec<Segment>,
        buffer: &mut Vec<u8>,
    ) -> IoResult {
        map_prps(&self.mem, cmd.prp1, cmd.prp2, len, PAGE_SIZE, segments)?;
        buffer.resize(len as usize, 0);
        if write {
            read_from_guest(&self.mem, segments, buffer)?;
            if let Err(e) = self.backend.write_at(buffer, offset) {
                return Err(self.backend_error("write", offset, e));
            }
            if cmd.dw(12) & FUA != 0 || !self.features.write_cache {
                if let Err(e) = self.backend.flush() {
                    return Err(self.backend_error("flush", offset, e));
                }
            }
            self.health.bytes_written += len;
            self.health.write_commands += 1;
        } else {
            if let Err(e) = self.backend.read_at(buffer, offset) {
                return Err(self.backend_error("read", offset, e));
            }
            write_to_guest(&self.mem, segments, buffer)?;
            self.health.bytes_read += len;
            self.health.read_commands += 1;
        }
        Ok(Completion::OK)
    }

    fn write_zeroes(&mut self, cmd: &Command) -> IoResult {
        self.check_namespace(cmd.nsid)?;
        self.check_writable()?;
        let (offset, len) = self.byte_range(starting_lba(cmd), block_count(cmd))?;
        // Deallocating (DEAC) and zeroing are the same here: a punched hole reads as zeroes.
        if let Err(e) = self.backend.write_zeroes(offset, len) {
            return Err(self.backend_error("write zeroes", offset, e));
        }
        if !self.features.write_cache {
            if let Err(e) = self.backend.flush() {
                return Err(self.backend_error("flush", offset, e));
            }
        }
        Ok(Completion::OK)
    }

    fn dataset_management(&mut self, cmd: &Command) -> IoResult {
        self.check_namespace(cmd.nsid)?;
        if cmd.dw(11) & DSM_DEALLOCATE == 0 {
            // Only access-pattern hints: nothing to do.
            return Ok(Completion::OK);
        }
        self.check_writable()?;
        let ranges = (cmd.dw(10) & 0xff) as usize + 1;
        let mut raw = vec![0u8; ranges * 16];
        let mut segments = std::mem::take(&mut self.segments);
        let mapped = map_prps(
            &self.mem,
            cmd.prp1,
            cmd.prp2,
            raw.len() as u64,
            PAGE_SIZE,
            &mut segments,
        )
        .and_then(|()| read_from_guest(&self.mem, &segments, &mut raw));
        self.segments = segments;
        mapped?;
        // Check every range before discarding any.
        let mut extents = Vec::with_capacity(ranges);
        for range in raw.chunks_exact(16) {
            let blocks = u64::from(u32::from_le_bytes([range[4], range[5], range[6], range[7]]));
            let lba = u64::from_le_bytes(range[8..16].try_into().unwrap_or([0xff; 8]));
            if blocks != 0 {
                extents.push(self.byte_range(lba, blocks)?);
            }
        }
        for (offset, len) in extents {
            if let Err(e) = self.backend.discard(offset, len) {
                return Err(self.backend_error("discard", offset, e));
            }
        }
        Ok(Completion::OK)
    }
}
