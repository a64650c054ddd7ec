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

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::header::{
    NET_HDR_LEN, NUM_BUFFERS_OFFSET, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF,
};
use super::worker::{PairWorker, RxPending, Which, MAX_DESCRIPTORS};
use super::BATCH;
use crate::virtio::queue::add_used;
use crate::virtio::{collect_chain, has_feature, Chain};

/// How delivering one frame went.
enum Delivery {
    /// In the used ring, over this many chains.
    Done { chains: usize },
    /// Not enough buffers: the frame waits (nothing was used).
    NoBuffers,
    /// The frame was dropped; its chains were returned with length 0.
    Dropped,
    /// The ring is unusable (the queue is marked broken).
    Broken,
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
            match self.deliver(pending.len) {
                Delivery::Done { chains } => {
                    self.rx_pending = None;
                    added = true;
                    merged |= chains > 1;
                    count += 1;
                }
                Delivery::Dropped => {
                    self.rx_pending = None;
                    added = true;
                    count += 1;
                }
                Delivery::NoBuffers => {
                    // Keep the frame; stop watching the TAP until the driver adds buffers.
                    match self.rx.q.queue.enable_notification(&self.mem) {
                        Ok(true) => {
                            if let Err(e) = self.rx.q.queue.disable_notification(&self.mem) {
                                return self.broken(Which::Rx, "cannot disable notifications", e);
                            }
                            continue;
                        }
                        Ok(false) => {
                            self.poll_tap(false);
                            break;
                        }
                        Err(e) => return self.broken(Which::Rx, "cannot enable notifications", e),
                    }
                }
                Delivery::Broken => return,
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

    /// Puts the frame in `self.frame[..len]` into RX buffers.
    fn deliver(&mut self, len: usize) -> Delivery {
        if !has_feature(self.acked, VIRTIO_NET_F_GUEST_CSUM) {
            // Flags and GSO fields must be zero for such a driver.
            self.frame[..NUM_BUFFERS_OFFSET].fill(0);
        }
        if has_feature(self.acked, VIRTIO_NET_F_MRG_RXBUF) {
            self.deliver_merged(len)
        } else {
            self.deliver_single(len)
        }
    }

    fn deliver_single(&mut self, len: usize) -> Delivery {
        let chain = match self.rx.q.queue.iter(&self.mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => {
                self.broken(Which::Rx, "bad available ring", e);
                return Delivery::Broken;
            }
        };
        let Some(chain) = chain else {
            return Delivery::NoBuffers;
        };
        let fits = collect_chain(chain, &self.mem, MAX_DESCRIPTORS, &mut self.chain).is_ok()
            && self.chain.readable.is_empty()
            && self.chain.writable_len() >= len as u64;
        let mut used = 0;
        if fits {
            self.frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            if scatter(&self.mem, &self.chain, &self.frame[..len]) == Some(len) {
                used = len as u32;
            }
        }
        let head = self.chain.head;
        if let Err(e) = add_used(&mut self.rx.q.queue, &self.mem, head, used) {
            self.broken(Which::Rx, "cannot add to the used ring", e);
            return Delivery::Broken;
        }
        if used == 0 {
            Delivery::Dropped
        } else {
            Delivery::Done { chains: 1 }
        }
    }

    fn deliver_merged(&mut self, len: usize) -> Delivery {
        let size = self.rx.q.queue.size();
        let mut taken = 0usize;
        let mut room = 0u64;
        let mut malformed = false;
        while room < len as u64 {
            let chain = match self.rx.q.queue.iter(&self.mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    self.broken(Which::Rx, "bad available ring", e);
                    return Delivery::Broken;
                }
            };
            let Some(chain) = chain else {
                if taken < usize::from(size) {
                    // Put the chains back; the driver will add more.
                    for _ in 0..taken {
                        self.rx.q.queue.go_to_previous_position();
                    }
                    return Delivery::NoBuffers;
                }
                // A full ring cannot hold it: drop it.
                malformed = true;
                break;
            };
            if self.rx_chains.len() <= taken {
                self.rx_chains.push(Chain::default());
            }
            let c = &mut self.rx_chains[taken];
            let ok = collect_chain(chain, &self.mem, MAX_DESCRIPTORS, c).is_ok()
                && c.readable.is_empty()
                && (taken > 0 || c.writable_len() >= NET_HDR_LEN as u64);
            taken += 1;
            if !ok {
                malformed = true;
                break;
            }
            room += c.writable_len();
        }
        let mut used = Vec::with_capacity(taken);
        if malformed {
            used.extend(self.rx_chains[..taken].iter().map(|c| (c.head, 0u32)));
        } else {
            let n = taken as u16;
            self.frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&n.to_le_bytes());
            let mut done = 0usize;
            for c in &self.rx_chains[..taken] {
                let wrote = scatter(&self.mem, c, &self.frame[done..len]).unwrap_or(0);
                done += wrote;
                used.push((c.head, wrote as u32));
            }
            if done != len {
                malformed = true;
                used.iter_mut().for_each(|u| u.1 = 0);
            }
        }
        if let Err(e) = self.publish_used(&used) {
            self.broken(Which::Rx, "cannot add to the used ring", e);
            return Delivery::Broken;
        }
        if malformed {
            Delivery::Dropped
        } else {
            Delivery::Done { chains: taken }
        }
    }

    /// Adds `used` (head, length) to the RX used ring with one index update: all elements but the
    /// last are written straight into the ring (invisible to the driver until the index moves),
    /// then the last goes through `add_used`, whose release store of the index publishes them all.
    fn publish_used(&mut self, used: &[(u16, u32)]) -> Result<(), virtio_queue::Error> {
        let Some((&(last_head, last_len), rest)) = used.split_last() else {
            return Ok(());
        };
        let queue = &mut self.rx.q.queue;
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
            self.mem
                .write_slice(&elem, GuestAddress(addr))
                .map_err(virtio_queue::Error::GuestMemory)?;
        }
        queue.set_next_used(base.wrapping_add(rest.len() as u16));
        add_used(queue, &self.mem, last_head, last_len)
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
