//! The seed corpora (fuzz/corpus/<target>/): a handful of meaningful inputs per target, in each
//! target's input encoding, so the fuzzer starts from requests a real driver sends. `make_seeds`
//! writes them; they are committed.

use crate::{Encoder, SplitRing};

/// (target, [(file name, bytes)]).
pub type Seeds = Vec<(&'static str, Vec<(&'static str, Vec<u8>)>)>;

pub fn all() -> Seeds {
    vec![
        ("nvme_command", nvme()),
        ("virtio_blk_chain", virtio_blk()),
        ("virtio_net_chain", virtio_net()),
        ("pci_config", pci()),
        ("cli_config", cli()),
    ]
}

// ---- nvme_command ---------------------------------------------------------------------------

fn sqe(opcode: u8, cid: u16, nsid: u32, prp1: u64, prp2: u64, cdw: [u32; 6]) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u32(u32::from(opcode) | u32::from(cid) << 16)
        .u32(nsid)
        .u64(0)
        .u64(0)
        .u64(prp1)
        .u64(prp2);
    for d in cdw {
        e.u32(d);
    }
    e.0
}

/// Op 0/1: submit `entry` on the admin queue (0) or I/O queue 1.
fn submit(e: &mut Encoder, qid: u8, entry: &[u8]) {
    e.u8(qid).u8(qid).bytes(entry);
}

fn mem_write(e: &mut Encoder, addr: u32, bytes: &[u8]) {
    e.u8(2).u32(addr).u8(bytes.len() as u8).bytes(bytes);
}

fn prp_list(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn nvme() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Identify controller and namespace, Get Features (number of queues), Get Log Page (SMART).
    let mut e = Encoder::default();
    e.u8(0);
    submit(&mut e, 0, &sqe(0x06, 10, 0, 0x5000, 0, [1, 0, 0, 0, 0, 0]));
    submit(&mut e, 0, &sqe(0x06, 11, 1, 0x5000, 0, [0, 0, 0, 0, 0, 0]));
    submit(&mut e, 0, &sqe(0x0a, 12, 0, 0, 0, [7, 0, 0, 0, 0, 0]));
    submit(
        &mut e,
        0,
        &sqe(
            0x02,
            13,
            0xffff_ffff,
            0x5000,
            0,
            [0x02 | 127 << 16, 0, 0, 0, 0, 0],
        ),
    );
    seeds.push(("admin-identify-features-log", e.0));

    // Write 16 KiB through a PRP list, read it back, then complete the CQ.
    let mut e = Encoder::default();
    e.u8(0);
    mem_write(&mut e, 0x6000, &prp_list(&[0x8000, 0x9000, 0xa000]));
    submit(
        &mut e,
        1,
        &sqe(0x01, 20, 1, 0x7000, 0x6000, [0, 0, 31, 0, 0, 0]),
    );
    submit(
        &mut e,
        1,
        &sqe(0x02, 21, 1, 0x7000, 0x6000, [0, 0, 31, 0, 0, 0]),
    );
    e.u8(5).u8(1 << 1 | 1).u16(2);
    seeds.push(("io-write-read-prp-list", e.0));

    // 4 KiB blocks, read-only namespace: a write fails, a read of one block with an offset PRP1.
    let mut e = Encoder::default();
    e.u8(1 | 2);
    submit(&mut e, 1, &sqe(0x01, 30, 1, 0x7000, 0, [1, 0, 0, 0, 0, 0]));
    submit(
        &mut e,
        1,
        &sqe(0x02, 31, 1, 0x7800, 0x9000, [1, 0, 0, 0, 0, 0]),
    );
    seeds.push(("io-read-only-4k", e.0));

    // Flush, Write Zeroes, Dataset Management (deallocate two ranges).
    let mut e = Encoder::default();
    e.u8(0);
    let mut ranges = Encoder::default();
    ranges.u32(0).u32(8).u64(16).u32(0).u32(4).u64(100);
    mem_write(&mut e, 0xb000, &ranges.0);
    submit(&mut e, 1, &sqe(0x00, 40, 1, 0, 0, [0; 6]));
    submit(&mut e, 1, &sqe(0x08, 41, 1, 0, 0, [8, 0, 15, 0, 0, 0]));
    submit(
        &mut e,
        1,
        &sqe(0x09, 42, 1, 0xb000, 0, [1, 1 << 2, 0, 0, 0, 0]),
    );
    seeds.push(("io-flush-zeroes-dsm", e.0));

    // A transfer whose second page falls in the RAM hole, and a PRP list that starts in the last
    // two slots of its page and chains back to that same page (a loop).
    let mut e = Encoder::default();
    e.u8(0);
    submit(
        &mut e,
        1,
        &sqe(0x02, 50, 1, 0x1f000, 0x20000, [0, 0, 15, 0, 0, 0]),
    );
    mem_write(&mut e, 0xcff0, &prp_list(&[0x8000, 0xc000]));
    submit(
        &mut e,
        1,
        &sqe(0x02, 51, 1, 0x7000, 0xcff0, [0, 0, 63, 0, 0, 0]),
    );
    seeds.push(("io-prp-hole-and-loop", e.0));

    // Shadow doorbells (Doorbell Buffer Config), an Asynchronous Event Request, an invalid
    // doorbell, Create/Delete of queue pair 2 and a doorbell ring on it.
    let mut e = Encoder::default();
    e.u8(0);
    submit(&mut e, 0, &sqe(0x7c, 60, 0, 0x10000, 0x11000, [0; 6]));
    submit(&mut e, 0, &sqe(0x0c, 61, 0, 0, 0, [0; 6]));
    submit(
        &mut e,
        0,
        &sqe(
            0x05,
            62,
            0,
            0x12000,
            0,
            [2 | 7 << 16, 0b11 | 2 << 16, 0, 0, 0, 0],
        ),
    );
    submit(
        &mut e,
        0,
        &sqe(
            0x01,
            63,
            0,
            0x13000,
            0,
            [2 | 7 << 16, 1 | 2 << 16, 0, 0, 0, 0],
        ),
    );
    mem_write(&mut e, 0x13000, &sqe(0x02, 64, 1, 0x7000, 0, [0; 6]));
    e.u8(5).u8(2 << 1).u16(1);
    e.u8(5).u8(9 << 1).u16(3);
    e.u8(6).u8(2);
    submit(&mut e, 0, &sqe(0x00, 65, 0, 0, 0, [2, 0, 0, 0, 0, 0]));
    submit(&mut e, 0, &sqe(0x04, 66, 0, 0, 0, [2, 0, 0, 0, 0, 0]));
    e.u8(7);
    seeds.push(("admin-shadow-aer-queues", e.0));

    // The driver's own enable sequence through registers, then a shutdown and a reset.
    let mut e = Encoder::default();
    e.u8(4);
    let reg = |e: &mut Encoder, offset: u16, value: u64, width_code: u8| {
        e.u8(3).u16(offset).u8(width_code).u64(value);
    };
    reg(&mut e, 0x24, 0x000f_000f, 2);
    reg(&mut e, 0x28, 0, 3);
    reg(&mut e, 0x30, 0x1000, 3);
    reg(&mut e, 0x14, 1 | 6 << 16 | 4 << 20, 2);
    e.u8(4).u16(0x1c).u8(2);
    submit(&mut e, 0, &sqe(0x06, 70, 0, 0x5000, 0, [1, 0, 0, 0, 0, 0]));
    reg(&mut e, 0x14, 1 | 6 << 16 | 4 << 20 | 1 << 14, 2);
    reg(&mut e, 0x14, 0, 2);
    seeds.push(("registers-enable-shutdown-reset", e.0));
    seeds
}

// ---- virtio rings -----------------------------------------------------------------------------

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A picture of guest RAM, grown as it is written.
#[derive(Default)]
struct Image(Vec<u8>);

impl Image {
    fn put(&mut self, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if self.0.len() < at + bytes.len() {
            self.0.resize(at + bytes.len(), 0);
        }
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn desc(&mut self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut e = Encoder::default();
        e.u64(addr).u32(len).u16(flags).u16(next);
        self.put(table + 16 * u64::from(index), &e.0);
    }

    /// The available ring at `avail` offering `heads`.
    fn avail(&mut self, avail: u64, heads: &[u16]) {
        let mut e = Encoder::default();
        e.u16(0).u16(heads.len() as u16);
        for h in heads {
            e.u16(*h);
        }
        self.put(avail, &e.0);
    }
}

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u32(kind).u32(0).u64(sector);
    e.0
}

/// Queue size 16 (flags % 8 == 3) plus `extra` flags, then the RAM picture.
fn blk_seed(extra: u8, image: Image) -> Vec<u8> {
    let mut out = vec![3 | extra];
    out.extend_from_slice(&image.0);
    out
}

fn virtio_blk() -> Vec<(&'static str, Vec<u8>)> {
    // Queue size 16, packed at 0; buffers from 0x200.
    let ring = SplitRing::packed(0, 16);
    let (desc, avail) = (ring.desc, ring.avail);
    let mut seeds = Vec::new();

    // OUT of 1 KiB at sector 2, IN of it back, GET_ID, FLUSH.
    let mut m = Image::default();
    m.put(0x200, &blk_header(1, 2));
    m.put(0x400, &[0x5a; 1024]);
    m.desc(desc, 0, 0x200, 16, F_NEXT, 1);
    m.desc(desc, 1, 0x400, 1024, F_NEXT, 2);
    m.desc(desc, 2, 0x300, 1, F_WRITE, 0);
    m.put(0x210, &blk_header(0, 2));
    m.desc(desc, 3, 0x210, 16, F_NEXT, 4);
    m.desc(desc, 4, 0x800, 1024, F_WRITE | F_NEXT, 5);
    m.desc(desc, 5, 0x301, 1, F_WRITE, 0);
    m.put(0x220, &blk_header(8, 0));
    m.desc(desc, 6, 0x220, 16, F_NEXT, 7);
    m.desc(desc, 7, 0xc00, 21, F_WRITE, 0);
    m.put(0x230, &blk_header(4, 0));
    m.desc(desc, 8, 0x230, 16, F_NEXT, 9);
    m.desc(desc, 9, 0x302, 1, F_WRITE, 0);
    m.avail(avail, &[0, 3, 6, 8]);
    // The same requests rate limited: the limiter refuses the first and third when first asked.
    let mut throttled = vec![3 | 0x20 | 0x80];
    throttled.extend_from_slice(&0xffff_fffau32.to_le_bytes());
    throttled.extend_from_slice(&m.0);
    seeds.push(("out-in-getid-flush", blk_seed(0x20, m)));
    seeds.push(("rate-limited", throttled));

    // DISCARD and WRITE_ZEROES with one segment each, EVENT_IDX on.
    let mut m = Image::default();
    let mut seg = Encoder::default();
    seg.u64(8).u32(8).u32(0);
    m.put(0x200, &blk_header(11, 0));
    m.put(0x210, &seg.0);
    m.desc(desc, 0, 0x200, 32, F_NEXT, 1);
    m.desc(desc, 1, 0x300, 1, F_WRITE, 0);
    let mut seg = Encoder::default();
    seg.u64(16).u32(8).u32(1);
    m.put(0x220, &blk_header(13, 0));
    m.put(0x230, &seg.0);
    m.desc(desc, 2, 0x220, 16, F_NEXT, 3);
    m.desc(desc, 3, 0x230, 16, F_NEXT, 4);
    m.desc(desc, 4, 0x301, 1, F_WRITE, 0);
    m.avail(avail, &[0, 2]);
    seeds.push(("discard-write-zeroes-event-idx", blk_seed(0x10, m)));

    // An indirect table holding header, data and status; read-only disk so an OUT fails.
    let mut m = Image::default();
    m.put(0x200, &blk_header(0, 0));
    m.desc(0xd00, 0, 0x200, 16, F_NEXT, 1);
    m.desc(0xd00, 1, 0x400, 512, F_WRITE | F_NEXT, 2);
    m.desc(0xd00, 2, 0x300, 1, F_WRITE, 0);
    m.desc(desc, 0, 0xd00, 48, F_INDIRECT, 0);
    m.put(0x210, &blk_header(1, 0));
    m.desc(desc, 1, 0x210, 16, F_NEXT, 2);
    m.desc(desc, 2, 0x600, 512, F_NEXT, 3);
    m.desc(desc, 3, 0x301, 1, F_WRITE, 0);
    m.avail(avail, &[0, 1]);
    seeds.push(("indirect-read-only", blk_seed(0x40, m)));

    // Broken chains: a loop, a buffer in the RAM hole, a readable status, past the capacity.
    let mut m = Image::default();
    m.put(0x200, &blk_header(0, 1 << 40));
    m.desc(desc, 0, 0x200, 16, F_NEXT, 1);
    m.desc(desc, 1, 0x400, 512, F_WRITE | F_NEXT, 0);
    m.desc(desc, 2, 0x200, 16, F_NEXT, 3);
    m.desc(desc, 3, 0x10000, 512, F_WRITE | F_NEXT, 4);
    m.desc(desc, 4, 0x300, 1, F_WRITE, 0);
    m.desc(desc, 5, 0x200, 16, F_NEXT, 6);
    m.desc(desc, 6, 0x300, 1, 0, 0);
    m.desc(desc, 7, 0x200, 16, F_NEXT, 8);
    m.desc(desc, 8, 0x400, 512, F_WRITE | F_NEXT, 9);
    m.desc(desc, 9, 0x300, 1, F_WRITE, 0);
    m.avail(avail, &[0, 2, 5, 7]);
    seeds.push(("broken-chains", blk_seed(0, m)));
    seeds
}

/// virtio_net_chain's feature byte: bit i acknowledges the i-th of CSUM, GUEST_CSUM, GUEST_TSO4,
/// GUEST_TSO6, HOST_TSO4, HOST_TSO6, MRG_RXBUF, MQ.
const NET_CSUM: u8 = 1;
const NET_GUEST_CSUM: u8 = 1 << 1;
const NET_GUEST_TSO4: u8 = 1 << 2;
const NET_HOST_TSO4: u8 = 1 << 4;
const NET_MRG_RXBUF: u8 = 1 << 6;
const NET_MQ: u8 = 1 << 7;

fn virtio_net() -> Vec<(&'static str, Vec<u8>)> {
    // RX, TX and control queues of 16 entries, packed from 0 (RX, TX, control);
    // buffers from 0x1000.
    let rx = SplitRing::packed(0, 16);
    let tx = SplitRing::packed(rx.end, 16);
    let ctrl = SplitRing::packed(tx.end, 16);
    assert!(ctrl.end <= 0x1000);
    let (rx_desc, tx_desc, ctrl_desc) = (rx.desc, tx.desc, ctrl.desc);
    let (rx_avail, tx_avail, ctrl_avail) = (rx.avail, tx.avail, ctrl.avail);
    let mut seeds = Vec::new();
    // `usable`: queue pairs with enabled queues (1 to 4).
    let header = |e: &mut Encoder, acked: u8, usable: u8, frames: &[(u16, u8)]| {
        // RX, TX and control queues of 16 entries, EVENT_IDX on.
        e.u8(3 | 3 << 4 | 0x08)
            .u8(acked)
            .u8(3 | (usable - 1) << 3)
            .u8(frames.len() as u8);
        for (len, fill) in frames {
            e.u16(*len).u8(*fill);
        }
    };

    // Two TX frames (header and frame in one buffer, and split), two RX buffers for two frames.
    let mut m = Image::default();
    m.put(0x1000, &[0; 12]);
    m.put(0x100c, &[0xab; 60]);
    m.desc(tx_desc, 0, 0x1000, 72, 0, 0);
    m.desc(tx_desc, 1, 0x1100, 12, F_NEXT, 2);
    m.desc(tx_desc, 2, 0x1200, 1500, 0, 0);
    m.avail(tx_avail, &[0, 1]);
    m.desc(rx_desc, 0, 0x2000, 2048, F_WRITE, 0);
    m.desc(rx_desc, 1, 0x2800, 12, F_WRITE | F_NEXT, 2);
    m.desc(rx_desc, 2, 0x2900, 2048, F_WRITE, 0);
    m.avail(rx_avail, &[0, 1]);
    let mut e = Encoder::default();
    header(&mut e, 0, 1, &[(60, 1), (1012, 2)]);
    e.bytes(&m.0);
    seeds.push(("tx-rx-plain", e.0));

    // Offloads acked (CSUM, GUEST_CSUM, TSO4 both ways): a TSO4 TX header, a 60 KiB RX frame in a
    // too-small buffer, an indirect RX table.
    let mut m = Image::default();
    let mut hdr = Encoder::default();
    hdr.u8(1).u8(1).u16(54).u16(1448).u16(34).u16(16).u16(0);
    m.put(0x1000, &hdr.0);
    m.desc(tx_desc, 0, 0x1000, 12, F_NEXT, 1);
    m.desc(tx_desc, 1, 0x1100, 4000, 0, 0);
    m.avail(tx_avail, &[0]);
    m.desc(rx_desc, 0, 0x2000, 1024, F_WRITE, 0);
    m.desc(0x3200, 0, 0x10000, 0x4000, F_WRITE, 0);
    m.desc(rx_desc, 1, 0x3200, 16, F_INDIRECT, 0);
    m.avail(rx_avail, &[0, 1]);
    let mut e = Encoder::default();
    let offloads = NET_CSUM | NET_GUEST_CSUM | NET_GUEST_TSO4 | NET_HOST_TSO4;
    header(&mut e, offloads, 1, &[(60012, 3), (212, 4)]);
    e.bytes(&m.0);
    seeds.push(("offloads-tso-indirect", e.0));

    // Malformed: a TX chain with a writable buffer, one into the RAM hole, an RX chain with a
    // readable buffer, an RX chain that loops; runts from the backend.
    let mut m = Image::default();
    m.desc(tx_desc, 0, 0x1000, 12, F_NEXT, 1);
    m.desc(tx_desc, 1, 0x1100, 100, F_WRITE, 0);
    m.desc(tx_desc, 2, 0x18000, 100, 0, 0);
    m.avail(tx_avail, &[0, 2]);
    m.desc(rx_desc, 0, 0x2000, 100, 0, 0);
    m.desc(rx_desc, 1, 0x2000, 100, F_WRITE | F_NEXT, 2);
    m.desc(rx_desc, 2, 0x8100, 100, F_WRITE | F_NEXT, 1);
    m.avail(rx_avail, &[0, 1]);
    let mut e = Encoder::default();
    header(&mut e, 0, 1, &[(0, 7), (11, 8), (112, 5), (112, 6)]);
    e.bytes(&m.0);
    seeds.push(("malformed-runts", e.0));

    // MRG_RXBUF: a 1,500-byte frame over three 512-byte buffers, then a first buffer too small for
    // the header (the frame is dropped), a frame over two buffers, and one for which none is left
    // (it waits).
    let mut m = Image::default();
    for i in 0..5u16 {
        m.desc(rx_desc, i, 0x2000 + 0x200 * u64::from(i), 512, F_WRITE, 0);
    }
    m.desc(rx_desc, 5, 0x3000, 8, F_WRITE, 0);
    m.avail(rx_avail, &[0, 1, 2, 5, 3, 4]);
    let mut e = Encoder::default();
    header(
        &mut e,
        NET_MRG_RXBUF,
        1,
        &[(1512, 9), (112, 10), (712, 11), (2012, 12)],
    );
    e.bytes(&m.0);
    seeds.push(("mrg-rxbuf", e.0));

    // Control queue with MQ: VQ_PAIRS_SET 3 (OK), 5 (more than usable: ERR), 0 (ERR), an unknown
    // class, a command without a status byte, a status byte without a command; then a frame.
    let mut m = Image::default();
    for (i, (cmd, pairs)) in [([4u8, 0], 3u16), ([4, 0], 5), ([4, 0], 0), ([1, 0], 1)]
        .into_iter()
        .enumerate()
    {
        let i = i as u16;
        let at = 0x1000 + 0x40 * u64::from(i);
        m.put(at, &cmd);
        m.put(at + 2, &pairs.to_le_bytes());
        m.desc(ctrl_desc, 2 * i, at, 4, F_NEXT, 2 * i + 1);
        m.desc(ctrl_desc, 2 * i + 1, at + 0x20, 1, F_WRITE, 0);
    }
    m.desc(ctrl_desc, 8, 0x1000, 4, 0, 0);
    m.avail(ctrl_avail, &[0, 2, 4, 6, 8, 1]);
    m.desc(rx_desc, 0, 0x2000, 4096, F_WRITE, 0);
    m.avail(rx_avail, &[0]);
    let mut e = Encoder::default();
    header(&mut e, NET_MQ | NET_MRG_RXBUF, 4, &[(112, 11)]);
    e.bytes(&m.0);
    seeds.push(("ctrl-mq-pairs", e.0));

    // The same commands without MQ negotiated: all refused.
    let mut m2 = m;
    m2.avail(ctrl_avail, &[0, 2]);
    let mut e = Encoder::default();
    header(&mut e, 0, 2, &[]);
    e.bytes(&m2.0);
    seeds.push(("ctrl-no-mq", e.0));
    seeds
}

// ---- pci_config ---------------------------------------------------------------------------------

/// Width codes of the pci_config target.
const W4: u8 = 0;
const W2: u8 = 4;
const W1: u8 = 7;

fn ecam_write(e: &mut Encoder, dev: u8, reg: u16, width: u8, value: u64) {
    e.u8(4).u8(width).u8(0).u8(dev << 3).u16(reg).u64(value);
}

fn ecam_read(e: &mut Encoder, dev: u8, reg: u16, width: u8) {
    e.u8(3).u8(width).u8(0).u8(dev << 3).u16(reg);
}

fn bar_write(e: &mut Encoder, slot: u8, offset: u16, width: u8, value: u64) {
    e.u8(6).u8(width).u8(slot).u16(offset).u64(value);
}

fn bar_read(e: &mut Encoder, slot: u8, offset: u16, width: u8) {
    e.u8(5).u8(width).u8(slot).u16(offset);
}

fn pci() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    // Enumeration through 0xCF8/0xCFC: vendor/device and class of slots 0-4, capability pointer.
    let mut e = Encoder::default();
    for dev in 0..5u32 {
        for reg in [0x00u32, 0x08, 0x34] {
            e.u8(0).u8(W4).u32(0x8000_0000 | dev << 11 | reg);
            e.u8(1).u8(W4).u8(4);
        }
    }
    e.u8(1).u8(W1).u8(6);
    e.u8(2).u8(W2).u8(4).u64(0x0006);
    seeds.push(("enumerate-cf8", e.0));

    // BAR sizing of the NVMe function, memory space on, CAP and CSTS read, MSI-X enabled and a
    // table entry programmed and unmasked, then the controller enabled.
    let mut e = Encoder::default();
    ecam_write(&mut e, 1, 0x10, W4, 0xffff_ffff);
    ecam_read(&mut e, 1, 0x10, W4);
    ecam_write(&mut e, 1, 0x14, W4, 0xffff_ffff);
    ecam_read(&mut e, 1, 0x14, W4);
    ecam_write(&mut e, 1, 0x10, W4, 0xc000_0000);
    ecam_write(&mut e, 1, 0x14, W4, 0);
    ecam_write(&mut e, 1, 0x04, W2, 0x0006);
    ecam_read(&mut e, 1, 0x40, W4);
    ecam_write(&mut e, 1, 0x42, W2, 0x8000);
    bar_read(&mut e, 1, 0x00, 10);
    bar_read(&mut e, 1, 0x1c, W4);
    bar_write(&mut e, 1, 0x2000, W4, 0xfee0_0000);
    bar_write(&mut e, 1, 0x2008, W4, 0x41);
    bar_write(&mut e, 1, 0x200c, W4, 0);
    bar_write(&mut e, 1, 0x24, W4, 0x000f_000f);
    bar_write(&mut e, 1, 0x28, 10, 0x1000);
    bar_write(&mut e, 1, 0x30, 10, 0x2000);
    bar_write(&mut e, 1, 0x14, W4, 1 | 6 << 16 | 4 << 20);
    bar_read(&mut e, 1, 0x1c, W4);
    bar_write(&mut e, 1, 0x1000, W4, 1);
    bar_read(&mut e, 1, 0x3000, 10);
    seeds.push(("nvme-bar-msix-enable", e.0));

    // virtio-blk: memory and bus mastering on, walk the vendor capabilities, driver status
    // handshake through the common configuration, queue 0 set up, DRIVER_OK, a notify; then the
    // PCI_CFG window reading the device configuration; then a reset.
    let mut e = Encoder::default();
    ecam_write(&mut e, 2, 0x04, W2, 0x0006);
    for reg in [0x34u16, 0x40, 0x50, 0x60, 0x70, 0x80, 0x94] {
        ecam_read(&mut e, 2, reg, W4);
    }
    bar_write(&mut e, 2, 0x14, W1, 1);
    bar_write(&mut e, 2, 0x14, W1, 3);
    bar_write(&mut e, 2, 0x08, W4, 1); // driver_feature_select = 1
    bar_write(&mut e, 2, 0x0c, W4, 1); // VERSION_1
    bar_write(&mut e, 2, 0x14, W1, 11);
    bar_read(&mut e, 2, 0x14, W1);
    bar_write(&mut e, 2, 0x16, W2, 0); // queue_select
    bar_write(&mut e, 2, 0x18, W2, 16); // queue_size
    bar_write(&mut e, 2, 0x20, 10, 0x10000); // queue_desc
    bar_write(&mut e, 2, 0x28, 10, 0x11000); // queue_driver
    bar_write(&mut e, 2, 0x30, 10, 0x12000); // queue_device
    bar_write(&mut e, 2, 0x1c, W2, 1); // queue_enable
    bar_write(&mut e, 2, 0x14, W1, 15); // DRIVER_OK
    bar_write(&mut e, 2, 0x3000, W2, 0);
    bar_read(&mut e, 2, 0x1000, W1);
    bar_read(&mut e, 2, 0x2000, 10);
    ecam_write(&mut e, 2, 0x88, W1, 0);
    ecam_write(&mut e, 2, 0x8c, W4, 0x2000);
    ecam_write(&mut e, 2, 0x90, W4, 4);
    ecam_read(&mut e, 2, 0x94, W4);
    bar_write(&mut e, 2, 0x14, W1, 0);
    seeds.push(("virtio-blk-handshake-pci-cfg", e.0));

    // BAR moves: virtio-blk's BAR onto RAM, onto the NVMe BAR, onto the ECAM window, into the 64-bit
    // window; memory space toggled; MSI-X function mask; odd widths.
    let mut e = Encoder::default();
    ecam_write(&mut e, 1, 0x04, W2, 0x0002);
    ecam_write(&mut e, 2, 0x04, W2, 0x0002);
    ecam_write(&mut e, 2, 0x10, W4, 0x0);
    ecam_write(&mut e, 2, 0x10, W4, 0xc000_0000);
    ecam_write(&mut e, 2, 0x10, W4, 0xe000_0000);
    ecam_write(&mut e, 2, 0x10, W4, 0x0000_0000);
    ecam_write(&mut e, 2, 0x14, W4, 0x1);
    bar_read(&mut e, 2, 0x2000, W4);
    ecam_write(&mut e, 2, 0x04, W2, 0x0000);
    ecam_write(&mut e, 2, 0x04, W2, 0x0002);
    ecam_write(&mut e, 2, 0x42, W2, 0xc000);
    bar_write(&mut e, 2, 0x4000, 11, 0x1234_5678);
    bar_read(&mut e, 2, 0x6000, 13);
    bar_write(&mut e, 2, 0x14, 12, 0xff);
    ecam_write(&mut e, 2, 0xffe, 14, 0xffff);
    seeds.push(("bar-moves-and-odd-widths", e.0));
    seeds
}

// ---- cli_config -----------------------------------------------------------------------------------

fn cli() -> Vec<(&'static str, Vec<u8>)> {
    let args = |selector: u8, text: &str| {
        let mut v = vec![selector];
        v.extend_from_slice(text.as_bytes());
        v
    };
    vec![
        (
            "run-flags",
            args(
                0,
                "run\0--kernel\0/k\0--instance-type\0c5.xlarge\0--cpus\x002\0--memory\x004G\0\
                 --cmdline\0console=ttyS0 panic=1\0--serial\0file=/tmp/s\0--log-level\0info",
            ),
        ),
        (
            "run-volumes-disks-nets",
            args(
                0,
                "run\0--kernel\0/k\0--volume\0path=a.img,id=vol-0123456789abcdef0,name=sdf,\
                 type=gp3,iops=4000,throughput=250M\0--volume\0path=b.img,readonly=on,\
                 block_size=4096,type=io2,iops=1000\0--disk\0path=c.img,readonly=on,id=d1,\
                 queues=2\0--net\0tap=tap0,mac=02:00:00:00:00:01\0--ebs-burst-seconds\x0060",
            ),
        ),
        (
            "instance-types",
            args(0, "instance-types\0--instance-generation\0current"),
        ),
        (
            "json",
            args(
                1,
                r#"{"kernel": "vmlinux", "instance_type": "c5.2xlarge", "memory": 4096,
                "volumes": ["path=root.img,type=gp2"], "disks": ["path=d.img"],
                "nets": ["tap=t0"], "cmdline": "console=ttyS0", "cpu_profile": "pvm-compat"}"#,
            ),
        ),
        (
            "toml",
            args(
                2,
                "kernel = \"vmlinux\"\ncpus = 4\nmemory = \"2G\"\ninstance_generation = \"launch\"\n\
                 volumes = [\"path=root.img,type=gp3\"]\nserial = \"off\"\n",
            ),
        ),
        (
            "specs",
            args(
                3,
                "path=x.img,type=gp3,throughput=1000M,iops=16000\n4G\n144G\n512\n125M\n\
                 02:00:00:00:00:01\ntap=tap0,queues=1\npath=d.img,queues=16\n18446744073709551615T",
            ),
        ),
    ]
}
