//! virtio-blk (virtio 1.2 §5.2) on a disk file, behind the virtio-pci transport.
//!
//! Requests: IN, OUT, FLUSH (`fdatasync` before completion), GET_ID, DISCARD and WRITE_ZEROES (both
//! punch a hole). Features offered: SEG_MAX, BLK_SIZE, FLUSH, and RO on a read-only disk or DISCARD
//! and WRITE_ZEROES on a writable one; MQ with more than one queue. Without FLUSH negotiated the
//! device is write-through: each write is made durable before it completes.
//!
//! One worker thread per device (named `virtio-blk`), started when the driver sets DRIVER_OK and
//! stopped (joined) on a device reset: it waits on the queues' notification eventfds with epoll,
//! runs every available request to completion (file I/O straight into and out of guest memory) and
//! interrupts the driver as EVENT_IDX allows. [`request`] has the request format and every error
//! path.
//!
//! A device may have a rate limiter (`--disk ...,iops=N,throughput=RATE`, [`VirtioBlk::set_rate_limiter`]).
//! A request the limiter refuses is put back in the available ring (nothing read or written) and
//! its queue stops; the worker also waits on the limiter's timerfd, armed for exactly the time until
//! the request fits, and then resumes the waiting queues, one request per queue per turn. Nothing
//! polls and nothing sleeps a fixed time. [`throttle`] has the details.

pub mod request;
mod throttle;

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::block::{BlockBackend, BlockError, BlockIo, FailureLog};
use crate::rate_limiter::LimiterChain;
use crate::virtio::queue::add_used;
use crate::virtio::{
    has_feature, ActivateContext, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    VIRTIO_ID_BLOCK,
};
use request::{
    process_chain_limited, Scratch, DISCARD_SECTOR_ALIGNMENT, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    SEG_MAX,
};
pub use request::{Cost, Disk, SECTOR_SIZE};
pub use throttle::{SharedStats, ThrottleStats};

/// Largest (and default) queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Most request queues a device may have.
pub const MAX_QUEUES: u16 = 16;
/// Length of the device configuration (`struct virtio_blk_config` up to `write_zeroes_may_unmap`
/// and its padding).
pub const CONFIG_LEN: usize = 0x3c;
/// Most requests the worker completes on one queue before it looks for a stop request again.
const BATCH: usize = 1024;

/// How one virtio-blk device is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioBlkConfig {
    /// The disk file (or host block device).
    pub path: PathBuf,
    /// Open the file read-only; the device offers VIRTIO_BLK_F_RO and refuses writes.
    pub read_only: bool,
    /// What GET_ID returns: up to 20 printable ASCII bytes. None derives one from the path
    /// ([`default_disk_id`]).
    pub id: Option<String>,
    /// Number of request queues (1 to [`MAX_QUEUES`]); more than one offers VIRTIO_BLK_F_MQ.
    pub queues: u16,
}

impl VirtioBlkConfig {
    /// A read-write disk on `path` with one queue and a derived id.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            id: None,
            queues: 1,
        }
    }
}

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkError {
    /// The disk file could not be opened or locked.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The id is too long or not printable ASCII.
    #[error("id={0}: must be 1 to 20 printable ASCII characters")]
    Id(String),
    /// The disk is smaller than one sector.
    #[error("disk {path} ({size} bytes) is smaller than one 512-byte sector")]
    TooSmall {
        /// The disk file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The queue count is out of range.
    #[error("{0} queues: must be 1 to {MAX_QUEUES}")]
    Queues(u16),
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The default GET_ID string of a disk file: `flint-` and 14 hex digits of a hash of its canonical
/// path (20 bytes: stable for one file, different for different files).
pub fn default_disk_id(path: &Path) -> String {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let hash = fnv1a64(canonical.as_os_str().as_encoded_bytes());
    format!("flint-{:014x}", hash >> 8)
}

/// Checks a user-given id: 1 to 20 printable ASCII characters.
pub fn validate_disk_id(id: &str) -> Result<(), VirtioBlkError> {
    if id.is_empty()
        || id.len() > VIRTIO_BLK_ID_BYTES as usize
        || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(VirtioBlkError::Id(id.to_string()));
    }
    Ok(())
}

struct Worker {
    stop: Arc<AtomicBool>,
    stop_fd: EventFd,
    thread: JoinHandle<()>,
    /// Where the worker leaves the rate limiter when it stops, so its buckets outlive a reset.
    limiter_back: Arc<Mutex<Option<LimiterChain>>>,
}

/// A virtio-blk device model (put it behind [`crate::virtio::VirtioPciDevice`]).
pub struct VirtioBlk {
    disk: Arc<Disk>,
    queues: u16,
    features: u64,
    config: [u8; CONFIG_LEN],
    /// The device's rate limiter while no worker runs (the worker holds it while it runs).
    limiter: Option<LimiterChain>,
    /// What the limiter did, across workers.
    stats: Arc<throttle::SharedStats>,
    worker: Option<Worker>,
}

impl VirtioBlk {
    /// Opens (and locks) the disk file `config` names.
    pub fn new(config: &VirtioBlkConfig) -> Result<Self, VirtioBlkError> {
        let backend = BlockBackend::open(&config.path, config.read_only)?;
        Self::with_backend(config, Box::new(backend))
    }

    /// A device on an already opened backend (`config.path` only names the disk). The disk is
    /// read-only if `config.read_only` or the backend is.
    pub fn with_backend(
        config: &VirtioBlkConfig,
        backend: Box<dyn BlockIo + Sync>,
    ) -> Result<Self, VirtioBlkError> {
        if config.queues == 0 || config.queues > MAX_QUEUES {
            return Err(VirtioBlkError::Queues(config.queues));
        }
        let id = match &config.id {
            Some(id) => {
                validate_disk_id(id)?;
                id.clone()
            }
            None => default_disk_id(&config.path),
        };
        let size = backend.size();
        let sectors = size / SECTOR_SIZE;
        if sectors == 0 {
            return Err(VirtioBlkError::TooSmall {
                path: config.path.clone(),
                size,
            });
        }
        let read_only = config.read_only || backend.read_only();
        let mut id_bytes = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let mut features =
            1u64 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE | 1 << VIRTIO_BLK_F_FLUSH;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        if config.queues > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        Ok(Self {
            disk: Arc::new(Disk {
                backend,
                sectors,
                read_only,
                id: id_bytes,
                failures: FailureLog::default(),
            }),
            queues: config.queues,
            features,
            config: config_space(sectors, config.queues),
            limiter: None,
            stats: Arc::default(),
            worker: None,
        })
    }

    /// Limits the device's requests with `limiter` (None: no limit); see [`Cost`] for what a
    /// request costs. Takes effect at the next activation (DRIVER_OK); set it before the device
    /// goes on the bus.
    pub fn set_rate_limiter(&mut self, limiter: Option<LimiterChain>) {
        self.limiter = limiter;
    }

    /// The device's rate limiter, while no worker holds it.
    pub fn rate_limiter(&self) -> Option<&LimiterChain> {
        self.limiter.as_ref()
    }

    /// What the rate limiter has done so far (all workers together).
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.stats.get()
    }

    /// A handle that reads [`Self::throttle_stats`] after the device has been boxed.
    pub fn throttle_stats_handle(&self) -> Arc<SharedStats> {
        self.stats.clone()
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The GET_ID string.
    pub fn id(&self) -> String {
        let end = self
            .disk
            .id
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.disk.id.len());
        String::from_utf8_lossy(&self.disk.id[..end]).into_owned()
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop.store(true, Ordering::Release);
            if let Err(e) = worker.stop_fd.write(1) {
                log::error!("virtio-blk: cannot stop the worker: {e}");
            }
            match worker.thread.join() {
                Ok(()) => {
                    self.limiter = worker
                        .limiter_back
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take()
                }
                Err(_) => log::error!("virtio-blk: the worker thread panicked"),
            }
        }
    }
}

impl Drop for VirtioBlk {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// `struct virtio_blk_config`.
fn config_space(sectors: u64, queues: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &sectors.to_le_bytes()); // capacity
    put(0x0c, &SEG_MAX.to_le_bytes()); // seg_max
    put(0x14, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(0x22, &queues.to_le_bytes()); // num_queues
    put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(0x28, &MAX_DISCARD_SEG.to_le_bytes());
    put(0x2c, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(0x30, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(0x34, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
    put(0x38, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI (what QEMU reports for virtio-blk).
        (0x01, 0x00, 0x00)
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.queues)]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        let epoll = Epoll::new()?;
        let stop_fd = EventFd::new(EFD_NONBLOCK)?;
        let stop_token = ctx.queues.len() as u64;
        epoll.ctl(
            ControlOperation::Add,
            stop_fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        for (i, q) in ctx.queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                q.notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let limiter = self.limiter.take();
        if let Some(limiter) = &limiter {
            epoll.ctl(
                ControlOperation::Add,
                limiter.as_raw_fd(),
                EpollEvent::new(EventSet::IN, stop_token + 1),
            )?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let worker = WorkerLoop {
            mem: ctx.mem,
            disk: self.disk.clone(),
            writeback: has_feature(ctx.acked_features, VIRTIO_BLK_F_FLUSH),
            queues: ctx
                .queues
                .into_iter()
                .map(|q| WorkerQueue { q, broken: false })
                .collect(),
            interrupt: ctx.interrupt,
            stop: stop.clone(),
            epoll,
            scratch: Scratch::default(),
            limiter,
            waiting: VecDeque::new(),
            stats: self.stats.clone(),
        };
        let limiter_back = Arc::new(Mutex::new(None));
        let back = limiter_back.clone();
        let thread = ctx.spawner.spawn(
            "virtio-blk",
            Box::new(move || {
                let limiter = worker.run();
                *back.lock().unwrap_or_else(PoisonError::into_inner) = limiter;
            }),
        )?;
        self.worker = Some(Worker {
            stop,
            stop_fd,
            thread,
            limiter_back,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

struct WorkerQueue {
    q: ActiveQueue,
    /// The driver corrupted the ring: the queue is ignored until the device is reset.
    broken: bool,
}

/// How a bounded run of one queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// No request left; notifications are enabled again.
    Empty,
    /// The budget ran out with requests left.
    Budget,
    /// The limiter refused the request at the head; the queue is on the waiting list.
    Throttled,
    /// Nothing to do: the queue is broken or bus mastering is off.
    Idle,
}

struct WorkerLoop {
    mem: GuestMemoryMmap,
    disk: Arc<Disk>,
    writeback: bool,
    queues: Vec<WorkerQueue>,
    interrupt: Arc<VirtioInterrupt>,
    stop: Arc<AtomicBool>,
    epoll: Epoll,
    scratch: Scratch,
    limiter: Option<LimiterChain>,
    /// Queues whose head request waits for the limiter, in the order they are served.
    waiting: VecDeque<usize>,
    stats: Arc<throttle::SharedStats>,
}

impl WorkerLoop {
    fn run(mut self) -> Option<LimiterChain> {
        let queue_count = self.queues.len();
        let limiter_token = queue_count as u64 + 1;
        let mut events = vec![EpollEvent::default(); queue_count + 2];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk worker: cannot wait for work: {e}");
                    return self.limiter;
                }
            };
            if self.stop.load(Ordering::Acquire) {
                return self.limiter;
            }
            for event in &events[..n] {
                let token = event.data();
                if token == limiter_token {
                    self.on_limiter_timer();
                    continue;
                }
                let index = token as usize;
                if let Some(wq) = self.queues.get(index) {
                    // Non-blocking: a spurious wake-up reads EAGAIN.
                    let _ = wq.q.notify.read();
                    self.process_queue(index);
                }
            }
        }
    }

    fn broken(&mut self, index: usize, what: &str, e: virtio_queue::Error) -> Drained {
        let wq = &mut self.queues[index];
        // A ring the guest broke: answered with DEVICE_NEEDS_RESET, logged at debug level so that a
        // guest breaking and resetting it in a loop cannot flood the host's log.
        log::debug!(
            "virtio-blk: queue {}: {what}: {e}; the device needs a reset",
            wq.q.index
        );
        wq.broken = true;
        self.waiting.retain(|&q| q != index);
        self.interrupt.set_needs_reset();
        Drained::Idle
    }

    /// Runs the available requests of queue `index` (at most [`BATCH`], then it re-signals itself
    /// so a stop request is seen).
    fn process_queue(&mut self, index: usize) {
        if self.waiting.contains(&index) {
            // Its head request waits for the limiter's timer, which resumes it.
            return;
        }
        if self.run_queue(index, BATCH) == Drained::Budget {
            let _ = self.queues[index].q.notify.write(1);
        }
    }

    /// Runs up to `budget` requests of queue `index`, interrupting the driver as EVENT_IDX says
    /// after them; re-enables notifications when the queue is empty.
    fn run_queue(&mut self, index: usize, budget: usize) -> Drained {
        if self.queues[index].broken || !self.interrupt.dma_allowed() {
            return Drained::Idle;
        }
        let mem = &self.mem;
        let mut completed = 0usize;
        let mut added = false;
        let outcome = loop {
            let wq = &mut self.queues[index];
            if let Err(e) = wq.q.queue.disable_notification(mem) {
                return self.broken(index, "cannot disable notifications", e);
            }
            let drained = loop {
                if completed >= budget || self.stop.load(Ordering::Acquire) {
                    break Drained::Budget;
                }
                let wq = &mut self.queues[index];
                let chain = match wq.q.queue.iter(mem) {
                    Ok(mut iter) => iter.next(),
                    Err(e) => return self.broken(index, "bad available ring", e),
                };
                let Some(chain) = chain else {
                    break Drained::Empty;
                };
                let limiter = &mut self.limiter;
                let stats = &self.stats;
                let done = process_chain_limited(
                    mem,
                    &self.disk,
                    self.writeback,
                    chain,
                    &mut self.scratch,
                    |cost| throttle::admit(limiter, stats, cost),
                );
                let wq = &mut self.queues[index];
                let Some(done) = done else {
                    // Held: the request goes back to the head of the available ring, untouched.
                    wq.q.queue.go_to_previous_position();
                    if !self.waiting.contains(&index) {
                        self.waiting.push_back(index);
                    }
                    break Drained::Throttled;
                };
                if let Err(e) = add_used(&mut wq.q.queue, mem, done.head, done.len) {
                    return self.broken(index, "cannot add to the used ring", e);
                }
                added = true;
                completed += 1;
            };
            if drained != Drained::Empty {
                break drained;
            }
            let wq = &mut self.queues[index];
            match wq.q.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break Drained::Empty,
                Err(e) => return self.broken(index, "cannot enable notifications", e),
            }
        };
        if added {
            let wq = &mut self.queues[index];
            match wq.q.queue.needs_notification(mem) {
                Ok(true) => self.interrupt.signal_queue(wq.q.index),
                Ok(false) => {}
                Err(e) => return self.broken(index, "cannot read used_event", e),
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests;
