use super::*;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

fn socket_tap() -> (File, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (File::from(OwnedFd::from(a)), b)
}

#[test]
fn config_space_has_the_mac_and_link_up() {
    let (tap, _peer) = socket_tap();
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let dev = VirtioNet::new(tap, mac);
    assert_eq!(dev.device_type(), VIRTIO_ID_NET);
    assert_eq!(dev.queue_max_sizes(), vec![QUEUE_SIZE; 2]);
    assert_eq!(
        dev.device_features(),
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    );
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
    assert!(scatter(&mem, &rx, &data));
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
        let net = VirtioNet::new(tap, [2, 0, 0, 0, 0, 7]);
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
    use std::sync::Mutex;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let (tap, _peer) = socket_tap();
    let log = calls.clone();
    let net = VirtioNet::with_offloads(
        tap,
        [2, 0, 0, 0, 0, 8],
        Box::new(move |flags| {
            log.lock().unwrap().push(flags);
            Ok(())
        }),
    );
    assert_eq!(
        net.device_features(),
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | OFFLOAD_FEATURES
    );
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
    assert_eq!(*calls.lock().unwrap(), vec![TUN_F_CSUM | TUN_F_TSO4]);
    bar_w(&mut d.dev, offsets::DEVICE_STATUS, 1, 0);
    assert_eq!(*calls.lock().unwrap(), vec![TUN_F_CSUM | TUN_F_TSO4, 0]);
}

#[test]
fn rx_and_tx_chains_without_a_worker() {
    use crate::virtio::queue::testing::{TestRing, F_WRITE};
    use virtio_queue::QueueOwnedT;
    use vm_memory::GuestAddress;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
    let mut scratch = Chain::default();

    // RX: a frame fits (header fixed for a driver without GUEST_CSUM), a runt is dropped with its
    // buffer, and a chain that reaches past RAM keeps the frame for the next buffer.
    let mut rx = TestRing::new(&mem, 0, 8);
    let mut q = rx.queue(false);
    rx.chain(0, &[(0x8000, 100, F_WRITE)]);
    rx.publish(0);
    rx.chain(1, &[(0x9000, 100, F_WRITE)]);
    rx.publish(1);
    rx.chain(2, &[(0x1f000, 0x2000, F_WRITE)]);
    rx.publish(2);
    let mut frame = vec![0xffu8; 40];
    let chain = q.iter(&mem).unwrap().next().unwrap();
    let d = deliver_rx_frame(&mem, chain, &mut frame, 0, &mut scratch);
    assert_eq!((d.head, d.used, d.consumed), (0, 40, true));
    let mut got = [0u8; 40];
    mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
    assert_eq!(&got[..10], &[0; 10]);
    assert_eq!(&got[10..12], &[1, 0]);
    assert_eq!(&got[12..], &[0xff; 28]);
    let chain = q.iter(&mem).unwrap().next().unwrap();
    let d = deliver_rx_frame(&mem, chain, &mut [0u8; 5], 0, &mut scratch);
    assert_eq!((d.head, d.used, d.consumed), (1, 0, true));
    let chain = q.iter(&mem).unwrap().next().unwrap();
    let d = deliver_rx_frame(&mem, chain, &mut frame, 0, &mut scratch);
    assert_eq!((d.head, d.used, d.consumed), (2, 0, false));

    // TX: a header and a frame gathered; a TSO header the driver did not negotiate is dropped.
    let mut tx = TestRing::new(&mem, 0x4000, 8);
    let mut q = tx.queue(false);
    let mut hdr = [0u8; NET_HDR_LEN];
    mem.write_slice(&hdr, GuestAddress(0xa000)).unwrap();
    mem.write_slice(&[0x42; 60], GuestAddress(0xb000)).unwrap();
    tx.chain(0, &[(0xa000, 12, 0), (0xb000, 60, 0)]);
    tx.publish(0);
    hdr[0] = 1;
    hdr[1] = GSO_TCPV4;
    mem.write_slice(&hdr, GuestAddress(0xc000)).unwrap();
    tx.chain(2, &[(0xc000, 12, 0), (0xb000, 60, 0)]);
    tx.publish(2);
    let mut buf = vec![0u8; NET_HDR_LEN + MAX_FRAME];
    let chain = q.iter(&mem).unwrap().next().unwrap();
    assert_eq!(
        gather_tx_frame(&mem, chain, 0, &mut scratch, &mut buf),
        (0, Some(72))
    );
    assert_eq!(&buf[12..72], &[0x42; 60]);
    let chain = q.iter(&mem).unwrap().next().unwrap();
    let csum_only = 1 << VIRTIO_NET_F_CSUM;
    assert_eq!(
        gather_tx_frame(&mem, chain, csum_only, &mut scratch, &mut buf),
        (2, None)
    );
}
