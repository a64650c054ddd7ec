//! One queue pair's worker thread: TX, the event loop, and (pair 0) the control queue. The receive
//! path is in [`super::rx`].
//!
//! The worker waits with epoll on its RX and TX notify eventfds, its TAP queue, a wake eventfd
//! (stop requests and pair switches), the timerfds of its rate limiters and, for pair 0, the
//! control queue's notify eventfd.
//! - TX: every available chain is gathered into one frame and written to the TAP, up to [`BATCH`]
//!   chains per wake-up, with one interrupt (as EVENT_IDX allows) per batch. A frame the TX limiter
//!   refuses waits in the worker (its chain not yet used) until the limiter's timer fires.
//! - RX: see [`super::rx`].

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::ctrl::{parse_command, PairStates, MAX_COMMAND};
use super::header::{fix_tx_header, NET_HDR_LEN, VIRTIO_NET_F_MQ};
use super::{NetRateLimits, BATCH, MAX_FRAME};
use crate::rate_limiter::{LimiterChain, MonotonicClock, RateLimiter};
use crate::virtio::queue::add_used;
use crate::virtio::{collect_chain, has_feature, ActiveQueue, Chain, VirtioInterrupt};

/// Most descriptors in one TX or RX chain.
pub(super) const MAX_DESCRIPTORS: usize = 64;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_WAKE: u64 = 3;
const TOKEN_CTRL: u64 = 4;
const TOKEN_RX_LIMIT: u64 = 5;
const TOKEN_TX_LIMIT: u64 = 6;

/// Which of a worker's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Rx,
    Tx,
    Ctrl,
}

pub(super) struct WorkerQueue {
    pub q: ActiveQueue,
    /// The driver corrupted the ring: the queue is ignored until the device is reset.
    pub broken: bool,
}

/// Everything a worker is started with.
pub(super) struct WorkerSetup {
    pub pair: usize,
    pub mem: GuestMemoryMmap,
    pub tap: Arc<File>,
    pub rx: ActiveQueue,
    pub tx: ActiveQueue,
    pub ctrl: Option<ActiveQueue>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub acked: u64,
    pub stop: Arc<AtomicBool>,
    pub wake: EventFd,
    pub states: Arc<PairStates>,
    pub limits: NetRateLimits,
}

/// A received frame not yet delivered (waiting for RX buffers or for the RX limiter).
#[derive(Debug, Clone, Copy)]
pub(super) struct RxPending {
    /// Length with the header.
    pub len: usize,
    /// Whether the RX limiter has admitted it.
    pub charged: bool,
}

pub(super) struct PairWorker {
    pub pair: usize,
    pub mem: GuestMemoryMmap,
    pub tap: Arc<File>,
    pub rx: WorkerQueue,
    pub tx: WorkerQueue,
    pub ctrl: Option<WorkerQueue>,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver acknowledged.
    pub acked: u64,
    pub stop: Arc<AtomicBool>,
    pub wake: EventFd,
    pub states: Arc<PairStates>,
    pub epoll: Epoll,
    /// Whether the TAP is in the epoll set (it is not while RX cannot take frames).
    pub tap_polled: bool,
    /// The TAP failed for good: never polled or read again.
    pub tap_dead: bool,
    /// An RX frame with its header, read from the TAP (it may wait here).
    pub frame: Vec<u8>,
    pub rx_pending: Option<RxPending>,
    /// A TX frame with its header, gathered from the guest.
    pub tx_frame: Vec<u8>,
    /// A TX frame the limiter refused: its chain's head and its length with the header.
    pub tx_pending: Option<(u16, usize)>,
    pub chain: Chain,
    /// The chains one merged RX frame is spread over (MRG_RXBUF).
    pub rx_chains: Vec<Chain>,
    pub rx_limiter: Option<LimiterChain>,
    pub tx_limiter: Option<LimiterChain>,
}

fn limiter(
    shared: &Option<crate::rate_limiter::SharedRateLimiter>,
) -> std::io::Result<Option<LimiterChain>> {
    shared
        .as_ref()
        .map(|s| {
            RateLimiter::unlimited(MonotonicClock::shared())
                .map(|local| s.chain(local))
                .map_err(std::io::Error::other)
        })
        .transpose()
}

impl PairWorker {
    pub fn new(s: WorkerSetup) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let rx_limiter = limiter(&s.limits.rx)?;
        let tx_limiter = limiter(&s.limits.tx)?;
        let mut fds = vec![
            (s.wake.as_raw_fd(), TOKEN_WAKE),
            (s.rx.notify.as_raw_fd(), TOKEN_RX),
            (s.tx.notify.as_raw_fd(), TOKEN_TX),
        ];
        if let Some(ctrl) = &s.ctrl {
            fds.push((ctrl.notify.as_raw_fd(), TOKEN_CTRL));
        }
        if let Some(l) = &rx_limiter {
            fds.push((l.as_raw_fd(), TOKEN_RX_LIMIT));
        }
        if let Some(l) = &tx_limiter {
            fds.push((l.as_raw_fd(), TOKEN_TX_LIMIT));
        }
        for (fd, token) in fds {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Self {
            pair: s.pair,
            mem: s.mem,
            tap: s.tap,
            rx: WorkerQueue {
                q: s.rx,
                broken: false,
            },
            tx: WorkerQueue {
                q: s.tx,
                broken: false,
            },
            ctrl: s.ctrl.map(|q| WorkerQueue { q, broken: false }),
            interrupt: s.interrupt,
            acked: s.acked,
            stop: s.stop,
            wake: s.wake,
            states: s.states,
            epoll,
            // Not yet: the first RX pass adds the TAP when the pair is active.
            tap_polled: false,
            tap_dead: false,
            frame: vec![0; NET_HDR_LEN + MAX_FRAME],
            rx_pending: None,
            tx_frame: vec![0; NET_HDR_LEN + MAX_FRAME],
            tx_pending: None,
            chain: Chain::default(),
            rx_chains: Vec::new(),
            rx_limiter,
            tx_limiter,
        })
    }

    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 8];
        // Frames may already wait in the TAP, and the driver may have queued buffers.
        self.process_rx();
        self.process_tx();
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-net worker {}: cannot wait for work: {e}", self.pair);
                    return;
                }
            };
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let (mut rx, mut tx) = (false, false);
            for event in &events[..n] {
                match event.data() {
                    TOKEN_RX => {
                        let _ = self.rx.q.notify.read();
                        rx = true;
                    }
                    TOKEN_TX => {
                        let _ = self.tx.q.notify.read();
                        tx = true;
                    }
                    TOKEN_TAP => rx = true,
                    TOKEN_WAKE => {
                        let _ = self.wake.read();
                        (rx, tx) = (true, true);
                    }
                    TOKEN_CTRL => {
                        if let Some(ctrl) = &self.ctrl {
                            let _ = ctrl.q.notify.read();
                        }
                        self.process_ctrl();
                    }
                    TOKEN_RX_LIMIT => {
                        if let Some(l) = self.rx_limiter.as_mut() {
                            l.on_timer_event();
                        }
                        rx = true;
                    }
                    TOKEN_TX_LIMIT => {
                        if let Some(l) = self.tx_limiter.as_mut() {
                            l.on_timer_event();
                        }
                        tx = true;
                    }
                    _ => {}
                }
            }
            if tx {
                self.process_tx();
            }
            if rx {
                self.process_rx();
            }
        }
    }

    pub fn queue(&mut self, which: Which) -> Option<&mut WorkerQueue> {
        match which {
            Which::Rx => Some(&mut self.rx),
            Which::Tx => Some(&mut self.tx),
            Which::Ctrl => self.ctrl.as_mut(),
        }
    }

    pub fn broken(&mut self, which: Which, what: &str, e: virtio_queue::Error) {
        if let Some(wq) = self.queue(which) {
            // A ring the guest broke: answered with DEVICE_NEEDS_RESET, logged at debug level so
            // that a guest breaking and resetting it in a loop cannot flood the host's log.
            log::debug!(
                "virtio-net: queue {}: {what}: {e}; the device needs a reset",
                wq.q.index
            );
            wq.broken = true;
        }
        self.interrupt.set_needs_reset();
        if which == Which::Rx {
            self.poll_tap(false);
        }
    }

    /// Puts the TAP in the epoll set or takes it out. Out means out (EPOLL_CTL_DEL): epoll reports
    /// errors and hang-ups even for an empty event mask, which would make the worker spin.
    pub fn poll_tap(&mut self, on: bool) {
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

    /// Interrupts the driver for `which` if EVENT_IDX (or its absence) says so; `force` for a
    /// batch whose used-ring accounting the queue did not see in full (merged RX buffers).
    pub fn signal_if_needed(&mut self, which: Which, force: bool) {
        let mem = self.mem.clone();
        let Some(wq) = self.queue(which) else {
            return;
        };
        let index = wq.q.index;
        match wq.q.queue.needs_notification(&mem) {
            Ok(needed) => {
                if needed || force {
                    self.interrupt.signal_queue(index);
                }
            }
            Err(e) => self.broken(which, "cannot read used_event", e),
        }
    }

    /// Sends every available TX chain to the TAP (at most [`BATCH`] before looking for a stop).
    pub fn process_tx(&mut self) {
        if self.tx.broken || !self.interrupt.dma_allowed() {
            return;
        }
        let mut count = 0usize;
        loop {
            if let Err(e) = self.tx.q.queue.disable_notification(&self.mem) {
                return self.broken(Which::Tx, "cannot disable notifications", e);
            }
            let mut added = false;
            while count < BATCH && !self.stop.load(Ordering::Acquire) {
                let (head, len) = match self.tx_pending.take() {
                    Some(pending) => pending,
                    None => {
                        let chain = match self.tx.q.queue.iter(&self.mem) {
                            Ok(mut iter) => iter.next(),
                            Err(e) => return self.broken(Which::Tx, "bad available ring", e),
                        };
                        let Some(chain) = chain else {
                            break;
                        };
                        let len =
                            match collect_chain(chain, &self.mem, MAX_DESCRIPTORS, &mut self.chain)
                            {
                                Ok(()) => gather(&self.mem, &self.chain, &mut self.tx_frame),
                                Err(_) => None,
                            };
                        let len = len.filter(|_| fix_tx_header(&mut self.tx_frame, self.acked));
                        (self.chain.head, len.unwrap_or(0))
                    }
                };
                if len > 0 {
                    if let Some(limiter) = self.tx_limiter.as_mut() {
                        let bytes = (len - NET_HDR_LEN) as u64;
                        if limiter.is_blocked() || limiter.consume(1, bytes).is_err() {
                            // The limiter's timer brings the worker back to this frame.
                            self.tx_pending = Some((head, len));
                            if added {
                                self.signal_if_needed(Which::Tx, false);
                            }
                            return;
                        }
                    }
                    if let Err(e) = (&*self.tap).write(&self.tx_frame[..len]) {
                        log::debug!("virtio-net: TAP write of {len} bytes failed: {e}");
                    }
                }
                if let Err(e) = add_used(&mut self.tx.q.queue, &self.mem, head, 0) {
                    return self.broken(Which::Tx, "cannot add to the used ring", e);
                }
                added = true;
                count += 1;
            }
            if added {
                self.signal_if_needed(Which::Tx, false);
            }
            if count >= BATCH || self.stop.load(Ordering::Acquire) {
                let _ = self.tx.q.notify.write(1);
                return;
            }
            match self.tx.q.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => return self.broken(Which::Tx, "cannot enable notifications", e),
            }
        }
    }

    /// Answers every available control command.
    pub fn process_ctrl(&mut self) {
        let mq = has_feature(self.acked, VIRTIO_NET_F_MQ);
        let mut added = false;
        loop {
            let Some(ctrl) = self.ctrl.as_mut() else {
                return;
            };
            if ctrl.broken || !self.interrupt.dma_allowed() {
                return;
            }
            let chain = match ctrl.q.queue.iter(&self.mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return self.broken(Which::Ctrl, "bad available ring", e),
            };
            let Some(chain) = chain else {
                break;
            };
            let mut used = 0;
            if collect_chain(chain, &self.mem, MAX_DESCRIPTORS, &mut self.chain).is_ok() {
                if let Some(ack) = self.chain.writable.first().map(|s| s.addr) {
                    let mut head = [0u8; MAX_COMMAND];
                    let n = gather_prefix(&self.mem, &self.chain, &mut head);
                    let command = parse_command(&head[..n], self.chain.readable_len());
                    let status = self.states.execute(command, mq);
                    if self.mem.write_obj(status, ack).is_ok() {
                        used = 1;
                    }
                }
            }
            let head = self.chain.head;
            let Some(ctrl) = self.ctrl.as_mut() else {
                return;
            };
            if let Err(e) = add_used(&mut ctrl.q.queue, &self.mem, head, used) {
                return self.broken(Which::Ctrl, "cannot add to the used ring", e);
            }
            added = true;
        }
        if added {
            self.signal_if_needed(Which::Ctrl, false);
        }
    }
}

/// Gathers a TX chain (header and frame, device-readable only) into `buf`; None when the chain is
/// not a frame: writable buffers, shorter than a header, longer than a header plus [`MAX_FRAME`].
pub(super) fn gather(mem: &GuestMemoryMmap, chain: &Chain, buf: &mut [u8]) -> Option<usize> {
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

/// Reads the first `buf.len()` readable bytes of `chain` (fewer if it is shorter); returns how many.
fn gather_prefix(mem: &GuestMemoryMmap, chain: &Chain, buf: &mut [u8]) -> usize {
    let mut done = 0usize;
    for seg in &chain.readable {
        let n = (seg.len as usize).min(buf.len() - done);
        if n == 0 || mem.read_slice(&mut buf[done..done + n], seg.addr).is_err() {
            break;
        }
        done += n;
    }
    done
}
