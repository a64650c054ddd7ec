//! virtio-blk descriptor chains: the input is a picture of guest RAM (descriptor table, available
//! ring, indirect tables, request headers and data) under one split virtqueue, plus a flags byte
//! (queue size, EVENT_IDX, FLUSH negotiated, read-only disk, rate limited) and, when rate limited,
//! which requests the limiter refuses at first; the ring is packed at address 0
//! ([`SplitRing::packed`]). The harness runs the queue the way the device's worker does
//! (virtio-queue pops each chain, `process_chain_limited` asks the limiter, parses and runs it, the
//! completion goes to the used ring; a refused request goes back to the head of the ring and is
//! retried when the limiter's timer fires) on an in-memory disk that asserts every access stays
//! inside the disk. Guest RAM has a hole, so buffers can straddle it.
#![no_main]

use devices::block::FailureLog;
use std::sync::atomic::Ordering;

use devices::virtio_blk::request::{process_chain_limited, Disk, Scratch};
use devices::virtio_blk::SECTOR_SIZE;
use flint_fuzz::{guest_memory, Input, MemDisk, SplitRing};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestAddress;

/// Guest RAM: 64 KiB, a 16 KiB hole, 16 KiB.
const LOW: usize = 0x10000;
const HIGH_BASE: u64 = 0x14000;
const HIGH: usize = 0x4000;
/// 64 KiB of disk: 128 sectors.
const DISK: usize = 64 << 10;
/// The worker's per-wake-up bound.
const BATCH: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let size = 1u16 << (1 + flags % 8); // 2 to 256, the device's largest
    let event_idx = flags & 0x10 != 0;
    let writeback = flags & 0x20 != 0;
    let read_only = flags & 0x40 != 0;
    // Bit k: the limiter admits the k-th request (mod 32) when first asked; always when
    // unlimited. A refused request is admitted when retried (the limiter's timer fired).
    let first_asks = if flags & 0x80 != 0 {
        input.u32()
    } else {
        u32::MAX
    };
    let mem = &guest_memory(LOW, HIGH_BASE, HIGH, input.rest());

    // Every transfer goes through a bounce buffer of at most 1 MiB (the whole disk here).
    let mem_disk = MemDisk::new(DISK, read_only, DISK);
    let disk_operations = mem_disk.operations();
    let disk = Disk {
        backend: Box::new(mem_disk),
        sectors: DISK as u64 / SECTOR_SIZE,
        read_only,
        id: *b"fuzz-disk-0123456789",
        failures: FailureLog::default(),
    };
    let ring = SplitRing::packed(0, size);
    let mut queue = Queue::new(256).expect("queue");
    queue.try_set_size(size).expect("size");
    queue
        .try_set_desc_table_address(GuestAddress(ring.desc))
        .expect("desc");
    queue
        .try_set_avail_ring_address(GuestAddress(ring.avail))
        .expect("avail");
    queue
        .try_set_used_ring_address(GuestAddress(ring.used))
        .expect("used");
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    assert!(queue.is_valid(mem));

    let mut scratch = Scratch::default();
    let mut completed = 0usize;
    let mut asked = 0u32;
    // The head of a request the limiter refused (it waits at the head of the ring).
    let mut held: Option<u16> = None;
    // The worker's loop (virtio_blk::WorkerLoop::process_queue); an error means the ring is
    // corrupt and the device would ask for a reset.
    'outer: loop {
        if queue.disable_notification(mem).is_err() {
            break;
        }
        let mut added = false;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(_) => break 'outer,
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let admit = held.is_some() || first_asks & (1 << (asked % 32)) != 0;
            asked = asked.wrapping_add(1);
            let mut refused = false;
            let operations = disk_operations.load(Ordering::Relaxed);
            let done = process_chain_limited(mem, &disk, writeback, chain, &mut scratch, |cost| {
                assert_eq!(cost.ops, 1, "{cost:?}");
                refused = !admit;
                admit
            });
            let Some(done) = done else {
                // Held: nothing done, the chain goes back (as `WorkerLoop::run_queue`).
                assert!(refused, "no completion for an admitted request");
                assert_eq!(
                    disk_operations.load(Ordering::Relaxed),
                    operations,
                    "a refused request reached the disk"
                );
                queue.go_to_previous_position();
                held = Some(head);
                continue;
            };
            if let Some(held) = held.take() {
                assert_eq!(done.head, held, "the held request comes back first");
            }
            // A request that got a status reports its data plus the status byte; a dropped chain
            // reports nothing.
            assert_eq!(done.status.is_some(), done.len > 0, "{done:?}");
            if queue.add_used(mem, done.head, done.len).is_err() {
                break 'outer;
            }
            added = true;
            completed += 1;
            if completed >= BATCH {
                break;
            }
        }
        if added && queue.needs_notification(mem).is_err() {
            break;
        }
        if completed >= BATCH {
            break;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            _ => break,
        }
    }
    assert!(completed <= BATCH);
});
