//! PCI bus 0: the device interface ([`PciDevice`]), the helpers a device model builds on
//! ([`PciConfigSpace`] for the type-0 header and capability list, [`Msix`] for MSI-X table, PBA and
//! delivery), and the root complex ([`PciRoot`]: host bridge, slots, BAR placement and relocation, the
//! 0xCF8/0xCFC and ECAM configuration windows).
//!
//! A device model never touches KVM. The VMM hands the root an [`IoEventRegistrar`] (register or drop
//! an ioeventfd at a guest-physical address) and each MSI-X capable device an [`MsiInterruptGroup`]
//! (program or fire one vector); the flint crate implements both with KVM ioctls (src/pci.rs,
//! src/interrupts.rs). docs/pci.md tells how the pieces fit.
//!
//! # Writing a device
//! ```ignore
//! let msix = Msix::new(MsixLayout { vectors: 17, table_bar: 4, table_offset: 0, pba_bar: 4, pba_offset: 0x800 })?;
//! let mut config = PciConfigSpace::new(PciIds { vendor: 0x1d0f, device: 0x8061, class: 0x01, subclass: 0x08,
//!     prog_if: 0x02, revision: 0, subsystem_vendor: 0x1d0f, subsystem_id: 0x8061 });
//! config.add_bar(0, 0x4000, PciBarKind::Memory64, false)?;
//! config.add_bar(4, 0x1000, PciBarKind::Memory32, false)?;
//! config.add_msix(&msix)?;
//! // impl PciDevice: config_read/config_write forward to `config`, bars() returns config.bars(),
//! // msix() returns Some(msix.clone()), bar_read/bar_write decode the device's registers.
//! // A completion then calls msix.notify(vector) from any thread.
//! ```

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

mod config;
mod msix;
mod root;

pub use config::{PciConfigSpace, PciIds};

/// Errors declaring a device's BARs, capabilities or MSI-X layout (programming errors of the device
/// model, found when it is built, never caused by the guest).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// BAR index past 5 (or past 4 for a 64-bit BAR), or a register already used by another BAR.
    #[error("BAR {0}: invalid index or register already taken")]
    BarIndex(u8),
    /// BAR size not a power of two, below 16 bytes, or above 2 GiB for a 32-bit BAR.
    #[error("BAR {index}: invalid size {size:#x}")]
    BarSize {
        /// The BAR.
        index: u8,
        /// Its declared size.
        size: u64,
    },
    /// The capability does not fit in the first 256 bytes of configuration space.
    #[error("no room for a {0}-byte capability")]
    CapabilitySpace(usize),
    /// An MSI-X layout that is not valid: vector count, BAR index, alignment, or table and PBA
    /// overlapping.
    #[error("invalid MSI-X layout: {0}")]
    MsixLayout(&'static str),
}
pub use msix::{Msix, MsixLayout, MsixRegion, MSIX_ENTRY_SIZE};
pub use root::{
    ecam_decode, HostBridge, PciConfigIo, PciConfigMmio, PciRoot, PciRootConfig, PciRootError,
    SharedPciDevice, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID, PCI_CONFIG_IO_LEN,
};

/// Size of one function's configuration space (PCIe: 4 KiB; the legacy 0xCF8 mechanism reaches the
/// first 256 bytes).
pub const PCI_CONFIG_SPACE_SIZE: usize = 4096;
/// Number of BAR registers in a type-0 header.
pub const PCI_NUM_BARS: u8 = 6;
/// Devices (slots) on a bus.
pub const PCI_SLOTS: u8 = 32;

/// How a memory BAR decodes addresses. I/O-space BARs are not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciBarKind {
    /// A 32-bit memory BAR (one BAR register).
    Memory32,
    /// A 64-bit memory BAR: it takes its register and the next one (the high half), so `index` must
    /// be at most 4 and `index + 1` must not be declared separately.
    Memory64,
}

/// One BAR a device declares: its register index, size and kind. The device's configuration space
/// answers the guest's reads, writes and sizing probes of the BAR register; the root reads the
/// programmed address back from the configuration space to map the BAR on the MMIO bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// BAR register index, 0–5 (a 64-bit BAR also takes `index + 1`).
    pub index: u8,
    /// Size in bytes: a power of two, at least 16 (4 KiB or more is advisable, so the BAR does not
    /// share a page with another device).
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: PciBarKind,
    /// The prefetchable bit of the BAR register.
    pub prefetchable: bool,
}

/// What a guest write must carry for an ioeventfd to fire (KVM's datamatch). The access length KVM
/// matches is the width of the value; [`Datamatch::Any`] fires on a write of any length and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datamatch {
    /// Any write to the address.
    Any,
    /// A 1-byte write of this value.
    U8(u8),
    /// A 2-byte write of this value.
    U16(u16),
    /// A 4-byte write of this value.
    U32(u32),
    /// An 8-byte write of this value.
    U64(u64),
}

/// An ioeventfd a device wants at `offset` into BAR `bar`: while the BAR is mapped, a matching guest
/// write signals `fd` inside KVM instead of reaching [`PciDevice::bar_write`]. The root registers it
/// when the BAR is mapped and moves it with the BAR when the guest reprograms the BAR.
#[derive(Debug)]
pub struct PciIoEvent<'a> {
    /// BAR index the address is in.
    pub bar: u8,
    /// Offset into the BAR.
    pub offset: u64,
    /// Which writes signal the eventfd.
    pub datamatch: Datamatch,
    /// The eventfd (the root keeps a duplicate of it, the device keeps reading this one).
    pub fd: &'a EventFd,
}

/// One MSI message: what an MSI-X table entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (low dword and high dword of the table entry).
    pub addr: u64,
    /// Message data.
    pub data: u32,
}

/// Where a device's MSI-X vectors go: the VMM implements it with one KVM GSI route and one irqfd per
/// vector (src/interrupts.rs); tests record the calls. [`Msix`] calls it; device models only call
/// [`Msix::notify`].
pub trait MsiInterruptGroup: Send + Sync {
    /// Vector `vector` now carries `msg`; `masked` says whether it may be delivered (the MSI-X enable
    /// bit, the function mask and the vector's own mask all allow it when `masked` is false).
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()>;
    /// Delivers vector `vector` to the guest now. [`Msix`] only calls it for an unmasked vector.
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

/// A shared MSI interrupt group.
pub type SharedMsiGroup = Arc<dyn MsiInterruptGroup>;

/// Registers ioeventfds at guest-physical MMIO addresses on the root's behalf (the VMM implements it
/// with KVM_IOEVENTFD). The root calls it when a BAR is mapped, unmapped or moved.
pub trait IoEventRegistrar: Send + Sync {
    /// Start signalling `fd` on guest writes to `addr` that match `datamatch`.
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> io::Result<()>;
    /// Stop signalling `fd` for `addr` (same `datamatch` as registered).
    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> io::Result<()>;
}

/// A PCI function on bus 0, as the root sees it.
///
/// All offsets and lengths come from the guest and are untrusted: an implementation must accept any
/// `offset` and any `data.len()` (0, odd sizes, past the end of the space) without panicking; reads of
/// nothing leave `data` as the caller filled it. [`PciConfigSpace`] does this for configuration space.
///
/// Locking: the root keeps every device behind one `Mutex`; configuration and BAR accesses from vCPU
/// threads, and the device's own worker threads, all take it. Keep the MSI-X state in [`Msix`] (it has
/// its own lock) so a worker can raise an interrupt without the device lock.
pub trait PciDevice: Send {
    /// The guest reads `data.len()` (1, 2 or 4; ECAM and 0xCFC enforce natural alignment) bytes at
    /// `offset` in this function's 4 KiB configuration space.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);

    /// The guest writes configuration space. The BAR registers and the command register must behave
    /// as the PCI spec says (use [`PciConfigSpace`]): after every write the root reads the BARs and
    /// the command register back and maps, moves or unmaps the BARs on the MMIO bus to match.
    fn config_write(&mut self, offset: u16, data: &[u8]);

    /// The guest reads `data.len()` bytes at `offset` into BAR `bar` (only called while the BAR is
    /// mapped, i.e. memory space is enabled and the BAR's address is accepted). Accesses inside the
    /// MSI-X table and PBA go to [`PciDevice::msix`] instead and never reach the device.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// The guest writes BAR `bar` (see [`PciDevice::bar_read`]). Writes that match a registered
    /// ioeventfd signal it and do not come here.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// The device's BARs: fixed for the device's life. The root allocates an address for each when
    /// the device is attached and programs it into the BAR register (as firmware would).
    fn bars(&self) -> Vec<PciBar>;

    /// The ioeventfds the device wants registered while its BARs are mapped. Asked once, when the
    /// device is attached.
    fn ioeventfds(&self) -> Vec<PciIoEvent<'_>> {
        Vec::new()
    }

    /// The device's MSI-X state, if it has the capability: the root routes guest accesses to the
    /// table and PBA there, and the VMM connects it to KVM ([`Msix::set_group`]) at attach time.
    fn msix(&self) -> Option<Msix> {
        None
    }

    /// Return to the power-on state (not yet used: flint ends the VM on a guest reset).
    fn reset(&mut self) {}
}
