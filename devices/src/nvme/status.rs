//! Completion statuses: the Status Field of a completion queue entry (NVMe 1.4 §4.6.1).

use std::fmt;

/// The 15-bit Status Field of a completion queue entry: Status Code (bits 7:0), Status Code Type
/// (bits 10:8), More (bit 13) and Do Not Retry (bit 14). It sits in bits 31:17 of completion dword 3.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u16);

const SCT_GENERIC: u16 = 0;
const SCT_COMMAND_SPECIFIC: u16 = 1;
const DNR: u16 = 1 << 14;

const fn generic(code: u8) -> Status {
    Status((SCT_GENERIC << 8) | code as u16 | DNR)
}

const fn specific(code: u8) -> Status {
    Status((SCT_COMMAND_SPECIFIC << 8) | code as u16 | DNR)
}

impl Status {
    /// Successful Completion.
    pub const SUCCESS: Status = Status(0);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = generic(0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = generic(0x02);
    /// Data Transfer Error: a PRP pointed outside guest RAM or a PRP list was malformed.
    pub const DATA_TRANSFER_ERROR: Status = generic(0x04);
    /// Internal Error: the backing file failed. Retryable (no Do Not Retry bit).
    pub const INTERNAL_ERROR: Status = Status((SCT_GENERIC << 8) | 0x06);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status((SCT_GENERIC << 8) | 0x07);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = Status((SCT_GENERIC << 8) | 0x08);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = generic(0x0b);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = generic(0x0c);
    /// PRP Offset Invalid: a PRP entry that must be page aligned is not (or PRP1 is not dword aligned).
    pub const PRP_OFFSET_INVALID: Status = generic(0x13);
    /// Namespace is Write Protected: a write-type command to a read-only volume.
    pub const NAMESPACE_WRITE_PROTECTED: Status = generic(0x20);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = generic(0x80);
    /// Capacity Exceeded (NVM command set): the namespace's backing store is full (thin
    /// provisioning; here: the host file system holding the disk file). Retryable: space may be freed
    /// on the host. Linux reports it to the file system as ENOSPC rather than EIO.
    pub const CAPACITY_EXCEEDED: Status = Status((SCT_GENERIC << 8) | 0x81);

    /// Completion Queue Invalid (Create I/O Submission Queue).
    pub const INVALID_CQ: Status = specific(0x00);
    /// Invalid Queue Identifier (Create/Delete I/O queues).
    pub const INVALID_QUEUE_ID: Status = specific(0x01);
    /// Invalid Queue Size (Create I/O queues).
    pub const INVALID_QUEUE_SIZE: Status = specific(0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = specific(0x05);
    /// Invalid Interrupt Vector (Create I/O Completion Queue).
    pub const INVALID_INTERRUPT_VECTOR: Status = specific(0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = specific(0x09);
    /// Invalid Queue Deletion: a completion queue still has submission queues.
    pub const INVALID_QUEUE_DELETION: Status = specific(0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = specific(0x0d);

    /// The raw 15-bit Status Field.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// Builds a status from a raw Status Field (as read from a completion entry).
    pub const fn from_raw(raw: u16) -> Self {
        Status(raw & 0x7fff)
    }

    /// Status Code Type (0 generic, 1 command specific, 2 media errors).
    pub const fn code_type(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Status Code.
    pub const fn code(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// Whether the Do Not Retry bit is set.
    pub const fn do_not_retry(self) -> bool {
        self.0 & DNR != 0
    }

    /// Whether this is Successful Completion.
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Status(sct={} sc={:#04x}{})",
            self.code_type(),
            self.code(),
            if self.do_not_retry() { " dnr" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_layout() {
        assert_eq!(Status::SUCCESS.raw(), 0);
        assert!(Status::SUCCESS.is_success());
        assert_eq!(Status::INVALID_QUEUE_ID.code_type(), 1);
        assert_eq!(Status::INVALID_QUEUE_ID.code(), 1);
        assert!(Status::INVALID_QUEUE_ID.do_not_retry());
        assert!(!Status::INTERNAL_ERROR.do_not_retry());
        assert!(!Status::CAPACITY_EXCEEDED.do_not_retry());
        assert_eq!(Status::CAPACITY_EXCEEDED.raw(), 0x81);
        assert_eq!(Status::LBA_OUT_OF_RANGE.code(), 0x80);
        assert_eq!(Status::from_raw(0xffff).raw(), 0x7fff);
        assert!(!Status::LBA_OUT_OF_RANGE.is_success());
    }
}
