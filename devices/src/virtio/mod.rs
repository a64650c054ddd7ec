//! virtio 1.x devices over the modern virtio-pci transport.
//!
//! The transport ([`VirtioPciDevice`]) is one PCI function (vendor 0x1af4, device 0x1040 + type) with
//! one 64-bit BAR holding the common configuration, ISR, device configuration and notification
//! regions plus the MSI-X table and PBA, each described by a vendor-specific capability. It owns
//! everything the virtio spec puts in the transport: feature negotiation, the device status state
//! machine, queue configuration, MSI-X vector assignment and device reset. A device model
//! implements [`VirtioDevice`]: it names its type, queues, features and configuration space, and is
//! handed ready [`Queue`]s when the driver sets DRIVER_OK ([`VirtioDevice::activate`]), which it
//! gives back (stops using) on [`VirtioDevice::reset`].
//!
//! Descriptor chains are parsed by the `virtio-queue` crate (split rings, indirect tables, EVENT_IDX
//! notification suppression); [`queue::collect_chain`] adds the checks a device needs before it
//! trusts a chain: every buffer inside guest RAM, readable buffers before writable ones, a bounded
//! number of descriptors, and a proper end (no loop, no dangling `next`).
//!
//! Notifications: each queue has an eventfd; the transport asks the PCI root to register it as a
//! KVM ioeventfd on the queue's notify address (BAR 0 + 0x3000 + 4 × queue), so a guest notify
//! never reaches the VMM's vCPU thread. A notify write that does arrive as an MMIO exit (no
//! ioeventfd, or a unit test) signals the same eventfd. Interrupts: [`VirtioInterrupt`] raises the
//! MSI-X vector the driver assigned to a queue (or to configuration changes).
//!
//! docs/virtio.md follows one virtio-blk request end to end.

pub mod common;
pub mod pci;
pub mod queue;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::pci::Msix;
use crate::worker::WorkerSpawner;

pub use common::CommonConfig;
pub use pci::{VirtioPciDevice, VirtioPciError};
pub use queue::{collect_chain, Chain, ChainError, ChainFault, Segment};

/// PCI vendor ID of virtio devices (Red Hat, Inc.).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// A modern (virtio 1.x only) device's PCI device ID is this plus its virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of modern virtio devices (what QEMU uses; drivers ignore it).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Virtio device type: network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// Virtio device type: block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready; the device may use its queues.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete (the device accepted the driver's features).
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 128;

/// Feature bit: the buffers of a descriptor may be an indirect descriptor table.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Feature bit: virtio 1.x (mandatory here: flint has no legacy interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// The features every flint virtio device offers besides its own.
pub const TRANSPORT_FEATURES: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// "No MSI-X vector" in `config_msix_vector` / `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// ISR status bit: a queue has new used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR status bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// Copies the bytes of a device's configuration space `config` at `offset` into `data`, leaving the
/// bytes that fall outside it alone (the caller zero-fills): the guest may read at any offset and width.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let Some(tail) = config.get(start..) else {
        return;
    };
    for (dst, src) in data.iter_mut().zip(tail) {
        *dst = *src;
    }
}

#[cfg(test)]
mod config_bytes_tests {
    use super::read_config_bytes;

    #[test]
    fn reads_inside_partly_inside_and_outside() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0u8; 2];
        read_config_bytes(&config, 1, &mut d);
        assert_eq!(d, [2, 3]);
        let mut d = [0u8; 4];
        read_config_bytes(&config, 3, &mut d);
        assert_eq!(d, [4, 0, 0, 0]);
        let mut d = [0u8; 1];
        read_config_bytes(&config, 4, &mut d);
        read_config_bytes(&config, u64::MAX, &mut d);
        assert_eq!(d, [0]);
    }
}

/// Whether feature bit `bit` is set in `features`.
pub fn has_feature(features: u64, bit: u32) -> bool {
    bit < 64 && features & (1 << bit) != 0
}

/// How a device model behind the virtio-pci transport looks to it.
///
/// Threading: the transport calls these methods from vCPU threads with the PCI device lock held; a
/// device normally runs its queues on its own worker thread(s), started in
/// [`VirtioDevice::activate`] and stopped in [`VirtioDevice::reset`].
pub trait VirtioDevice: Send {
    /// The virtio device type ([`VIRTIO_ID_BLOCK`], [`VIRTIO_ID_NET`], ...).
    fn device_type(&self) -> u16;

    /// PCI class, subclass and programming interface.
    fn pci_class(&self) -> (u8, u8, u8);

    /// The largest size of each queue (each a power of two, at most 32768); the number of entries
    /// is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;

    /// The device-specific feature bits offered (the transport adds [`TRANSPORT_FEATURES`]).
    fn device_features(&self) -> u64;

    /// Length of the device-specific configuration space in bytes (at most 4 KiB).
    fn config_len(&self) -> u64;

    /// The driver reads the device configuration: `data.len()` bytes at `offset` (any offset and
    /// length; bytes past the configuration are left as the caller filled them, zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes the device configuration. The default ignores it (read-only fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set DRIVER_OK: start serving the queues in `ctx`. On error the transport sets
    /// DEVICE_NEEDS_RESET and the device stays inactive.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// The driver reset the device (or the transport is dropped): stop using the queues and guest
    /// memory and return once no thread of the device touches them any more. Called only after a
    /// successful [`VirtioDevice::activate`].
    fn reset(&mut self);
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the driver enabled is unusable (misaligned, outside guest RAM).
    #[error("queue {0} is not valid")]
    InvalidQueue(u16),
    /// The device needs a queue the driver did not enable.
    #[error("queue {0} was not enabled")]
    MissingQueue(u16),
    /// The worker thread or its event loop could not be created.
    #[error("cannot start the device worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// One queue the driver enabled, ready for use.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue's index on the device.
    pub index: u16,
    /// The queue (size, ring addresses and EVENT_IDX set from the driver's configuration).
    pub queue: Queue,
    /// Signalled when the driver notifies the queue (a duplicate of the transport's eventfd, which
    /// is also the KVM ioeventfd).
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The features the driver accepted (a subset of the offered ones, with VERSION_1).
    pub acked_features: u64,
    /// The enabled queues, in index order.
    pub queues: Vec<ActiveQueue>,
    /// How to interrupt the driver.
    pub interrupt: Arc<VirtioInterrupt>,
    /// How to start worker threads (the VMM's sandboxed spawner; docs/security.md).
    pub spawner: WorkerSpawner,
}

/// A virtio device's interrupt state, shared by the transport (which maps vectors and serves ISR
/// reads) and the device's worker threads (which signal used buffers).
pub struct VirtioInterrupt {
    msix: Msix,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Box<[AtomicU16]>,
    needs_reset: AtomicBool,
    bus_master: AtomicBool,
}

impl VirtioInterrupt {
    /// Interrupt state for a device with `queues` queues delivering through `msix`: no vectors
    /// assigned, nothing pending.
    pub fn new(msix: Msix, queues: usize) -> Self {
        Self {
            msix,
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            needs_reset: AtomicBool::new(false),
            bus_master: AtomicBool::new(false),
        }
    }

    /// Queue `queue` has new used buffers: sets the ISR queue bit and raises the queue's vector (if
    /// the driver assigned one).
    pub fn signal_queue(&self, queue: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            let vector = v.load(Ordering::Acquire);
            if vector != VIRTIO_MSI_NO_VECTOR {
                self.msix.notify(vector);
            }
        }
    }

    /// The device configuration (or status) changed: sets the ISR config bit and raises the
    /// configuration vector.
    pub fn signal_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
        let vector = self.config_vector.load(Ordering::Acquire);
        if vector != VIRTIO_MSI_NO_VECTOR {
            self.msix.notify(vector);
        }
    }

    /// The device cannot go on without a reset (e.g. the driver corrupted a ring): DEVICE_NEEDS_RESET
    /// shows in the status register and the driver gets a configuration interrupt.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            self.signal_config();
        }
    }

    /// Whether DEVICE_NEEDS_RESET is set.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Whether the driver allows the device to do DMA (the PCI command register's bus-master bit).
    /// A worker must not touch the rings while this is false.
    pub fn dma_allowed(&self) -> bool {
        self.bus_master.load(Ordering::Acquire)
    }

    pub(crate) fn set_bus_master(&self, on: bool) {
        self.bus_master.store(on, Ordering::Release);
    }

    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(vector, Ordering::Release);
    }

    pub(crate) fn set_queue_vector(&self, queue: usize, vector: u16) {
        if let Some(v) = self.queue_vectors.get(queue) {
            v.store(vector, Ordering::Release);
        }
    }

    /// The driver reads the ISR: returns and clears it.
    pub(crate) fn read_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// A device reset: no vectors, nothing pending, no DEVICE_NEEDS_RESET.
    pub(crate) fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for v in self.queue_vectors.iter() {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
    }
}
