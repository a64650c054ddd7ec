use super::rx::scatter;
use super::worker::gather;
use super::*;
use crate::virtio::Chain;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use vm_memory::{Bytes, GuestMemoryMmap};

/// What every device offers without offloads or MQ.
const BASE_FEATURES: u64 = 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_CTRL_VQ
    | 1 << VIRTIO_NET_F_MRG_RXBUF;

/// A request the device made of its TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TapCall {
    Offload(u32),
    Attach(usize, bool),
}

/// Records the device's TAP requests.
struct TestControl(Arc<Mutex<Vec<TapCall>>>);

impl TapControl for TestControl {
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().push(TapCall::Offload(flags));
        Ok(())
    }
    fn set_queue_attached(&self, pair: usize, attached: bool) -> std::io::Result<()> {
        self.0.lock().unwrap().push(TapCall::Attach(pair, attached));
        Ok(())
    }
}

fn socket_tap() -> (File, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (File::from(OwnedFd::from(a)), b)
}

#[test]
fn config_space_has_the_mac_and_link_up() {
    let (tap, _peer) = socket_tap();
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let dev = VirtioNet::new(vec![tap], mac).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_NET);
    assert_eq!(
        dev.queue_max_sizes(),
        vec![QUEUE_SIZE, QUEUE_SIZE, CTRL_QUEUE_SIZE]
    );
    assert_eq!(dev.device_features(), BASE_FEATURES);
    let mut c = [0u8; CONFIG_LEN];
    dev.read_config(0, &mut c);
    assert_eq!(&c[0..6], &mac);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
    // Past the end and huge offsets: left alone.
    let mut d = [0xAAu8; 4];
    dev.read_config(8, &mut d);
    assert_eq!(d, [1, 0, 0xAA, 0xAA]);
    dev.read_config(u64::MAX, &mut d);
    assert_eq!(d, [1, 0, 0xAA, 0xAA]);
}

#[test]
fn mac_validity() {
    assert!(valid_mac(&[2, 0, 0, 0, 0, 1]));
    assert!(!valid_mac(&[1, 0, 0, 0, 0, 1]));
    assert!(!valid_mac(&[0; 6]));
}

#[test]
fn gather_and_scatter_respect_the_chain() {
    use crate::virtio::Segment;
    use vm_memory::GuestAddress;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&[7u8; 20], GuestAddress(0x1000)).unwrap();
    mem.write_slice(&[9u8; 50], GuestAddress(0x2000)).unwrap();
    let chain = Chain {
        head: 0,
        readable: vec![
            Segment {
                addr: GuestAddress(0x1000),
                len: 20,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 50,
            },
        ],
        writable: vec![],
    };
    let mut buf = vec![0u8; 100];
    assert_eq!(gather(&mem, &chain, &mut buf), Some(70));
    assert_eq!(&buf[..20], &[7u8; 20]);
    assert_eq!(&buf[20..70], &[9u8; 50]);
    // Too short for a header, too long for the buffer, or with a writable part: not a frame.
    let short = Chain {
        head: 0,
        readable: vec![Segment {
            addr: GuestAddress(0x1000),
            len: 11,
        }],
        writable: vec![],
    };
    assert_eq!(gather(&mem, &short, &mut buf), None);
    assert_eq!(gather(&mem, &chain, &mut [0u8; 69]), None);
    let mixed = Chain {
        writable: vec![Segment {
            addr: GuestAddress(0x3000),
            len: 4,
        }],
        ..chain.clone()
    };
    assert_eq!(gather(&mem, &mixed, &mut buf), None);
    // Scatter over two buffers.
    let rx = Chain {
        head: 0,
        readable: vec![],
        writable: vec![
            Segment {
                addr: GuestAddress(0x4000),
                len: 16,
            },
            Segment {
                addr: GuestAddress(0x5000),
                len: 100,
            },
        ],
    };
    let data: Vec<u8> = (0..40).collect();
    assert_eq!(scatter(&mem, &rx, &data), Some(40));
    let mut back = [0u8; 24];
    mem.read_slice(&mut back, GuestAddress(0x5000)).unwrap();
    assert_eq!(&back[..], &data[16..]);
}

// ---- The whole device through BAR accesses: transport, worker thread, reset. ----

use std::time::{Duration, Instant};

use crate::pci::PciDevice;
use crate::virtio::common::offsets;
use crate::virtio::pci::{DEVICE_CONFIG_OFFSET, NOTIFY_OFFSET};
use crate::virtio::queue::testing::{TestRing, F_WRITE};
use crate::virtio::VirtioPciDevice;
use vm_memory::GuestAddress;

const RAM: u64 = 0x10_0000;
const RX_RING: u64 = 0x1_0000;
const TX_RING: u64 = 0x2_0000;
const BUF: u64 = 0x4_0000;

fn bar_w(dev: &mut VirtioPciDevice, offset: u64, width: usize, value: u64) {
    dev.bar_write(0, offset, &value.to_le_bytes()[..width]);
}

fn bar_r(dev: &mut VirtioPciDevice, offset: u64, width: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(0, offset, &mut b[..width]);
    u64::from_le_bytes(b)
}

struct Driver {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    rx: TestRing,
    tx: TestRing,
    peer: UnixDatagram,
}

impl Driver {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let (tap, peer) = socket_tap();
        peer.set_nonblocking(true).unwrap();
        let net = VirtioNet::new(vec![tap], [2, 0, 0, 0, 0, 7]).unwrap();
        let mut dev = VirtioPciDevice::new(Box::new(net), mem.clone()).unwrap();
        dev.config_write(0x04, &[0x06, 0x00]);
        let rx = TestRing::new(&mem, RX_RING, 16);
        let tx = TestRing::new(&mem, TX_RING, 16);
        Self {
            dev,
            mem,
            rx,
            tx,
            peer,
        }
    }

    fn init(&mut self) -> u8 {
        self.init_with(0)
    }

    /// Initialisation with MAC, STATUS, VERSION_1 and the extra low feature bits `extra`.
    fn init_with(&mut self, extra: u64) -> u8 {
        let d = &mut self.dev;
        bar_w(d, offsets::DEVICE_STATUS, 1, 0);
        bar_w(d, offsets::DEVICE_STATUS, 1, 1);
        bar_w(d, offsets::DEVICE_STATUS, 1, 3);
        bar_w(d, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        bar_w(
            d,
            offsets::DRIVER_FEATURE,
            4,
            1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | extra,
        );
        bar_w(d, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        bar_w(d, offsets::DRIVER_FEATURE, 4, 1);
        bar_w(d, offsets::DEVICE_STATUS, 1, 0xb);
        self.rx = TestRing::new(&self.mem, RX_RING, 16);
        self.tx = TestRing::new(&self.mem, TX_RING, 16);
        for (q, ring) in [(0u64, &self.rx), (1, &self.tx)] {
            let d = &mut self.dev;
            bar_w(d, offsets::QUEUE_SELECT, 2, q);
            bar_w(d, offsets::QUEUE_SIZE, 2, 16);
            bar_w(d, offsets::QUEUE_DESC, 8, ring.desc);
            bar_w(d, offsets::QUEUE_DRIVER, 8, ring.avail);
            bar_w(d, offsets::QUEUE_DEVICE, 8, ring.used);
            bar_w(d, offsets::QUEUE_ENABLE, 2, 1);
        }
        bar_w(&mut self.dev, offsets::DEVICE_STATUS, 1, 0xf);
        bar_r(&mut self.dev, offsets::DEVICE_STATUS, 1) as u8
    }

    fn wait_used(ring: &TestRing, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ring.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "used idx stuck at {}",
                ring.used_idx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 70000];
        loop {
            match self.peer.recv(&mut buf) {
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

fn frame(seq: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seq)).collect()
}

#[test]
fn device_moves_frames_both_ways() {
    let mut d = Driver::new();
    assert_eq!(d.init(), 0xf);
    assert_eq!(bar_r(&mut d.dev, DEVICE_CONFIG_OFFSET, 4), 0x0000_0002);
    assert_eq!(bar_r(&mut d.dev, DEVICE_CONFIG_OFFSET + 6, 2), 1);

    // TX: header (with garbage offload fields: none was offered, so they are cleared) and frame
    // in two buffers; the TAP gets one packet.
    let f = frame(3, 60);
    d.mem.write_slice(&[0xEE; 12], GuestAddress(BUF)).unwrap();
    d.mem.write_slice(&f, GuestAddress(BUF + 0x100)).unwrap();
    let head = d.tx.chain(0, &[(BUF, 12, 0), (BUF + 0x100, 60, 0)]);
    d.tx.publish(head);
    // Malformed: outside RAM, writable, too short for a header; then a good one.
    let bad1 = d.tx.chain(2, &[(BUF, 12, 0), (RAM + 0x1000, 60, 0)]);
    d.tx.publish(bad1);
    let bad2 = d.tx.chain(4, &[(BUF, 12, 0), (BUF + 0x100, 60, F_WRITE)]);
    d.tx.publish(bad2);
    let bad3 = d.tx.chain(6, &[(BUF, 8, 0)]);
    d.tx.publish(bad3);
    let good = d.tx.chain(7, &[(BUF, 12, 0), (BUF + 0x100, 60, 0)]);
    d.tx.publish(good);
    bar_w(&mut d.dev, NOTIFY_OFFSET + 4, 2, 1);
    Driver::wait_used(&d.tx, 5);
    for n in 0..5 {
        assert_eq!(d.tx.used_entry(n).1, 0);
    }
    for _ in 0..2 {
        let p = d.recv().expect("a frame on the TAP");
        assert_eq!(p.len(), 72);
        assert_eq!(&p[..12], &[0u8; 12]);
        assert_eq!(&p[12..], &f[..]);
    }
    assert!(d.peer.recv(&mut [0u8; 100]).is_err(), "only two frames");

    // RX: a frame arrives before any buffer; it waits (the TAP is not polled meanwhile).
    let mut pkt = vec![0u8; 12];
    pkt.extend(frame(5, 1514));
    d.peer.send(&pkt).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.rx.used_idx(), 0);
    // A buffer too small for it: returned empty, the frame dropped. Then two good buffers.
    let small = d.rx.chain(0, &[(BUF + 0x1000, 100, F_WRITE)]);
    d.rx.publish(small);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    Driver::wait_used(&d.rx, 1);
    assert_eq!(d.rx.used_entry(0), (0, 0));
    let b1 = d.rx.chain(
        1,
        &[(BUF + 0x2000, 12, F_WRITE), (BUF + 0x3000, 2048, F_WRITE)],
    );
    d.rx.publish(b1);
    let b2 = d.rx.chain(3, &[(BUF + 0x4000, 2048, F_WRITE)]);
    d.rx.publish(b2);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    d.peer.send(&pkt).unwrap();
    Driver::wait_used(&d.rx, 2);
    assert_eq!(d.rx.used_entry(1), (1, 1526));
    let mut hdr = [0u8; 12];
    d.mem
        .read_slice(&mut hdr, GuestAddress(BUF + 0x2000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
    let mut got = vec![0u8; 1514];
    d.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x3000))
        .unwrap();
    assert_eq!(got, frame(5, 1514));
    // A runt from the TAP (shorter than a header) is skipped.
    d.peer.send(&[1, 2, 3]).unwrap();
    let mut pkt2 = vec![0u8; 12];
    pkt2.extend(frame(9, 60));
    d.peer.send(&pkt2).unwrap();
    Driver::wait_used(&d.rx, 3);
    assert_eq!(d.rx.used_entry(2), (3, 72));

    // A frame waiting for an RX buffer survives TX traffic meanwhile.
    let mut pkt3 = vec![0u8; 12];
    pkt3.extend(frame(11, 1000));
    d.peer.send(&pkt3).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let tx_frame = frame(13, 1400);
    d.mem
        .write_slice(&tx_frame, GuestAddress(BUF + 0x8000))
        .unwrap();
    let head = d.tx.chain(8, &[(BUF, 12, 0), (BUF + 0x8000, 1400, 0)]);
    d.tx.publish(head);
    bar_w(&mut d.dev, NOTIFY_OFFSET + 4, 2, 1);
    Driver::wait_used(&d.tx, 6);
    assert_eq!(d.recv().expect("the TX frame").len(), 1412);
    let b4 = d.rx.chain(4, &[(BUF + 0x5000, 2048, F_WRITE)]);
    d.rx.publish(b4);
    bar_w(&mut d.dev, NOTIFY_OFFSET, 2, 0);
    Driver::wait_used(&d.rx, 4);
    assert_eq!(d.rx.used_entry(3), (4, 1012));
    let mut got = vec![0u8; 1000];
    d.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x5000 + 12))
        .unwrap();
    assert_eq!(got, frame(11, 1000), "the waiting RX frame");

    // Reset, then everything again.
    bar_w(&mut d.dev, offsets::DEVICE_STATUS, 1, 0);
    assert_eq!(bar_r(&mut d.dev, offsets::DEVICE_STATUS, 1), 0);
    assert_eq!(d.init(), 0xf);
    let head = d.tx.chain(0, &[(BUF, 12, 0), (BUF + 0x100, 60, 0)]);
    d.tx.publish(head);
    bar_w(&mut d.dev, NOTIFY_OFFSET + 4, 2, 1);
    Driver::wait_used(&d.tx, 1);
    assert_eq!(d.recv().expect("a frame after the reset").len(), 72);
}

#[test]
fn tap_offloads_follow_the_acked_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(
        tap_offloads(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4])),
        0
    );
    // TSO without GUEST_CSUM means nothing.
    assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM])), TUN_F_CSUM);
    assert_eq!(
        tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4])),
        TUN_F_CSUM | TUN_F_TSO4
    );
    assert_eq!(
        tap_offloads(OFFLOAD_FEATURES),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    );
}

#[test]
fn tx_headers_are_checked_against_the_acked_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
    // Without CSUM the header is cleared.
    let mut h = [0xFFu8; 12];
    assert!(fix_tx_header(&mut h, 0));
    assert_eq!(h, [0; 12]);
    // With CSUM: partial checksums pass, TSO only as negotiated, UDP and ECN never.
    let csum = f(&[VIRTIO_NET_F_CSUM]);
    let mut h = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 5, 5];
    assert!(fix_tx_header(&mut h, csum));
    assert_eq!(h, [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]);
    for (gso, acked, ok) in [
        (GSO_TCPV4, csum, false),
        (GSO_TCPV4, csum | f(&[VIRTIO_NET_F_HOST_TSO4]), true),
        (GSO_TCPV6, csum | f(&[VIRTIO_NET_F_HOST_TSO4]), false),
        (GSO_TCPV6, csum | f(&[VIRTIO_NET_F_HOST_TSO6]), true),
        (3, OFFLOAD_FEATURES, false),
        (GSO_TCPV4 | 0x80, OFFLOAD_FEATURES, false),
    ] {
        let mut h = [1, gso, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        assert_eq!(
            fix_tx_header(&mut h, acked),
            ok,
            "gso {gso} acked {acked:#x}"
        );
    }
}

#[test]
fn offloads_are_set_at_driver_ok_and_cleared_on_reset() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let (tap, _peer) = socket_tap();
    let log = calls.clone();
    let net = VirtioNet::new(vec![tap], [2, 0, 0, 0, 0, 8])
        .unwrap()
        .with_tap_control(Box::new(TestControl(log)));
    assert_eq!(net.device_features(), BASE_FEATURES | OFFLOAD_FEATURES);
    let mut dev = VirtioPciDevice::new(Box::new(net), mem.clone()).unwrap();
    dev.config_write(0x04, &[0x06, 0x00]);
    let mut d = Driver {
        dev,
        rx: TestRing::new(&mem, RX_RING, 16),
        tx: TestRing::new(&mem, TX_RING, 16),
        mem,
        peer: UnixDatagram::pair().unwrap().0,
    };
    // The driver takes GUEST_CSUM and GUEST_TSO4 only.
    let acked = 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(d.init_with(acked), 0xf);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![TapCall::Offload(TUN_F_CSUM | TUN_F_TSO4)]
    );
    bar_w(&mut d.dev, offsets::DEVICE_STATUS, 1, 0);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            TapCall::Offload(TUN_F_CSUM | TUN_F_TSO4),
            TapCall::Offload(0)
        ]
    );
}

// ---- Several queue pairs, the control queue, merged RX buffers, rate limits. ----

const MQ_RAM: u64 = 0x40_0000;
const MQ_BUF: u64 = 0x20_0000;

/// A driver of a device with any number of queue pairs: rings at 64 KiB steps, queue q's at
/// 0x1_0000 × (q + 1); buffers from [`MQ_BUF`].
struct MqDriver {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    rings: Vec<TestRing>,
    peers: Vec<UnixDatagram>,
    calls: Arc<Mutex<Vec<TapCall>>>,
}

impl MqDriver {
    fn new(pairs: usize, limits: NetRateLimits) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MQ_RAM as usize)]).unwrap();
        let (taps, peers): (Vec<File>, Vec<UnixDatagram>) = (0..pairs)
            .map(|_| {
                let (tap, peer) = socket_tap();
                peer.set_nonblocking(true).unwrap();
                (tap, peer)
            })
            .unzip();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let net = VirtioNet::new(taps, [2, 0, 0, 0, 0, 9])
            .unwrap()
            .with_tap_control(Box::new(TestControl(calls.clone())))
            .with_rate_limits(limits);
        let mut dev = VirtioPciDevice::new(Box::new(net), mem.clone()).unwrap();
        dev.config_write(0x04, &[0x06, 0x00]);
        Self {
            dev,
            mem,
            rings: Vec::new(),
            peers,
            calls,
        }
    }

    /// Negotiates MAC, STATUS, VERSION_1 and `extra`, enables queues `0..queues` (16 entries
    /// each) and sets DRIVER_OK; returns the status.
    fn init(&mut self, extra: u64, queues: u16) -> u8 {
        let d = &mut self.dev;
        bar_w(d, offsets::DEVICE_STATUS, 1, 0);
        bar_w(d, offsets::DEVICE_STATUS, 1, 3);
        bar_w(d, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        bar_w(
            d,
            offsets::DRIVER_FEATURE,
            4,
            (1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | extra) & 0xffff_ffff,
        );
        bar_w(d, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        bar_w(d, offsets::DRIVER_FEATURE, 4, 1);
        bar_w(d, offsets::DEVICE_STATUS, 1, 0xb);
        self.rings = (0..queues)
            .map(|q| TestRing::new(&self.mem, 0x1_0000 * (u64::from(q) + 1), 16))
            .collect();
        for (q, ring) in self.rings.iter().enumerate() {
            let d = &mut self.dev;
            bar_w(d, offsets::QUEUE_SELECT, 2, q as u64);
            bar_w(d, offsets::QUEUE_SIZE, 2, 16);
            bar_w(d, offsets::QUEUE_DESC, 8, ring.desc);
            bar_w(d, offsets::QUEUE_DRIVER, 8, ring.avail);
            bar_w(d, offsets::QUEUE_DEVICE, 8, ring.used);
            bar_w(d, offsets::QUEUE_ENABLE, 2, 1);
        }
        bar_w(&mut self.dev, offsets::DEVICE_STATUS, 1, 0xf);
        bar_r(&mut self.dev, offsets::DEVICE_STATUS, 1) as u8
    }

    fn kick(&mut self, q: u64) {
        bar_w(&mut self.dev, NOTIFY_OFFSET + 4 * q, 2, q);
    }

    /// Sends control command `cmd` (readable bytes at MQ_BUF + 0x10000, ack at + 0x10100) on
    /// queue `q` and returns (used length, ack byte).
    fn command(&mut self, q: usize, first: u16, cmd: &[u8]) -> (u32, u8) {
        let at = MQ_BUF + 0x1_0000;
        self.mem.write_slice(cmd, GuestAddress(at)).unwrap();
        self.mem
            .write_obj(0xAAu8, GuestAddress(at + 0x100))
            .unwrap();
        let ring = &mut self.rings[q];
        let n = ring.used_idx();
        let head = ring.chain(
            first,
            &[(at, cmd.len() as u32, 0), (at + 0x100, 1, F_WRITE)],
        );
        ring.publish(head);
        self.kick(q as u64);
        Driver::wait_used(&self.rings[q], n.wrapping_add(1));
        let used = self.rings[q].used_entry(n).1;
        (used, self.mem.read_obj(GuestAddress(at + 0x100)).unwrap())
    }

    fn recv(&self, pair: usize) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 70000];
        loop {
            match self.peers[pair].recv(&mut buf) {
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0u8; NET_HDR_LEN];
    pkt.extend_from_slice(payload);
    pkt
}

#[test]
fn queue_pairs_are_switched_by_the_control_queue() {
    let mut d = MqDriver::new(2, NetRateLimits::default());
    let mq = 1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_MQ;
    assert_eq!(bar_r(&mut d.dev, DEVICE_CONFIG_OFFSET + 8, 2), 2);
    // rx0 tx0 rx1 tx1 ctrl.
    assert_eq!(d.init(mq, 5), 0xf);
    // Only pair 0 at first: pair 1's TAP queue is detached.
    assert_eq!(
        *d.calls.lock().unwrap(),
        vec![TapCall::Offload(0), TapCall::Attach(1, false)]
    );
    // A frame on pair 1's TAP queue waits while the pair is off, even with buffers posted.
    for (q, base) in [(0usize, MQ_BUF), (2, MQ_BUF + 0x4000)] {
        let head = d.rings[q].chain(0, &[(base, 2048, F_WRITE)]);
        d.rings[q].publish(head);
        d.kick(q as u64);
    }
    d.peers[1].send(&with_header(&frame(21, 300))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.rings[2].used_idx(), 0);

    // Malformed and unknown commands: ERR, or returned unanswered; the queue goes on.
    assert_eq!(
        d.command(4, 0, &[4, 0, 3, 0]),
        (1, ctrl::VIRTIO_NET_ERR),
        "3 pairs"
    );
    assert_eq!(
        d.command(4, 2, &[4, 0, 0, 0]),
        (1, ctrl::VIRTIO_NET_ERR),
        "0 pairs"
    );
    assert_eq!(
        d.command(4, 4, &[4, 0, 2]),
        (1, ctrl::VIRTIO_NET_ERR),
        "short"
    );
    assert_eq!(
        d.command(4, 6, &[4, 1, 2, 0]),
        (1, ctrl::VIRTIO_NET_ERR),
        "cmd 1"
    );
    assert_eq!(
        d.command(4, 8, &[0, 0, 1]),
        (1, ctrl::VIRTIO_NET_ERR),
        "class 0"
    );
    // No writable byte: nothing to answer in.
    let n = d.rings[4].used_idx();
    let head = d.rings[4].chain(10, &[(MQ_BUF + 0x1_0000, 4, 0)]);
    d.rings[4].publish(head);
    // A buffer outside guest RAM.
    let head = d.rings[4].chain(11, &[(MQ_RAM + 0x1000, 4, 0), (MQ_BUF, 1, F_WRITE)]);
    d.rings[4].publish(head);
    d.kick(4);
    Driver::wait_used(&d.rings[4], n + 2);
    assert_eq!(d.rings[4].used_entry(n), (10, 0));
    assert_eq!(d.rings[4].used_entry(n + 1), (11, 0));
    assert_eq!(d.rings[2].used_idx(), 0, "pair 1 still off");

    // Two pairs: the TAP queue is attached and the waiting frame arrives on RX queue 2.
    assert_eq!(d.command(4, 0, &[4, 0, 2, 0]), (1, ctrl::VIRTIO_NET_OK));
    assert_eq!(
        d.calls.lock().unwrap().last(),
        Some(&TapCall::Attach(1, true))
    );
    Driver::wait_used(&d.rings[2], 1);
    assert_eq!(d.rings[2].used_entry(0), (0, 312));
    let mut got = vec![0u8; 300];
    d.mem
        .read_slice(&mut got, GuestAddress(MQ_BUF + 0x4000 + 12))
        .unwrap();
    assert_eq!(got, frame(21, 300));
    // TX on both pairs reaches each pair's TAP queue.
    for (pair, seq) in [(0usize, 31u8), (1, 32)] {
        let at = MQ_BUF + 0x8000 + 0x1000 * pair as u64;
        d.mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
        d.mem
            .write_slice(&frame(seq, 100), GuestAddress(at + 12))
            .unwrap();
        let q = 2 * pair + 1;
        let head = d.rings[q].chain(0, &[(at, 112, 0)]);
        d.rings[q].publish(head);
        d.kick(q as u64);
        let p = d.recv(pair).expect("a frame on the pair's TAP queue");
        assert_eq!(&p[12..], &frame(seq, 100)[..]);
    }

    // Back to one pair: pair 1 detached, frames sent to it are not delivered.
    assert_eq!(d.command(4, 0, &[4, 0, 1, 0]), (1, ctrl::VIRTIO_NET_OK));
    assert_eq!(
        d.calls.lock().unwrap().last(),
        Some(&TapCall::Attach(1, false))
    );
    let head = d.rings[2].chain(1, &[(MQ_BUF + 0x5000, 2048, F_WRITE)]);
    d.rings[2].publish(head);
    d.kick(2);
    d.peers[1].send(&with_header(&frame(22, 300))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.rings[2].used_idx(), 1);
}

#[test]
fn without_mq_the_control_queue_is_queue_2_and_refuses_pairs() {
    let mut d = MqDriver::new(2, NetRateLimits::default());
    // CTRL_VQ only: one pair, control queue 2.
    assert_eq!(d.init(1 << VIRTIO_NET_F_CTRL_VQ, 3), 0xf);
    assert_eq!(d.command(2, 0, &[4, 0, 1, 0]), (1, ctrl::VIRTIO_NET_ERR));
    // Pair 0 still works.
    let head = d.rings[1].chain(0, &[(MQ_BUF, 12, 0), (MQ_BUF + 0x100, 60, 0)]);
    d.rings[1].publish(head);
    d.kick(1);
    assert_eq!(d.recv(0).expect("a frame").len(), 72);
}

#[test]
fn a_frame_spreads_over_merged_rx_buffers() {
    let mut d = MqDriver::new(1, NetRateLimits::default());
    assert_eq!(d.init(1 << VIRTIO_NET_F_MRG_RXBUF, 2), 0xf);
    // Four 512-byte buffers; a 1,500-byte frame (1,512 with its header) takes three.
    for i in 0..4u16 {
        let head = d.rings[0].chain(i, &[(MQ_BUF + 0x1000 * u64::from(i), 512, F_WRITE)]);
        d.rings[0].publish(head);
    }
    d.kick(0);
    let f = frame(7, 1500);
    d.peers[0].send(&with_header(&f)).unwrap();
    Driver::wait_used(&d.rings[0], 3);
    let entries: Vec<_> = (0..3).map(|n| d.rings[0].used_entry(n)).collect();
    assert_eq!(entries, vec![(0, 512), (1, 512), (2, 488)]);
    let mut got = Vec::new();
    for (i, len) in [(0u64, 512usize), (1, 512), (2, 488)] {
        let mut b = vec![0u8; len];
        d.mem
            .read_slice(&mut b, GuestAddress(MQ_BUF + 0x1000 * i))
            .unwrap();
        got.extend(b);
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[12..], &f[..]);

    // A frame needing two buffers with one left: it waits, then goes into the old one and a new one.
    let f = frame(8, 700);
    d.peers[0].send(&with_header(&f)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.rings[0].used_idx(), 3);
    let head = d.rings[0].chain(4, &[(MQ_BUF + 0x4000, 512, F_WRITE)]);
    d.rings[0].publish(head);
    d.kick(0);
    Driver::wait_used(&d.rings[0], 5);
    assert_eq!(d.rings[0].used_entry(3), (3, 512));
    assert_eq!(d.rings[0].used_entry(4), (4, 200));
    let mut b = vec![0u8; 12];
    d.mem
        .read_slice(&mut b, GuestAddress(MQ_BUF + 0x3000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 2);

    // A first buffer too small for the header: the frame is dropped with it; the next one is fine.
    let head = d.rings[0].chain(5, &[(MQ_BUF + 0x5000, 8, F_WRITE)]);
    d.rings[0].publish(head);
    let head = d.rings[0].chain(6, &[(MQ_BUF + 0x6000, 2048, F_WRITE)]);
    d.rings[0].publish(head);
    d.kick(0);
    d.peers[0].send(&with_header(&frame(9, 100))).unwrap();
    d.peers[0].send(&with_header(&frame(10, 100))).unwrap();
    Driver::wait_used(&d.rings[0], 7);
    assert_eq!(d.rings[0].used_entry(5), (5, 0));
    assert_eq!(d.rings[0].used_entry(6), (6, 112));
    let mut b = vec![0u8; 112];
    d.mem
        .read_slice(&mut b, GuestAddress(MQ_BUF + 0x6000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1);
    assert_eq!(&b[12..], &frame(10, 100)[..]);

    // A frame larger than the whole ring can hold (16 × 64 bytes): dropped, every buffer returned.
    for i in 0..16u16 {
        let head = d.rings[0].chain(i, &[(MQ_BUF + 0x100 * u64::from(i), 64, F_WRITE)]);
        d.rings[0].publish(head);
    }
    d.kick(0);
    d.peers[0].send(&with_header(&frame(11, 2000))).unwrap();
    Driver::wait_used(&d.rings[0], 7 + 16);
    assert!((7..23).all(|n| d.rings[0].used_entry(n).1 == 0));
}

#[test]
fn tx_and_rx_wait_for_the_rate_limiter() {
    use crate::rate_limiter::{BucketConfig, RateLimiterConfig, SharedRateLimiter};
    // 200 kB/s with a 2 kB bucket: 21 frames of 1,000 bytes take 19 × 5 ms after the first two.
    // The upper bound only catches a stall: a loaded host delays the worker's wake-ups.
    let cap = || {
        SharedRateLimiter::new(&RateLimiterConfig {
            bytes: Some(BucketConfig::fixed(200_000.0, 2000)),
            ops: None,
        })
        .unwrap()
    };
    let limits = NetRateLimits {
        rx: Some(cap()),
        tx: Some(cap()),
    };
    let mut d = MqDriver::new(1, limits);
    assert_eq!(d.init(0, 2), 0xf);
    d.mem.write_slice(&[0u8; 12], GuestAddress(MQ_BUF)).unwrap();
    d.mem
        .write_slice(&frame(3, 1000), GuestAddress(MQ_BUF + 12))
        .unwrap();
    let started = Instant::now();
    for round in 0..3u16 {
        let frames = if round == 2 { 5 } else { 8 };
        for i in 0..frames {
            let head = d.rings[1].chain(i, &[(MQ_BUF, 1012, 0)]);
            d.rings[1].publish(head);
        }
        d.kick(1);
        for _ in 0..frames {
            assert_eq!(d.recv(0).expect("a TX frame").len(), 1012);
        }
    }
    let tx_time = started.elapsed();
    assert!(
        (Duration::from_millis(90)..Duration::from_secs(3)).contains(&tx_time),
        "21 TX frames took {tx_time:?}"
    );
    // RX: 21 frames into 21 buffers (posted in two rounds: the ring has 16).
    let started = Instant::now();
    for (round, count) in [(0u16, 12u16), (1, 9)] {
        for i in 0..count {
            let head = d.rings[0].chain(i, &[(MQ_BUF + 0x1000 * u64::from(i + 1), 1100, F_WRITE)]);
            d.rings[0].publish(head);
        }
        d.kick(0);
        for _ in 0..count {
            d.peers[0].send(&with_header(&frame(5, 1000))).unwrap();
        }
        Driver::wait_used(&d.rings[0], 12 * round + count);
    }
    let rx_time = started.elapsed();
    assert!(
        (Duration::from_millis(90)..Duration::from_secs(3)).contains(&rx_time),
        "21 RX frames took {rx_time:?}"
    );
}
