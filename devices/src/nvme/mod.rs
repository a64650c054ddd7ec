//! An emulated NVMe controller (the NVMe 1.4 subset Linux's nvme driver uses) with one namespace
//! backed by a disk file, presenting itself as an Amazon EBS volume.
//!
//! The controller is transport-neutral: it sees BAR0 register accesses ([`NvmeController::read_register`],
//! [`NvmeController::write_register`]), reaches guest RAM through vm-memory, and raises MSI-X vectors
//! and wakes its worker through [`NvmeInterrupts`]. A PCI wrapper puts it on the bus.
//!
//! Threading: the VMM keeps the controller behind a mutex, which a device worker thread takes to run
//! commands. Doorbell writes should not wait for that lock (the worker holds it during file I/O), so a
//! transport hands them to the shared [`Doorbells`] (lock free) and wakes the worker as
//! [`Doorbells::write`] says; the worker then calls [`NvmeController::process_submission_queue`] or
//! [`NvmeController::process_completion_queue`]. A doorbell write that goes through
//! [`NvmeController::write_register`] instead is applied at once and the worker is woken through
//! [`NvmeInterrupts::notify_worker`]. Commands run to completion inside the processing call: fetch
//! the entry, walk its PRPs, do the file I/O, post the completion, and signal the completion queue's
//! MSI-X vector once per batch.
//!
//! Shadow doorbells (Doorbell Buffer Config): the guest keeps I/O queue doorbell values in a buffer in
//! its RAM and writes the MMIO doorbell only when the controller's event index asks for it, which the
//! controller publishes each time it runs out of work. That removes most doorbell exits. An ioeventfd
//! swallows the value written, so it can stand in for I/O queue doorbells only while shadow doorbells
//! are on ([`NvmeInterrupts::shadow_doorbells_changed`]); the admin queue never uses the shadow
//! buffer (Linux does not update it).
//!
//! Modules: [`registers`] (BAR0 layout, CAP/CC/CSTS), `queue` (rings, phase tags), `prp` (PRP
//! walking), [`identity`] (EBS identity and Identify data), `admin` and `io` (command handlers),
//! [`controller`] (state machine and queue processing), [`doorbell`] (lock-free doorbell registers),
//! [`pci`] (the PCI function and its worker thread). docs/nvme.md describes an I/O end to end.

mod admin;
pub mod command;
pub mod controller;
pub mod doorbell;
pub mod identity;
mod io;
pub mod pci;
mod prp;
mod queue;
pub mod registers;
pub mod status;
mod throttle;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use command::{Command, CompletionEntry};
pub use controller::NvmeController;
pub use doorbell::{DoorbellWake, Doorbells};
pub use identity::{default_device_name, default_volume_id};
pub use status::Status;
pub use throttle::ThrottleStats;

/// How the controller reaches the rest of the VMM. Implemented by the PCI wrapper (MSI-X through
/// KVM irqfds, worker wake-ups through eventfds); tests record the calls.
pub trait NvmeInterrupts: Send {
    /// Raise MSI-X vector `vector`: the admin completion queue uses vector 0, an I/O completion
    /// queue the vector its Create I/O Completion Queue command named. Never called for a polled
    /// queue (interrupts disabled). The MSI-X layer applies its own per-vector masks.
    fn signal(&self, vector: u16);

    /// A doorbell write that reached [`NvmeController::write_register`] left work for the worker:
    /// it should call [`NvmeController::process_submission_queue`]`(sqid)` soon (0 is the admin
    /// queue). Also called when a full completion queue gets room again, for each submission queue
    /// that was waiting on it.
    fn notify_worker(&self, sqid: u16);

    /// The guest configured (true) or a controller reset dropped (false) the shadow doorbell buffer.
    /// While it is configured, the VMM may route I/O submission and completion queue doorbells
    /// through ioeventfds (the worker reads the values from the buffer); otherwise every doorbell
    /// write must reach `write_register`. The default does nothing.
    fn shadow_doorbells_changed(&self, enabled: bool) {
        let _ = enabled;
    }
}

/// The default number of I/O queue pairs a controller offers.
pub const DEFAULT_QUEUE_PAIRS: u16 = 16;
/// The largest number of I/O queue pairs a controller may offer.
pub const MAX_QUEUE_PAIRS: u16 = 128;
/// The default Maximum Data Transfer Size: 2^7 pages of 4 KiB = 512 KiB.
pub const DEFAULT_MDTS: u8 = 7;
/// The largest MDTS accepted (2^10 pages = 4 MiB).
pub const MAX_MDTS: u8 = 10;
/// The largest I/O queue, in entries (CAP.MQES + 1).
pub const MAX_QUEUE_ENTRIES: u32 = 1024;

/// How one controller (one volume) is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeConfig {
    /// The disk file (or host block device).
    pub path: PathBuf,
    /// Open the file read-only; the namespace is write protected.
    pub read_only: bool,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// The EBS volume id (`vol-` + up to 17 hex digits); None derives one from the path
    /// ([`default_volume_id`]).
    pub volume_id: Option<String>,
    /// The EC2 block-device name reported in Identify Controller (`sdf`, `/dev/xvda`, …).
    pub device_name: Option<String>,
    /// Number of I/O queue pairs offered (1 to [`MAX_QUEUE_PAIRS`]); the controller has this many
    /// plus one MSI-X vectors.
    pub max_queue_pairs: u16,
    /// Maximum Data Transfer Size as a power of two of 4 KiB pages (1 to [`MAX_MDTS`]).
    pub mdts: u8,
}

impl NvmeConfig {
    /// A read-write volume on `path` with 512-byte blocks, a derived volume id, no device name,
    /// [`DEFAULT_QUEUE_PAIRS`] queue pairs and [`DEFAULT_MDTS`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        NvmeConfig {
            path: path.into(),
            read_only: false,
            block_size: 512,
            volume_id: None,
            device_name: None,
            max_queue_pairs: DEFAULT_QUEUE_PAIRS,
            mdts: DEFAULT_MDTS,
        }
    }
}

/// Why a controller could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// The disk file could not be opened or locked.
    #[error(transparent)]
    Block(#[from] crate::block::BlockError),
    /// The volume id or device name is malformed.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The block size is not 512 or 4096.
    #[error("block size {0} is not 512 or 4096")]
    BlockSize(u32),
    /// The disk is smaller than one block.
    #[error("disk {path} ({size} bytes) is smaller than one {block_size}-byte block")]
    TooSmall {
        /// The disk file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The block size.
        block_size: u32,
    },
    /// The number of queue pairs is out of range.
    #[error("{0} I/O queue pairs: must be 1 to {MAX_QUEUE_PAIRS}")]
    QueuePairs(u16),
    /// MDTS is out of range.
    #[error("MDTS {0}: must be 1 to {MAX_MDTS}")]
    Mdts(u8),
}
