//! virtio-net descriptor chains on all three kinds of queue. The input gives the RX, TX and
//! control queue sizes, EVENT_IDX, the features the driver acknowledged (offloads, MRG_RXBUF, MQ),
//! how many queue pairs have enabled queues, up to eight frames waiting on the backend, and a
//! picture of guest RAM holding the three split virtqueues (packed from address 0: RX, TX, then
//! control, [`SplitRing`]), indirect tables, buffers and commands.
//!
//! The harness runs the queues the way a queue pair's worker does, on this thread: the control
//! queue (`ctrl::handle_ctrl_chain` per chain, on a real `PairStates`), TX (`gather_tx_frame` per
//! chain) and RX (`deliver_rx_frame` per frame: one chain, or several with MRG_RXBUF), with the
//! workers' notification suppression and batch bounds, an in-memory backend in place of the TAP.
//! It checks every frame sent, every used element written, and which pairs are on.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use devices::virtio::Chain;
use devices::virtio_net::ctrl::{handle_ctrl_chain, PairStates};
use devices::virtio_net::{
    deliver_rx_frame, gather_tx_frame, RxDelivery, RxScratch, TapControl, BATCH, CTRL_QUEUE_SIZE,
    MAX_FRAME, NET_HDR_LEN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
};
use flint_fuzz::{guest_memory, Input, SplitRing};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM: 96 KiB, a 16 KiB hole, 16 KiB.
const LOW: usize = 0x18000;
const HIGH_BASE: u64 = 0x1c000;
const HIGH: usize = 0x4000;
/// Queue pairs the device has (`max_virtqueue_pairs`).
const PAIRS_MAX: usize = 4;
/// The feature bits one input byte chooses from, bit i of the byte for entry i.
const FEATURES: [u32; 8] = [
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MQ,
];

fn has(acked: u64, bit: u32) -> bool {
    acked & (1 << bit) != 0
}

/// Buffers kept across inputs (64 KiB each: too much to allocate per input).
struct Buffers {
    tx_frame: Vec<u8>,
    rx_frame: Vec<u8>,
    rx_scratch: RxScratch,
    chain: Chain,
}

fn buffers() -> MutexGuard<'static, Buffers> {
    static BUFFERS: OnceLock<Mutex<Buffers>> = OnceLock::new();
    BUFFERS
        .get_or_init(|| {
            Mutex::new(Buffers {
                tx_frame: vec![0; NET_HDR_LEN + MAX_FRAME],
                rx_frame: vec![0; NET_HDR_LEN + MAX_FRAME],
                rx_scratch: RxScratch::default(),
                chain: Chain::default(),
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The TAP's queue attachment as the device asked for it; asserts the device asks only for pairs
/// that exist and only for changes (as `TapControl::set_queue_attached` promises).
struct Attachments(Mutex<[bool; PAIRS_MAX]>);

impl TapControl for Attachments {
    fn set_offload(&self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn set_queue_attached(&self, pair: usize, attached: bool) -> std::io::Result<()> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        assert!(pair < PAIRS_MAX, "attach of pair {pair}");
        assert_ne!(state[pair], attached, "pair {pair}: no change");
        state[pair] = attached;
        Ok(())
    }
}

/// The device's pair states with 1 to PAIRS_MAX usable pairs (built once: eventfds per input
/// would cost system calls), and the TAP control they talk to.
fn pair_states(usable: usize) -> &'static (PairStates, Arc<Attachments>) {
    static STATES: OnceLock<Vec<(PairStates, Arc<Attachments>)>> = OnceLock::new();
    let all = STATES.get_or_init(|| {
        (1..=PAIRS_MAX)
            .map(|usable| {
                let wakes: Vec<EventFd> = (0..usable)
                    .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
                    .collect();
                let attach = Arc::new(Attachments(Mutex::new([true; PAIRS_MAX])));
                let states = PairStates::new(
                    &wakes,
                    PAIRS_MAX,
                    Some(attach.clone()),
                    Arc::new(Mutex::new(vec![true; PAIRS_MAX])),
                )
                .expect("pair states");
                (states, attach)
            })
            .collect()
    });
    &all[usable - 1]
}

/// Asserts the pairs that are on are 0..n for some 1 <= n <= `limit`, with exactly their TAP
/// queues attached; returns n.
fn check_pairs(states: &PairStates, attach: &Attachments, limit: usize) -> usize {
    let on = (0..PAIRS_MAX).take_while(|&p| states.is_active(p)).count();
    assert!((1..=limit).contains(&on), "{on} pairs on, at most {limit}");
    assert!((on..PAIRS_MAX).all(|p| !states.is_active(p)), "a gap");
    let attached = *attach.0.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        (0..PAIRS_MAX).all(|p| attached[p] == (p < on)),
        "attached {attached:?} with {on} pairs on"
    );
    on
}

fn queue(mem: &GuestMemoryMmap, ring: SplitRing, max: u16, size: u16, event_idx: bool) -> Queue {
    let mut q = Queue::new(max).expect("queue");
    q.try_set_size(size).expect("size");
    q.try_set_desc_table_address(GuestAddress(ring.desc))
        .expect("desc");
    q.try_set_avail_ring_address(GuestAddress(ring.avail))
        .expect("avail");
    q.try_set_used_ring_address(GuestAddress(ring.used))
        .expect("used");
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// Used element `n` of the ring at `ring` (size `size`): (id, len).
fn used_elem(mem: &GuestMemoryMmap, ring: SplitRing, size: u16, n: u16) -> (u32, u32) {
    let at = ring.used + 4 + 8 * u64::from(n % size);
    let id = mem.read_obj(GuestAddress(at)).expect("used id");
    let len = mem.read_obj(GuestAddress(at + 4)).expect("used len");
    (id, len)
}

/// The control queue as `PairWorker::process_ctrl` runs it.
fn run_ctrl(mem: &GuestMemoryMmap, q: &mut Queue, usable: usize, mq: bool, scratch: &mut Chain) {
    let (states, attach) = pair_states(usable);
    // Every input starts as the device does at DRIVER_OK: pair 0 only.
    states.set_active_pairs(1).expect("reset the pairs");
    check_pairs(states, attach, 1);
    let mut added = false;
    loop {
        let chain = match q.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(_) => return,
        };
        let Some(chain) = chain else {
            break;
        };
        let answer = handle_ctrl_chain(mem, chain, states, mq, scratch);
        assert!(answer.len <= 1, "{answer:?}");
        // Without MQ the driver can switch nothing on.
        check_pairs(states, attach, if mq { usable } else { 1 });
        if q.add_used(mem, answer.head, answer.len).is_err() {
            return;
        }
        added = true;
    }
    if added {
        let _ = q.needs_notification(mem);
    }
}

/// TX as `PairWorker::process_tx` runs it (no limiter); the frames "sent" are checked and dropped.
fn run_tx(mem: &GuestMemoryMmap, q: &mut Queue, acked: u64, frame: &mut [u8], scratch: &mut Chain) {
    let mut count = 0usize;
    loop {
        if q.disable_notification(mem).is_err() {
            return;
        }
        let mut added = false;
        while count < BATCH {
            let chain = match q.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(_) => return,
            };
            let Some(chain) = chain else {
                break;
            };
            let tx = gather_tx_frame(mem, chain, acked, scratch, frame);
            if let Some(len) = tx.len {
                check_tx_frame(&frame[..len], acked);
            }
            if q.add_used(mem, tx.head, 0).is_err() {
                return;
            }
            added = true;
            count += 1;
        }
        if added && q.needs_notification(mem).is_err() {
            return;
        }
        if count >= BATCH {
            return;
        }
        match q.enable_notification(mem) {
            Ok(true) => continue,
            _ => return,
        }
    }
}

/// A frame the device would write to the TAP: a header and at most MAX_FRAME bytes, with only
/// offloads the driver negotiated in its header, and `num_buffers` cleared.
fn check_tx_frame(frame: &[u8], acked: u64) {
    let len = frame.len();
    assert!(
        (NET_HDR_LEN..=NET_HDR_LEN + MAX_FRAME).contains(&len),
        "TX frame of {len} bytes"
    );
    let hdr = &frame[..NET_HDR_LEN];
    if !has(acked, VIRTIO_NET_F_CSUM) {
        assert_eq!(hdr, [0u8; NET_HDR_LEN], "header without CSUM");
        return;
    }
    assert_eq!(hdr[10..12], [0, 0], "num_buffers on TX");
    match hdr[1] {
        0 => {}
        1 => assert!(has(acked, VIRTIO_NET_F_HOST_TSO4), "TSO4 not negotiated"),
        4 => assert!(has(acked, VIRTIO_NET_F_HOST_TSO6), "TSO6 not negotiated"),
        gso => panic!("gso_type {gso} let through"),
    }
}

/// A frame on the backend: its length with the header (the TAP's read length, runts included)
/// and the byte it is filled with.
#[derive(Clone, Copy)]
struct BackendFrame {
    len: usize,
    fill: u8,
}

/// RX as `PairWorker::process_rx` runs it (no limiter), the backend's frames taken from `frames`.
/// After each delivery the used elements it wrote are read back and checked.
fn run_rx(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    ring: SplitRing,
    acked: u64,
    frames: &mut VecDeque<BackendFrame>,
    buffers: &mut Buffers,
) {
    let size = q.size();
    let merged_buffers = has(acked, VIRTIO_NET_F_MRG_RXBUF);
    if q.disable_notification(mem).is_err() {
        return;
    }
    let mut added = false;
    let mut count = 0usize;
    while count < BATCH {
        let Some(&BackendFrame { len, fill }) = frames.front() else {
            break;
        };
        let frame = &mut buffers.rx_frame[..len];
        frame.fill(fill);
        let (used_before, avail_before) = (q.next_used(), q.next_avail());
        let delivery = deliver_rx_frame(mem, q, frame, acked, &mut buffers.rx_scratch);
        let used_now = q.next_used();
        let published = used_now.wrapping_sub(used_before);
        let elems = (0..published).map(|k| used_elem(mem, ring, size, used_before.wrapping_add(k)));
        match delivery {
            RxDelivery::Done { chains } => {
                assert!(
                    chains >= 1 && (merged_buffers || chains == 1),
                    "{delivery:?}"
                );
                assert_eq!(usize::from(published), chains, "used elements");
                let total: u64 = elems.map(|(_, l)| u64::from(l)).sum();
                assert_eq!(total, len as u64, "a frame of {len} bytes");
                check_rx_header(frame, fill, acked, chains);
                frames.pop_front();
                added = true;
                count += 1;
            }
            RxDelivery::Dropped { chains } => {
                assert!(len >= NET_HDR_LEN, "a runt of {len} bytes took a buffer");
                assert!(chains >= 1 && chains <= usize::from(size), "{delivery:?}");
                assert_eq!(usize::from(published), chains, "used elements");
                assert!(elems.into_iter().all(|(_, l)| l == 0), "a dropped frame");
                frames.pop_front();
                added = true;
                count += 1;
            }
            RxDelivery::Runt => {
                assert!(len < NET_HDR_LEN, "a frame of {len} bytes is no runt");
                assert_eq!(published, 0);
                assert_eq!(q.next_avail(), avail_before, "a runt took a buffer");
                frames.pop_front();
            }
            RxDelivery::NoBuffers => {
                assert_eq!(published, 0);
                assert_eq!(q.next_avail(), avail_before, "buffers not put back");
                assert!(
                    notification_armed(mem, ring, size, q.event_idx_enabled()),
                    "a frame waits for buffers the driver will not announce"
                );
                // As the worker: keep the frame, wait for the driver's notification.
                break;
            }
            RxDelivery::Broken { .. } => return,
        }
    }
    // As `signal_if_needed`, which reads used_event even when a merged frame forces the interrupt.
    if added {
        let _ = q.needs_notification(mem);
    }
}

/// Whether the driver will notify the queue when it adds its next buffer: with EVENT_IDX the
/// device's `avail_event` is the available index (every entry offered has been seen), without it
/// the used ring's NO_NOTIFY flag is clear.
fn notification_armed(mem: &GuestMemoryMmap, ring: SplitRing, size: u16, event_idx: bool) -> bool {
    let read = |addr: u64| mem.read_obj::<u16>(GuestAddress(addr)).expect("ring");
    if event_idx {
        read(ring.used + 4 + 8 * u64::from(size)) == read(ring.avail + 2)
    } else {
        read(ring.used) & 1 == 0
    }
}

/// The header the device put in front of a delivered frame (the backend filled it with `fill`):
/// offload fields kept only for a driver with GUEST_CSUM, `num_buffers` the chains it took.
fn check_rx_header(frame: &[u8], fill: u8, acked: u64, chains: usize) {
    let expected = if has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        fill
    } else {
        0
    };
    assert!(
        frame[..10].iter().all(|&b| b == expected),
        "RX header {:?}",
        &frame[..12]
    );
    assert_eq!(
        usize::from(u16::from_le_bytes([frame[10], frame[11]])),
        chains,
        "num_buffers"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sizes = input.u8();
    let rx_size = 1u16 << (1 + (sizes & 7));
    let tx_size = 1u16 << (1 + ((sizes >> 4) & 7));
    let event_idx = sizes & 0x08 != 0;
    let f = input.u8();
    let acked = FEATURES
        .iter()
        .enumerate()
        .filter(|(i, _)| f & (1 << i) != 0)
        .fold(0u64, |acc, (_, bit)| acc | 1 << bit);
    // Control queue size (2 to 64), usable pairs (1 to 4).
    let ctrl = input.u8();
    let ctrl_size = (1u16 << (1 + (ctrl & 7) % 6)).min(CTRL_QUEUE_SIZE);
    let usable = 1 + usize::from((ctrl >> 3) & 3);
    // Frames on the backend: a length (the TAP's read length: runts and the largest frame
    // included) and a fill byte each, delivered in order.
    let count = usize::from(input.u8() % 9);
    let mut frames: VecDeque<BackendFrame> = (0..count)
        .map(|_| {
            let len = match input.u16() {
                u16::MAX => NET_HDR_LEN + MAX_FRAME,
                n => usize::from(n),
            };
            BackendFrame {
                len,
                fill: input.u8(),
            }
        })
        .collect();
    let mem = &guest_memory(LOW, HIGH_BASE, HIGH, input.rest());

    // The RX ring packed at 0, the TX ring right after it, then the control queue.
    let rx_ring = SplitRing::packed(0, rx_size);
    let tx_ring = SplitRing::packed(rx_ring.end, tx_size);
    let ctrl_ring = SplitRing::packed(tx_ring.end, ctrl_size);
    let mut rx = queue(mem, rx_ring, 256, rx_size, event_idx);
    let mut tx = queue(mem, tx_ring, 256, tx_size, event_idx);
    let mut ctrl_q = queue(mem, ctrl_ring, CTRL_QUEUE_SIZE, ctrl_size, event_idx);
    let mut buffers = buffers();
    let b = &mut *buffers;
    run_ctrl(
        mem,
        &mut ctrl_q,
        usable,
        has(acked, VIRTIO_NET_F_MQ),
        &mut b.chain,
    );
    run_tx(mem, &mut tx, acked, &mut b.tx_frame, &mut b.chain);
    run_rx(mem, &mut rx, rx_ring, acked, &mut frames, b);
});
