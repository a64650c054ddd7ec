//! virtio-net descriptor chains, both directions. The input gives the RX and TX queue sizes, the
//! features the driver acknowledged, up to eight frames waiting on the backend, and a picture of
//! guest RAM holding both split virtqueues (packed from address 0, RX first: [`SplitRing`]),
//! indirect tables and buffers. The harness runs TX and RX
//! the way the device's worker does (`gather_tx_frame` / `deliver_rx_frame` for each chain, the
//! used ring, notification suppression), with an in-memory backend in place of the TAP, and checks
//! every frame sent and every used length.
#![no_main]

use std::sync::{Mutex, OnceLock};

use devices::virtio::Chain;
use devices::virtio_net::{deliver_rx_frame, gather_tx_frame, MAX_FRAME, NET_HDR_LEN};
use flint_fuzz::{guest_memory, Input, SplitRing};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM: 96 KiB, a 16 KiB hole, 16 KiB.
const LOW: usize = 0x18000;
const HIGH_BASE: u64 = 0x1c000;
const HIGH: usize = 0x4000;
/// The worker's per-wake-up bound.
const BATCH: usize = 256;

/// The TX frame buffer, kept across inputs (64 KiB: too much to allocate per input).
fn tx_buffer() -> &'static Mutex<Vec<u8>> {
    static BUF: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUF.get_or_init(|| Mutex::new(vec![0u8; NET_HDR_LEN + MAX_FRAME]))
}

fn queue(mem: &GuestMemoryMmap, ring: SplitRing, size: u16, event_idx: bool) -> Queue {
    let mut q = Queue::new(256).expect("queue");
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

/// TX as `NetWorker::process_tx` runs it; the frames "sent" are checked and dropped.
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
            let (head, len) = gather_tx_frame(mem, chain, acked, scratch, frame);
            if let Some(len) = len {
                assert!(
                    (NET_HDR_LEN..=NET_HDR_LEN + MAX_FRAME).contains(&len),
                    "TX frame of {len} bytes"
                );
            }
            if q.add_used(mem, head, 0).is_err() {
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

/// RX as `NetWorker::process_rx` runs it, the backend's frames taken from `frames`.
fn run_rx(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    acked: u64,
    frames: &mut Vec<Vec<u8>>,
    scratch: &mut Chain,
) {
    if q.disable_notification(mem).is_err() {
        return;
    }
    let mut added = false;
    let mut count = 0usize;
    while count < BATCH {
        // The TAP delivers frames of at least a header; shorter reads are skipped.
        let Some(frame) = frames.last_mut() else {
            break;
        };
        let chain = match q.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(_) => return,
        };
        let Some(chain) = chain else {
            match q.enable_notification(mem) {
                Ok(true) => {
                    if q.disable_notification(mem).is_err() {
                        return;
                    }
                    continue;
                }
                _ => break,
            }
        };
        let len = frame.len();
        let delivery = deliver_rx_frame(mem, chain, frame, acked, scratch);
        assert!(
            delivery.used == 0 || delivery.used as usize == len,
            "RX used length {} for a frame of {len} bytes",
            delivery.used
        );
        assert!(delivery.used == 0 || delivery.consumed);
        if delivery.consumed {
            frames.pop();
        }
        if q.add_used(mem, delivery.head, delivery.used).is_err() {
            return;
        }
        added = true;
        count += 1;
    }
    if added {
        let _ = q.needs_notification(mem);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sizes = input.u8();
    let rx_size = 1u16 << (1 + (sizes & 7));
    let tx_size = 1u16 << (1 + ((sizes >> 4) & 7));
    let event_idx = sizes & 0x08 != 0;
    // Acknowledged features: the offload bits (0, 1, 7, 8, 11, 12) from one byte.
    let f = input.u8();
    let acked = [0u32, 1, 7, 8, 11, 12]
        .iter()
        .enumerate()
        .filter(|(i, _)| f & (1 << i) != 0)
        .fold(0u64, |acc, (_, bit)| acc | 1 << bit);
    // Frames on the backend: a length and a fill byte each (delivered last first).
    let count = usize::from(input.u8() % 9);
    let mut frames: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let len = NET_HDR_LEN + usize::from(input.u16()) % (MAX_FRAME + 1 - NET_HDR_LEN);
            let fill = input.u8();
            (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
        })
        .collect();
    frames.reverse();
    let mem = &guest_memory(LOW, HIGH_BASE, HIGH, input.rest());

    // The RX ring packed at 0, the TX ring right after it.
    let rx_ring = SplitRing::packed(0, rx_size);
    let mut rx = queue(mem, rx_ring, rx_size, event_idx);
    let mut tx = queue(
        mem,
        SplitRing::packed(rx_ring.end, tx_size),
        tx_size,
        event_idx,
    );
    let mut scratch = Chain::default();
    let mut tx_frame = tx_buffer().lock().unwrap();
    run_tx(mem, &mut tx, acked, &mut tx_frame, &mut scratch);
    run_rx(mem, &mut rx, acked, &mut frames, &mut scratch);
});
