//! flint's device models.
//!
//! Every device model here is plain safe Rust: it sees the guest only through the register accesses the
//! VMM forwards to it (the [`bus`] module) and, for DMA-capable devices, through vm-memory's checked
//! guest-memory API. The few `unsafe` operations a VMM needs (KVM ioctls, mmap) live in the `flint` crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acpi_pm;
pub mod block;
pub mod boot_marker;
pub mod bus;
pub mod i8042;
pub mod nvme;
pub mod pci;
pub mod rate_limiter;
pub mod serial;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_net;
pub mod worker;

/// Why the guest asked the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 pulse, ACPI reset register, triple fault).
    Reset,
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
}

/// Where device models report that the guest asked to reset or power off the machine.
///
/// The VMM implements it (it wakes the main loop); tests record the calls.
pub trait ExitSink: Send + Sync {
    /// The guest asked the machine to stop for `reason`.
    fn request_exit(&self, reason: ExitReason);
}
