//! EBS rate limits seen from the guest: the NVMe probe's benchmark (tests/guests/nvme.c, `bench=1`)
//! times its own I/O with the TSC and prints `PROBE-INFO bench_<name>[_shadow]=ops=N bytes=N us=N ...`
//! for each phase (random 4 KiB reads at queue depth 1 and 32, sequential 128 KiB reads, sequential
//! 128 KiB writes), once with MMIO doorbells and once with shadow doorbells. These tests check the
//! rates those phases got against the instance's EBS cap (docs/instance-types.md) and a volume's own
//! gp3 caps, within ±10%, each phase measured over at least 2 s of guest time.
//!
//! The runs are serialized (one VM at a time): each check needs the host to move data well above
//! the cap, which a second VM on the same CPUs would eat into.
//!
//! The virtio-blk tests use the virtio-blk probe's `bench=1` mode (tests/guests/virtio_blk.c: the
//! same `PROBE-INFO bench_<phase>=ops=N bytes=N us=N ...` lines) against a `--disk` with
//! `throughput=` and `iops=` caps.
//!
//! `ebs_maximum_then_baseline_with_a_small_credit_balance` uses the probe's `bench=seqwrite` mode
//! instead: sequential 512 KiB writes at queue depth 8 for 9 s, with the bytes completed in each
//! 250 ms TSC slice, so the rate before and after the credits run out can be checked separately.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::bench::{
    assert_rate, assert_window_rate, end_seconds, field, rates, slices, switch_seconds, Phase,
    Slice,
};
use common::{kvm_available, run_probe, scratch_disk, scratch_path, ProbeReport};

/// One VM at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// c5.large (launch figures): EBS baseline 650 Mbps, in bytes/s.
const C5_LARGE_BASELINE: f64 = 650e6 / 8.0;

/// Benchmark phase `key` as the guest measured it (it must have run without errors or stalls).
fn phase(report: &ProbeReport, key: &str) -> Phase {
    let line = report
        .info(key)
        .unwrap_or_else(|| panic!("no PROBE-INFO {key}: {:?}", report.info));
    assert!(!line.contains("stalled"), "{key} stalled: {line}");
    assert_eq!(field(line, "errors"), 0, "{key}: {line}");
    Phase {
        ops: field(line, "ops"),
        bytes: field(line, "bytes"),
        us: field(line, "us"),
    }
}

/// Boots the NVMe probe with one fresh 1 GiB volume (`volume_opts` appended to its spec) and the
/// benchmark on, and returns the report.
fn bench(name: &str, flint_args: &[&str], volume_opts: &str, bench_ops: u32) -> ProbeReport {
    let disk = scratch_disk(&format!("rate-limit-{name}.img"), 1 << 30);
    let volume = format!("path={}{volume_opts}", disk.display());
    let cmdline = format!("bench=1 bench_ops={bench_ops} exit=reset");
    let mut args = vec![
        "--cmdline",
        &cmdline,
        "--memory",
        "256M",
        "--cpus",
        "1",
        "--volume",
        &volume,
    ];
    args.extend_from_slice(flint_args);
    let report = run_probe("nvme", &args, Duration::from_secs(300)).assert_probe_passed();
    let _ = std::fs::remove_file(&disk);
    report
}

/// c5.large (launch figures): EBS maximum 2,250 Mbps, in bytes/s.
const C5_LARGE_MAXIMUM: f64 = 2250e6 / 8.0;

/// The slices of a `bench=seqwrite` run, in order; checks the run's summary first.
fn seqwrite_slices(report: &ProbeReport) -> Vec<Slice> {
    let summary = phase(report, "bench_seqwrite");
    assert!(
        report.passed("bench_seqwrite"),
        "PROBE bench_seqwrite did not pass: {summary:?}"
    );
    slices(report, "bench_seqwrite")
}

/// "Up to" bandwidth over time: a c5.large with `--ebs-burst-seconds 3` starts with a credit balance
/// of (maximum − baseline) × 3 s = 200 MB/s × 3 s = 600 MB (docs/instance-types.md, "The burst
/// model"), which a guest writing flat out at the 281.25 MB/s maximum spends in 3 s (plus the
/// bucket's 50 ms of top rate); after that it gets the 81.25 MB/s baseline. The guest writes 512 KiB
/// (MDTS) at queue depth 8 for 9 s and times 250 ms slices with its TSC.
///
/// The switch is found in the data (the start of the first two slices in a row below the midpoint
/// of the two rates) rather than assumed at 3 s: credits are only spent on bytes moved, so when the
/// host stalls the guest during the burst the maximum rightly lasts longer, and a fixed
/// [3.5 s, 6.5 s] window would catch the end of the burst. After the switch, a stall earns credits
/// back and the guest rightly catches up at the maximum, so the baseline window's average still
/// holds.
/// The switch must come between 2.75 s and 5 s; the slices inside [0.25 s, switch − 0.25 s] must
/// average the maximum and those from switch + 0.5 s to the end of the run the baseline, each ±10%
/// over at least 2 s. Ignored credits fail the maximum (and find no switch), credits that never run
/// out find no switch or a late one, a wrong rate fails its window.
///
/// Measured on the project's 2-CPU host (debug build, idle or with one CPU hog): 281.2-281.3 MB/s and
/// 81.0-81.4 MB/s, the switch at 3.0-3.1 s. Queue depth 8 keeps writes waiting on the limiter, so a
/// late wake-up is made up from the bucket (50 ms of the maximum). With two CPU hogs on the two CPUs
/// (the VM's vCPU and NVMe worker then get a third of the host each) the host stalled the VM for
/// 0.3-1.4 s at a time, which no ±10% measurement over 2 s survives: it failed 2 runs of 3 so.
#[test]
fn ebs_maximum_then_baseline_with_a_small_credit_balance() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let disk = scratch_path("rate-limit-burst.img");
    let _ = std::fs::remove_file(&disk);
    // 256 MiB, written out and synced before the run: the guest's writes (16 MiB .. end - 1 MiB)
    // wrap around about five times over blocks the host file system has already allocated, in page
    // cache pages it has already cleaned. On a sparse file the first pass allocates blocks and a
    // bigger file dirties 1.3 GB of new pages, and both stalled the host's writes for 100-300 ms at a
    // time (slices at 160-210 MB/s under the maximum), the host's cost, not the limiter's.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&disk).expect("create the volume");
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..256 {
            f.write_all(&chunk).expect("fill the volume");
        }
        f.sync_all().expect("sync the volume");
    }
    let volume = format!("path={}", disk.display());
    let run = run_probe(
        "nvme",
        &[
            "--cmdline",
            "bench=seqwrite bench_seconds=9 bench_xfer_kib=512 bench_qd=8 bench_slice_ms=250 exit=reset",
            "--memory",
            "256M",
            "--cpus",
            "1",
            "--volume",
            &volume,
            "--instance-type",
            "c5.large",
            "--ebs-burst-seconds",
            "3",
        ],
        Duration::from_secs(120),
    );
    let _ = std::fs::remove_file(&disk);
    let slices = seqwrite_slices(&run.assert_probe_passed());
    let switch = switch_seconds(&slices, (C5_LARGE_MAXIMUM + C5_LARGE_BASELINE) / 2.0);
    assert!(
        (2.75..=5.0).contains(&switch),
        "the maximum ended at {switch:.2} s, want 2.75-5 s (600 MB of credits at 200 MB/s): {}",
        rates(&slices)
    );
    assert_window_rate("maximum", &slices, 0.25, switch - 0.25, C5_LARGE_MAXIMUM);
    let end = end_seconds(&slices);
    assert_window_rate("baseline", &slices, switch + 0.5, end, C5_LARGE_BASELINE);
}

/// With no burst credits (`--ebs-burst-seconds 0`) a c5.large moves its EBS baseline, 650 Mbps =
/// 81.25 MB/s, and no more (sequential writes, with either doorbell kind), and completes its
/// baseline 4,000 IOPS of random 4 KiB reads at queue depth 32 (unlimited: 6,000-8,000 here).
#[test]
fn ebs_baseline_without_burst_credits() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // 1,400 writes of 128 KiB = 183.5 MB: 2.26 s at the baseline; 11,200 reads at 4,000 IOPS: 2.8 s.
    let report = bench(
        "baseline",
        &["--instance-type", "c5.large", "--ebs-burst-seconds", "0"],
        "",
        11_200,
    );
    for key in ["bench_seqwrite_128k", "bench_seqwrite_128k_shadow"] {
        let p = phase(&report, key);
        assert_rate(key, p, p.bytes_per_second(), C5_LARGE_BASELINE);
    }
    for key in ["bench_randread_qd32", "bench_randread_qd32_shadow"] {
        let p = phase(&report, key);
        assert_rate(key, p, p.ops_per_second(), C5_LARGE_BASELINE_IOPS);
    }
}

/// c5.large (launch figures): EBS baseline IOPS.
const C5_LARGE_BASELINE_IOPS: f64 = 4000.0;

/// A gp3 volume's own caps apply under a larger instance cap (c5.18xlarge: 9 Gbps): 3,000 IOPS (gp3's
/// baseline, well under the ≈ 4,000–4,500 the probe reaches uncapped on a PVM host, so host load
/// cannot pull the measurement below the cap) for random 4 KiB reads at queue depth 32, 125 MiB/s for
/// sequential 128 KiB writes.
#[test]
fn gp3_volume_caps_under_the_instance_cap() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // 17,600 reads at 3,000 IOPS: 5.9 s; 2,200 writes (bench_ops / 8) of 128 KiB at 125 MiB/s: 2.2 s.
    let report = bench(
        "gp3",
        &["--instance-type", "c5.18xlarge"],
        ",type=gp3,iops=3000,throughput=125M",
        17_600,
    );
    for key in ["bench_randread_qd32", "bench_randread_qd32_shadow"] {
        let p = phase(&report, key);
        assert_rate(key, p, p.ops_per_second(), 3000.0);
    }
    for key in ["bench_seqwrite_128k", "bench_seqwrite_128k_shadow"] {
        let p = phase(&report, key);
        assert_rate(key, p, p.bytes_per_second(), 125.0 * 1048576.0);
    }
}

/// Boots the virtio-blk probe's benchmark on one fresh 256 MiB disk (`disk_opts` appended to its
/// spec) with the extra guest command line `bench_args`, and returns the report.
fn virtio_blk_bench(name: &str, disk_opts: &str, bench_args: &str) -> ProbeReport {
    let disk = scratch_disk(&format!("rate-limit-vblk-{name}.img"), 256 << 20);
    let spec = format!("path={}{disk_opts}", disk.display());
    let cmdline = format!("bench=1 {bench_args} exit=reset");
    let run = run_probe(
        "virtio_blk",
        &[
            "--cmdline",
            &cmdline,
            "--memory",
            "256M",
            "--cpus",
            "1",
            "--disk",
            &spec,
        ],
        Duration::from_secs(120),
    );
    let _ = std::fs::remove_file(&disk);
    run.assert_probe_passed()
}

/// A virtio-blk disk with `throughput=100M` moves 100 MiB/s of sequential 1 MiB writes at queue
/// depth 16, ±10% over 2.5 s (unlimited, the same probe writes over 1 GB/s on this host). Queue depth
/// 16 keeps writes waiting on the limiter, so a guest stalled by the host for up to 160 ms loses no
/// rate, and a late worker wake-up is made up from the bucket (50 ms of the rate). Measured 99.0-99.6
/// MiB/s (97.1 at depth 1) with the host's load average at 16-17 from other work; during load spikes
/// there, 2 runs of 6 fell to 75-88 MiB/s and failed.
#[test]
fn virtio_blk_throughput_cap() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // 250 writes of 1 MiB at 100 MiB/s: 2.5 s.
    let report = virtio_blk_bench(
        "throughput",
        ",throughput=100M",
        "bench_phases=seqwrite bench_seq_ops=250 bench_xfer_kib=1024 bench_seq_qd=16",
    );
    let p = phase(&report, "bench_seqwrite");
    assert_rate("bench_seqwrite", p, p.bytes_per_second(), 100.0 * 1048576.0);
}

/// A virtio-blk disk with `iops=2000` completes 2,000 random 4 KiB reads a second, at queue depth
/// 1 and at 32, ±10% over 2.5 s each (unlimited: 4,000-9,000 at QD1, 12,000-25,000 at QD32 here).
#[test]
fn virtio_blk_iops_cap() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let report = virtio_blk_bench(
        "iops",
        ",iops=2000",
        "bench_phases=randread_qd1+randread_qd32 bench_ops=5000",
    );
    for key in ["bench_randread_qd1", "bench_randread_qd32"] {
        let p = phase(&report, key);
        assert_rate(key, p, p.ops_per_second(), 2000.0);
    }
}
