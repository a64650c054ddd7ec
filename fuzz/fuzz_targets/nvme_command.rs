//! NVMe command decoding and PRP walking: an NVMe controller on an in-memory disk and a small guest
//! RAM with a hole in it. The harness enables the controller and creates I/O queue pair 1, as a
//! driver would; then the input is a list of operations: submit a 64-byte command (any bytes) on the
//! admin queue or queue 1 and ring the doorbell, write guest memory (PRP lists, data, queues the
//! fuzzer created itself), write or read any BAR0 register at any width, ring any doorbell with
//! any value, run the queues. The worker thread's job is done inline: every queue the controller
//! asks to have run is run at once. The disk asserts every access stays inside the namespace and
//! within MDTS; the interrupt sink asserts every vector and queue id exists.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::nvme::command::{admin_opcode, Command, SQ_ENTRY_SIZE};
use devices::nvme::registers::{self, cq_head_doorbell, sq_tail_doorbell};
use devices::nvme::{NvmeConfig, NvmeController, NvmeInterrupts};
use flint_fuzz::{guest_memory, Input, MemDisk};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: 128 KiB, a 64 KiB hole, 32 KiB.
const LOW: usize = 0x20000;
const HIGH_BASE: u64 = 0x30000;
const HIGH: usize = 0x8000;
const ASQ: u64 = 0x0000;
const ACQ: u64 = 0x1000;
const SQ1: u64 = 0x2000;
const CQ1: u64 = 0x3000;
const ENTRIES: u16 = 16;
const QUEUE_PAIRS: u16 = 4;
/// MDTS 2^3 pages: 32 KiB.
const MDTS: u8 = 3;
const DISK: usize = 128 << 10;
/// CC: enabled, NVM command set, 4 KiB pages, 64-byte SQ and 16-byte CQ entries.
const CC_GOOD: u32 = 1 | (6 << 16) | (4 << 20);

#[derive(Default)]
struct Calls {
    kicks: Vec<u16>,
}

/// The interrupt side: checks every vector and queue id, remembers which queues to run.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Calls>>);

impl NvmeInterrupts for Sink {
    fn signal(&self, vector: u16) {
        assert!(
            vector <= QUEUE_PAIRS,
            "MSI-X vector {vector} does not exist"
        );
    }
    fn notify_worker(&self, sqid: u16) {
        assert!(sqid <= QUEUE_PAIRS, "worker asked to run queue {sqid}");
        self.0.lock().unwrap().kicks.push(sqid);
    }
}

struct Driver {
    ctrl: NvmeController,
    sink: Sink,
    admin_tail: u16,
    io_tail: u16,
}

impl Driver {
    fn write_reg(&mut self, offset: u64, data: &[u8]) {
        self.ctrl.write_register(offset, data);
        self.run_kicked();
    }

    /// What the worker thread does when woken: run each queue it was asked to.
    fn run_kicked(&mut self) {
        loop {
            let kicks = std::mem::take(&mut self.sink.0.lock().unwrap().kicks);
            if kicks.is_empty() {
                return;
            }
            for sqid in kicks {
                self.ctrl.process_submission_queue(sqid);
            }
        }
    }

    fn submit(&mut self, mem: &GuestMemoryMmap, qid: u16, entry: &[u8; 64]) {
        let (base, tail) = if qid == 0 {
            (ASQ, &mut self.admin_tail)
        } else {
            (SQ1, &mut self.io_tail)
        };
        let at = base + u64::from(*tail) * SQ_ENTRY_SIZE;
        mem.write_slice(entry, GuestAddress(at)).expect("SQ in RAM");
        *tail = (*tail + 1) % ENTRIES;
        let value = u32::from(*tail).to_le_bytes();
        self.write_reg(sq_tail_doorbell(qid), &value);
    }
}

fn admin(opcode: u8, cid: u16, prp1: u64, cdw10: u32, cdw11: u32) -> [u8; 64] {
    let mut c = Command::new(opcode, cid);
    c.prp1 = prp1;
    c.cdw[0] = cdw10;
    c.cdw[1] = cdw11;
    c.to_bytes()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let read_only = flags & 1 != 0;
    let block_size = if flags & 2 != 0 { 4096 } else { 512 };
    let mem = &guest_memory(LOW, HIGH_BASE, HIGH, &[]);

    let mut config = NvmeConfig::new("/fuzz/volume.img");
    config.read_only = read_only;
    config.block_size = block_size;
    config.max_queue_pairs = QUEUE_PAIRS;
    config.mdts = MDTS;
    config.volume_id = Some("vol-0123456789abcdef0".into());
    let disk = MemDisk::new(DISK, read_only, 4096 << MDTS);
    let sink = Sink::default();
    let ctrl =
        NvmeController::with_backend(&config, Box::new(disk), mem.clone(), Box::new(sink.clone()))
            .expect("controller");
    let mut d = Driver {
        ctrl,
        sink,
        admin_tail: 0,
        io_tail: 0,
    };

    // What a driver does first (skipped when the input wants to enable the controller itself).
    if flags & 4 == 0 {
        let aqa = u32::from(ENTRIES - 1) | (u32::from(ENTRIES - 1) << 16);
        d.write_reg(registers::AQA, &aqa.to_le_bytes());
        d.write_reg(registers::ASQ, &ASQ.to_le_bytes());
        d.write_reg(registers::ACQ, &ACQ.to_le_bytes());
        d.write_reg(registers::CC, &CC_GOOD.to_le_bytes());
        let qsize = u32::from(ENTRIES - 1) << 16;
        // CQ 1: physically contiguous, interrupts on vector 1. SQ 1 on CQ 1.
        d.submit(
            mem,
            0,
            &admin(
                admin_opcode::CREATE_IO_CQ,
                1,
                CQ1,
                1 | qsize,
                0b11 | 1 << 16,
            ),
        );
        d.submit(
            mem,
            0,
            &admin(admin_opcode::CREATE_IO_SQ, 2, SQ1, 1 | qsize, 1 | 1 << 16),
        );
    }

    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        match input.u8() % 8 {
            // A command on the admin queue or on I/O queue 1.
            0 | 1 => {
                let qid = u16::from(input.u8() & 1);
                let mut entry = [0u8; 64];
                let b = input.bytes(64);
                entry[..b.len()].copy_from_slice(b);
                d.submit(mem, qid, &entry);
            }
            // Guest memory: PRP lists, data, other queues' entries.
            2 => {
                let addr = u64::from(input.u32()) % (HIGH_BASE + HIGH as u64 + 0x1000);
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                // Writes into the hole or past the end fail, as a guest's would fault.
                let _ = mem.write_slice(bytes, GuestAddress(addr));
            }
            // Any register, any width (doorbells included).
            3 => {
                let offset = u64::from(input.u16() % 0x2000);
                let width = [1, 2, 4, 8][usize::from(input.u8() % 4)];
                let value = input.u64().to_le_bytes();
                d.write_reg(offset, &value[..width]);
            }
            4 => {
                let offset = u64::from(input.u16() % 0x2000);
                let width = [1, 2, 4, 8][usize::from(input.u8() % 4)];
                let mut out = [0u8; 8];
                d.ctrl.read_register(offset, &mut out[..width]);
            }
            // A doorbell of any queue (existing or not), any value.
            5 => {
                let which = input.u8();
                let qid = u16::from(which >> 1) % (QUEUE_PAIRS + 2);
                let value = u32::from(input.u16());
                let offset = if which & 1 == 0 {
                    sq_tail_doorbell(qid)
                } else {
                    cq_head_doorbell(qid)
                };
                d.write_reg(offset, &value.to_le_bytes());
            }
            // The worker's other entry points.
            6 => {
                let qid = u16::from(input.u8()) % (QUEUE_PAIRS + 2);
                d.ctrl.process_completion_queue(qid);
                d.run_kicked();
            }
            _ => {
                d.ctrl.process_all();
                d.run_kicked();
            }
        }
    }
    // Everything the guest sees must still be readable without a panic.
    let mut csts = [0u8; 4];
    d.ctrl.read_register(registers::CSTS, &mut csts);
});
