//! Unit tests of the per-chain entry points the workers call (and the fuzz target drives):
//! [`deliver_rx_frame`], [`gather_tx_frame`], [`ctrl::handle_ctrl_chain`].

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::ctrl::{handle_ctrl_chain, PairStates, VIRTIO_NET_ERR, VIRTIO_NET_OK};
use super::*;
use crate::virtio::queue::testing::{TestRing, F_WRITE};
use crate::virtio::Chain;

const RING: u64 = 0;
const BUF: u64 = 0x10000;
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap()
}

/// A header with every field set (flags, gso_type, ..., num_buffers 0xBBBB), then `len` bytes.
fn rx_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xAAu8; NET_HDR_LEN];
    f[10..12].copy_from_slice(&0xBBBBu16.to_le_bytes());
    f.extend((0..len).map(|i| i as u8));
    f
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

fn deliver(mem: &GuestMemoryMmap, q: &mut Queue, frame: &[u8], acked: u64) -> RxDelivery {
    deliver_rx_frame(
        mem,
        q,
        &mut frame.to_vec(),
        acked,
        &mut RxScratch::default(),
    )
}

#[test]
fn rx_without_merged_buffers_takes_one_chain_holding_the_whole_frame() {
    let mem = memory();
    let mut ring = TestRing::new(&mem, RING, 16);
    let mut q = ring.queue(false);
    let f = rx_frame(100);
    // No buffer yet: the frame waits.
    assert!(matches!(
        deliver(&mem, &mut q, &f, 0),
        RxDelivery::NoBuffers
    ));
    // Too small a chain: returned empty, the frame dropped. Then one split in two buffers.
    ring.chain(0, &[(BUF, 111, F_WRITE)]);
    ring.publish(0);
    ring.chain(
        1,
        &[(BUF + 0x1000, 12, F_WRITE), (BUF + 0x2000, 100, F_WRITE)],
    );
    ring.publish(1);
    assert!(matches!(
        deliver(&mem, &mut q, &f, 0),
        RxDelivery::Dropped { chains: 1 }
    ));
    assert_eq!(ring.used_entry(0), (0, 0));
    assert!(matches!(
        deliver(&mem, &mut q, &f, 0),
        RxDelivery::Done { chains: 1 }
    ));
    assert_eq!(ring.used_entry(1), (1, 112));
    assert_eq!(ring.used_idx(), 2);
    // Without GUEST_CSUM the header's offload fields are cleared; num_buffers is 1.
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10] = 1;
    assert_eq!(read(&mem, BUF + 0x1000, 12), hdr);
    assert_eq!(read(&mem, BUF + 0x2000, 100), f[12..]);
    // With GUEST_CSUM they pass through.
    ring.chain(3, &[(BUF + 0x3000, 200, F_WRITE)]);
    ring.publish(3);
    let csum = 1 << VIRTIO_NET_F_GUEST_CSUM;
    assert!(matches!(
        deliver(&mem, &mut q, &f, csum),
        RxDelivery::Done { chains: 1 }
    ));
    assert_eq!(read(&mem, BUF + 0x3000, 12)[..10], [0xAA; 10]);
    // A device-readable buffer in an RX chain: dropped.
    ring.chain(4, &[(BUF + 0x4000, 200, 0)]);
    ring.publish(4);
    assert!(matches!(
        deliver(&mem, &mut q, &f, 0),
        RxDelivery::Dropped { chains: 1 }
    ));
    assert_eq!(ring.used_entry(3), (4, 0));
}

#[test]
fn rx_runts_are_dropped_without_touching_the_ring() {
    let mem = memory();
    let mut ring = TestRing::new(&mem, RING, 16);
    let mut q = ring.queue(false);
    ring.chain(0, &[(BUF, 2048, F_WRITE)]);
    ring.publish(0);
    for len in 0..NET_HDR_LEN {
        for acked in [0, MRG] {
            let mut runt = vec![0x55u8; len];
            let d = deliver_rx_frame(&mem, &mut q, &mut runt, acked, &mut RxScratch::default());
            assert!(matches!(d, RxDelivery::Runt), "{len} bytes: {d:?}");
            assert_eq!(runt, vec![0x55u8; len], "left alone");
        }
    }
    assert_eq!(ring.used_idx(), 0);
    // The buffer is still there for a real frame; exactly a header is a frame.
    let header_only = rx_frame(0);
    assert!(matches!(
        deliver(&mem, &mut q, &header_only, 0),
        RxDelivery::Done { chains: 1 }
    ));
    assert_eq!(ring.used_entry(0), (0, 12));
}

#[test]
fn rx_with_merged_buffers_spreads_a_frame_and_publishes_it_at_once() {
    let mem = memory();
    let mut ring = TestRing::new(&mem, RING, 8);
    let mut q = ring.queue(false);
    let mut scratch = RxScratch::default();
    // 1,512 bytes into 512-byte buffers: three of them, num_buffers 3.
    let f = rx_frame(1500);
    for i in 0..2u16 {
        ring.chain(i, &[(BUF + 0x1000 * u64::from(i), 512, F_WRITE)]);
        ring.publish(i);
    }
    // Two buffers are not enough: nothing is used and both are put back.
    let d = deliver_rx_frame(&mem, &mut q, &mut f.clone(), MRG, &mut scratch);
    assert!(matches!(d, RxDelivery::NoBuffers), "{d:?}");
    assert_eq!(ring.used_idx(), 0);
    ring.chain(2, &[(BUF + 0x2000, 512, F_WRITE)]);
    ring.publish(2);
    let d = deliver_rx_frame(&mem, &mut q, &mut f.clone(), MRG, &mut scratch);
    assert!(matches!(d, RxDelivery::Done { chains: 3 }), "{d:?}");
    assert_eq!(ring.used_idx(), 3);
    let used: Vec<_> = (0..3).map(|n| ring.used_entry(n)).collect();
    assert_eq!(used, vec![(0, 512), (1, 512), (2, 488)]);
    let mut got = Vec::new();
    for (i, len) in [(0u64, 512usize), (1, 512), (2, 488)] {
        got.extend(read(&mem, BUF + 0x1000 * i, len));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(got[..10], [0; 10], "no GUEST_CSUM: cleared");
    assert_eq!(got[12..], f[12..]);

    // A first chain too small for the header: the frame is dropped with that chain.
    ring.chain(3, &[(BUF + 0x3000, 11, F_WRITE)]);
    ring.publish(3);
    ring.chain(4, &[(BUF + 0x4000, 4096, F_WRITE)]);
    ring.publish(4);
    let d = deliver_rx_frame(&mem, &mut q, &mut rx_frame(100), MRG, &mut scratch);
    assert!(matches!(d, RxDelivery::Dropped { chains: 1 }), "{d:?}");
    assert_eq!(ring.used_entry(3), (3, 0));
    // A malformed chain after the first: every chain taken is returned empty.
    ring.chain(5, &[(BUF + 0x5000, 0x1000, 0)]);
    ring.publish(5);
    let d = deliver_rx_frame(&mem, &mut q, &mut rx_frame(6000), MRG, &mut scratch);
    assert!(matches!(d, RxDelivery::Dropped { chains: 2 }), "{d:?}");
    assert_eq!(ring.used_idx(), 6);
    assert_eq!((ring.used_entry(4), ring.used_entry(5)), ((4, 0), (5, 0)));
}

/// Whether the driver would notify the queue when it adds its next buffer: EVENT_IDX's
/// `avail_event` is the available index (nothing offered is left unseen), or without EVENT_IDX
/// the used ring's NO_NOTIFY flag is clear.
fn notification_armed(mem: &GuestMemoryMmap, ring: &TestRing, event_idx: bool) -> bool {
    let avail_idx: u16 = mem.read_obj(GuestAddress(ring.avail + 2)).unwrap();
    if event_idx {
        let size = 8; // the rings of the test below
        let avail_event: u16 = mem
            .read_obj(GuestAddress(ring.used + 4 + 8 * size))
            .unwrap();
        avail_event == avail_idx
    } else {
        mem.read_obj::<u16>(GuestAddress(ring.used)).unwrap() & 1 == 0
    }
}

/// Fuzzing found this (virtio_net_chain): a merged frame needing more buffers than the ring had
/// put its chains back and then asked `enable_notification` whether buffers had come in, which
/// counted the ones put back: the worker looped on the frame forever. With EVENT_IDX,
/// `avail_event` was left at the chains put back, so the driver would never have notified.
#[test]
fn rx_frame_waiting_for_merged_buffers_arms_the_notification() {
    for event_idx in [false, true] {
        let mem = memory();
        let mut ring = TestRing::new(&mem, RING, 8);
        let mut q = ring.queue(event_idx);
        let mut scratch = RxScratch::default();
        q.disable_notification(&mem).unwrap();
        for i in 0..2u16 {
            ring.chain(i, &[(BUF + 0x1000 * u64::from(i), 512, F_WRITE)]);
            ring.publish(i);
        }
        let f = rx_frame(1500);
        for _ in 0..2 {
            let d = deliver_rx_frame(&mem, &mut q, &mut f.clone(), MRG, &mut scratch);
            assert!(matches!(d, RxDelivery::NoBuffers), "{d:?}");
            assert_eq!((q.next_avail(), ring.used_idx()), (0, 0), "put back");
            assert!(
                notification_armed(&mem, &ring, event_idx),
                "EVENT_IDX {event_idx}"
            );
        }
        // The driver adds the third buffer (and notifies); the frame goes in.
        q.disable_notification(&mem).unwrap();
        ring.chain(2, &[(BUF + 0x2000, 512, F_WRITE)]);
        ring.publish(2);
        let d = deliver_rx_frame(&mem, &mut q, &mut f.clone(), MRG, &mut scratch);
        assert!(matches!(d, RxDelivery::Done { chains: 3 }), "{d:?}");
        assert_eq!(ring.used_idx(), 3);
        if !event_idx {
            assert!(!notification_armed(&mem, &ring, false), "left disabled");
        }
        // Without MRG_RXBUF an empty ring arms it too.
        let d = deliver_rx_frame(&mem, &mut q, &mut f.clone(), 0, &mut scratch);
        assert!(matches!(d, RxDelivery::NoBuffers), "{d:?}");
        assert!(notification_armed(&mem, &ring, event_idx));
    }
}

#[test]
fn rx_merged_frame_larger_than_a_full_ring_is_dropped() {
    let mem = memory();
    let mut ring = TestRing::new(&mem, RING, 4);
    let mut q = ring.queue(false);
    for i in 0..4u16 {
        ring.chain(i, &[(BUF + 0x100 * u64::from(i), 64, F_WRITE)]);
        ring.publish(i);
    }
    let d = deliver(&mem, &mut q, &rx_frame(1000), MRG);
    assert!(matches!(d, RxDelivery::Dropped { chains: 4 }), "{d:?}");
    assert_eq!(ring.used_idx(), 4);
    assert!((0..4).all(|n| ring.used_entry(n).1 == 0));
}

#[test]
fn rx_reports_a_broken_available_ring() {
    let mem = memory();
    let ring = TestRing::new(&mem, RING, 4);
    let mut q = ring.queue(false);
    // An available index more than a ring ahead of the device.
    mem.write_obj(9u16, GuestAddress(ring.avail + 2)).unwrap();
    for acked in [0, MRG] {
        let d = deliver(&mem, &mut q, &rx_frame(10), acked);
        assert!(matches!(d, RxDelivery::Broken { .. }), "{d:?}");
    }
}

fn gather_next(mem: &GuestMemoryMmap, q: &mut Queue, acked: u64, frame: &mut [u8]) -> TxFrame {
    let chain = q.iter(mem).unwrap().next().expect("a chain");
    gather_tx_frame(mem, chain, acked, &mut Chain::default(), frame)
}

#[test]
fn tx_chains_are_gathered_and_their_headers_checked() {
    let mem = memory();
    let mut ring = TestRing::new(&mem, RING, 16);
    let mut q = ring.queue(false);
    let mut frame = vec![0u8; NET_HDR_LEN + MAX_FRAME];
    // A TSO4 header (flags NEEDS_CSUM, gso_type TCPV4) and 60 bytes, in two buffers.
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[0] = 1;
    hdr[1] = 1;
    hdr[10] = 7; // num_buffers: ignored on TX
    mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    mem.write_slice(&[0x66; 60], GuestAddress(BUF + 0x100))
        .unwrap();
    let two = [(BUF, 12, 0), (BUF + 0x100, 60, 0)];
    for (i, head) in [0u16, 2, 4].into_iter().enumerate() {
        ring.chain(head, &two);
        ring.publish(head);
        let acked = match i {
            // No offload negotiated: the header is cleared.
            0 => 0,
            // CSUM and HOST_TSO4: the header passes (num_buffers cleared).
            1 => 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4,
            // CSUM without HOST_TSO4: a TSO frame is refused.
            _ => 1 << VIRTIO_NET_F_CSUM,
        };
        let tx = gather_next(&mem, &mut q, acked, &mut frame);
        assert_eq!(tx.head, head);
        match i {
            0 => assert_eq!((tx.len, &frame[..12]), (Some(72), &[0u8; 12][..])),
            1 => {
                assert_eq!(tx.len, Some(72));
                assert_eq!(frame[..12], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                assert_eq!(frame[12..72], [0x66; 60]);
            }
            _ => assert_eq!(tx.len, None),
        }
    }
    // Not frames: a writable buffer, shorter than a header, outside RAM, longer than the buffer.
    let bad: [&[(u64, u32, u16)]; 4] = [
        &[(BUF, 12, 0), (BUF + 0x100, 60, F_WRITE)],
        &[(BUF, 11, 0)],
        &[(BUF, 12, 0), (0x40000 - 10, 60, 0)],
        &[(BUF, 12, 0), (BUF + 0x100, 61, 0)],
    ];
    for (i, descs) in bad.iter().enumerate() {
        let head = 6 + 2 * i as u16;
        ring.chain(head, descs);
        ring.publish(head);
        let tx = gather_next(&mem, &mut q, 0, &mut frame[..72]);
        assert_eq!(tx, TxFrame { head, len: None }, "chain {i}");
    }
}

struct Attach(Mutex<Vec<(usize, bool)>>);

impl TapControl for Attach {
    fn set_offload(&self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn set_queue_attached(&self, pair: usize, attached: bool) -> std::io::Result<()> {
        self.0.lock().unwrap().push((pair, attached));
        Ok(())
    }
}

#[test]
fn control_chains_run_their_command_and_get_a_status() {
    let mem = memory();
    let mut ring = TestRing::new(&mem, RING, 16);
    let mut q = ring.queue(false);
    let wakes: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    let attach = Arc::new(Attach(Mutex::new(Vec::new())));
    let states = PairStates::new(
        &wakes,
        2,
        Some(attach.clone()),
        Arc::new(Mutex::new(vec![true; 2])),
    )
    .unwrap();
    states.set_active_pairs(1).unwrap();
    let mut scratch = Chain::default();
    let mut run = |q: &mut Queue, mq: bool| {
        let chain = q.iter(&mem).unwrap().next().expect("a chain");
        handle_ctrl_chain(&mem, chain, &states, mq, &mut scratch)
    };
    // VQ_PAIRS_SET 2, split over two readable buffers, then the status byte.
    mem.write_slice(&[4, 0], GuestAddress(BUF)).unwrap();
    mem.write_slice(&2u16.to_le_bytes(), GuestAddress(BUF + 0x10))
        .unwrap();
    let set2 = [(BUF, 2, 0), (BUF + 0x10, 2, 0), (BUF + 0x20, 1, F_WRITE)];
    ring.chain(0, &set2);
    ring.publish(0);
    mem.write_obj(0xFFu8, GuestAddress(BUF + 0x20)).unwrap();
    // Without MQ: refused.
    let answer = run(&mut q, false);
    assert_eq!((answer.head, answer.len), (0, 1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(BUF + 0x20)).unwrap(),
        VIRTIO_NET_ERR
    );
    ring.chain(3, &set2);
    ring.publish(3);
    let answer = run(&mut q, true);
    assert_eq!((answer.head, answer.len), (3, 1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(BUF + 0x20)).unwrap(),
        VIRTIO_NET_OK
    );
    assert_eq!(attach.0.lock().unwrap().last(), Some(&(1, true)));
    // No writable byte: nothing runs, no answer (pair 1 stays on).
    mem.write_obj(1u16, GuestAddress(BUF + 0x10)).unwrap();
    ring.chain(6, &[(BUF, 2, 0), (BUF + 0x10, 2, 0)]);
    ring.publish(6);
    assert_eq!(run(&mut q, true).len, 0);
    // A malformed chain (readable after writable): no answer either.
    ring.chain(8, &[(BUF + 0x20, 1, F_WRITE), (BUF, 4, 0)]);
    ring.publish(8);
    assert_eq!(run(&mut q, true).len, 0);
    assert_eq!(attach.0.lock().unwrap().last(), Some(&(1, true)));
    // An unknown command: ERR.
    mem.write_slice(&[9, 9], GuestAddress(BUF)).unwrap();
    ring.chain(10, &set2);
    ring.publish(10);
    assert_eq!(run(&mut q, true).len, 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(BUF + 0x20)).unwrap(),
        VIRTIO_NET_ERR
    );
}
