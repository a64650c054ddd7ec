//! The receive path of a queue pair's worker.
//!
//! Frames are read from the pair's TAP queue while the pair is active and the driver has RX
//! buffers. A frame read waits in the worker (`rx_pending`) when there is no buffer for it — the TAP
//! then leaves the epoll set (no spinning on a readable TAP) and notifications are enabled; the RX
//! notify brings it back — or when the RX limiter refuses it (the limiter's timer brings it back).
//!
//! Buffers:
//! - Without MRG_RXBUF a frame takes one chain, which must hold the header and the whole frame; a
//!   smaller chain is returned with length 0 and the frame is dropped (as a NIC drops a frame it
//!   has no room for). `num_buffers` is 1.
//! - With MRG_RXBUF a frame takes as many chains as it needs (the first must hold the 12-byte
//!   header); `num_buffers` in the header says how many, each chain's used length is what it got,
//!   and all of them appear in the used ring at once (one index update), so the driver never
//!   sees a frame's first buffer without the rest. If the ring has too few buffers, the chains are
//!   put back and the frame waits; if even a full ring cannot hold it, or a chain among them is
//!   malformed, the frame is dropped and the chains returned with length 0.

use std::io::{ErrorKind, Read};
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::header::{
    NET_HDR_LEN, NUM_BUFFERS_OFFSET, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF,
};
use super::worker::{PairWorker, RxPending, Which, MAX_DESCRIPTORS};
use super::BATCH;
use crate::virtio::queue::add_used;
use crate::virtio::{collect_chain, has_feature, Chain};

/// How delivering one frame went ([`deliver_rx_frame`]).
#[derive(Debug)]
pub enum RxDelivery {
    /// In the used ring, over this many chains.
    Done {
        /// Chains the frame took (1 without MRG_RXBUF).
        chains: usize,
    },
    /// Not enough buffers: the frame waits. Nothing was used, taken chains were put back, and
    /// notifications are enabled: the driver notifies the queue when it adds a buffer.
    NoBuffers,
    /// The frame was dropped; the chains it took were returned with length 0.
    Dropped {
        /// Chains returned (at least 1).
        chains: usize,
    },
    /// Shorter than a virtio-net header: not a frame; dropped without touching the ring.
    Runt,
    /// The ring is unusable; the caller marks the queue broken.
    Broken {
        /// What failed.
        what: &'static str,
        /// Why.
        error: virtio_queue::Error,
    },
}

/// Buffers [`deliver_rx_frame`] reuses from frame to frame.
#[derive(Default)]
pub struct RxScratch {
    /// The chains one frame is spread over (one without MRG_RXBUF).
    chains: Vec<Chain>,
    /// (head, used length) of each of them.
    used: Vec<(u16, u32)>,
}

/// Puts `frame` (the 12-byte header the TAP gave, then the Ethernet frame) into the RX buffers
/// of `queue`, as the driver's `acked` features say (see the module documentation); the header's
/// `num_buffers` is set, and its other fields cleared for a driver without GUEST_CSUM. Every used
/// element of the frame appears with one used-index update. The caller interrupts the driver; with
/// more than one chain it must do so regardless of EVENT_IDX's `used_event` (the queue's
/// notification accounting did not see every element). The caller has disabled the queue's
/// notifications; they stay disabled unless the frame has to wait ([`RxDelivery::NoBuffers`]).
pub fn deliver_rx_frame(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut [u8],
    acked: u64,
    scratch: &mut RxScratch,
) -> RxDelivery {
    if frame.len() < NET_HDR_LEN {
        return RxDelivery::Runt;
    }
    if !has_feature(acked, VIRTIO_NET_F_GUEST_CSUM) {
        // Flags and GSO fields must be zero for such a driver.
        frame[..NUM_BUFFERS_OFFSET].fill(0);
    }
    if has_feature(acked, VIRTIO_NET_F_MRG_RXBUF) {
        deliver_merged(mem, queue, frame, scratch)
    } else {
        deliver_single(mem, queue, frame, scratch)
    }
}

/// The next available chain; None when the driver has offered no more, in which case the driver
/// has been asked to notify the queue when it adds the next one (EVENT_IDX: `avail_event` is the
/// index of the first entry not yet offered, past the chains taken so far).
fn next_chain<'m>(
    mem: &'m GuestMemoryMmap,
    queue: &mut Queue,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, RxDelivery> {
    loop {
        match queue.iter(mem) {
            Ok(mut iter) => {
                if let Some(chain) = iter.next() {
                    return Ok(Some(chain));
                }
            }
            Err(error) => {
                return Err(RxDelivery::Broken {
                    what: "bad available ring",
                    error,
                })
            }
        }
        // `enable_notification` says whether entries past the device's position exist, so it must
        // run here, before a merged frame's chains are put back: afterwards it would find those and
        // report buffers that cannot hold the frame (the worker spun on that), and EVENT_IDX's
        // `avail_event` would lag behind entries the driver already offered, so the driver would
        // never notify again (an RX stall).
        match queue.enable_notification(mem) {
            Ok(true) => {
                // A buffer came in meanwhile: take it, notifications off again.
                if let Err(error) = queue.disable_notification(mem) {
                    return Err(RxDelivery::Broken {
                        what: "cannot disable notifications",
                        error,
                    });
                }
            }
            Ok(false) => return Ok(None),
            Err(error) => {
                return Err(RxDelivery::Broken {
                    what: "cannot enable notifications",
                    error,
                })
            }
        }
    }
}

/// One chain, which must hold the whole frame.
fn deliver_single(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut [u8],
    scratch: &mut RxScratch,
) -> RxDelivery {
    let chain = match next_chain(mem, queue) {
        Ok(Some(chain)) => chain,
        Ok(None) => return RxDelivery::NoBuffers,
        Err(broken) => return broken,
    };
    if scratch.chains.is_empty() {
        scratch.chains.push(Chain::default());
    }
    let c = &mut scratch.chains[0];
    let fits = collect_chain(chain, mem, MAX_DESCRIPTORS, c).is_ok()
        && c.readable.is_empty()
        && c.writable_len() >= frame.len() as u64;
    let mut used = 0;
    if fits {
        frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        if scatter(mem, c, frame) == Some(frame.len()) {
            used = frame.len() as u32;
        }
    }
    if let Err(error) = add_used(queue, mem, c.head, used) {
        return RxDelivery::Broken {
            what: "cannot add to the used ring",
            error,
        };
    }
    if used == 0 {
        RxDelivery::Dropped { chains: 1 }
    } else {
        RxDelivery::Done { chains: 1 }
    }
}

/// As many chains as the frame needs (MRG_RXBUF).
fn deliver_merged(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut [u8],
    scratch: &mut RxScratch,
) -> RxDelivery {
    let len = frame.len();
    let size = queue.size();
    let mut taken = 0usize;
    let mut room = 0u64;
    let mut malformed = false;
    while room < len as u64 {
        if taken == usize::from(size) {
            // A full ring cannot hold it: drop it. (Checked before taking another chain: a driver
            // adding buffers while the device takes them would otherwise let a frame take more
            // chains than the used ring has room for.)
            malformed = true;
            break;
        }
        let chain = match next_chain(mem, queue) {
            Ok(Some(chain)) => chain,
            Ok(None) => {
                // Put the chains back; the driver will add more and notify the queue.
                for _ in 0..taken {
                    queue.go_to_previous_position();
                }
                return RxDelivery::NoBuffers;
            }
            Err(broken) => return broken,
        };
        if scratch.chains.len() <= taken {
            scratch.chains.push(Chain::default());
        }
        let c = &mut scratch.chains[taken];
        let ok = collect_chain(chain, mem, MAX_DESCRIPTORS, c).is_ok()
            && c.readable.is_empty()
            && (taken > 0 || c.writable_len() >= NET_HDR_LEN as u64);
        taken += 1;
        if !ok {
            malformed = true;
            break;
        }
        room += c.writable_len();
    }
    let chains = &scratch.chains[..taken];
    let used = &mut scratch.used;
    used.clear();
    if malformed {
        used.extend(chains.iter().map(|c| (c.head, 0u32)));
    } else {
        // At most the queue size (256) chains: num_buffers cannot overflow.
        let n = taken as u16;
        frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&n.to_le_bytes());
        let mut done = 0usize;
        for c in chains {
            let wrote = scatter(mem, c, &frame[done..]).unwrap_or(0);
            done += wrote;
            used.push((c.head, wrote as u32));
        }
        if done != len {
            malformed = true;
            used.iter_mut().for_each(|u| u.1 = 0);
        }
    }
    if let Err(error) = publish_used(mem, queue, used) {
        return RxDelivery::Broken {
            what: "cannot add to the used ring",
            error,
        };
    }
    if malformed {
        RxDelivery::Dropped { chains: taken }
    } else {
        RxDelivery::Done { chains: taken }
    }
}

/// Adds `used` (head, length) to the used ring with one index update: all elements but the last
/// are written straight into the ring (invisible to the driver until the index moves), then the
/// last goes through `add_used`, whose release store of the index publishes them all.
fn publish_used(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let Some((&(last_head, last_len), rest)) = used.split_last() else {
        return Ok(());
    };
    let size = queue.size();
    let base = queue.next_used();
    let ring = queue.used_ring();
    for (k, (head, len)) in rest.iter().enumerate() {
        let slot = u64::from(base.wrapping_add(k as u16) % size);
        let addr = ring
            .checked_add(4 + 8 * slot)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(*head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(addr))
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    queue.set_next_used(base.wrapping_add(rest.len() as u16));
    add_used(queue, mem, last_head, last_len)
}

impl PairWorker {
    /// Moves frames from the TAP into RX buffers until one of them runs out or the limiter says
    /// stop.
    pub fn process_rx(&mut self) {
        let states = self.states.clone();
        let Some(_gate) = states.rx_gate(self.pair) else {
            return;
        };
        if !states.is_active(self.pair) {
            // Frames read before the pair was switched off are dropped with it.
            self.rx_pending = None;
            self.poll_tap(false);
            return;
        }
        if self.rx.broken || self.tap_dead || !self.interrupt.dma_allowed() {
            // The transport re-signals the queues when bus mastering comes on.
            self.poll_tap(false);
            return;
        }
        let mut added = false;
        let mut merged = false;
        let mut count = 0usize;
        if let Err(e) = self.rx.q.queue.disable_notification(&self.mem) {
            return self.broken(Which::Rx, "cannot disable notifications", e);
        }
        loop {
            if self.stop.load(Ordering::Acquire) || count >= BATCH {
                // Come back through epoll (the TAP stays readable or the notify is re-signalled).
                let _ = self.rx.q.notify.write(1);
                break;
            }
            let Some(mut pending) = self.next_frame() else {
                break;
            };
            if !pending.charged {
                if let Some(limiter) = self.rx_limiter.as_mut() {
                    let bytes = (pending.len - NET_HDR_LEN) as u64;
                    if limiter.is_blocked() || limiter.consume(1, bytes).is_err() {
                        // Leave the TAP alone until the limiter's timer fires.
                        self.poll_tap(false);
                        break;
                    }
                }
                pending.charged = true;
                self.rx_pending = Some(pending);
            }
            let delivery = deliver_rx_frame(
                &self.mem,
                &mut self.rx.q.queue,
                &mut self.frame[..pending.len],
                self.acked,
                &mut self.rx_scratch,
            );
            match delivery {
                RxDelivery::Done { chains } => {
                    self.rx_pending = None;
                    added = true;
                    merged |= chains > 1;
                    count += 1;
                }
                RxDelivery::Dropped { .. } => {
                    self.rx_pending = None;
                    added = true;
                    count += 1;
                }
                // next_frame never keeps one; nothing was used.
                RxDelivery::Runt => self.rx_pending = None,
                RxDelivery::NoBuffers => {
                    // Keep the frame; stop watching the TAP until the driver adds buffers (its
                    // notification brings the worker back).
                    self.poll_tap(false);
                    break;
                }
                RxDelivery::Broken { what, error } => return self.broken(Which::Rx, what, error),
            }
        }
        if added {
            self.signal_if_needed(Which::Rx, merged);
        }
    }

    /// The frame waiting for delivery, or the next one from the TAP (None: nothing to read, or the
    /// TAP failed).
    fn next_frame(&mut self) -> Option<RxPending> {
        if let Some(pending) = self.rx_pending {
            return Some(pending);
        }
        loop {
            match (&*self.tap).read(&mut self.frame) {
                Ok(0) => {
                    self.tap_failed("end of file");
                    return None;
                }
                Ok(len) if len < NET_HDR_LEN => continue,
                Ok(len) => {
                    let pending = RxPending {
                        len,
                        charged: false,
                    };
                    self.rx_pending = Some(pending);
                    return Some(pending);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.poll_tap(true);
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.tap_failed(&e.to_string());
                    return None;
                }
            }
        }
    }

    /// The TAP failed for good (read error, end of file): stop reading it. TX goes on (and fails
    /// quietly) so the guest's driver is never stuck.
    fn tap_failed(&mut self, why: &str) {
        log::warn!("virtio-net: cannot read the TAP ({why}); receiving stops until a device reset");
        self.tap_dead = true;
        self.poll_tap(false);
    }
}

/// Copies the start of `data` into the chain's writable buffers, as much as they hold; returns how
/// many bytes went in (None if guest memory refused a write).
pub(super) fn scatter(mem: &GuestMemoryMmap, chain: &Chain, data: &[u8]) -> Option<usize> {
    let mut done = 0usize;
    for seg in &chain.writable {
        if done == data.len() {
            break;
        }
        let n = (seg.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], seg.addr).ok()?;
        done += n;
    }
    Some(done)
}
