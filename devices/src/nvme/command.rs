//! Submission and completion queue entries (NVMe 1.4 §4.2, §4.6).

use super::status::Status;

/// Size of a submission queue entry (CC.IOSQES = 6).
pub const SQ_ENTRY_SIZE: u64 = 64;
/// Size of a completion queue entry (CC.IOCQES = 4).
pub const CQ_ENTRY_SIZE: u64 = 16;

/// Admin command opcodes this controller implements.
pub mod admin_opcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
}

/// NVM command set opcodes this controller implements.
pub mod io_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// A decoded 64-byte submission queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Command dword 0: opcode (7:0), fused (9:8), PSDT (15:14), command identifier (31:16).
    pub cdw0: u32,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// PRP entry 1.
    pub prp1: u64,
    /// PRP entry 2.
    pub prp2: u64,
    /// Command dwords 10 to 15.
    pub cdw: [u32; 6],
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

impl Command {
    /// Decodes a submission queue entry.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut cdw = [0u32; 6];
        for (i, d) in cdw.iter_mut().enumerate() {
            *d = le32(b, 40 + 4 * i);
        }
        Command {
            cdw0: le32(b, 0),
            nsid: le32(b, 4),
            cdw2: le32(b, 8),
            cdw3: le32(b, 12),
            mptr: le64(b, 16),
            prp1: le64(b, 24),
            prp2: le64(b, 32),
            cdw,
        }
    }

    /// Encodes the entry (what a driver writes into a submission queue).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.cdw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[8..12].copy_from_slice(&self.cdw2.to_le_bytes());
        b[12..16].copy_from_slice(&self.cdw3.to_le_bytes());
        b[16..24].copy_from_slice(&self.mptr.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, d) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// A command with `opcode` and command identifier `cid`, everything else zero.
    pub fn new(opcode: u8, cid: u16) -> Self {
        Command {
            cdw0: u32::from(opcode) | (u32::from(cid) << 16),
            ..Default::default()
        }
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// The command identifier.
    pub fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Fused operation bits (9:8); this controller supports none.
    pub fn fuse(&self) -> u32 {
        (self.cdw0 >> 8) & 0x3
    }

    /// PRP or SGL for Data Transfer (15:14); this controller supports PRPs (0) only.
    pub fn psdt(&self) -> u32 {
        (self.cdw0 >> 14) & 0x3
    }

    /// Command dword `n` (10..=15).
    pub fn dw(&self, n: usize) -> u32 {
        debug_assert!((10..=15).contains(&n));
        self.cdw[n.saturating_sub(10).min(5)]
    }
}

/// What a command handler returns: the dword 0 result and the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Command specific dword 0.
    pub result: u32,
    /// The status.
    pub status: Status,
}

impl Completion {
    /// Successful completion with result 0.
    pub const OK: Completion = Completion {
        result: 0,
        status: Status::SUCCESS,
    };

    /// Successful completion with `result` in dword 0.
    pub fn ok(result: u32) -> Self {
        Completion {
            result,
            status: Status::SUCCESS,
        }
    }

    /// A failed completion.
    pub fn error(status: Status) -> Self {
        Completion { result: 0, status }
    }
}

impl From<Status> for Completion {
    fn from(status: Status) -> Self {
        Completion::error(status)
    }
}

impl From<Result<Completion, Status>> for Completion {
    fn from(r: Result<Completion, Status>) -> Self {
        r.unwrap_or_else(Completion::error)
    }
}

/// A 16-byte completion queue entry as the guest reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletionEntry {
    /// Dword 0: command specific result.
    pub result: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag.
    pub phase: bool,
    /// Status field.
    pub status: Status,
}

impl CompletionEntry {
    /// Dwords 0 to 2 (dword 1 is reserved).
    pub fn low_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.result.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b
    }

    /// Dword 3: command identifier, phase tag and status field.
    pub fn dw3(&self) -> u32 {
        u32::from(self.cid) | (u32::from(self.phase) << 16) | (u32::from(self.status.raw()) << 17)
    }

    /// Decodes an entry (what a driver reads from a completion queue).
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let dw3 = le32(b, 12);
        CompletionEntry {
            result: le32(b, 0),
            sq_head: u16::from_le_bytes([b[8], b[9]]),
            sq_id: u16::from_le_bytes([b[10], b[11]]),
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: Status::from_raw((dw3 >> 17) as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip() {
        let mut c = Command::new(io_opcode::READ, 0xbeef);
        c.nsid = 1;
        c.prp1 = 0x1234_5000;
        c.prp2 = 0xdead_b000_0000;
        c.cdw = [1, 2, 3, 4, 5, 6];
        let d = Command::from_bytes(&c.to_bytes());
        assert_eq!(c, d);
        assert_eq!(d.opcode(), io_opcode::READ);
        assert_eq!(d.cid(), 0xbeef);
        assert_eq!(d.dw(10), 1);
        assert_eq!(d.dw(15), 6);
        assert_eq!(d.fuse(), 0);
        assert_eq!(d.psdt(), 0);
    }

    #[test]
    fn completion_round_trip() {
        let e = CompletionEntry {
            result: 7,
            sq_head: 3,
            sq_id: 2,
            cid: 0x55,
            phase: true,
            status: Status::LBA_OUT_OF_RANGE,
        };
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&e.low_bytes());
        b[12..].copy_from_slice(&e.dw3().to_le_bytes());
        assert_eq!(CompletionEntry::from_bytes(&b), e);
    }
}
