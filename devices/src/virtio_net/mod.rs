//! virtio-net (virtio 1.2 §5.1): flint's stand-in for the ENA network card, on a TAP backend.
//!
//! One RX/TX queue pair (queue 0 receives, queue 1 transmits). Features offered: MAC (the address in
//! the configuration space), STATUS (link always up) and, from the transport, VERSION_1, EVENT_IDX
//! and INDIRECT_DESC. With [`VirtioNet::with_offloads`] also CSUM, GUEST_CSUM, HOST_TSO4/6 and
//! GUEST_TSO4/6: at DRIVER_OK the TAP's offloads (`TUNSETOFFLOAD`) are set to exactly what the
//! driver acknowledged on the receive side ([`tap_offloads`]), and back to none on reset; TX
//! headers using an offload the driver did not negotiate are dropped. Every frame carries a
//! 12-byte `virtio_net_hdr` (VERSION_1 layout, with `num_buffers`, always 1: no MRG_RXBUF) which is
//! passed to and from the TAP (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ 12`). Not implemented yet: MQ and
//! the control queue, MRG_RXBUF.
//!
//! The backend is any non-blocking, packet-preserving file descriptor (a TAP opened by the VMM;
//! a datagram socket pair in tests) handed over as a [`File`]; one `read` is one frame with its
//! header, one `write` is one frame. The device itself never uses `unsafe`.
//!
//! One worker thread per device, started at DRIVER_OK and joined on reset. It waits with epoll on the
//! RX and TX notify eventfds, the TAP and a stop eventfd:
//! - RX: frames are read from the TAP while the driver has RX buffers. When the RX ring is empty
//!   the frame already read is kept, the TAP is taken out of the epoll set (no spinning on a
//!   readable TAP) and notifications are enabled; the RX notify puts the TAP back.
//! - TX: every available chain is gathered into one frame and written to the TAP, up to
//!   [`BATCH`] chains per wake-up, with one interrupt (as EVENT_IDX allows) per batch.
//!
//! Malformed chains (broken, out of guest RAM, wrong direction, too long, too short for a header,
//! larger than a frame) are returned to the used ring with length 0 and never stop the device.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::{
    collect_chain, ActivateContext, ActivateError, ActiveQueue, Chain, VirtioDevice,
    VirtioInterrupt, VIRTIO_ID_NET,
};

/// Feature bit: the device has a MAC address in its configuration.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the configuration has a link status field.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Link status: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Feature bit: the device takes frames with a partial checksum (TX checksum offload).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver takes frames with a partial checksum (RX checksum offload).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: the driver takes TCPv4 super-frames (RX TSO).
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCPv6 super-frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature bit: the device takes TCPv4 super-frames (TX TSO).
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature bit: the device takes TCPv6 super-frames.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// The offload features offered when the backend can set its offloads.
pub const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6;
/// TAP offload flag (`TUNSETOFFLOAD`): the TAP may hand over frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// TAP offload flag: TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// TAP offload flag: TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// `virtio_net_hdr.gso_type`: not a super-frame.
const GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: TCPv4.
const GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: TCPv6.
const GSO_TCPV6: u8 = 4;

/// Sets the backend's offloads (`TUNSETOFFLOAD` with `TUN_F_*` flags); given by the VMM, which owns
/// the ioctl.
pub type SetOffload = Box<dyn Fn(u32) -> std::io::Result<()> + Send>;

/// The TAP offloads matching the driver's `acked` features: exactly what it can take on RX.
pub fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= TUN_F_TSO6;
    }
    flags
}

/// Checks (and for a driver without CSUM, clears) the header of a TX frame against the acked
/// features; false when the frame uses an offload the driver did not negotiate.
fn fix_tx_header(hdr: &mut [u8], acked: u64) -> bool {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_CSUM) {
        // No offload negotiated: whatever is there means nothing.
        hdr[..NET_HDR_LEN].fill(0);
        return true;
    }
    // num_buffers is not used on TX.
    hdr[10..12].fill(0);
    match hdr[1] {
        GSO_NONE => true,
        GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    }
}

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of `struct virtio_net_hdr` with VERSION_1 (`num_buffers` included).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (without the header) the device moves: a 64 KiB IP packet plus Ethernet header.
pub const MAX_FRAME: usize = 65550;
/// Length of the configuration: `mac`, `status`, `max_virtqueue_pairs`.
pub const CONFIG_LEN: usize = 10;
/// Most chains handled on one queue before the worker looks for a stop request again.
pub const BATCH: usize = 256;
/// Most descriptors in one TX or RX chain.
const MAX_DESCRIPTORS: usize = 64;

const RX: usize = 0;
const TX: usize = 1;
const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// A MAC address is usable for the device: unicast and not all zero.
pub fn valid_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac.iter().any(|b| *b != 0)
}

struct Worker {
    stop: Arc<AtomicBool>,
    stop_fd: EventFd,
    thread: JoinHandle<()>,
}

/// A virtio-net device model (put it behind [`crate::virtio::VirtioPciDevice`]).
pub struct VirtioNet {
    tap: Arc<File>,
    set_offload: Option<SetOffload>,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
}

impl VirtioNet {
    /// A device moving frames through `tap` (non-blocking, one frame with its 12-byte vnet header
    /// per read/write), with MAC address `mac`.
    /// No offload is offered.
    pub fn new(tap: File, mac: [u8; 6]) -> Self {
        Self::build(tap, mac, None)
    }

    /// Like [`VirtioNet::new`], also offering checksum and TCP segmentation offloads (see
    /// [`OFFLOAD_FEATURES`]): at DRIVER_OK `set_offload` gets exactly the TAP offloads the driver
    /// acknowledged ([`tap_offloads`]), and 0 again on reset.
    pub fn with_offloads(tap: File, mac: [u8; 6], set_offload: SetOffload) -> Self {
        Self::build(tap, mac, Some(set_offload))
    }

    fn build(tap: File, mac: [u8; 6], set_offload: Option<SetOffload>) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Self {
            tap: Arc::new(tap),
            set_offload,
            mac,
            config,
            worker: None,
        }
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop.store(true, Ordering::Release);
            if let Err(e) = worker.stop_fd.write(1) {
                log::error!("virtio-net: cannot stop the worker: {e}");
            }
            if worker.thread.join().is_err() {
                log::error!("virtio-net: the worker thread panicked");
            }
        }
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.stop_worker();
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
        vec![QUEUE_SIZE; 2]
    }

    fn device_features(&self) -> u64 {
        let offloads = if self.set_offload.is_some() {
            OFFLOAD_FEATURES
        } else {
            0
        };
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | offloads
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        let mut rx = None;
        let mut tx = None;
        for q in ctx.queues {
            match usize::from(q.index) {
                RX => rx = Some(q),
                TX => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX as u16))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX as u16))?;
        if let Some(set_offload) = &self.set_offload {
            set_offload(tap_offloads(ctx.acked_features))?;
        }
        log::info!(
            "virtio-net: driver features {:#x}, TAP offloads {:#x}",
            ctx.acked_features,
            if self.set_offload.is_some() {
                tap_offloads(ctx.acked_features)
            } else {
                0
            }
        );
        let epoll = Epoll::new()?;
        let stop_fd = EventFd::new(EFD_NONBLOCK)?;
        for (fd, token) in [
            (stop_fd.as_raw_fd(), TOKEN_STOP),
            (rx.notify.as_raw_fd(), TOKEN_RX),
            (tx.notify.as_raw_fd(), TOKEN_TX),
            (self.tap.as_raw_fd(), TOKEN_TAP),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let worker = NetWorker {
            mem: ctx.mem,
            tap: self.tap.clone(),
            queues: [
                WorkerQueue {
                    q: rx,
                    broken: false,
                },
                WorkerQueue {
                    q: tx,
                    broken: false,
                },
            ],
            interrupt: ctx.interrupt,
            acked: ctx.acked_features,
            stop: stop.clone(),
            epoll,
            tap_polled: true,
            tap_dead: false,
            frame: vec![0; NET_HDR_LEN + MAX_FRAME],
            tx_frame: vec![0; NET_HDR_LEN + MAX_FRAME],
            pending: None,
            chain: Chain::default(),
        };
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker.run())?;
        self.worker = Some(Worker {
            stop,
            stop_fd,
            thread,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        if let Some(set_offload) = &self.set_offload {
            if let Err(e) = set_offload(0) {
                log::warn!("virtio-net: cannot turn the TAP's offloads off: {e}");
            }
        }
    }
}

struct WorkerQueue {
    q: ActiveQueue,
    broken: bool,
}

struct NetWorker {
    mem: GuestMemoryMmap,
    tap: Arc<File>,
    queues: [WorkerQueue; 2],
    interrupt: Arc<VirtioInterrupt>,
    /// The features the driver acknowledged.
    acked: u64,
    stop: Arc<AtomicBool>,
    epoll: Epoll,
    /// Whether the TAP is in the epoll set (it is not while the RX ring has no buffer).
    tap_polled: bool,
    /// The TAP failed for good: never polled or read again.
    tap_dead: bool,
    /// An RX frame with its header, read from the TAP (it may wait here for an RX buffer).
    frame: Vec<u8>,
    /// A TX frame with its header, gathered from the guest (separate: an RX frame may be waiting).
    tx_frame: Vec<u8>,
    /// Length of a frame read from the TAP and not yet delivered (waiting for an RX buffer).
    pending: Option<usize>,
    chain: Chain,
}

impl NetWorker {
    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-net worker: cannot wait for work: {e}");
                    return;
                }
            };
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let mut rx = false;
            for event in &events[..n] {
                match event.data() {
                    TOKEN_RX => {
                        let _ = self.queues[RX].q.notify.read();
                        rx = true;
                    }
                    TOKEN_TX => {
                        let _ = self.queues[TX].q.notify.read();
                        self.process_tx();
                    }
                    TOKEN_TAP => rx = true,
                    _ => {}
                }
            }
            if rx {
                self.process_rx();
            }
        }
    }

    fn broken(&mut self, index: usize, what: &str, e: virtio_queue::Error) {
        let wq = &mut self.queues[index];
        log::warn!(
            "virtio-net: queue {}: {what}: {e}; the device needs a reset",
            wq.q.index
        );
        wq.broken = true;
        self.interrupt.set_needs_reset();
        if index == RX {
            self.poll_tap(false);
        }
    }

    /// Puts the TAP in the epoll set or takes it out. Out means out (EPOLL_CTL_DEL): epoll reports
    /// errors and hang-ups even for an empty event mask, which would make the worker spin.
    fn poll_tap(&mut self, on: bool) {
        let on = on && !self.tap_dead;
        if self.tap_polled == on {
            return;
        }
        let (op, events) = if on {
            (ControlOperation::Add, EventSet::IN)
        } else {
            (ControlOperation::Delete, EventSet::empty())
        };
        match self
            .epoll
            .ctl(op, self.tap.as_raw_fd(), EpollEvent::new(events, TOKEN_TAP))
        {
            Ok(()) => self.tap_polled = on,
            Err(e) => log::error!("virtio-net: cannot change the TAP's epoll events: {e}"),
        }
    }

    /// The TAP failed for good (read error, end of file): stop reading it. TX goes on (and fails
    /// quietly) so the guest's driver is never stuck.
    fn tap_failed(&mut self, why: &str) {
        log::warn!("virtio-net: cannot read the TAP ({why}); receiving stops until a device reset");
        self.tap_dead = true;
        self.poll_tap(false);
    }

    fn signal_if_needed(&mut self, index: usize) {
        let wq = &mut self.queues[index];
        match wq.q.queue.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.signal_queue(wq.q.index),
            Ok(false) => {}
            Err(e) => self.broken(index, "cannot read used_event", e),
        }
    }

    /// Moves frames from the TAP into RX buffers until one of them runs out.
    fn process_rx(&mut self) {
        if self.queues[RX].broken || self.tap_dead || !self.interrupt.dma_allowed() {
            // The transport re-signals the queues when bus mastering comes on.
            self.poll_tap(false);
            return;
        }
        let mut added = false;
        let mut count = 0usize;
        if let Err(e) = self.queues[RX].q.queue.disable_notification(&self.mem) {
            return self.broken(RX, "cannot disable notifications", e);
        }
        loop {
            if self.stop.load(Ordering::Acquire) || count >= BATCH {
                // Come back through epoll (the TAP stays readable or the notify is re-signalled).
                let _ = self.queues[RX].q.notify.write(1);
                break;
            }
            let len = match self.pending {
                Some(len) => len,
                None => match (&*self.tap).read(&mut self.frame) {
                    Ok(0) => {
                        self.tap_failed("end of file");
                        break;
                    }
                    Ok(len) if len < NET_HDR_LEN => continue,
                    Ok(len) => {
                        self.pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.poll_tap(true);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.tap_failed(&e.to_string());
                        break;
                    }
                },
            };
            let chain = match self.queues[RX].q.queue.iter(&self.mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return self.broken(RX, "bad available ring", e),
            };
            let Some(chain) = chain else {
                // No buffer: keep the frame, stop watching the TAP until the driver adds buffers.
                match self.queues[RX].q.queue.enable_notification(&self.mem) {
                    Ok(true) => {
                        if let Err(e) = self.queues[RX].q.queue.disable_notification(&self.mem) {
                            return self.broken(RX, "cannot disable notifications", e);
                        }
                        continue;
                    }
                    Ok(false) => {
                        self.poll_tap(false);
                        break;
                    }
                    Err(e) => return self.broken(RX, "cannot enable notifications", e),
                }
            };
            let delivery = deliver_rx_frame(
                &self.mem,
                chain,
                &mut self.frame[..len],
                self.acked,
                &mut self.chain,
            );
            if delivery.consumed {
                self.pending = None;
            }
            let (head, used) = (delivery.head, delivery.used);
            if let Err(e) = self.queues[RX].q.queue.add_used(&self.mem, head, used) {
                return self.broken(RX, "cannot add to the used ring", e);
            }
            added = true;
            count += 1;
        }
        if added {
            self.signal_if_needed(RX);
        }
    }

    /// Sends every available TX chain to the TAP (at most [`BATCH`] before looking for a stop).
    fn process_tx(&mut self) {
        if self.queues[TX].broken || !self.interrupt.dma_allowed() {
            return;
        }
        let mut count = 0usize;
        loop {
            if let Err(e) = self.queues[TX].q.queue.disable_notification(&self.mem) {
                return self.broken(TX, "cannot disable notifications", e);
            }
            let mut added = false;
            while count < BATCH && !self.stop.load(Ordering::Acquire) {
                let chain = match self.queues[TX].q.queue.iter(&self.mem) {
                    Ok(mut iter) => iter.next(),
                    Err(e) => return self.broken(TX, "bad available ring", e),
                };
                let Some(chain) = chain else {
                    break;
                };
                let (head, len) = gather_tx_frame(
                    &self.mem,
                    chain,
                    self.acked,
                    &mut self.chain,
                    &mut self.tx_frame,
                );
                if let Some(len) = len {
                    if let Err(e) = (&*self.tap).write(&self.tx_frame[..len]) {
                        log::debug!("virtio-net: TAP write of {len} bytes failed: {e}");
                    }
                }
                if let Err(e) = self.queues[TX].q.queue.add_used(&self.mem, head, 0) {
                    return self.broken(TX, "cannot add to the used ring", e);
                }
                added = true;
                count += 1;
            }
            if added {
                self.signal_if_needed(TX);
            }
            if count >= BATCH || self.stop.load(Ordering::Acquire) {
                let _ = self.queues[TX].q.notify.write(1);
                return;
            }
            match self.queues[TX].q.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => return self.broken(TX, "cannot enable notifications", e),
            }
        }
    }
}

/// What became of one RX chain ([`deliver_rx_frame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxDelivery {
    /// The chain's head descriptor (what goes in the used ring).
    pub head: u16,
    /// The used length: the frame's length with its header, or 0 when nothing was delivered.
    pub used: u32,
    /// Whether the frame is gone (delivered, or dropped with a buffer too small or not writable);
    /// false when the chain was malformed, so the frame waits for the next buffer.
    pub consumed: bool,
}

/// Delivers `frame` (its 12-byte header and the frame, as read from the TAP; anything shorter
/// than [`NET_HDR_LEN`] is dropped) into the RX `chain`, first fixing the header for a driver with the
/// `acked` features. `scratch` is reused from chain to chain. The worker runs this for each RX
/// buffer; it is public so a fuzzer can drive it without a worker thread.
pub fn deliver_rx_frame<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    frame: &mut [u8],
    acked: u64,
    scratch: &mut Chain,
) -> RxDelivery
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let len = frame.len();
    let (used, consumed) = match collect_chain(chain, mem, MAX_DESCRIPTORS, scratch) {
        Ok(())
            if len >= NET_HDR_LEN
                && scratch.readable.is_empty()
                && scratch.writable_len() >= len as u64 =>
        {
            if acked & (1 << VIRTIO_NET_F_GUEST_CSUM) == 0 {
                // Flags and GSO fields must be zero for such a driver.
                frame[..10].fill(0);
            }
            // num_buffers: one (no MRG_RXBUF).
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let ok = scatter(mem, scratch, frame);
            (if ok { len as u32 } else { 0 }, true)
        }
        // A buffer too small or not writable: the frame is dropped with it.
        Ok(()) => (0, true),
        Err(_) => (0, false),
    };
    RxDelivery {
        head: scratch.head,
        used,
        consumed,
    }
}

/// Gathers the TX `chain` (header and frame) into `frame` (at least [`NET_HDR_LEN`] +
/// [`MAX_FRAME`] bytes) and checks its header against the `acked` features. Returns the chain's
/// head and the length to send, None when the chain is dropped (malformed, not a frame, or an
/// offload the driver did not negotiate). The worker runs this for each TX chain; it is public so
/// a fuzzer can drive it without a worker thread.
pub fn gather_tx_frame<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    acked: u64,
    scratch: &mut Chain,
    frame: &mut [u8],
) -> (u16, Option<usize>)
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let len = match collect_chain(chain, mem, MAX_DESCRIPTORS, scratch) {
        Ok(()) => gather(mem, scratch, frame),
        Err(_) => None,
    };
    (scratch.head, len.filter(|_| fix_tx_header(frame, acked)))
}

/// Copies `data` into the chain's writable buffers (which hold at least `data.len()` bytes).
fn scatter(mem: &GuestMemoryMmap, chain: &Chain, data: &[u8]) -> bool {
    let mut done = 0usize;
    for seg in &chain.writable {
        if done == data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - done);
        if mem.write_slice(&data[done..done + n], seg.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == data.len()
}

/// Gathers a TX chain (header and frame, device-readable only) into `buf`; None when the chain is
/// not a frame: writable buffers, shorter than a header, longer than a header plus [`MAX_FRAME`].
fn gather(mem: &GuestMemoryMmap, chain: &Chain, buf: &mut [u8]) -> Option<usize> {
    let total = chain.readable_len();
    if !chain.writable.is_empty() || total < NET_HDR_LEN as u64 || total > buf.len() as u64 {
        return None;
    }
    let mut done = 0usize;
    for seg in &chain.readable {
        let n = seg.len as usize;
        mem.read_slice(&mut buf[done..done + n], seg.addr).ok()?;
        done += n;
    }
    Some(done)
}

#[cfg(test)]
mod tests;
