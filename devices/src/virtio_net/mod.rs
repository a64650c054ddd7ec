//! virtio-net (virtio 1.2 §5.1): flint's stand-in for the ENA network card, on a TAP backend.
//!
//! Queues: N RX/TX pairs (queue 2i receives, 2i + 1 transmits) and a control queue (2N; queue 2
//! when the driver did not take MQ). Features offered: MAC, STATUS (link always up), CTRL_VQ,
//! MRG_RXBUF, MQ when N > 1 (`max_virtqueue_pairs` = N in the configuration) and, from the
//! transport, VERSION_1, EVENT_IDX and INDIRECT_DESC. With a [`TapControl`] also CSUM, GUEST_CSUM,
//! HOST_TSO4/6 and GUEST_TSO4/6: at DRIVER_OK the TAP's offloads (`TUNSETOFFLOAD`, one setting for
//! the whole TAP) are set to exactly what the driver acknowledged on the receive side
//! ([`tap_offloads`]), and back to none on reset; TX headers using an offload the driver did not
//! negotiate are dropped. Every frame carries the 12-byte `virtio_net_hdr` (VERSION_1 layout),
//! passed to and from the TAP (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ 12`).
//!
//! Backend: one non-blocking, packet-preserving file descriptor per queue pair (the queues of a
//! multi-queue TAP opened by the VMM; datagram socket pairs in tests); one `read` is one frame with
//! its header, one `write` is one frame. The device itself never uses `unsafe`.
//!
//! Threads: one worker per queue pair, like ENA's per-queue-pair interrupts and the TAP's per-queue
//! file descriptors — pairs share nothing on the data path, so N pairs use N host CPUs. Each is
//! started at DRIVER_OK and joined on reset; pair 0's worker also serves the control queue
//! ([`ctrl`]). Only pair 0 carries traffic until the driver asks for more with
//! VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; the TAP queues of inactive pairs are detached
//! ([`TapControl::set_queue_attached`]) so the kernel steers no frame to them. [`worker`] has the
//! RX and TX paths, [`rx`] the receive buffers (one chain per frame, or several with MRG_RXBUF).
//!
//! Rate limits: optional instance-wide caps for receive and transmit ([`NetRateLimits`]), each a
//! [`SharedRateLimiter`] every worker of every NIC charges; a throttled worker waits on its
//! limiter's timerfd (no polling, no fixed stall).
//!
//! Malformed chains (broken, out of guest RAM, wrong direction, too long, too short for a header,
//! larger than a frame) are returned to the used ring with length 0 and never stop the device.

pub mod ctrl;
mod header;
mod rx;
mod worker;

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use header::*;

use crate::rate_limiter::SharedRateLimiter;
use crate::virtio::{
    has_feature, ActivateContext, ActivateError, ActiveQueue, VirtioDevice, VIRTIO_ID_NET,
};
use ctrl::PairStates;
use worker::{PairWorker, WorkerSetup};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the control queue (commands are rare and small).
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// Most queue pairs a device has.
pub const MAX_QUEUE_PAIRS: usize = 8;
/// Largest frame (without the header) the device moves: a 64 KiB IP packet plus Ethernet header.
pub const MAX_FRAME: usize = 65550;
/// Length of the configuration: `mac`, `status`, `max_virtqueue_pairs`.
pub const CONFIG_LEN: usize = 10;
/// Most chains handled on one queue before the worker looks for a stop request again.
pub const BATCH: usize = 256;

/// A MAC address is usable for the device: unicast and not all zero.
pub fn valid_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac.iter().any(|b| *b != 0)
}

/// What the device may ask of its TAP beyond reading and writing frames; implemented by the VMM,
/// which owns the ioctls.
pub trait TapControl: Send + Sync {
    /// Sets the TAP's offloads (`TUNSETOFFLOAD` with `TUN_F_*` flags). One setting for the TAP.
    fn set_offload(&self, flags: u32) -> std::io::Result<()>;
    /// Attaches or detaches the TAP queue of pair `pair` (`TUNSETQUEUE`): the kernel steers frames
    /// only to attached queues. Called only when the state changes; every queue starts attached.
    fn set_queue_attached(&self, pair: usize, attached: bool) -> std::io::Result<()>;
}

/// The instance's network caps: every worker of every NIC charges the frames it receives to `rx`
/// and those it sends to `tx` (bytes of the Ethernet frame, without the virtio-net header).
#[derive(Clone, Default)]
pub struct NetRateLimits {
    /// Cap on guest-bound traffic.
    pub rx: Option<SharedRateLimiter>,
    /// Cap on traffic the guest sends.
    pub tx: Option<SharedRateLimiter>,
}

/// Why a device could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The number of backend descriptors (queue pairs) is out of range.
    #[error("a virtio-net device has 1 to {MAX_QUEUE_PAIRS} queue pairs, not {0}")]
    QueuePairs(usize),
}

struct Worker {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: JoinHandle<()>,
}

/// A virtio-net device model (put it behind [`crate::virtio::VirtioPciDevice`]).
pub struct VirtioNet {
    taps: Vec<Arc<File>>,
    control: Option<Arc<dyn TapControl>>,
    limits: NetRateLimits,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    /// Which TAP queues are attached (all at first); kept across resets.
    attached: Arc<Mutex<Vec<bool>>>,
    workers: Vec<Worker>,
}

impl VirtioNet {
    /// A device with one queue pair per file in `taps` (non-blocking, one frame with its 12-byte
    /// vnet header per read/write), with MAC address `mac`. No offload is offered and the queues
    /// are never detached (see [`VirtioNet::with_tap_control`]).
    pub fn new(taps: Vec<File>, mac: [u8; 6]) -> Result<Self, NetError> {
        let pairs = taps.len();
        if pairs == 0 || pairs > MAX_QUEUE_PAIRS {
            return Err(NetError::QueuePairs(pairs));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&(pairs as u16).to_le_bytes());
        Ok(Self {
            taps: taps.into_iter().map(Arc::new).collect(),
            control: None,
            limits: NetRateLimits::default(),
            mac,
            config,
            attached: Arc::new(Mutex::new(vec![true; pairs])),
            workers: Vec::new(),
        })
    }

    /// Also offers checksum and TCP segmentation offloads ([`OFFLOAD_FEATURES`]), set on the TAP
    /// through `control` at DRIVER_OK (0 again on reset), and detaches the TAP queues of the pairs
    /// the driver does not use.
    pub fn with_tap_control(mut self, control: Box<dyn TapControl>) -> Self {
        self.control = Some(Arc::from(control));
        self
    }

    /// Charges received and sent frames to `limits`.
    pub fn with_rate_limits(mut self, limits: NetRateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The number of queue pairs.
    pub fn queue_pairs(&self) -> usize {
        self.taps.len()
    }

    fn stop_workers(&mut self) {
        for worker in &self.workers {
            worker.stop.store(true, Ordering::Release);
            if let Err(e) = worker.wake.write(1) {
                log::error!("virtio-net: cannot stop a worker: {e}");
            }
        }
        for worker in self.workers.drain(..) {
            if worker.thread.join().is_err() {
                log::error!("virtio-net: a worker thread panicked");
            }
        }
    }

    fn start_workers(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let pairs_max = self.taps.len();
        let mq = has_feature(ctx.acked_features, VIRTIO_NET_F_MQ) && pairs_max > 1;
        let usable_pairs = if mq { pairs_max } else { 1 };
        let ctrl_index = 2 * usable_pairs;
        let mut slots: Vec<Option<ActiveQueue>> = (0..=ctrl_index).map(|_| None).collect();
        for q in ctx.queues {
            if let Some(slot) = slots.get_mut(usize::from(q.index)) {
                *slot = Some(q);
            }
        }
        let ctrl = if has_feature(ctx.acked_features, VIRTIO_NET_F_CTRL_VQ) {
            slots[ctrl_index].take()
        } else {
            None
        };
        // A pair works only with both of its queues enabled; pair 0 must.
        let mut pairs = Vec::new();
        for pair in 0..usable_pairs {
            match (slots[2 * pair].take(), slots[2 * pair + 1].take()) {
                (Some(rx), Some(tx)) => pairs.push((rx, tx)),
                (rx, _) if pair == 0 => {
                    return Err(ActivateError::MissingQueue(u16::from(rx.is_some())))
                }
                _ => break,
            }
        }
        let wakes = (0..pairs.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let states = Arc::new(PairStates::new(
            &wakes,
            pairs_max,
            self.control.clone(),
            self.attached.clone(),
        )?);
        // Only pair 0 carries traffic until the driver asks for more.
        states.set_active_pairs(1).map_err(ActivateError::Worker)?;
        let mut ctrl = ctrl;
        for (pair, ((rx, tx), wake)) in pairs.into_iter().zip(wakes).enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let setup = WorkerSetup {
                pair,
                mem: ctx.mem.clone(),
                tap: self.taps[pair].clone(),
                rx,
                tx,
                ctrl: if pair == 0 { ctrl.take() } else { None },
                interrupt: ctx.interrupt.clone(),
                acked: ctx.acked_features,
                stop: stop.clone(),
                wake: wake.try_clone()?,
                states: states.clone(),
                limits: self.limits.clone(),
            };
            let worker = PairWorker::new(setup)?;
            let thread = ctx.spawner.spawn(
                &format!("virtio-net-q{pair}"),
                Box::new(move || worker.run()),
            )?;
            self.workers.push(Worker { stop, wake, thread });
        }
        Ok(())
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Network controller, Ethernet.
        (0x02, 0x00, 0x00)
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let mut sizes = vec![QUEUE_SIZE; 2 * self.taps.len()];
        sizes.push(CTRL_QUEUE_SIZE);
        sizes
    }

    fn device_features(&self) -> u64 {
        let offloads = if self.control.is_some() {
            OFFLOAD_FEATURES
        } else {
            0
        };
        let mq = if self.taps.len() > 1 {
            1 << VIRTIO_NET_F_MQ
        } else {
            0
        };
        1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CTRL_VQ
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | mq
            | offloads
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_workers();
        let acked = ctx.acked_features;
        let offloads = if self.control.is_some() {
            tap_offloads(acked)
        } else {
            0
        };
        if let Some(control) = &self.control {
            control.set_offload(offloads)?;
        }
        log::info!("virtio-net: driver features {acked:#x}, TAP offloads {offloads:#x}");
        let started = self.start_workers(ctx);
        if started.is_err() {
            self.stop_workers();
        }
        started
    }

    fn reset(&mut self) {
        self.stop_workers();
        if let Some(control) = &self.control {
            if let Err(e) = control.set_offload(0) {
                log::warn!("virtio-net: cannot turn the TAP's offloads off: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
