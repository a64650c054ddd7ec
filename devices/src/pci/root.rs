//! The root complex of bus 0: the host bridge, the slots, BAR placement and (re)mapping on the MMIO
//! bus, and the two ways the guest reaches configuration space (ports 0xCF8/0xCFC and the ECAM window).

use std::sync::{Arc, Mutex, MutexGuard};

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};
use vmm_sys_util::eventfd::EventFd;

use super::config::{regs, COMMAND_MEMORY};
use super::msix::MsixRegion;
use super::{
    Datamatch, IoEventRegistrar, Msix, PciBar, PciBarKind, PciConfigSpace, PciDevice, PciIds,
    PCI_NUM_BARS, PCI_SLOTS,
};
use crate::bus::{Bus, BusDevice};

/// A device as the root keeps it.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Vendor ID of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Ports 0xCF8–0xCFF: the address register and the data window of configuration mechanism #1.
pub const PCI_CONFIG_IO_LEN: u64 = 8;
/// Smallest block a BAR is allocated in, so no two BARs share a page.
const MIN_BAR_ALLOCATION: u64 = 0x1000;

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// All 31 device slots of bus 0 are taken.
    #[error("no free PCI slot on bus 0")]
    NoFreeSlot,
    /// A BAR the device declares is not valid.
    #[error("BAR {index}: {why}")]
    InvalidBar {
        /// BAR index.
        index: u8,
        /// What is wrong.
        why: &'static str,
    },
    /// The MMIO windows have no room for a BAR.
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO windows")]
    NoBarSpace {
        /// Size of the BAR.
        size: u64,
    },
    /// An ioeventfd request or the MSI-X layout points outside the device's BARs.
    #[error("device layout: {0}")]
    Layout(&'static str),
    /// Duplicating an ioeventfd failed.
    #[error("cannot duplicate an ioeventfd: {0}")]
    EventFd(std::io::Error),
    /// The window configuration is not valid.
    #[error("invalid PCI MMIO window {base:#x}+{size:#x}")]
    Window {
        /// Window start.
        base: u64,
        /// Window size.
        size: u64,
    },
}

/// Where the root may put BARs and where it must never map one.
#[derive(Debug, Clone, Default)]
pub struct PciRootConfig {
    /// The 32-bit window (base, size): BARs go here while they fit.
    pub mmio32: (u64, u64),
    /// The 64-bit window (base, size), for 64-bit BARs that do not fit below 4 GiB.
    pub mmio64: Option<(u64, u64)>,
    /// Ranges (base, size) a BAR may never overlap, whatever the guest programs: RAM, the in-kernel
    /// APICs, KVM's private pages. (Devices on the MMIO bus are protected by the bus itself.)
    pub reserved: Vec<(u64, u64)>,
}

/// The host bridge at 00:00.0: only a configuration space (class 06/00/00).
pub struct HostBridge {
    config: PciConfigSpace,
}

impl HostBridge {
    /// The host bridge.
    pub fn new() -> Self {
        Self {
            config: PciConfigSpace::new(PciIds {
                vendor: HOST_BRIDGE_VENDOR_ID,
                device: HOST_BRIDGE_DEVICE_ID,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0x00,
                revision: 0,
                subsystem_vendor: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, _bar: u8, _offset: u64, _data: &mut [u8]) {}
    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }
}

fn lock_device(device: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// The MMIO bus device of one BAR: forwards accesses to the PCI device, or to its MSI-X table/PBA.
struct BarRegion {
    device: SharedPciDevice,
    bar: u8,
    msix: Option<Msix>,
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self
            .msix
            .as_ref()
            .and_then(|m| Some((m, m.region(self.bar, offset)?)))
        {
            Some((msix, MsixRegion::Table(o))) => msix.read_table(o, data),
            Some((msix, MsixRegion::Pba(o))) => msix.read_pba(o, data),
            None => lock_device(&self.device).bar_read(self.bar, offset, data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match self
            .msix
            .as_ref()
            .and_then(|m| Some((m, m.region(self.bar, offset)?)))
        {
            Some((msix, MsixRegion::Table(o))) => msix.write_table(o, data),
            Some((msix, MsixRegion::Pba(o))) => msix.write_pba(o, data),
            None => lock_device(&self.device).bar_write(self.bar, offset, data),
        }
    }
}

struct SlotBar {
    bar: PciBar,
    region: Arc<Mutex<BarRegion>>,
    /// Where the BAR is on the MMIO bus now, if it is.
    mapped_at: Option<u64>,
    /// The range the root allocated for it at attach time.
    allocation: (Option<RangeInclusive>, bool),
    /// A refused address was logged at warning level already (later ones go to debug: the guest
    /// must not be able to flood the log).
    refusal_logged: bool,
}

struct IoEvent {
    bar: u8,
    offset: u64,
    datamatch: Datamatch,
    fd: EventFd,
}

struct Slot {
    device: SharedPciDevice,
    bars: Vec<SlotBar>,
    ioevents: Vec<IoEvent>,
}

/// Bus 0: the host bridge in slot 0 and up to 31 devices, each a single function.
///
/// The root owns the BARs' presence on the MMIO bus: after every guest write to a device's command
/// register or BAR registers it reads them back and maps, moves ([`Bus::relocate`]) or unmaps each
/// BAR, and moves the device's ioeventfds along. A BAR is mapped only while memory space is enabled
/// and its range overlaps neither the reserved ranges nor anything else on the MMIO bus; otherwise
/// it stays unmapped (accesses to it hit nothing) until the guest programs something acceptable.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    mmio: Arc<Bus>,
    ioevents: Arc<dyn IoEventRegistrar>,
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
    reserved: Vec<(u64, u64)>,
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0. BARs will be mapped on `mmio`; ioeventfds registered
    /// through `ioevents`.
    pub fn new(
        config: PciRootConfig,
        mmio: Arc<Bus>,
        ioevents: Arc<dyn IoEventRegistrar>,
    ) -> Result<Self, PciRootError> {
        let window = |(base, size): (u64, u64)| {
            AddressAllocator::new(base, size).map_err(|_| PciRootError::Window { base, size })
        };
        let mut root = Self {
            slots: (0..PCI_SLOTS).map(|_| None).collect(),
            mmio,
            ioevents,
            mmio32: window(config.mmio32)?,
            mmio64: config.mmio64.map(window).transpose()?,
            reserved: config.reserved,
        };
        root.slots[0] = Some(Slot {
            device: Arc::new(Mutex::new(HostBridge::new())),
            bars: Vec::new(),
            ioevents: Vec::new(),
        });
        Ok(root)
    }

    /// Puts `device` in the first free slot: allocates and programs its BARs (memory space stays
    /// disabled until the guest enables it, so nothing is mapped yet) and takes its ioeventfds.
    /// Returns the slot number. Connecting MSI-X to the interrupt controller is the caller's job.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8, PciRootError> {
        let slot_index = (1..PCI_SLOTS)
            .find(|s| self.slots[usize::from(*s)].is_none())
            .ok_or(PciRootError::NoFreeSlot)?;
        let mut bars: Vec<SlotBar> = Vec::new();
        let result = self.build_slot(&device, &mut bars);
        match result {
            Ok(ioevents) => {
                self.slots[usize::from(slot_index)] = Some(Slot {
                    device,
                    bars,
                    ioevents,
                });
                self.reconcile(slot_index);
                Ok(slot_index)
            }
            Err(e) => {
                for bar in &bars {
                    self.free_allocation(&bar.allocation);
                }
                Err(e)
            }
        }
    }

    fn free_allocation(&mut self, allocation: &(Option<RangeInclusive>, bool)) {
        if let (Some(range), high) = allocation {
            let allocator = if *high {
                self.mmio64.as_mut()
            } else {
                Some(&mut self.mmio32)
            };
            if let Some(a) = allocator {
                let _ = a.free(range);
            }
        }
    }

    fn build_slot(
        &mut self,
        device: &SharedPciDevice,
        bars: &mut Vec<SlotBar>,
    ) -> Result<Vec<IoEvent>, PciRootError> {
        let mut dev = lock_device(device);
        let declared = dev.bars();
        let msix = dev.msix();
        // Validate: indices, sizes, no register used twice.
        let mut used = [false; PCI_NUM_BARS as usize];
        for bar in &declared {
            let registers = match bar.kind {
                PciBarKind::Memory32 => 1,
                PciBarKind::Memory64 => 2,
            };
            let first = usize::from(bar.index);
            let invalid = |why| PciRootError::InvalidBar {
                index: bar.index,
                why,
            };
            if first + registers > usize::from(PCI_NUM_BARS) {
                return Err(invalid("index out of range"));
            }
            if used[first..first + registers].iter().any(|u| *u) {
                return Err(invalid("register declared twice"));
            }
            used[first..first + registers]
                .iter_mut()
                .for_each(|u| *u = true);
            if !bar.size.is_power_of_two() || bar.size < 16 {
                return Err(invalid("size is not a power of two of at least 16"));
            }
            if bar.kind == PciBarKind::Memory32 && bar.size > 1 << 31 {
                return Err(invalid("a 32-bit BAR of more than 2 GiB"));
            }
        }
        // Allocate the largest first, so alignment wastes the least.
        let mut order: Vec<&PciBar> = declared.iter().collect();
        order.sort_by_key(|b| std::cmp::Reverse(b.size));
        for bar in order {
            let size = bar.size.max(MIN_BAR_ALLOCATION);
            let low = self.mmio32.allocate(size, size, AllocPolicy::FirstMatch);
            let (range, high) = match (low, bar.kind, self.mmio64.as_mut()) {
                (Ok(range), _, _) => (range, false),
                (Err(_), PciBarKind::Memory64, Some(a)) => (
                    a.allocate(size, size, AllocPolicy::FirstMatch)
                        .map_err(|_| PciRootError::NoBarSpace { size: bar.size })?,
                    true,
                ),
                _ => return Err(PciRootError::NoBarSpace { size: bar.size }),
            };
            let addr = range.start();
            bars.push(SlotBar {
                bar: *bar,
                region: Arc::new(Mutex::new(BarRegion {
                    device: device.clone(),
                    bar: bar.index,
                    msix: msix.clone(),
                })),
                mapped_at: None,
                allocation: (Some(range), high),
                refusal_logged: false,
            });
            let reg = regs::BAR0 + 4 * u16::from(bar.index);
            dev.config_write(reg, &(addr as u32).to_le_bytes());
            if bar.kind == PciBarKind::Memory64 {
                dev.config_write(reg + 4, &((addr >> 32) as u32).to_le_bytes());
            }
        }
        let size_of = |index: u8| declared.iter().find(|b| b.index == index).map(|b| b.size);
        if let Some(msix) = &msix {
            let l = msix.layout();
            let fits = |bar: u8, offset: u32, len: u64| {
                size_of(bar).is_some_and(|size| u64::from(offset) + len <= size)
            };
            if !fits(l.table_bar, l.table_offset, l.table_len())
                || !fits(l.pba_bar, l.pba_offset, l.pba_len())
            {
                return Err(PciRootError::Layout("MSI-X table or PBA outside its BAR"));
            }
        }
        let mut ioevents = Vec::new();
        for request in dev.ioeventfds() {
            let width = match request.datamatch {
                Datamatch::Any | Datamatch::U8(_) => 1,
                Datamatch::U16(_) => 2,
                Datamatch::U32(_) => 4,
                Datamatch::U64(_) => 8,
            };
            if !size_of(request.bar).is_some_and(|size| {
                request
                    .offset
                    .checked_add(width)
                    .is_some_and(|end| end <= size)
            }) {
                return Err(PciRootError::Layout("ioeventfd outside its BAR"));
            }
            ioevents.push(IoEvent {
                bar: request.bar,
                offset: request.offset,
                datamatch: request.datamatch,
                fd: request.fd.try_clone().map_err(PciRootError::EventFd)?,
            });
        }
        Ok(ioevents)
    }

    fn overlaps_reserved(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return true;
        };
        self.reserved
            .iter()
            .any(|(base, len)| addr < base.saturating_add(*len) && *base < end)
    }

    /// Brings the MMIO bus and the ioeventfds in line with the device's command register and BARs.
    fn reconcile(&mut self, slot_index: u8) {
        let Some(slot) = self.slots[usize::from(slot_index)].as_ref() else {
            return;
        };
        if slot.bars.is_empty() {
            return;
        }
        // Read what the guest programmed.
        let (memory_enabled, addresses) = {
            let mut dev = lock_device(&slot.device);
            let mut command = [0u8; 2];
            dev.config_read(regs::COMMAND, &mut command);
            let addresses: Vec<u64> = slot
                .bars
                .iter()
                .map(|b| {
                    let reg = regs::BAR0 + 4 * u16::from(b.bar.index);
                    let mut low = [0u8; 4];
                    dev.config_read(reg, &mut low);
                    let mut addr = u64::from(u32::from_le_bytes(low) & 0xffff_fff0);
                    if b.bar.kind == PciBarKind::Memory64 {
                        let mut high = [0u8; 4];
                        dev.config_read(reg + 4, &mut high);
                        addr |= u64::from(u32::from_le_bytes(high)) << 32;
                    }
                    addr
                })
                .collect();
            (u16::from_le_bytes(command) & COMMAND_MEMORY != 0, addresses)
        };
        let wanted: Vec<Option<u64>> = slot
            .bars
            .iter()
            .zip(&addresses)
            .map(|(b, addr)| {
                (memory_enabled && !self.overlaps_reserved(*addr, b.bar.size)).then_some(*addr)
            })
            .collect();
        for (i, want) in wanted.into_iter().enumerate() {
            self.update_bar(slot_index, i, want);
        }
    }

    fn update_bar(&mut self, slot_index: u8, bar_slot: usize, want: Option<u64>) {
        let Some(slot) = self.slots[usize::from(slot_index)].as_mut() else {
            return;
        };
        let bar = &mut slot.bars[bar_slot];
        if bar.mapped_at == want {
            return;
        }
        let index = bar.bar.index;
        let size = bar.bar.size;
        let ioevents = &slot.ioevents;
        let registrar = &self.ioevents;
        let set_ioevents = |base: u64, on: bool| {
            for ev in ioevents.iter().filter(|e| e.bar == index) {
                let addr = base + ev.offset;
                let result = if on {
                    registrar.register(&ev.fd, addr, ev.datamatch)
                } else {
                    registrar.unregister(&ev.fd, addr, ev.datamatch)
                };
                if let Err(e) = result {
                    log::warn!(
                        "PCI 00:{slot_index:02x}.0 BAR {index}: cannot {} the ioeventfd at {addr:#x}: {e}",
                        if on { "register" } else { "unregister" }
                    );
                }
            }
        };
        if let Some(old) = bar.mapped_at {
            set_ioevents(old, false);
        }
        let placed = match (bar.mapped_at, want) {
            (_, None) => {
                if let Some(old) = bar.mapped_at {
                    self.mmio.remove(old);
                }
                Ok(None)
            }
            (Some(old), Some(new)) => match self.mmio.relocate(old, new) {
                Ok(()) => Ok(Some(new)),
                Err(e) => {
                    // Refused: the BAR is unmapped, not left where the guest no longer expects it.
                    self.mmio.remove(old);
                    Err(e)
                }
            },
            (None, Some(new)) => self
                .mmio
                .insert(bar.region.clone(), new, size)
                .map(|()| Some(new)),
        };
        bar.mapped_at = match placed {
            Ok(at) => at,
            Err(e) => {
                let level = if bar.refusal_logged {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                bar.refusal_logged = true;
                log::log!(
                    level,
                    "PCI 00:{slot_index:02x}.0 BAR {index}: the guest's address is refused, BAR unmapped: {e}"
                );
                None
            }
        };
        if let Some(new) = bar.mapped_at {
            set_ioevents(new, true);
        }
    }

    /// Where BAR `bar` of the device in `slot` is mapped now, if it is.
    pub fn bar_mapping(&self, slot: u8, bar: u8) -> Option<u64> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()?
            .bars
            .iter()
            .find(|b| b.bar.index == bar)?
            .mapped_at
    }

    fn device(&self, bus: u8, device: u8, function: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        Some(&self.slots.get(usize::from(device))?.as_ref()?.device)
    }

    /// A configuration read of `register` of bus:device.function. Functions that do not exist read
    /// all ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, register: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(dev) = self.device(bus, device, function) {
            data.fill(0);
            lock_device(dev).config_read(register, data);
        }
    }

    /// A configuration write. Writes to functions that do not exist are dropped. A write touching the
    /// command register or a BAR re-maps the device's BARs.
    pub fn config_write(&mut self, bus: u8, device: u8, function: u8, register: u16, data: &[u8]) {
        let Some(dev) = self.device(bus, device, function) else {
            return;
        };
        lock_device(dev).config_write(register, data);
        let start = usize::from(register);
        let end = start + data.len();
        let touches = |from: u16, to: u16| start < usize::from(to) && usize::from(from) < end;
        if touches(regs::COMMAND, regs::COMMAND + 2) || touches(regs::BAR0, regs::BAR_END) {
            self.reconcile(device);
        }
    }
}

fn lock_root(root: &Mutex<PciRoot>) -> MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(|p| p.into_inner())
}

/// Configuration mechanism #1 on ports 0xCF8–0xCFF (a [`BusDevice`] at 0xCF8, length 8): a dword
/// address register at 0xCF8 (enable bit 31, bus 23:16, device 15:11, function 10:8, register 7:2)
/// and the data window at 0xCFC–0xCFF, where a byte, word or dword access reaches the register plus
/// the port's offset into the window.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// The port device for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root, address: 0 }
    }

    /// (bus, device, function, register) for an access at `window_offset` into 0xCFC–0xCFF of `len`
    /// bytes, if the address register enables an access and it stays inside the dword.
    fn target(&self, window_offset: u64, len: usize) -> Option<(u8, u8, u8, u16)> {
        if self.address & (1 << 31) == 0 || len == 0 || window_offset + len as u64 > 4 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as u16 + window_offset as u16,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target(offset - 4, data.len()) {
                Some((b, d, f, r)) => lock_root(&self.root).config_read(b, d, f, r, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => {
                if let Ok(dword) = <[u8; 4]>::try_from(data) {
                    // Reserved bits 30:24 and 1:0 read as zero.
                    self.address = u32::from_le_bytes(dword) & 0x80ff_fffc;
                }
            }
            4..=7 => {
                if let Some((b, d, f, r)) = self.target(offset - 4, data.len()) {
                    lock_root(&self.root).config_write(b, d, f, r, data);
                }
            }
            _ => {}
        }
    }
}

/// (bus, device, function, register) of an ECAM window offset.
pub fn ecam_decode(offset: u64) -> (u8, u8, u8, u16) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as u16,
    )
}

/// The PCIe ECAM window (a [`BusDevice`] on the MMIO bus, 1 MiB per bus): offset bits 27:20 are the
/// bus, 19:15 the device, 14:12 the function, 11:0 the register. Accesses must be 1, 2 or 4 bytes and
/// naturally aligned; others read all ones and write nothing.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// The ECAM device for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

fn ecam_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset % len as u64 == 0
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !ecam_access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let (b, d, f, r) = ecam_decode(offset);
        lock_root(&self.root).config_read(b, d, f, r, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if ecam_access_ok(offset, data.len()) {
            let (b, d, f, r) = ecam_decode(offset);
            lock_root(&self.root).config_write(b, d, f, r, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{MsiInterruptGroup, MsiMessage, MsixLayout, PciIoEvent};
    use std::io;

    /// (register?, addr, datamatch)
    type IoLog = Mutex<Vec<(bool, u64, Datamatch)>>;

    #[derive(Default)]
    struct FakeKvm {
        log: IoLog,
    }

    impl IoEventRegistrar for FakeKvm {
        fn register(&self, _fd: &EventFd, addr: u64, datamatch: Datamatch) -> io::Result<()> {
            self.log.lock().unwrap().push((true, addr, datamatch));
            Ok(())
        }
        fn unregister(&self, _fd: &EventFd, addr: u64, datamatch: Datamatch) -> io::Result<()> {
            self.log.lock().unwrap().push((false, addr, datamatch));
            Ok(())
        }
    }

    /// A device with a 32-bit BAR 0 (16 KiB: registers, MSI-X table at 0x2000, PBA at 0x3000), a
    /// 64-bit BAR 2 (64 KiB) and a doorbell ioeventfd at BAR 0 + 0x1000.
    struct TestDevice {
        config: PciConfigSpace,
        msix: Msix,
        doorbell: EventFd,
        writes: Vec<(u8, u64, Vec<u8>)>,
    }

    impl TestDevice {
        fn new() -> Self {
            let msix = Msix::new(MsixLayout {
                vectors: 4,
                table_bar: 0,
                table_offset: 0x2000,
                pba_bar: 0,
                pba_offset: 0x3000,
            })
            .unwrap();
            let mut config = PciConfigSpace::new(PciIds {
                vendor: 0x1d0f,
                device: 0x8061,
                class: 1,
                subclass: 8,
                prog_if: 2,
                ..Default::default()
            });
            config
                .add_bar(0, 0x4000, PciBarKind::Memory32, false)
                .unwrap();
            config
                .add_bar(2, 0x1_0000, PciBarKind::Memory64, false)
                .unwrap();
            config.add_msix(&msix).unwrap();
            Self {
                config,
                msix,
                doorbell: EventFd::new(0).unwrap(),
                writes: Vec::new(),
            }
        }
    }

    impl PciDevice for TestDevice {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            self.config.read(offset, data)
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) {
            self.config.write(offset, data)
        }
        fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(bar + offset as u8);
        }
        fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
        fn bars(&self) -> Vec<PciBar> {
            self.config.bars()
        }
        fn ioeventfds(&self) -> Vec<PciIoEvent<'_>> {
            vec![PciIoEvent {
                bar: 0,
                offset: 0x1000,
                datamatch: Datamatch::Any,
                fd: &self.doorbell,
            }]
        }
        fn msix(&self) -> Option<Msix> {
            Some(self.msix.clone())
        }
    }

    struct Setup {
        root: Arc<Mutex<PciRoot>>,
        io: PciConfigIo,
        ecam: PciConfigMmio,
        mmio: Arc<Bus>,
        kvm: Arc<FakeKvm>,
        dev: Arc<Mutex<TestDevice>>,
    }

    const RAM: (u64, u64) = (0, 0xc000_0000);

    fn setup() -> Setup {
        let mmio = Arc::new(Bus::new());
        let kvm = Arc::new(FakeKvm::default());
        let mut root = PciRoot::new(
            PciRootConfig {
                mmio32: (0xc000_0000, 0x2000_0000),
                mmio64: Some((0x10_0000_0000, 0x10_0000_0000)),
                reserved: vec![RAM, (0xfee0_0000, 0x10_0000)],
            },
            mmio.clone(),
            kvm.clone(),
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(TestDevice::new()));
        assert_eq!(root.add_device(dev.clone()).unwrap(), 1);
        let root = Arc::new(Mutex::new(root));
        // ECAM sits on the same MMIO bus, as in the VMM.
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
            0xe000_0000,
            0x1000_0000,
        )
        .unwrap();
        Setup {
            io: PciConfigIo::new(root.clone()),
            ecam: PciConfigMmio::new(root.clone()),
            root,
            mmio,
            kvm,
            dev,
        }
    }

    fn cf8(s: &mut Setup, bus: u8, dev: u8, func: u8, reg: u8) {
        let addr = 1u32 << 31
            | u32::from(bus) << 16
            | u32::from(dev) << 11
            | u32::from(func) << 8
            | u32::from(reg);
        s.io.write(0, &addr.to_le_bytes());
    }

    fn io_read32(s: &mut Setup, bus: u8, dev: u8, func: u8, reg: u8) -> u32 {
        cf8(s, bus, dev, func, reg & 0xfc);
        let mut d = [0u8; 4];
        s.io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn ecam_offset(bus: u8, dev: u8, func: u8, reg: u16) -> u64 {
        u64::from(bus) << 20 | u64::from(dev) << 15 | u64::from(func) << 12 | u64::from(reg)
    }

    fn ecam_read32(s: &mut Setup, bus: u8, dev: u8, func: u8, reg: u16) -> u32 {
        let mut d = [0u8; 4];
        s.ecam.read(ecam_offset(bus, dev, func, reg), &mut d);
        u32::from_le_bytes(d)
    }

    fn ecam_write32(s: &mut Setup, dev: u8, reg: u16, value: u32) {
        s.ecam
            .write(ecam_offset(0, dev, 0, reg), &value.to_le_bytes());
    }

    fn mmio_read32(s: &Setup, addr: u64) -> Option<u32> {
        let mut d = [0u8; 4];
        s.mmio.read(addr, &mut d).then(|| u32::from_le_bytes(d))
    }

    #[test]
    fn enumeration_through_both_mechanisms() {
        let mut s = setup();
        for dev in 0..32u8 {
            for func in 0..8u8 {
                for reg in (0..0x40u8).step_by(4) {
                    let a = io_read32(&mut s, 0, dev, func, reg);
                    let b = ecam_read32(&mut s, 0, dev, func, u16::from(reg));
                    assert_eq!(a, b, "{dev:02x}.{func} reg {reg:#x}");
                }
            }
        }
        assert_eq!(io_read32(&mut s, 0, 0, 0, 0), 0x0d57_8086);
        assert_eq!(io_read32(&mut s, 0, 0, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(io_read32(&mut s, 0, 1, 0, 0), 0x8061_1d0f);
        // Empty slot, other functions, other buses: all ones.
        assert_eq!(io_read32(&mut s, 0, 2, 0, 0), 0xffff_ffff);
        assert_eq!(io_read32(&mut s, 0, 1, 1, 0), 0xffff_ffff);
        assert_eq!(io_read32(&mut s, 1, 0, 0, 0), 0xffff_ffff);
        assert_eq!(ecam_read32(&mut s, 255, 31, 7, 0xffc), 0xffff_ffff);
        // ECAM reaches extended space; the legacy mechanism cannot.
        assert_eq!(ecam_read32(&mut s, 0, 1, 0, 0x100), 0);
    }

    #[test]
    fn config_io_decoding() {
        let mut s = setup();
        // The address register reads back (reserved bits cleared).
        s.io.write(0, &0xffff_ffffu32.to_le_bytes());
        let mut d = [0u8; 4];
        s.io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc);
        s.io.write(0, &0x8000_0000u32.to_le_bytes());
        s.io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        // Byte and word accesses to 0xCF8 are not the address register.
        s.io.write(3, &[0x01]);
        s.io.write(0, &[0x00, 0x00]);
        s.io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        let mut b = [0u8; 1];
        s.io.read(0, &mut b);
        assert_eq!(b, [0xff]);
        // Sub-dword data reads at the port offset: device id at 0xCFE.
        cf8(&mut s, 0, 1, 0, 0);
        let mut w = [0u8; 2];
        s.io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x8061);
        s.io.read(7, &mut b);
        assert_eq!(b, [0x80]);
        // class code byte at 0x0B via 0xCFF.
        cf8(&mut s, 0, 1, 0, 8);
        s.io.read(7, &mut b);
        assert_eq!(b, [0x01]);
        // Crossing the end of the data window: all ones.
        s.io.read(6, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Enable bit clear: all ones, writes ignored.
        s.io.write(0, &0x0000_0800u32.to_le_bytes());
        s.io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        s.io.write(4, &[0xff, 0xff]);
        assert_eq!(io_read32(&mut s, 0, 1, 0, 4) & 0xffff, 0);
        // Byte write of the command register through 0xCFC.
        cf8(&mut s, 0, 1, 0, 4);
        s.io.write(4, &[0x06]);
        assert_eq!(io_read32(&mut s, 0, 1, 0, 4) & 0xffff, 6);
    }

    #[test]
    fn ecam_decode_fields() {
        assert_eq!(ecam_decode(0), (0, 0, 0, 0));
        assert_eq!(ecam_decode(0x0fff_ffff), (255, 31, 7, 0xfff));
        assert_eq!(ecam_decode(ecam_offset(3, 17, 5, 0x123)), (3, 17, 5, 0x123));
        assert_eq!(ecam_decode(u64::MAX), (255, 31, 7, 0xfff));
        let mut s = setup();
        // Misaligned and odd-sized ECAM accesses.
        let mut d = [0u8; 4];
        s.ecam.read(ecam_offset(0, 1, 0, 2), &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut q = [0u8; 8];
        s.ecam.read(ecam_offset(0, 1, 0, 0), &mut q);
        assert_eq!(q, [0xff; 8]);
        let mut w = [0u8; 2];
        s.ecam.read(ecam_offset(0, 1, 0, 2), &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x8061);
        s.ecam.write(ecam_offset(0, 1, 0, 3), &[0xff, 0xff]);
        s.ecam.write(ecam_offset(0, 1, 0, 4), &[0xff; 3]);
        assert_eq!(ecam_read32(&mut s, 0, 1, 0, 4) & 0xffff, 0);
    }

    #[test]
    fn bars_are_allocated_naturally_aligned_and_mapped_on_enable() {
        let mut s = setup();
        let bar0 = ecam_read32(&mut s, 0, 1, 0, 0x10);
        let bar2 = u64::from(ecam_read32(&mut s, 0, 1, 0, 0x18))
            | u64::from(ecam_read32(&mut s, 0, 1, 0, 0x1c)) << 32;
        assert_eq!(bar2 & 0xf, 0b100);
        let bar2 = bar2 & !0xf;
        assert!((0xc000_0000..0xe000_0000).contains(&bar0));
        assert!((0xc000_0000..0xe000_0000).contains(&bar2));
        assert_eq!(bar0 % 0x4000, 0);
        assert_eq!(bar2 % 0x1_0000, 0);
        let bar0 = u64::from(bar0);
        // Memory space disabled: nothing mapped, no ioeventfd.
        assert_eq!(mmio_read32(&s, bar0), None);
        assert!(s.kvm.log.lock().unwrap().is_empty());
        ecam_write32(&mut s, 1, 4, 0x2);
        assert_eq!(mmio_read32(&s, bar0 + 4), Some(0x0404_0404));
        assert_eq!(mmio_read32(&s, bar2 + 8), Some(0x0a0a_0a0a));
        assert_eq!(
            *s.kvm.log.lock().unwrap(),
            vec![(true, bar0 + 0x1000, Datamatch::Any)]
        );
        s.mmio.write(bar0 + 0x10, &[1, 2]);
        assert_eq!(s.dev.lock().unwrap().writes, vec![(0, 0x10, vec![1, 2])]);
        // Disable again: unmapped, ioeventfd dropped.
        ecam_write32(&mut s, 1, 4, 0);
        assert_eq!(mmio_read32(&s, bar0), None);
        assert_eq!(
            s.kvm.log.lock().unwrap().last(),
            Some(&(false, bar0 + 0x1000, Datamatch::Any))
        );
    }

    #[test]
    fn msix_table_is_reached_through_the_bar() {
        let mut s = setup();
        let bar0 = u64::from(ecam_read32(&mut s, 0, 1, 0, 0x10));
        ecam_write32(&mut s, 1, 4, 0x6);
        s.mmio.write(bar0 + 0x2010, &0xfee0_0000u32.to_le_bytes());
        s.mmio.write(bar0 + 0x2018, &0x41u32.to_le_bytes());
        let msix = s.dev.lock().unwrap().msix.clone();
        assert_eq!(
            msix.message(1),
            Some(MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(mmio_read32(&s, bar0 + 0x201c), Some(1));
        // The PBA, and the device never saw either.
        assert_eq!(mmio_read32(&s, bar0 + 0x3000), Some(0));
        assert!(s.dev.lock().unwrap().writes.is_empty());
        // Enable MSI-X through the capability; a masked event shows in the PBA.
        struct Nop;
        impl MsiInterruptGroup for Nop {
            fn update(&self, _: u16, _: MsiMessage, _: bool) -> io::Result<()> {
                Ok(())
            }
            fn trigger(&self, _: u16) -> io::Result<()> {
                Ok(())
            }
        }
        msix.set_group(Arc::new(Nop));
        let cap = ecam_read32(&mut s, 0, 1, 0, 0x34) & 0xff;
        ecam_write32(&mut s, 1, cap as u16, 0x8000_0000);
        assert!(msix.enabled());
        msix.notify(1);
        assert_eq!(mmio_read32(&s, bar0 + 0x3000), Some(2));
    }

    #[test]
    fn bar_relocation_and_refusals() {
        let mut s = setup();
        let bar0 = u64::from(ecam_read32(&mut s, 0, 1, 0, 0x10));
        ecam_write32(&mut s, 1, 4, 0x2);
        let root = s.root.clone();
        let mapping = |bar| root.lock().unwrap().bar_mapping(1, bar);
        assert_eq!(mapping(0), Some(bar0));
        // Move BAR 0 elsewhere in the window: relocated, ioeventfd follows.
        ecam_write32(&mut s, 1, 0x10, 0xd000_0000);
        assert_eq!(mapping(0), Some(0xd000_0000));
        assert_eq!(mmio_read32(&s, bar0), None);
        assert_eq!(mmio_read32(&s, 0xd000_0000), Some(0));
        {
            let log = s.kvm.log.lock().unwrap();
            let n = log.len();
            assert_eq!(log[n - 2], (false, bar0 + 0x1000, Datamatch::Any));
            assert_eq!(log[n - 1], (true, 0xd000_1000, Datamatch::Any));
        }
        // Onto RAM: refused, unmapped, no ioeventfd left.
        ecam_write32(&mut s, 1, 0x10, 0x0010_0000);
        assert_eq!(mapping(0), None);
        assert_eq!(
            s.kvm.log.lock().unwrap().last(),
            Some(&(false, 0xd000_1000, Datamatch::Any))
        );
        // Onto the ECAM window (another device on the MMIO bus): refused.
        ecam_write32(&mut s, 1, 0x10, 0xe000_0000);
        assert_eq!(mapping(0), None);
        assert_eq!(ecam_read32(&mut s, 0, 1, 0, 0x10), 0xe000_0000);
        // Onto the device's own other BAR: the second one loses.
        let bar2 = mapping(2).unwrap();
        ecam_write32(&mut s, 1, 0x10, bar2 as u32);
        assert_eq!(mapping(0), None);
        assert_eq!(mapping(2), Some(bar2));
        // Onto the LAPIC: refused.
        ecam_write32(&mut s, 1, 0x10, 0xfee0_0000);
        assert_eq!(mapping(0), None);
        // Back to a good address: mapped again.
        ecam_write32(&mut s, 1, 0x10, 0xc800_0000);
        assert_eq!(mapping(0), Some(0xc800_0000));
        // A sizing probe with memory enabled maps the BAR at the mask (not reserved), restoring
        // moves it back.
        ecam_write32(&mut s, 1, 0x10, 0xffff_ffff);
        assert_eq!(ecam_read32(&mut s, 0, 1, 0, 0x10), 0xffff_c000);
        ecam_write32(&mut s, 1, 0x10, 0xc800_0000);
        assert_eq!(mapping(0), Some(0xc800_0000));
        // 64-bit BAR moved above 4 GiB, one half at a time.
        ecam_write32(&mut s, 1, 0x1c, 0x20);
        ecam_write32(&mut s, 1, 0x18, 0x0);
        assert_eq!(mapping(2), Some(0x20_0000_0000));
        // A 64-bit BAR whose end would wrap: refused.
        ecam_write32(&mut s, 1, 0x1c, 0xffff_ffff);
        ecam_write32(&mut s, 1, 0x18, 0xffff_0000);
        assert_eq!(mapping(2), None);
        // Memory disable then enable with the BAR on RAM: stays unmapped.
        ecam_write32(&mut s, 1, 0x18, 0x0);
        ecam_write32(&mut s, 1, 0x1c, 0x0);
        ecam_write32(&mut s, 1, 4, 0);
        ecam_write32(&mut s, 1, 4, 2);
        assert_eq!(mapping(2), None);
        assert_eq!(mapping(0), Some(0xc800_0000));
    }

    #[test]
    fn second_device_and_slot_exhaustion() {
        let s = setup();
        let mut root = s.root.lock().unwrap();
        for expected in 2..32u8 {
            let slot = root
                .add_device(Arc::new(Mutex::new(TestDevice::new())))
                .unwrap();
            assert_eq!(slot, expected);
        }
        assert!(matches!(
            root.add_device(Arc::new(Mutex::new(TestDevice::new()))),
            Err(PciRootError::NoFreeSlot)
        ));
    }

    struct BadDevice(Vec<PciBar>);
    impl PciDevice for BadDevice {
        fn config_read(&mut self, _: u16, _: &mut [u8]) {}
        fn config_write(&mut self, _: u16, _: &[u8]) {}
        fn bar_read(&mut self, _: u8, _: u64, _: &mut [u8]) {}
        fn bar_write(&mut self, _: u8, _: u64, _: &[u8]) {}
        fn bars(&self) -> Vec<PciBar> {
            self.0.clone()
        }
    }

    #[test]
    fn bad_layouts_and_full_windows_are_errors() {
        let s = setup();
        let mut root = s.root.lock().unwrap();
        let bar = |index, size, kind| PciBar {
            index,
            size,
            kind,
            prefetchable: false,
        };
        for bars in [
            vec![bar(6, 0x1000, PciBarKind::Memory32)],
            vec![bar(5, 0x1000, PciBarKind::Memory64)],
            vec![bar(0, 0x1800, PciBarKind::Memory32)],
            vec![
                bar(0, 0x1000, PciBarKind::Memory64),
                bar(1, 0x1000, PciBarKind::Memory32),
            ],
            // 1 GiB does not fit the 512 MiB window and a 32-bit BAR cannot go high.
            vec![bar(0, 1 << 30, PciBarKind::Memory32)],
        ] {
            assert!(root
                .add_device(Arc::new(Mutex::new(BadDevice(bars))))
                .is_err());
        }
        // A large 64-bit BAR goes to the 64-bit window.
        let slot = root
            .add_device(Arc::new(Mutex::new(BadDevice(vec![bar(
                0,
                1 << 30,
                PciBarKind::Memory64,
            )]))))
            .unwrap();
        assert_eq!(slot, 2);
        // Failed attaches freed their allocations: a 256 MiB BAR still fits below 4 GiB.
        let slot = root
            .add_device(Arc::new(Mutex::new(BadDevice(vec![bar(
                0,
                1 << 28,
                PciBarKind::Memory32,
            )]))))
            .unwrap();
        assert_eq!(slot, 3);
    }

    #[test]
    fn garbage_config_accesses_do_not_panic() {
        let mut s = setup();
        for reg in [0u8, 1, 2, 3, 0x10, 0x13, 0xfc, 0xff] {
            cf8(&mut s, 0, 1, 0, reg);
            for off in 0..12u64 {
                for len in [0usize, 1, 2, 3, 4, 8] {
                    let mut d = vec![0x77u8; len];
                    s.io.read(off, &mut d);
                    s.io.write(off, &d);
                }
            }
        }
        for off in [
            0u64,
            1,
            0xfff,
            0x1000,
            0x8000,
            0x0fff_fffc,
            0x1000_0000,
            u64::MAX,
        ] {
            for len in [0usize, 1, 2, 3, 4, 8, 16] {
                let mut d = vec![0x77u8; len];
                s.ecam.read(off, &mut d);
                s.ecam.write(off, &d);
            }
        }
        // Random config writes to the device do not break the root.
        for reg in (0..0x1000u16).step_by(4) {
            ecam_write32(&mut s, 1, reg, 0xffff_ffff);
            ecam_write32(&mut s, 0, reg, 0xffff_ffff);
        }
        assert_eq!(ecam_read32(&mut s, 0, 0, 0, 0), 0x0d57_8086);
    }
}
