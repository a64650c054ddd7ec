//! Rate-limited volumes: the controller holds limited commands back at the head of their queue,
//! resumes them when the limiter's timer fires, and keeps completions correct. Time is a
//! [`ManualClock`]: the tests play the worker, moving the clock to the limiter's timer expiry and
//! calling `process_rate_limiter_timer` as the worker does when the timerfd is readable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::rate_limiter::{
    BucketConfig, Clock, LimiterChain, ManualClock, RateLimiter, RateLimiterConfig,
    SharedRateLimiter,
};

const KIB: u64 = 1024;
const MIB: f64 = 1048576.0;

fn ops_limit(rate: f64, capacity: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bytes: None,
        ops: Some(BucketConfig::fixed(rate, capacity)),
    }
}

fn chain(
    clock: &ManualClock,
    local: &RateLimiterConfig,
    shared: Option<&SharedRateLimiter>,
) -> LimiterChain {
    LimiterChain::new(
        RateLimiter::with_clock(local, clock.shared()).unwrap(),
        shared.cloned(),
    )
}

fn within(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let error = (actual - expected).abs() / expected;
    assert!(
        error <= tolerance,
        "{what}: {actual:.1} vs {expected:.1} ({:.2}% off)",
        error * 100.0
    );
}

/// One completed command: when (on the manual clock), on which queue, how many bytes.
#[derive(Debug, Clone, Copy)]
struct Done {
    at: Duration,
    qid: u16,
    bytes: u64,
}

/// Bytes per second of the completions in `[from, to)`.
fn rate(done: &[Done], from: Duration, to: Duration) -> f64 {
    let bytes: u64 = done
        .iter()
        .filter(|d| d.at >= from && d.at < to)
        .map(|d| d.bytes)
        .sum();
    bytes as f64 / (to - from).as_secs_f64()
}

impl Guest {
    fn limit(&mut self, limiter: LimiterChain) {
        self.ctrl.set_rate_limiter(Some(limiter));
    }

    fn limiter_blocked(&self) -> bool {
        self.ctrl.rate_limiter().is_some_and(|l| l.is_blocked())
    }

    /// How long until the limiter's timer fires (as armed), if it is armed.
    fn limiter_wait(&self) -> Option<Duration> {
        self.ctrl.rate_limiter().and_then(|l| l.local().armed_for())
    }

    fn sq_head(&self, qid: u16) -> u32 {
        self.ctrl.sqs[usize::from(qid)].as_ref().unwrap().head
    }
}

/// The worker's loop on a manual clock for greedy writers: keeps `depth` writes of `blocks` blocks
/// outstanding on each queue of `qids` until `until`, then lets them finish; whenever the
/// controller has nothing it may run, moves the clock to the limiter's timer expiry and fires it.
/// Checks every completion (status, command id, exactly once).
fn greedy_writes(
    g: &mut Guest,
    clock: &ManualClock,
    qids: &[u16],
    blocks: u32,
    depth: usize,
    until: Duration,
) -> Vec<Done> {
    let bytes = u64::from(blocks) * 512;
    let span = g.ctrl.blocks() - u64::from(blocks);
    // PRPs for `bytes` at DATA: PRP1, plus PRP2 (one more page) or a PRP list at LISTS.
    let pages = bytes.div_ceil(PAGE);
    let prp2 = match pages {
        1 => 0,
        2 => DATA + PAGE,
        _ => {
            let entries: Vec<u64> = (1..pages).map(|p| DATA + p * PAGE).collect();
            write_list(&g.mem, LISTS, &entries);
            LISTS
        }
    };
    let mut outstanding: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
    let mut written = 0u64;
    let mut done = Vec::new();
    loop {
        for &qid in qids {
            while clock.now() < until && outstanding.entry(qid).or_default().len() < depth {
                let lba = (written * u64::from(blocks)) % span;
                written += 1;
                let cid = g.submit(qid, rw(io_opcode::WRITE, lba, blocks, DATA, prp2));
                outstanding.entry(qid).or_default().insert(cid);
            }
            g.ring(qid);
            g.ctrl.process_submission_queue(qid);
        }
        for &qid in qids {
            for e in g.reap(qid) {
                assert_eq!(e.status, Status::SUCCESS, "{e:?}");
                assert_eq!(e.sq_id, qid);
                assert!(
                    outstanding.entry(qid).or_default().remove(&e.cid),
                    "completion of a command not outstanding: {e:?}"
                );
                done.push(Done {
                    at: clock.now(),
                    qid,
                    bytes,
                });
            }
        }
        if clock.now() >= until && outstanding.values().all(BTreeSet::is_empty) {
            return done;
        }
        let wait = g
            .limiter_wait()
            .expect("queues are full but the limiter is not waiting: stuck");
        clock.advance(wait);
        g.ctrl.process_rate_limiter_timer();
    }
}

#[test]
fn a_burst_of_writes_runs_at_the_configured_rate() {
    let clock = ManualClock::new();
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 64, 64);
    // 4 MiB/s and 1000 IOPS on the volume; 16 KiB writes are bandwidth bound (256/s).
    g.limit(chain(
        &clock,
        &RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(4.0 * MIB, 64 * KIB)),
            ops: Some(BucketConfig::fixed(1000.0, 10)),
        },
        None,
    ));
    g.mem
        .write_slice(&pattern(16384, 3), GuestAddress(DATA))
        .unwrap();
    let done = greedy_writes(&mut g, &clock, &[1], 32, 32, Duration::from_secs(10));
    // The first 64 KiB go at once (the full bucket), then 4 MiB/s to within 1%.
    within(
        rate(&done, Duration::from_secs(1), Duration::from_secs(10)),
        4.0 * MIB,
        0.01,
        "bandwidth-bound writes",
    );
    let stats = g.ctrl.throttle_stats();
    // Each wake-up is exact: it admits the one command it was armed for (no fixed stall, so no
    // batch of several per wake-up, and no wake-up that admits nothing).
    assert!(
        stats.wakeups >= stats.admitted - 5 && stats.wakeups <= stats.admitted,
        "{stats:?}"
    );
    // Held commands were never lost or completed early: every write completed once, in order of
    // admission, and the data landed.
    assert_eq!(done.len() as u64, stats.admitted);
    let file = g.file_bytes(0, 16384);
    let expect = pattern(16384, 3);
    let first_diff = file.iter().zip(&expect).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "the data landed");

    // Small writes on the same volume: now the IOPS cap governs (1000/s, 4 MB/s of 4 KiB would be
    // 1024/s).
    let start = clock.now();
    let done = greedy_writes(&mut g, &clock, &[1], 8, 32, start + Duration::from_secs(10));
    let ops = done
        .iter()
        .filter(|d| {
            d.at >= start + Duration::from_secs(1) && d.at < start + Duration::from_secs(10)
        })
        .count();
    within(ops as f64 / 9.0, 1000.0, 0.01, "IOPS-bound writes");
}

#[test]
fn a_throttled_queue_resumes_when_the_timer_fires() {
    let clock = ManualClock::new();
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    g.create_pair(2, 16, 16);
    // 10 operations a second, one at a time.
    g.limit(chain(&clock, &ops_limit(10.0, 1), None));
    // Three writes of different data from different buffers.
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(4096, 40 + i)).collect();
    let mut cids = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let buf = DATA + i as u64 * 0x1000;
        g.mem.write_slice(d, GuestAddress(buf)).unwrap();
        cids.push(g.submit(1, rw(io_opcode::WRITE, 64 * i as u64, 8, buf, 0)));
    }
    g.ring(1);
    g.ctrl.process_submission_queue(1);
    let first = g.reap(1);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].cid, first[0].status), (cids[0], Status::SUCCESS));
    // The second write is still in the queue, not fetched and not completed.
    assert_eq!(g.sq_head(1), 1);
    assert_eq!(g.ctrl.throttled_queues(), vec![1]);
    assert_eq!(g.limiter_wait(), Some(Duration::from_millis(100)));
    assert_eq!(g.file_bytes(64 * 512, 4096), vec![0; 4096]);

    // Another doorbell while held back: nothing runs, and the limiter is not asked again (the
    // timer keeps its expiry).
    g.ring(1);
    g.ctrl.process_submission_queue(1);
    assert!(g.reap(1).is_empty());
    assert_eq!(g.limiter_wait(), Some(Duration::from_millis(100)));

    // Admin commands and Flush are not limited, even while the volume is held back.
    let mut identify = admin_cmd(admin_opcode::IDENTIFY, 1, 0);
    identify.prp1 = BUF;
    assert_eq!(g.admin_status(identify), Status::SUCCESS);
    let mut flush = Command::new(io_opcode::FLUSH, 0);
    flush.nsid = 1;
    let e = g.run(2, flush);
    assert_eq!(e.status, Status::SUCCESS);

    // A read on queue 2 waits behind queue 1's write.
    let read_cid = g.submit(2, rw(io_opcode::READ, 0, 8, DATA2, 0));
    g.ring(2);
    g.ctrl.process_submission_queue(2);
    assert!(g.reap(2).is_empty());
    assert_eq!(g.ctrl.throttled_queues(), vec![1, 2]);

    // A spurious or early timer event admits nothing and re-arms for the rest of the wait.
    clock.advance(Duration::from_millis(60));
    g.ctrl.process_rate_limiter_timer();
    assert!(g.reap(1).is_empty() && g.reap(2).is_empty());
    assert_eq!(g.limiter_wait(), Some(Duration::from_millis(40)));
    assert_eq!(g.ctrl.throttled_queues(), vec![1, 2]);

    // On time: queue 1's write goes, then queue 2's read waits its turn.
    clock.advance(Duration::from_millis(40));
    g.ctrl.process_rate_limiter_timer();
    let e = g.reap(1);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].cid, e[0].status), (cids[1], Status::SUCCESS));
    assert_eq!(g.ctrl.throttled_queues(), vec![2, 1]);
    clock.advance(g.limiter_wait().unwrap());
    g.ctrl.process_rate_limiter_timer();
    let e = g.reap(2);
    assert_eq!(
        (e.len(), e[0].cid, e[0].status),
        (1, read_cid, Status::SUCCESS)
    );
    assert_eq!(g.guest_bytes(DATA2, 4096), data[0]);
    clock.advance(g.limiter_wait().unwrap());
    g.ctrl.process_rate_limiter_timer();
    let e = g.reap(1);
    assert_eq!(
        (e.len(), e[0].cid, e[0].status),
        (1, cids[2], Status::SUCCESS)
    );
    assert!(g.ctrl.throttled_queues().is_empty());
    assert!(!g.limiter_blocked());
    for (i, d) in data.iter().enumerate() {
        assert_eq!(&g.file_bytes(64 * 512 * i as u64, 4096), d, "write {i}");
    }
    // Completion interrupts were raised for the resumed queues too.
    assert!(g.rec.calls().signals.contains(&1));
    assert!(g.rec.calls().signals.contains(&2));
    assert_eq!(clock.now(), Duration::from_millis(300));
}

#[test]
fn waiting_queues_take_turns() {
    let clock = ManualClock::new();
    let mut g = Guest::new();
    g.enable();
    for qid in 1..=3 {
        g.create_pair(qid, 64, 64);
    }
    g.limit(chain(&clock, &ops_limit(100.0, 1), None));
    // Queue 1 and 2 greedy, queue 3 greedy with a shallow queue.
    let done = greedy_writes(&mut g, &clock, &[1, 2, 3], 8, 20, Duration::from_secs(6));
    let total = done
        .iter()
        .filter(|d| d.at >= Duration::from_secs(1) && d.at < Duration::from_secs(6))
        .count();
    within(total as f64 / 5.0, 100.0, 0.01, "total IOPS");
    // Every window of 30 consecutive completions has about 10 from each queue.
    let order: Vec<u16> = done.iter().map(|d| d.qid).collect();
    for window in order.windows(30).step_by(7) {
        for qid in 1..=3 {
            let n = window.iter().filter(|&&q| q == qid).count();
            assert!(
                (9..=11).contains(&n),
                "queue {qid}: {n} of 30 in {window:?}"
            );
        }
    }
}

#[test]
fn the_instance_cap_is_shared_by_all_volumes() {
    let clock = ManualClock::new();
    // Instance: 100 ops/s; each volume: 60 ops/s.
    let shared = SharedRateLimiter::with_clock(&ops_limit(100.0, 1), clock.shared()).unwrap();
    let mut guests: Vec<Guest> = (0..2).map(|_| Guest::new()).collect();
    for g in &mut guests {
        g.enable();
        g.create_pair(1, 64, 64);
        g.limit(chain(&clock, &ops_limit(60.0, 1), Some(&shared)));
    }
    let end = Duration::from_secs(20);
    let mut counts = [0u64; 2];
    let mut outstanding = [0usize; 2];
    // When each controller's timer expires (each worker sleeps on its own timerfd).
    let mut deadline: [Option<Duration>; 2] = [None; 2];
    let mut fire: Option<usize> = None;
    loop {
        for (i, g) in guests.iter_mut().enumerate() {
            if fire == Some(i) {
                g.ctrl.process_rate_limiter_timer();
                deadline[i] = None;
            }
            while outstanding[i] < 32 {
                g.submit(1, rw(io_opcode::READ, 0, 8, DATA, 0));
                outstanding[i] += 1;
            }
            g.ring(1);
            g.ctrl.process_submission_queue(1);
            let n = g.reap(1).len();
            outstanding[i] -= n;
            if clock.now() >= Duration::from_secs(2) {
                counts[i] += n as u64;
            }
            if deadline[i].is_none() {
                deadline[i] = g.limiter_wait().map(|w| clock.now() + w);
            }
        }
        let (i, at) = deadline
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i, d)))
            .min_by_key(|(_, d)| *d)
            .expect("a limiter is waiting");
        if at >= end {
            break;
        }
        clock.set(at);
        fire = Some(i);
    }
    let secs = (end - Duration::from_secs(2)).as_secs_f64();
    within(
        (counts[0] + counts[1]) as f64 / secs,
        100.0,
        0.02,
        "instance total",
    );
    for (i, n) in counts.iter().enumerate() {
        let r = *n as f64 / secs;
        assert!(r <= 60.0 * 1.01, "volume {i}: {r} ops/s over its own cap");
        within(r, 50.0, 0.1, "each volume's share");
    }
}

#[test]
fn an_instance_burst_runs_at_the_maximum_then_at_the_baseline() {
    let clock = ManualClock::new();
    // An "up to" EBS cap: baseline 1 MiB/s, maximum 4 MiB/s, credits for 2 s at the maximum.
    let shared = SharedRateLimiter::with_clock(
        &RateLimiterConfig {
            bytes: Some(BucketConfig::burstable(
                MIB,
                4.0 * MIB,
                Duration::from_secs(2),
                64 * KIB,
            )),
            ops: None,
        },
        clock.shared(),
    )
    .unwrap();
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 64, 64);
    g.limit(chain(
        &clock,
        &RateLimiterConfig::unlimited(),
        Some(&shared),
    ));
    let done = greedy_writes(&mut g, &clock, &[1], 32, 16, Duration::from_secs(8));
    let s = Duration::from_secs;
    within(
        rate(&done, Duration::from_millis(100), s(2)),
        4.0 * MIB,
        0.01,
        "maximum",
    );
    within(rate(&done, s(3), s(8)), MIB, 0.01, "baseline");
}

#[test]
fn what_each_command_costs() {
    let clock = ManualClock::new();
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    // Buckets that never refill on a clock that does not move: each command's cost is what it
    // takes out.
    g.limit(chain(
        &clock,
        &RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(0.001, 1 << 30)),
            ops: Some(BucketConfig::fixed(0.001, 1000)),
        },
        None,
    ));
    let left = |g: &Guest| {
        let l = g.ctrl.rate_limiter().unwrap().local();
        (
            (1000.0 - l.ops_bucket().unwrap().tokens()) as u64,
            ((1u64 << 30) as f64 - l.bytes_bucket().unwrap().tokens()) as u64,
        )
    };
    assert_eq!(
        g.io(rw(io_opcode::WRITE, 0, 16, DATA, DATA + 4096)),
        Status::SUCCESS
    );
    assert_eq!(left(&g), (1, 8192), "a write: one op and its bytes");
    assert_eq!(g.io(rw(io_opcode::READ, 0, 8, DATA, 0)), Status::SUCCESS);
    assert_eq!(left(&g), (2, 8192 + 4096), "a read");
    assert_eq!(
        g.io(rw(io_opcode::WRITE_ZEROES, 0, 64, 0, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        left(&g),
        (3, 12288 + 32768),
        "Write Zeroes: the blocks it zeroes"
    );
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&2048u32.to_le_bytes());
    g.mem.write_slice(&range, GuestAddress(BUF)).unwrap();
    let mut dsm = Command::new(io_opcode::DATASET_MANAGEMENT, 0);
    dsm.nsid = 1;
    dsm.prp1 = BUF;
    dsm.cdw[1] = 1 << 2;
    assert_eq!(g.io(dsm), Status::SUCCESS);
    assert_eq!(left(&g), (4, 45056), "deallocate: an op, no bytes");
    let mut flush = Command::new(io_opcode::FLUSH, 0);
    flush.nsid = 1;
    assert_eq!(g.io(flush), Status::SUCCESS);
    assert_eq!(left(&g), (4, 45056), "Flush is free");
    // Commands that fail validation cost their op only.
    let blocks = g.ctrl.blocks();
    assert_eq!(
        g.io(rw(io_opcode::READ, blocks - 1, 8, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    let mut bad_ns = rw(io_opcode::WRITE, 0, 8, DATA, 0);
    bad_ns.nsid = 2;
    assert_eq!(g.io(bad_ns), Status::INVALID_NAMESPACE);
    assert_eq!(
        g.io(rw(io_opcode::READ, 0, 2048, DATA, 0)),
        Status::INVALID_FIELD,
        "over MDTS"
    );
    assert_eq!(left(&g), (7, 45056));
    // Unknown opcodes are not limited.
    assert_eq!(g.io(Command::new(0x7f, 0)), Status::INVALID_OPCODE);
    assert_eq!(left(&g), (7, 45056));
    let stats = g.ctrl.throttle_stats();
    assert_eq!((stats.admitted, stats.held, stats.wakeups), (7, 0, 0));
}

#[test]
fn held_queues_survive_reset_deletion_and_a_full_completion_queue() {
    let clock = ManualClock::new();
    let mut g = Guest::new();
    g.enable();
    // A 4-entry completion queue (3 usable slots) under a 16-entry submission queue.
    g.create_pair(1, 16, 4);
    g.create_pair(2, 16, 16);
    g.limit(chain(&clock, &ops_limit(10.0, 2), None));
    for i in 0..8 {
        g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0));
    }
    g.ring(1);
    g.ctrl.process_submission_queue(1);
    assert_eq!(g.peek(1).len(), 2, "two admitted at once (capacity 2)");
    // One more after 100 ms: the completion queue is then full (not reaped), which stops the
    // queue before the limiter is asked again; it leaves the waiting list (the guest's head
    // doorbell resumes it) and the limiter is not waiting.
    clock.advance(g.limiter_wait().unwrap());
    g.ctrl.process_rate_limiter_timer();
    assert_eq!(g.peek(1).len(), 1);
    assert!(g.ctrl.throttled_queues().is_empty());
    assert!(!g.limiter_blocked());
    assert_eq!(g.sq_head(1), 3);
    clock.advance(Duration::from_millis(100));
    let head = g.queues[&1].head;
    g.write32(cq_head_doorbell(1), head);
    assert_eq!(
        g.rec.calls().kicks.last(),
        Some(&1),
        "the head doorbell asks for queue 1"
    );
    g.ctrl.process_submission_queue(1);
    assert_eq!(g.peek(1).len(), 1, "the head doorbell resumed the queue");
    assert_eq!(g.ctrl.throttled_queues(), vec![1]);
    assert_eq!(g.limiter_wait(), Some(Duration::from_millis(100)));

    // Deleting a waiting queue: the timer finds nothing to resume.
    let mut del = admin_cmd(admin_opcode::DELETE_IO_SQ, 1, 0);
    del.prp1 = 0;
    assert_eq!(g.admin_status(del), Status::SUCCESS);
    clock.advance(g.limiter_wait().unwrap());
    g.ctrl.process_rate_limiter_timer();
    assert!(g.ctrl.throttled_queues().is_empty());

    // A reset drops the waiting list; the limiter keeps its state.
    g.submit(2, rw(io_opcode::READ, 0, 1, DATA, 0));
    g.submit(2, rw(io_opcode::READ, 0, 1, DATA, 0));
    g.submit(2, rw(io_opcode::READ, 0, 1, DATA, 0));
    g.ring(2);
    g.ctrl.process_submission_queue(2);
    assert_eq!(g.ctrl.throttled_queues(), vec![2]);
    g.write32(registers::CC, 0);
    assert!(g.ctrl.throttled_queues().is_empty());
    clock.advance(Duration::from_secs(1));
    g.ctrl.process_rate_limiter_timer();
    g.ctrl.process_rate_limiter_timer();
    assert!(g.ctrl.throttled_queues().is_empty());
}

#[test]
fn shadow_doorbell_queues_resume_and_publish_their_event_index() {
    let clock = ManualClock::new();
    let mut g = Guest::new();
    g.enable();
    g.create_pair(1, 16, 16);
    let mut dbbc = admin_cmd(admin_opcode::DOORBELL_BUFFER_CONFIG, 0, 0);
    dbbc.prp1 = DBS;
    dbbc.prp2 = EIS;
    assert_eq!(g.admin_status(dbbc), Status::SUCCESS);
    g.limit(chain(&clock, &ops_limit(10.0, 1), None));
    for i in 0..4 {
        g.submit(1, rw(io_opcode::READ, i, 1, DATA, 0));
    }
    // The guest updates the shadow tail and rings once.
    let tail = g.queues[&1].tail;
    g.mem.write_obj(tail, GuestAddress(DBS + 8)).unwrap();
    g.ring(1);
    g.ctrl.process_submission_queue(1);
    assert_eq!(g.reap(1).len(), 1);
    let mut got = 1;
    while got < 4 {
        clock.advance(g.limiter_wait().unwrap());
        g.ctrl.process_rate_limiter_timer();
        got += g.reap(1).len();
    }
    // All consumed: the event index says so, and nothing is waiting.
    let event: u32 = g.mem.read_obj(GuestAddress(EIS + 8)).unwrap();
    assert_eq!(event, tail);
    assert!(g.ctrl.throttled_queues().is_empty());
}
