//! The controller registers in BAR0 (NVMe 1.4 §3.1): offsets, field layouts and the register file.
//!
//! Layout: CAP 0x00 (64-bit), VS 0x08, INTMS 0x0C, INTMC 0x10, CC 0x14, CSTS 0x1C, NSSR 0x20,
//! AQA 0x24, ASQ 0x28 (64-bit), ACQ 0x30 (64-bit); everything else up to 0x1000 reads as zero and
//! ignores writes. Doorbells start at 0x1000 with a stride of 4 bytes (CAP.DSTRD = 0): the tail
//! doorbell of submission queue y at `0x1000 + 2y*4`, the head doorbell of completion queue y at
//! `0x1000 + (2y+1)*4`.

/// Controller Capabilities (64-bit).
pub const CAP: u64 = 0x00;
/// Version.
pub const VS: u64 = 0x08;
/// Interrupt Mask Set.
pub const INTMS: u64 = 0x0c;
/// Interrupt Mask Clear.
pub const INTMC: u64 = 0x10;
/// Controller Configuration.
pub const CC: u64 = 0x14;
/// Controller Status.
pub const CSTS: u64 = 0x1c;
/// NVM Subsystem Reset (not supported: CAP.NSSRS = 0).
pub const NSSR: u64 = 0x20;
/// Admin Queue Attributes.
pub const AQA: u64 = 0x24;
/// Admin Submission Queue Base Address (64-bit).
pub const ASQ: u64 = 0x28;
/// Admin Completion Queue Base Address (64-bit).
pub const ACQ: u64 = 0x30;
/// First doorbell register.
pub const DOORBELL_BASE: u64 = 0x1000;
/// Doorbell stride in bytes (CAP.DSTRD = 0).
pub const DOORBELL_STRIDE: u64 = 4;

/// The version this controller reports: NVMe 1.4.0.
pub const VERSION_1_4: u32 = 0x0001_0400;

/// CC.EN.
pub const CC_EN: u32 = 1;
/// CSTS.RDY.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS (Controller Fatal Status).
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST shift.
pub const CSTS_SHST_SHIFT: u32 = 2;
/// CSTS.SHST mask (after shifting).
pub const CSTS_SHST_MASK: u32 = 0x3;
/// CSTS.SHST value: shutdown processing complete.
pub const SHST_COMPLETE: u32 = 0x2;

/// Offset of submission queue `qid`'s tail doorbell.
pub const fn sq_tail_doorbell(qid: u16) -> u64 {
    DOORBELL_BASE + (2 * qid as u64) * DOORBELL_STRIDE
}

/// Offset of completion queue `qid`'s head doorbell.
pub const fn cq_head_doorbell(qid: u16) -> u64 {
    DOORBELL_BASE + (2 * qid as u64 + 1) * DOORBELL_STRIDE
}

/// What a doorbell offset addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// A submission queue tail doorbell.
    SqTail(u16),
    /// A completion queue head doorbell.
    CqHead(u16),
}

/// Decodes a dword-aligned doorbell offset (≥ [`DOORBELL_BASE`]). Queue ids beyond u16 yield None.
pub fn decode_doorbell(offset: u64) -> Option<Doorbell> {
    let index = offset.checked_sub(DOORBELL_BASE)? / DOORBELL_STRIDE;
    let qid = u16::try_from(index / 2).ok()?;
    Some(if index % 2 == 0 {
        Doorbell::SqTail(qid)
    } else {
        Doorbell::CqHead(qid)
    })
}

/// Builds CAP: MQES (0-based), CQR = 1, AMS = 0 (round robin only), TO in 500 ms units,
/// DSTRD = 0, NSSRS = 0, CSS = NVM command set, MPSMIN = MPSMAX = 0 (4 KiB pages).
pub const fn capabilities(mqes: u16, timeout_500ms: u8) -> u64 {
    (mqes as u64) | (1 << 16) | ((timeout_500ms as u64) << 24) | (1 << 37)
}

/// The fields of CC (Controller Configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerConfig(pub u32);

impl ControllerConfig {
    /// CC.EN.
    pub fn enabled(self) -> bool {
        self.0 & CC_EN != 0
    }
    /// CC.CSS, I/O command set selected.
    pub fn css(self) -> u32 {
        (self.0 >> 4) & 0x7
    }
    /// CC.MPS, memory page size = 2^(12 + MPS).
    pub fn mps(self) -> u32 {
        (self.0 >> 7) & 0xf
    }
    /// CC.AMS, arbitration mechanism selected.
    pub fn ams(self) -> u32 {
        (self.0 >> 11) & 0x7
    }
    /// CC.SHN, shutdown notification (0 none, 1 normal, 2 abrupt).
    pub fn shn(self) -> u32 {
        (self.0 >> 14) & 0x3
    }
    /// CC.IOSQES, log2 of the I/O submission queue entry size.
    pub fn iosqes(self) -> u32 {
        (self.0 >> 16) & 0xf
    }
    /// CC.IOCQES, log2 of the I/O completion queue entry size.
    pub fn iocqes(self) -> u32 {
        (self.0 >> 20) & 0xf
    }
}

/// The fields of AQA (Admin Queue Attributes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminQueueAttributes(pub u32);

impl AdminQueueAttributes {
    /// Admin submission queue size in entries (ASQS is 0-based).
    pub fn sq_entries(self) -> u32 {
        (self.0 & 0xfff) + 1
    }
    /// Admin completion queue size in entries (ACQS is 0-based).
    pub fn cq_entries(self) -> u32 {
        ((self.0 >> 16) & 0xfff) + 1
    }
}

/// The register file as the guest programs it. Doorbells live with the queues, not here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterFile {
    /// CAP (read-only).
    pub cap: u64,
    /// INTMS/INTMC mask (stored; interrupts go through MSI-X, whose own masks apply).
    pub intm: u32,
    /// CC.
    pub cc: u32,
    /// CSTS.
    pub csts: u32,
    /// AQA.
    pub aqa: u32,
    /// ASQ.
    pub asq: u64,
    /// ACQ.
    pub acq: u64,
}

impl RegisterFile {
    /// The value of the 32-bit register at dword-aligned `offset` (< 0x1000).
    pub fn read_dword(&self, offset: u64) -> u32 {
        match offset {
            CAP => self.cap as u32,
            o if o == CAP + 4 => (self.cap >> 32) as u32,
            VS => VERSION_1_4,
            INTMS | INTMC => self.intm,
            CC => self.cc,
            CSTS => self.csts,
            AQA => self.aqa,
            ASQ => self.asq as u32,
            o if o == ASQ + 4 => (self.asq >> 32) as u32,
            ACQ => self.acq as u32,
            o if o == ACQ + 4 => (self.acq >> 32) as u32,
            _ => 0,
        }
    }

    /// Whether the controller is ready (CSTS.RDY).
    pub fn ready(&self) -> bool {
        self.csts & CSTS_RDY != 0
    }

    /// The configured memory page size in bytes.
    pub fn page_size(&self) -> u64 {
        1 << (12 + ControllerConfig(self.cc).mps())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_offsets() {
        assert_eq!(sq_tail_doorbell(0), 0x1000);
        assert_eq!(cq_head_doorbell(0), 0x1004);
        assert_eq!(sq_tail_doorbell(3), 0x1018);
        assert_eq!(cq_head_doorbell(3), 0x101c);
        assert_eq!(decode_doorbell(0x1018), Some(Doorbell::SqTail(3)));
        assert_eq!(decode_doorbell(0x101c), Some(Doorbell::CqHead(3)));
        assert_eq!(decode_doorbell(0xffc), None);
        assert_eq!(decode_doorbell(!3), None);
    }

    #[test]
    fn cap_fields() {
        let cap = capabilities(1023, 20);
        assert_eq!(cap & 0xffff, 1023);
        assert_eq!((cap >> 16) & 1, 1, "CQR");
        assert_eq!((cap >> 24) & 0xff, 20, "TO");
        assert_eq!((cap >> 32) & 0xf, 0, "DSTRD");
        assert_eq!((cap >> 37) & 0xff, 1, "CSS NVM");
        assert_eq!((cap >> 48) & 0xf, 0, "MPSMIN");
        assert_eq!((cap >> 52) & 0xf, 0, "MPSMAX");
    }

    #[test]
    fn cc_fields() {
        let cc = ControllerConfig(1 | (4 << 20) | (6 << 16) | (1 << 14));
        assert!(cc.enabled());
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(cc.shn(), 1);
        assert_eq!(cc.mps(), 0);
        let aqa = AdminQueueAttributes(0x001f_003f);
        assert_eq!(aqa.sq_entries(), 64);
        assert_eq!(aqa.cq_entries(), 32);
    }
}
