//! The VMM side of PCI: builds bus 0 (host bridge, 0xCF8/0xCFC ports, ECAM window), attaches devices
//! (BARs, ioeventfds, MSI-X to KVM), and connects the device crate's PCI root to KVM. docs/pci.md.

use std::io;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use devices::bus::Bus;
use devices::pci::{
    Datamatch, IoEventRegistrar, PciConfigIo, PciConfigMmio, PciRoot, PciRootConfig,
    SharedPciDevice,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;
use crate::arch::x86_64::memory_map::{ram_end, ram_ranges};
use crate::interrupts::{KvmMsiGroup, MsiRouting};

/// The 0xCF8 port of configuration mechanism #1.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Alignment and granule of the 64-bit BAR window.
const MMIO64_ALIGN: u64 = 1 << 30;
/// Largest 64-bit BAR window.
const MMIO64_MAX_SIZE: u64 = 64 << 30;

/// The 64-bit BAR window for a guest with `mem_size` bytes of RAM and `phys_bits` of physical
/// address (None when unknown): from the first GiB boundary at or above both 4 GiB and the end of
/// RAM, up to 64 GiB, never past the guest's physical address width. None if less than 1 GiB fits.
pub fn mmio64_window(mem_size: u64, phys_bits: Option<u32>) -> Option<(u64, u64)> {
    let start = ram_end(mem_size)
        .max(layout::RAM_ABOVE_4G_START)
        .checked_next_multiple_of(MMIO64_ALIGN)?;
    let limit = 1u64 << phys_bits.unwrap_or(36).clamp(32, 52);
    let size = limit.checked_sub(start)?.min(MMIO64_MAX_SIZE);
    (size >= MMIO64_ALIGN).then_some((start, size))
}

/// Ranges no BAR may ever be mapped over: guest RAM, the IOAPIC, the LAPIC / MSI window and KVM's
/// private pages.
fn reserved_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let mut reserved = ram_ranges(mem_size);
    reserved.push((layout::IOAPIC_ADDR, 0x1000));
    reserved.push((layout::LAPIC_ADDR, 0x10_0000));
    reserved.push((layout::KVM_IDENTITY_MAP_ADDR, 0x4000));
    reserved
}

/// KVM_IOEVENTFD on behalf of the PCI root.
struct KvmIoEvents(Arc<VmFd>);

fn kvm_err(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> io::Result<()> {
        let addr = IoEventAddress::Mmio(addr);
        match datamatch {
            Datamatch::Any => self.0.register_ioevent(fd, &addr, NoDatamatch),
            Datamatch::U8(v) => self.0.register_ioevent(fd, &addr, v),
            Datamatch::U16(v) => self.0.register_ioevent(fd, &addr, v),
            Datamatch::U32(v) => self.0.register_ioevent(fd, &addr, v),
            Datamatch::U64(v) => self.0.register_ioevent(fd, &addr, v),
        }
        .map_err(kvm_err)
    }

    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> io::Result<()> {
        let addr = IoEventAddress::Mmio(addr);
        match datamatch {
            Datamatch::Any => self.0.unregister_ioevent(fd, &addr, NoDatamatch),
            Datamatch::U8(v) => self.0.unregister_ioevent(fd, &addr, v),
            Datamatch::U16(v) => self.0.unregister_ioevent(fd, &addr, v),
            Datamatch::U32(v) => self.0.unregister_ioevent(fd, &addr, v),
            Datamatch::U64(v) => self.0.unregister_ioevent(fd, &addr, v),
        }
        .map_err(kvm_err)
    }
}

/// PCI bus 0 of a VM.
pub struct PciSystem {
    vm: Arc<VmFd>,
    root: Arc<Mutex<PciRoot>>,
    routing: Arc<MsiRouting>,
}

impl PciSystem {
    /// Bus 0 with only the host bridge: puts configuration mechanism #1 on `pio` (0xCF8–0xCFF) and
    /// the ECAM window on `mmio`; devices' BARs will go on `mmio`. `mmio64` is the 64-bit BAR window
    /// (see [`mmio64_window`]), the same one the DSDT announces.
    pub fn new(
        vm: Arc<VmFd>,
        pio: &Bus,
        mmio: &Arc<Bus>,
        mem_size: u64,
        mmio64: Option<(u64, u64)>,
    ) -> anyhow::Result<Self> {
        let root = PciRoot::new(
            PciRootConfig {
                mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
                mmio64,
                reserved: reserved_ranges(mem_size),
            },
            mmio.clone(),
            Arc::new(KvmIoEvents(vm.clone())),
        )
        .context("cannot create the PCI root")?;
        let root = Arc::new(Mutex::new(root));
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            PCI_CONFIG_PORT,
            devices::pci::PCI_CONFIG_IO_LEN,
        )
        .context("cannot place the PCI configuration ports")?;
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )
        .context("cannot place the PCI ECAM window")?;
        let routing =
            Arc::new(MsiRouting::new(vm.clone()).context("cannot set up the MSI routing table")?);
        Ok(Self { vm, root, routing })
    }

    /// Attaches `device` to bus 0 and returns its slot (device number): allocates and programs its
    /// BARs (mapped on the MMIO bus, with the device's ioeventfds, once the guest enables memory
    /// space; moved along when the guest reprograms them) and connects its MSI-X vectors to KVM
    /// (one GSI route and irqfd per vector). Call before the vCPUs start.
    pub fn attach_pci_device(&self, device: SharedPciDevice) -> anyhow::Result<u8> {
        let msix = device.lock().unwrap_or_else(|p| p.into_inner()).msix();
        let group = match &msix {
            Some(msix) => Some(
                KvmMsiGroup::new(self.routing.clone(), self.vm.clone(), msix.vectors())
                    .context("cannot allocate the device's MSI-X interrupts")?,
            ),
            None => None,
        };
        let slot = self
            .root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_device(device)
            .context("cannot attach the PCI device")?;
        if let (Some(msix), Some(group)) = (msix, group) {
            msix.set_group(Arc::new(group));
        }
        log::debug!("PCI device attached at 00:{slot:02x}.0");
        Ok(slot)
    }

    /// The root, for tests and diagnostics.
    pub fn root(&self) -> &Arc<Mutex<PciRoot>> {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn mmio64_window_placement() {
        assert_eq!(
            mmio64_window(512 << 20, Some(39)),
            Some((4 * GIB, 64 * GIB))
        );
        // RAM above 4 GiB pushes it up, to a GiB boundary.
        assert_eq!(
            mmio64_window(8 * GIB + 1, Some(46)),
            Some((10 * GIB, 64 * GIB))
        );
        // The physical address width caps it.
        assert_eq!(mmio64_window(GIB, Some(36)), Some((4 * GIB, 60 * GIB)));
        assert_eq!(mmio64_window(63 * GIB, Some(36)), None);
        assert_eq!(mmio64_window(2 * GIB, None), Some((4 * GIB, 60 * GIB)));
    }

    /// The KVM ioctls behind MSI-X and ioeventfds, against a real VM (skipped without /dev/kvm):
    /// KVM accepts the full routing table (irqchip defaults plus MSI routes), the irqfds, and
    /// ioeventfd registration, moves and removal as the root issues them.
    #[test]
    fn kvm_accepts_routes_irqfds_and_ioevents() {
        use devices::pci::{MsiInterruptGroup, MsiMessage};
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "CI=true but /dev/kvm cannot be opened");
            eprintln!("SKIPPED: /dev/kvm cannot be opened");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let routing = Arc::new(MsiRouting::new(vm.clone()).unwrap());
        let group = KvmMsiGroup::new(routing.clone(), vm.clone(), 4).unwrap();
        let msg = MsiMessage {
            addr: 0xfee0_0000,
            data: 0x31,
        };
        group.update(0, msg, false).unwrap();
        group.update(3, msg, false).unwrap();
        group.update(0, msg, true).unwrap();
        group.trigger(3).unwrap();
        assert_eq!(routing.route(group.gsis()[3]), Some(msg));
        drop(group);

        let io = KvmIoEvents(vm.clone());
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        for datamatch in [Datamatch::Any, Datamatch::U16(3), Datamatch::U32(7)] {
            io.register(&fd, 0xc000_1000, datamatch).unwrap();
            io.unregister(&fd, 0xc000_1000, datamatch).unwrap();
        }
        // A duplicate of the fd unregisters what the original registered (the root keeps duplicates).
        io.register(&fd, 0xc000_2000, Datamatch::Any).unwrap();
        io.unregister(&fd.try_clone().unwrap(), 0xc000_2000, Datamatch::Any)
            .unwrap();
        io.register(&fd, 0xc000_2000, Datamatch::Any).unwrap();
    }

    #[test]
    fn reserved_covers_ram_and_apics() {
        let r = reserved_ranges(4 * GIB);
        assert!(r.contains(&(0, 3 * GIB)));
        assert!(r.contains(&(4 * GIB, GIB)));
        assert!(r.iter().any(|(b, _)| *b == layout::LAPIC_ADDR));
    }
}
