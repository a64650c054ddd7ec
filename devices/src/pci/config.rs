//! A type-0 configuration space: the header registers, BARs that answer sizing probes, the command
//! register, and a capability list (MSI-X among them).

use super::msix::Msix;
use super::{PciBar, PciBarKind, PciError, PCI_CONFIG_SPACE_SIZE, PCI_NUM_BARS};

/// Register offsets of the type-0 header.
pub(crate) mod regs {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION: u16 = 0x08;
    pub const PROG_IF: u16 = 0x09;
    pub const SUBCLASS: u16 = 0x0a;
    pub const CLASS: u16 = 0x0b;
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    pub const BAR0: u16 = 0x10;
    pub const BAR_END: u16 = 0x28;
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Where the capability list starts; it must end below 0x100.
    pub const CAPABILITIES_START: u16 = 0x40;
    pub const CAPABILITIES_END: u16 = 0x100;
}

/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Writable command bits: memory space, bus master, parity error response, SERR#, INTx disable. I/O
/// space stays 0: flint has no I/O BARs.
const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER | (1 << 6) | (1 << 8) | (1 << 10);
/// Status register: a capability list is present.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// What identifies a function: the read-only id registers of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    /// Vendor ID (0x00).
    pub vendor: u16,
    /// Device ID (0x02).
    pub device: u16,
    /// Base class (0x0b).
    pub class: u8,
    /// Subclass (0x0a).
    pub subclass: u8,
    /// Programming interface (0x09).
    pub prog_if: u8,
    /// Revision ID (0x08).
    pub revision: u8,
    /// Subsystem vendor ID (0x2c).
    pub subsystem_vendor: u16,
    /// Subsystem ID (0x2e).
    pub subsystem_id: u16,
}

#[derive(Debug, Clone, Copy)]
struct BarState {
    bar: PciBar,
    /// The address as programmed, already masked to the BAR's size.
    addr: u64,
}

impl BarState {
    /// Address bits the BAR implements.
    fn addr_mask(&self) -> u64 {
        let mask = !(self.bar.size - 1);
        match self.bar.kind {
            PciBarKind::Memory32 => mask & 0xffff_ffff,
            PciBarKind::Memory64 => mask,
        }
    }

    /// The low BAR register: address bits and the type bits.
    fn low_register(&self) -> u32 {
        let mut flags = 0u32;
        if self.bar.kind == PciBarKind::Memory64 {
            flags |= 0b10 << 1;
        }
        if self.bar.prefetchable {
            flags |= 1 << 3;
        }
        (self.addr as u32 & 0xffff_fff0) | flags
    }
}

/// Which BAR a BAR register belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarRegister {
    Unused,
    Low(usize),
    High(usize),
}

/// The configuration space of one function with a type-0 header.
///
/// A device declares its ids at construction, then its BARs ([`PciConfigSpace::add_bar`]) and
/// capabilities ([`PciConfigSpace::add_capability`], [`PciConfigSpace::add_msix`]), and forwards
/// the guest's configuration reads and writes to [`PciConfigSpace::read`] and
/// [`PciConfigSpace::write`]. Reads and writes of any offset and length are safe: bytes past the
/// 4 KiB space are ignored (reads leave them as the caller filled them), read-only bits keep their
/// value, and BAR registers keep only the address bits their size allows, so writing all ones and
/// reading back gives the size mask.
pub struct PciConfigSpace {
    regs: Vec<u8>,
    /// Bits the guest may change, per byte.
    wmask: Vec<u8>,
    bars: Vec<BarState>,
    bar_registers: [BarRegister; PCI_NUM_BARS as usize],
    /// Offset of the last capability in the list (0 when none).
    last_capability: u16,
    /// Where the next capability goes.
    next_capability: u16,
    /// The MSI-X capability's offset and state.
    msix: Option<(u16, Msix)>,
}

impl PciConfigSpace {
    /// A configuration space with these ids, no BARs, no capabilities, everything disabled.
    pub fn new(ids: PciIds) -> Self {
        let mut space = Self {
            regs: vec![0; PCI_CONFIG_SPACE_SIZE],
            wmask: vec![0; PCI_CONFIG_SPACE_SIZE],
            bars: Vec::new(),
            bar_registers: [BarRegister::Unused; PCI_NUM_BARS as usize],
            last_capability: 0,
            next_capability: regs::CAPABILITIES_START,
            msix: None,
        };
        space.set_u16(regs::VENDOR_ID, ids.vendor);
        space.set_u16(regs::DEVICE_ID, ids.device);
        space.regs[usize::from(regs::REVISION)] = ids.revision;
        space.regs[usize::from(regs::PROG_IF)] = ids.prog_if;
        space.regs[usize::from(regs::SUBCLASS)] = ids.subclass;
        space.regs[usize::from(regs::CLASS)] = ids.class;
        space.set_u16(regs::SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        space.set_u16(regs::SUBSYSTEM_ID, ids.subsystem_id);
        space.set_wmask_u16(regs::COMMAND, COMMAND_WRITABLE);
        space.wmask[usize::from(regs::CACHE_LINE_SIZE)] = 0xff;
        space.wmask[usize::from(regs::INTERRUPT_LINE)] = 0xff;
        space
    }

    fn set_u16(&mut self, offset: u16, value: u16) {
        let o = usize::from(offset);
        self.regs[o..o + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn set_wmask_u16(&mut self, offset: u16, value: u16) {
        let o = usize::from(offset);
        self.wmask[o..o + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn get_u16(&self, offset: u16) -> u16 {
        let o = usize::from(offset);
        u16::from_le_bytes([self.regs[o], self.regs[o + 1]])
    }

    /// Declares a memory BAR. Its address starts at 0; the root programs one when the device is
    /// attached.
    pub fn add_bar(
        &mut self,
        index: u8,
        size: u64,
        kind: PciBarKind,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let registers = match kind {
            PciBarKind::Memory32 => 1,
            PciBarKind::Memory64 => 2,
        };
        let first = usize::from(index);
        if first + registers > usize::from(PCI_NUM_BARS)
            || self.bar_registers[first..first + registers]
                .iter()
                .any(|r| *r != BarRegister::Unused)
        {
            return Err(PciError::BarIndex(index));
        }
        let max = match kind {
            PciBarKind::Memory32 => 1 << 31,
            PciBarKind::Memory64 => 1 << 63,
        };
        if !size.is_power_of_two() || !(16..=max).contains(&size) {
            return Err(PciError::BarSize { index, size });
        }
        let slot = self.bars.len();
        self.bars.push(BarState {
            bar: PciBar {
                index,
                size,
                kind,
                prefetchable,
            },
            addr: 0,
        });
        self.bar_registers[first] = BarRegister::Low(slot);
        if registers == 2 {
            self.bar_registers[first + 1] = BarRegister::High(slot);
        }
        Ok(())
    }

    /// The declared BARs, for [`super::PciDevice::bars`].
    pub fn bars(&self) -> Vec<PciBar> {
        self.bars.iter().map(|b| b.bar).collect()
    }

    /// The address BAR `index` is programmed with (whatever the command register says), or None if
    /// there is no such BAR.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        self.bars
            .iter()
            .find(|b| b.bar.index == index)
            .map(|b| b.addr)
    }

    /// Appends a capability with ID `id` whose bytes after the ID and next-pointer are `body`;
    /// `writable` gives the guest-writable bits of `body` (shorter than `body`: the rest is read-only).
    /// Returns the capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<u16, PciError> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        let end = usize::from(offset) + len;
        if end > usize::from(regs::CAPABILITIES_END) {
            return Err(PciError::CapabilitySpace(len));
        }
        let o = usize::from(offset);
        self.regs[o] = id;
        self.regs[o + 1] = 0;
        self.regs[o + 2..end].copy_from_slice(body);
        for (mask, bits) in self.wmask[o + 2..end].iter_mut().zip(writable) {
            *mask = *bits;
        }
        if self.last_capability == 0 {
            self.regs[usize::from(regs::CAPABILITIES_POINTER)] = offset as u8;
            let status = self.get_u16(regs::STATUS) | STATUS_CAPABILITIES;
            self.set_u16(regs::STATUS, status);
        } else {
            self.regs[usize::from(self.last_capability) + 1] = offset as u8;
        }
        self.last_capability = offset;
        // Capabilities start on dword boundaries.
        self.next_capability = ((end + 3) & !3) as u16;
        Ok(offset)
    }

    /// Adds the MSI-X capability describing `msix` (table and PBA location, vector count) and links
    /// its enable and function-mask bits, and the command register's bus-master bit, to it.
    pub fn add_msix(&mut self, msix: &Msix) -> Result<u16, PciError> {
        let layout = msix.layout();
        let control = layout.vectors - 1;
        let table = layout.table_offset | u32::from(layout.table_bar);
        let pba = layout.pba_offset | u32::from(layout.pba_bar);
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(&table.to_le_bytes());
        body.extend_from_slice(&pba.to_le_bytes());
        // Message control: enable (bit 15) and function mask (bit 14) are writable.
        let offset = self.add_capability(CAP_ID_MSIX, &body, &[0x00, 0xc0])?;
        self.msix = Some((offset, msix.clone()));
        Ok(offset)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get_u16(regs::COMMAND)
    }

    /// Whether the guest enabled memory-space decoding (the BARs respond only then).
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Whether the guest allowed the function to master the bus: a device must do no DMA (and
    /// deliver no MSI) without it.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    fn bar_register_value(&self, register: usize) -> u32 {
        match self.bar_registers[register] {
            BarRegister::Unused => 0,
            BarRegister::Low(slot) => self.bars[slot].low_register(),
            BarRegister::High(slot) => (self.bars[slot].addr >> 32) as u32,
        }
    }

    fn write_bar_register(&mut self, register: usize, value: u32) {
        match self.bar_registers[register] {
            BarRegister::Unused => {}
            BarRegister::Low(slot) => {
                let bar = &mut self.bars[slot];
                let addr = (bar.addr & !0xffff_ffff) | u64::from(value & 0xffff_fff0);
                bar.addr = addr & bar.addr_mask();
            }
            BarRegister::High(slot) => {
                let bar = &mut self.bars[slot];
                let addr = (bar.addr & 0xffff_ffff) | (u64::from(value) << 32);
                bar.addr = addr & bar.addr_mask();
            }
        }
    }

    fn read_byte(&self, offset: usize) -> u8 {
        let bar_range = usize::from(regs::BAR0)..usize::from(regs::BAR_END);
        if bar_range.contains(&offset) {
            let register = (offset - bar_range.start) / 4;
            self.bar_register_value(register).to_le_bytes()[offset % 4]
        } else {
            self.regs[offset]
        }
    }

    /// The guest reads `data.len()` bytes at `offset`. Bytes past the end of the space are left alone.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let o = usize::from(offset) + i;
            if o >= PCI_CONFIG_SPACE_SIZE {
                break;
            }
            *byte = self.read_byte(o);
        }
    }

    /// The guest writes `data` at `offset`: only writable bits change. Bytes past the end of the
    /// space are ignored.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let start = usize::from(offset);
        let end = (start + data.len()).min(PCI_CONFIG_SPACE_SIZE);
        if start >= end {
            return;
        }
        // BAR registers: merge the written bytes into each touched register, then write it whole.
        let bar0 = usize::from(regs::BAR0);
        for register in 0..usize::from(PCI_NUM_BARS) {
            let reg_start = bar0 + register * 4;
            if reg_start + 4 <= start || reg_start >= end {
                continue;
            }
            let mut value = self.bar_register_value(register).to_le_bytes();
            for (i, byte) in value.iter_mut().enumerate() {
                let o = reg_start + i;
                if (start..end).contains(&o) {
                    *byte = data[o - start];
                }
            }
            self.write_bar_register(register, u32::from_le_bytes(value));
        }
        let bar_range = bar0..usize::from(regs::BAR_END);
        for o in start..end {
            if !bar_range.contains(&o) {
                let mask = self.wmask[o];
                self.regs[o] = (self.regs[o] & !mask) | (data[o - start] & mask);
            }
        }
        let touches = |reg: u16, len: usize| {
            let r = usize::from(reg);
            r < end && start < r + len
        };
        if let Some((cap, msix)) = &self.msix {
            if touches(regs::COMMAND, 2) {
                msix.set_bus_master(self.bus_master_enabled());
            }
            if touches(cap + 2, 2) {
                let control = self.get_u16(cap + 2);
                msix.set_control(control & (1 << 15) != 0, control & (1 << 14) != 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::MsixLayout;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1d0f,
            device: 0x8061,
            class: 0x01,
            subclass: 0x08,
            prog_if: 0x02,
            revision: 1,
            subsystem_vendor: 0x1d0f,
            subsystem_id: 0x1234,
        }
    }

    fn read32(space: &PciConfigSpace, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        space.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(space: &mut PciConfigSpace, offset: u16, value: u32) {
        space.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn ids_are_read_only() {
        let mut s = PciConfigSpace::new(ids());
        assert_eq!(read32(&s, 0), 0x8061_1d0f);
        assert_eq!(read32(&s, 8), 0x0108_0201);
        assert_eq!(read32(&s, 0x2c), 0x1234_1d0f);
        for offset in [0u16, 8, 0x2c, 0x34, 0x3d] {
            let before = read32(&s, offset & !3);
            write32(&mut s, offset & !3, 0xffff_ffff);
            // Interrupt line is the only writable byte of the dword at 0x3c.
            if offset == 0x3d {
                assert_eq!(read32(&s, 0x3c), before | 0xff);
            } else {
                assert_eq!(read32(&s, offset), before, "{offset:#x}");
            }
        }
    }

    #[test]
    fn command_register_bits() {
        let mut s = PciConfigSpace::new(ids());
        assert!(!s.memory_enabled() && !s.bus_master_enabled());
        s.write(4, &[0xff, 0xff]);
        assert_eq!(s.command(), COMMAND_WRITABLE);
        assert!(s.memory_enabled() && s.bus_master_enabled());
        // I/O space stays off.
        assert_eq!(s.command() & 1, 0);
        // Byte write of the low half only.
        s.write(4, &[0x02]);
        assert!(s.memory_enabled() && !s.bus_master_enabled());
        // Status is not writable (no RW1C bits set).
        s.write(6, &[0xff, 0xff]);
        assert_eq!(read32(&s, 4) >> 16, 0);
    }

    #[test]
    fn bar32_sizing_probe() {
        let mut s = PciConfigSpace::new(ids());
        s.add_bar(0, 0x4000, PciBarKind::Memory32, false).unwrap();
        assert_eq!(read32(&s, 0x10), 0);
        write32(&mut s, 0x10, 0xffff_ffff);
        assert_eq!(read32(&s, 0x10), 0xffff_c000);
        write32(&mut s, 0x10, 0xc000_1234);
        assert_eq!(read32(&s, 0x10), 0xc000_0000);
        assert_eq!(s.bar_address(0), Some(0xc000_0000));
        // Unused BAR registers read 0 and ignore sizing.
        write32(&mut s, 0x14, 0xffff_ffff);
        assert_eq!(read32(&s, 0x14), 0);
        // Byte-wise programming.
        s.write(0x13, &[0xd0]);
        assert_eq!(read32(&s, 0x10), 0xd000_0000);
    }

    #[test]
    fn bar64_sizing_probe_and_flags() {
        let mut s = PciConfigSpace::new(ids());
        s.add_bar(2, 0x1_0000, PciBarKind::Memory64, true).unwrap();
        assert_eq!(read32(&s, 0x18), 0b1100);
        write32(&mut s, 0x18, 0xffff_ffff);
        write32(&mut s, 0x1c, 0xffff_ffff);
        assert_eq!(read32(&s, 0x18), 0xffff_0000 | 0b1100);
        assert_eq!(read32(&s, 0x1c), 0xffff_ffff);
        write32(&mut s, 0x18, 0xe123_0000);
        write32(&mut s, 0x1c, 0x0000_0001);
        assert_eq!(s.bar_address(2), Some(0x1_e123_0000));
        // A 64-bit BAR larger than 4 GiB also masks the high register.
        let mut big = PciConfigSpace::new(ids());
        big.add_bar(0, 1 << 34, PciBarKind::Memory64, false)
            .unwrap();
        write32(&mut big, 0x14, 0xffff_ffff);
        write32(&mut big, 0x10, 0xffff_ffff);
        assert_eq!(read32(&big, 0x14), 0xffff_fffc);
        assert_eq!(read32(&big, 0x10), 0b100);
        // Sub-dword reads of a BAR.
        let mut half = [0u8; 2];
        s.read(0x1a, &mut half);
        assert_eq!(u16::from_le_bytes(half), 0xe123);
    }

    #[test]
    fn bar_declaration_errors() {
        let mut s = PciConfigSpace::new(ids());
        assert_eq!(
            s.add_bar(5, 0x1000, PciBarKind::Memory64, false),
            Err(PciError::BarIndex(5))
        );
        assert_eq!(
            s.add_bar(6, 0x1000, PciBarKind::Memory32, false),
            Err(PciError::BarIndex(6))
        );
        assert!(matches!(
            s.add_bar(0, 0x1001, PciBarKind::Memory32, false),
            Err(PciError::BarSize { .. })
        ));
        assert!(matches!(
            s.add_bar(0, 8, PciBarKind::Memory32, false),
            Err(PciError::BarSize { .. })
        ));
        assert!(matches!(
            s.add_bar(0, 1 << 32, PciBarKind::Memory32, false),
            Err(PciError::BarSize { .. })
        ));
        s.add_bar(0, 0x1000, PciBarKind::Memory64, false).unwrap();
        assert_eq!(
            s.add_bar(1, 0x1000, PciBarKind::Memory32, false),
            Err(PciError::BarIndex(1))
        );
        assert_eq!(s.bars().len(), 1);
    }

    #[test]
    fn capability_chain() {
        let mut s = PciConfigSpace::new(ids());
        assert_eq!(read32(&s, 4) >> 16 & u32::from(STATUS_CAPABILITIES), 0);
        let a = s.add_capability(0x09, &[1, 2, 3], &[0xff]).unwrap();
        let b = s.add_capability(0x05, &[0; 10], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        let mut p = [0u8];
        s.read(0x34, &mut p);
        assert_eq!(p[0], 0x40);
        assert_ne!(read32(&s, 4) >> 16 & u32::from(STATUS_CAPABILITIES), 0);
        // Walk the chain.
        let mut seen = Vec::new();
        let mut next = p[0];
        while next != 0 {
            let mut hdr = [0u8; 2];
            s.read(u16::from(next), &mut hdr);
            seen.push(hdr[0]);
            next = hdr[1];
        }
        assert_eq!(seen, vec![0x09, 0x05]);
        // Only the first body byte of the first capability is writable.
        write32(&mut s, 0x40, 0xffff_ffff);
        let mut v = [0u8; 4];
        s.read(0x40, &mut v);
        assert_eq!(v, [0x09, 0x48, 0xff, 2]);
        // Filling the space fails cleanly.
        let mut n = 0;
        while s.add_capability(0x09, &[0; 30], &[]).is_ok() {
            n += 1;
        }
        assert!(n > 0);
        assert_eq!(
            s.add_capability(0x09, &[0; 300], &[]),
            Err(PciError::CapabilitySpace(302))
        );
    }

    #[test]
    fn msix_capability_registers() {
        let msix = Msix::new(MsixLayout {
            vectors: 8,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        })
        .unwrap();
        let mut s = PciConfigSpace::new(ids());
        s.add_bar(0, 0x4000, PciBarKind::Memory32, false).unwrap();
        let cap = s.add_msix(&msix).unwrap();
        assert_eq!(read32(&s, cap) & 0xffff_00ff, 7 << 16 | 0x11);
        assert_eq!(read32(&s, cap + 4), 0x2000);
        assert_eq!(read32(&s, cap + 8), 0x3000);
        // Table size and BIR are read-only; enable and function mask are not.
        write32(&mut s, cap, 0xffff_ffff);
        assert_eq!(read32(&s, cap) >> 16, 0xc007);
        write32(&mut s, cap + 4, 0xffff_ffff);
        assert_eq!(read32(&s, cap + 4), 0x2000);
        assert!(msix.enabled() && msix.function_masked());
        s.write(cap + 3, &[0x80]);
        assert!(msix.enabled() && !msix.function_masked());
    }

    #[test]
    fn garbage_offsets_and_sizes() {
        let mut s = PciConfigSpace::new(ids());
        s.add_bar(0, 0x1000, PciBarKind::Memory64, false).unwrap();
        for offset in [
            0u16,
            1,
            3,
            0x0f,
            0x11,
            0x26,
            0x27,
            0xff,
            0xffd,
            0xfff,
            0x1000,
            u16::MAX,
        ] {
            for len in [0usize, 1, 2, 3, 4, 5, 8, 64, 4097] {
                let mut buf = vec![0xaau8; len];
                s.read(offset, &mut buf);
                s.write(offset, &buf);
            }
        }
        // Past the end, nothing is touched.
        let mut buf = [0x55u8; 4];
        s.read(0xffe, &mut buf);
        assert_eq!(buf, [0, 0, 0x55, 0x55]);
        // Extended space reads zero (no extended capabilities).
        assert_eq!(read32(&s, 0x100), 0);
        assert_eq!(read32(&s, 0), 0x8061_1d0f);
    }
}
