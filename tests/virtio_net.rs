//! Boots the virtio-net probe guest under flint with `--net tap=NAME`: the guest sends frames the test
//! reads from the TAP and receives frames the test writes into it (docs/virtio.md).
//!
//! Every test that touches the network creates its own network namespace (`ip netns add
//! flint-test-<pid>-<n>`), creates the TAP inside it and runs flint there (`ip netns exec`), so no
//! frame ever leaves that namespace; a guard deletes the namespace, also when the test fails.
//! The host side is a small Python helper in the namespace with an AF_PACKET socket bound to the
//! TAP (ethertype 0x88B5 only). Needs root, /dev/net/tun, `ip` and python3: outside CI a missing one
//! skips the test; with CI=true it fails it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{net_available, NetNs};
use common::{kvm_available, probe, run_flint, wait_with_timeout};

/// Starts `cmd` (flint under `ip netns exec`) with stdin closed and stdout/stderr piped, as
/// `common::spawn_flint` does.
fn spawn_flint_with(cmd: &mut Command) -> std::process::Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start flint")
}

/// The host side: prints READY once bound, then `RX <len> <hex>` per guest frame (direction 'G'),
/// and after `want` of them writes frames of the sizes in argv[4] (default 60, 1000, 1514 bytes)
/// towards the guest, seq 0, 1, ...
const HELPER: &str = r#"
import select, socket, sys, time
tap, guest_mac, want = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
sizes = [int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else [60, 1000, 1514]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind((tap, 0))
print("READY", flush=True)
got = set()
deadline = time.time() + 100
while len(got) < want and time.time() < deadline:
    r, _, _ = select.select([s], [], [], 0.5)
    if not r:
        continue
    f, addr = s.recvfrom(65536)
    if addr[2] == socket.PACKET_OUTGOING or len(f) < 20 or f[14:18] != b"FLNT" or f[19:20] != b"G":
        continue
    print("RX", len(f), f.hex(), flush=True)
    got.add(f[18])
for seq, size in enumerate(sizes):
    f = guest_mac + bytes([2, 0, 0, 0, 0, 0xFE]) + b"\x88\xb5FLNT" + bytes([seq]) + b"H"
    f += bytes((seq * 17 + i) & 0xFF for i in range(20, size))
    s.send(f)
    print("TX", seq, flush=True)
print("DONE", flush=True)
"#;

fn guest_frame(seq: u8, size: usize, mac: &[u8; 6]) -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(mac);
    f.extend_from_slice(&[0x88, 0xB5]);
    f.extend_from_slice(b"FLNT");
    f.extend_from_slice(&[seq, b'G']);
    f.extend((20..size).map(|i| (seq as usize * 31 + i) as u8));
    f
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// How one frame exchange runs.
#[derive(Clone, Copy, Default)]
struct Exchange {
    /// Acknowledge CSUM/GUEST_CSUM/TSO (the TAP's offloads go on).
    ack_offloads: bool,
    /// Queue pairs (`queues=` and the probe's `pairs=`); above 1 the TAP is a multi-queue one.
    pairs: u16,
    /// MRG_RXBUF with 512-byte RX buffers, and a 4,000-byte host frame (the TAP's MTU raised).
    mrg: bool,
}

#[test]
fn virtio_net_probe_exchanges_frames_with_the_tap() {
    exchange_frames(Exchange {
        pairs: 1,
        ..Exchange::default()
    });
}

/// The same with CSUM/GUEST_CSUM/TSO acknowledged: the TAP's offloads are on, plain frames still
/// go both ways unchanged.
#[test]
fn virtio_net_probe_exchanges_frames_with_offloads_on() {
    exchange_frames(Exchange {
        ack_offloads: true,
        pairs: 1,
        ..Exchange::default()
    });
}

/// Four queue pairs on a multi-queue TAP: the probe negotiates MQ and CTRL_VQ, gets ERR for bad
/// control commands and OK for four pairs, sends a frame on every TX queue (the test reads them
/// all), and receives on whichever RX queue the TAP picks; with MRG_RXBUF and 512-byte RX buffers
/// the host's 1,514- and 4,000-byte frames span several buffers.
#[test]
fn virtio_net_probe_uses_four_queue_pairs_and_merged_rx_buffers() {
    exchange_frames(Exchange {
        ack_offloads: false,
        pairs: 4,
        mrg: true,
    });
}

fn exchange_frames(how: Exchange) {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new();
    let tap = "flnet0";
    let mac = [0x02, 0x12, 0x34, 0x56, 0x78, 0x9a];
    let mac_text = "02:12:34:56:78:9a";
    // A persistent TAP in the namespace, up, before flint attaches to it, so the helper can bind.
    let mut add = vec!["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"];
    if how.pairs > 1 {
        add.push("multi_queue");
    }
    ns.ip_in(&add);
    if how.mrg {
        ns.ip_in(&["link", "set", tap, "mtu", "9000"]);
    }
    ns.ip_in(&["link", "set", tap, "up"]);
    // Pair 0 sends seq 0..3, then pair p seq 4 + p.
    let guest_frames: Vec<(u8, usize)> = [(0u8, 60usize), (1, 590), (2, 1514), (3, 100)]
        .into_iter()
        .chain(
            (0..how.pairs)
                .filter(|_| how.pairs > 1)
                .map(|p| (4 + p as u8, 200 + 100 * p as usize)),
        )
        .collect();
    let want = guest_frames.len().to_string();
    let host_sizes = if how.mrg {
        "60,1000,1514,4000"
    } else {
        "60,1000,1514"
    };
    let mut helper = ns
        .exec("python3")
        .args(["-c", HELPER, tap, mac_text, &want, host_sizes])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the helper");
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "READY", "the helper did not start");
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let kernel = probe("virtio_net");
    let net = format!("tap={tap},mac={mac_text},queues={}", how.pairs);
    let mut cmdline = format!(
        "expect_mac={mac_text} ack_offloads={} pairs={} exit=poweroff",
        u8::from(how.ack_offloads),
        how.pairs
    );
    if how.mrg {
        cmdline.push_str(" mrg=1 rx_buf=512 expect_rx=4");
    }
    let started = Instant::now();
    let child = spawn_flint_with(ns.exec(common::flint_bin()).args([
        "--log-level",
        "info",
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--cpus",
        "1",
        "--memory",
        "256M",
        "--net",
        &net,
    ]));
    let run = wait_with_timeout(child, Duration::from_secs(120), started);
    let report = run.assert_probe_passed();
    for check in [
        "vnet_found",
        "vnet_ids",
        "vnet_caps",
        "vnet_features_ok",
        "vnet_mac",
        "vnet_link_up",
        "vnet_driver_ok",
        "vnet_tx0",
        "vnet_tx1",
        "vnet_tx2",
        "vnet_tx_bad_chain",
        "vnet_tx_after_bad_chain",
        "vnet_rx_frames",
        "vnet_rx_num_buffers",
        "vnet_msix_vectors",
    ] {
        assert!(report.passed(check), "{check} did not pass");
    }
    let mut extra = Vec::new();
    if how.pairs > 1 {
        extra.extend([
            "vnet_max_pairs",
            "vnet_ctrl_too_many_pairs",
            "vnet_ctrl_zero_pairs",
            "vnet_ctrl_unknown_class",
            "vnet_ctrl_short_command",
            "vnet_ctrl_bad_chain",
            "vnet_ctrl_set_pairs",
        ]);
        extra.extend(
            [
                "vnet_tx_pair0",
                "vnet_tx_pair1",
                "vnet_tx_pair2",
                "vnet_tx_pair3",
            ]
            .iter()
            .take(how.pairs as usize),
        );
        assert!(
            run.stderr.contains(&format!("{} queue pairs", how.pairs)),
            "{}",
            run.stderr
        );
    }
    if how.mrg {
        extra.push("vnet_rx_merged");
    }
    for check in extra {
        assert!(report.passed(check), "{check} did not pass");
    }
    assert!(
        run.stderr.contains(&format!("MAC {mac_text}")),
        "{}",
        run.stderr
    );

    let _ = helper.wait();
    let out = reader.join().unwrap();
    let frames: Vec<Vec<u8>> = out
        .iter()
        .filter_map(|l| l.strip_prefix("RX "))
        .map(|l| unhex(l.split_whitespace().nth(1).unwrap_or("")))
        .collect();
    // Exactly the good frames, pair 0's in order (the malformed chain sent nothing); frames from
    // different TX queues may reach the TAP in any order.
    let want: Vec<Vec<u8>> = guest_frames
        .iter()
        .map(|(seq, size)| guest_frame(*seq, *size, &mac))
        .collect();
    assert_eq!(frames.len(), want.len(), "helper output: {out:?}");
    let pair0: Vec<&Vec<u8>> = frames.iter().filter(|f| f[18] < 4).collect();
    assert_eq!(
        pair0,
        want.iter().take(4).collect::<Vec<_>>(),
        "pair 0's frames"
    );
    let mut sorted = frames.clone();
    sorted.sort_by_key(|f| f[18]);
    for (got, want) in sorted.iter().zip(&want) {
        assert!(got == want, "frame {} differs", want[18]);
    }
    assert!(out.iter().any(|l| l == "DONE"), "{out:?}");
}

/// flint creates a TAP that does not exist (inside the namespace), gives the guest the MAC derived
/// from its name, and sets the TAP's offloads when the driver acknowledges CSUM/TSO (a refused
/// TUNSETOFFLOAD would fail DRIVER_OK); the TAP goes away with flint.
#[test]
fn virtio_net_creates_a_missing_tap_with_a_stable_mac() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new();
    let tap = "flnew0";
    assert!(!ns.has_link(tap));
    let mac = flint::net::format_mac(&flint::net::default_mac(tap));
    let kernel = probe("virtio_net");
    let cmdline = format!("expect_mac={mac} expect_rx=0 rx_wait_ms=0 ack_offloads=1 exit=poweroff");
    let net = format!("tap={tap}");
    let started = Instant::now();
    let child = spawn_flint_with(ns.exec(common::flint_bin()).args([
        "--log-level",
        "info",
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--cpus",
        "1",
        "--memory",
        "128M",
        "--net",
        &net,
    ]));
    let run = wait_with_timeout(child, Duration::from_secs(120), started);
    run.assert_probe_passed();
    assert!(
        run.stderr
            .contains(&format!("TAP {tap} is virtio-net device 0")),
        "{}",
        run.stderr
    );
    // flint's TAP is not persistent: gone with flint.
    assert!(!ns.has_link(tap), "the TAP outlived flint");
}

#[test]
fn bad_net_input_is_one_line() {
    let kernel = probe("virtio_net");
    let kernel = kernel.to_str().unwrap();
    for (spec, needles) in [
        (
            "mac=02:00:00:00:00:01",
            &["--net mac=02:00:00:00:00:01: missing tap=NAME"][..],
        ),
        (
            "tap=t0,mac=zz",
            &["--net tap=t0,mac=zz: mac=zz: expected six hex bytes"][..],
        ),
        ("tap=t0,mac=01:00:00:00:00:01", &["unicast"][..]),
        ("tap=t0,queues=9", &["queues=9: expected 1 to 8"][..]),
        ("tap=t0,queues=0", &["queues=0: expected 1 to 8"][..]),
        (
            "tap=t0,vhost=on",
            &["unknown or empty setting 'vhost=on'"][..],
        ),
        ("tap=this-name-is-too-long", &["1 to 15 characters"][..]),
    ] {
        let run = run_flint(
            &["run", "--kernel", kernel, "--memory", "64M", "--net", spec],
            Duration::from_secs(30),
        );
        assert!(!run.status.success(), "{spec} succeeded");
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.contains("WARN "))
            .collect();
        assert_eq!(lines.len(), 1, "{spec}: expected one line:\n{}", run.stderr);
        assert!(lines[0].starts_with("flint: error: "), "{}", lines[0]);
        for needle in needles {
            assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
        }
    }
}

#[test]
fn bad_net_caps_are_one_line() {
    let kernel = probe("virtio_net");
    let kernel = kernel.to_str().unwrap();
    for (flag, value, needle) in [
        (
            "--net-bandwidth",
            "fast",
            "--net-bandwidth fast: 'fast': expected Mbit/s",
        ),
        (
            "--net-bandwidth",
            "2400:750",
            "the maximum 750 is below the baseline 2400",
        ),
        (
            "--net-burst-seconds",
            "99999999999",
            "--net-burst-seconds 99999999999: expected 0 to",
        ),
    ] {
        common::assert_one_line_error(
            &["run", "--kernel", kernel, "--memory", "64M", flag, value],
            &[needle],
        );
    }
}

/// Two vCPUs ask for two queue pairs by default; a single-queue TAP made beforehand refuses
/// IFF_MULTI_QUEUE, so flint warns and uses one pair (the probe still passes), while an explicit
/// `queues=2` on it is a one-line error naming the fix.
#[test]
fn a_single_queue_tap_falls_back_to_one_pair_unless_queues_is_given() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new();
    let tap = "flsq0";
    ns.ip_in(&["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]);
    ns.ip_in(&["link", "set", tap, "up"]);
    let kernel = probe("virtio_net");
    let kernel = kernel.to_str().unwrap();
    let net = format!("tap={tap}");
    let run = ns.run_flint(
        &[
            "--log-level",
            "info",
            "run",
            "--kernel",
            kernel,
            "--cmdline",
            "expect_rx=0 rx_wait_ms=0 exit=poweroff",
            "--cpus",
            "2",
            "--memory",
            "128M",
            "--net",
            &net,
        ],
        Duration::from_secs(120),
    );
    run.assert_probe_passed();
    assert!(
        run.stderr.contains("multi-queue TAP") && run.stderr.contains("using one queue pair"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(MAC "), "{}", run.stderr);
    assert!(run.stderr.contains(", 1 queue pair)"), "{}", run.stderr);
    let net = format!("tap={tap},queues=2");
    let run = ns.run_flint(
        &["run", "--kernel", kernel, "--memory", "128M", "--net", &net],
        Duration::from_secs(30),
    );
    assert!(!run.status.success());
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.contains("WARN "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].starts_with("flint: error: --net tap=flsq0: cannot attach to TAP flsq0")
            && errors[0].contains("ip tuntap add NAME mode tap vnet_hdr multi_queue"),
        "{}",
        errors[0]
    );
}
