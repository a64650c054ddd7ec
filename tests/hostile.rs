//! Boots the hostile-guest probe (tests/guests/hostile*.c, docs/hostile-guests.md) with an NVMe
//! volume and a virtio-blk disk. The guest attacks every device model and the platform and, after
//! each attack, checks that the VMM still serves a good request; this test checks the rest from
//! the host: every case passed, the VMM's memory stayed bounded, it idles once the guest halts, it
//! logged nothing a guest could use to flood the host's log, the serial flood arrived intact, and
//! it still stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{kvm_available, probe, scratch_disk, spawn_flint, ProbeReport, Run};

/// Every case the probe reports (one PROBE line each).
const CASES: &[&str] = &[
    "devices_found",
    "nvme_init",
    "virtio_init",
    "baseline_io",
    "nvme_sq_tail_beyond_queue",
    "nvme_cq_head_beyond_queue",
    "nvme_doorbell_absent_queues",
    "nvme_queue_ids_out_of_range",
    "nvme_queue_sizes_invalid",
    "nvme_queues_outside_ram",
    "nvme_prp_outside_ram",
    "nvme_prp_list_outside_ram_and_loop",
    "nvme_mdts_plus_one",
    "nvme_garbage_commands",
    "nvme_command_field_garbage",
    "nvme_commands_on_deleted_queue",
    "nvme_shadow_doorbells_outside_ram",
    "nvme_shadow_doorbell_garbage",
    "nvme_enable_disable_storm",
    "virtio_descriptor_loop",
    "virtio_next_out_of_range",
    "virtio_zero_length",
    "virtio_bad_requests",
    "virtio_huge_lengths",
    "virtio_indirect_65536_descriptors",
    "virtio_nested_indirect",
    "virtio_avail_index_jump",
    "virtio_queue_size_not_power_of_two",
    "virtio_notify_before_driver_ok",
    "virtio_rings_outside_ram",
    "virtio_reset_during_io",
    "virtio_config_garbage",
    "pci_bar_into_ram",
    "pci_bar_over_other_bar",
    "pci_bar_over_platform_mmio",
    "pci_bar_64bit_garbage",
    "pci_decode_off_and_remap_storm",
    "pci_msix_garbage",
    "pci_config_space_garbage",
    "smp_second_cpu_started",
    "smp_nvme_doorbells_during_resets",
    "smp_virtio_notify_during_resets",
    "smp_bar_moves_during_access",
    "smp_msix_flips_during_interrupts",
    "platform_string_pio_in",
    "platform_power_registers_garbage",
    "platform_power_registers_garbage_then_io",
    "platform_port_sweep",
    "platform_port_sweep_then_io",
    "platform_mmio_sweep",
    "platform_mmio_sweep_machine_intact",
    "platform_mmio_sweep_then_io",
    "platform_serial_flood",
    "platform_serial_flood_then_io",
    "final_io",
];

/// Serial flood sizes (KiB): written a byte at a time, and with `rep outsb`. On PVM hosts every byte
/// costs an exit (~20-35 us), so a few MB would take minutes; these keep the run near 30 s.
const FLOOD_KIB: usize = 64;
const FLOOD_REP_KIB: usize = 128;

/// How much the VMM's resident memory may grow while the guest attacks it. The guest itself touches
/// about 8 MiB of its RAM (work areas, a 1 MiB indirect table, 4 MiB of read buffers).
const MAX_RSS_GROWTH_KIB: u64 = 48 * 1024;
/// CPU time the VMM may use in one second while the guest is halted.
const MAX_IDLE_CPU: Duration = Duration::from_millis(100);

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start with field 3, the state.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Checks that every flood line `<tag> nnnnnnn <letters>` arrived, in order and intact.
fn check_flood(stdout: &str, tag: &str, lines: usize) {
    let prefix = format!("{tag} ");
    let got: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(got.len(), lines, "{tag}: lines received");
    for (i, line) in got.iter().enumerate() {
        let head = format!("{tag} {i:07} ");
        let letters: String = (head.len()..63)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        assert_eq!(*line, format!("{head}{letters}"), "{tag}: line {i}");
    }
}

#[test]
fn hostile_guest_cannot_hurt_the_vmm() {
    if !kvm_available() {
        return;
    }
    let nvme = scratch_disk("hostile-nvme.img", 32 << 20);
    let vblk = scratch_disk("hostile-vblk.img", 32 << 20);
    let kernel = probe("hostile");
    let cmdline = format!("exit=hang flood_kib={FLOOD_KIB} flood_rep_kib={FLOOD_REP_KIB}");
    let volume = format!("path={}", nvme.display());
    let disk = format!("path={}", vblk.display());
    let started = Instant::now();
    let mut child = spawn_flint(&[
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        // Two vCPUs: the second one attacks while the first uses the devices.
        "--cpus",
        "2",
        "--memory",
        "256M",
        "--volume",
        &volume,
        "--disk",
        &disk,
        "--cmdline",
        &cmdline,
    ]);
    let pid = child.id();

    // Console lines arrive on a channel (so the flood cannot block flint on a full pipe), stderr
    // is drained by its own thread.
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    let mut console = String::new();
    let mut rss_start = None;
    let mut rss_max = 0u64;
    let mut done = false;
    let deadline = started + Duration::from_secs(110);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let is_start = line.starts_with("PROBE-START");
                done |= line.starts_with("PROBE-DONE");
                console.push_str(&line);
                console.push('\n');
                if is_start {
                    rss_start = status_kib(pid, "VmRSS:");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(rss) = status_kib(pid, "VmRSS:") {
            rss_max = rss_max.max(rss);
        }
        if done {
            break;
        }
    }
    let run_time = started.elapsed();
    assert!(
        done,
        "no PROBE-DONE within {run_time:?} (flint still running: {:?})\n{console}",
        child.try_wait()
    );

    // The guest has halted (exit=hang): the VMM must be idle.
    std::thread::sleep(Duration::from_millis(300));
    let ticks = clock_ticks_per_second();
    let cpu_before = cpu_ticks(pid).expect("read /proc/PID/stat");
    let idle_from = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let cpu_after = cpu_ticks(pid).expect("read /proc/PID/stat");
    let idle_wall = idle_from.elapsed();
    let idle_cpu = Duration::from_millis((cpu_after - cpu_before) * 1000 / ticks);
    let rss_end = status_kib(pid, "VmRSS:").unwrap_or(0);
    let rss_hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let total_cpu = Duration::from_millis(cpu_after * 1000 / ticks);

    // SIGTERM still stops it, with 128 + 15.
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            panic!("flint did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        console.push_str(&line);
        console.push('\n');
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    let run = Run {
        status,
        stdout: console,
        stderr,
        elapsed: started.elapsed(),
    };

    let rss_start = rss_start.unwrap_or(0);
    eprintln!(
        "hostile: run {run_time:.1?}, VMM CPU {total_cpu:?} in all; RSS at start {rss_start} KiB, max \
         {rss_max} KiB, at the end {rss_end} KiB, high-water mark {rss_hwm} KiB; idle CPU \
         {idle_cpu:?} in {idle_wall:.2?}"
    );
    let report = ProbeReport::parse(&run.stdout);
    for key in [
        "port_sweep",
        "mmio_sweep",
        "flood",
        "virtio_reset_during_io",
        "nvme_enable_storm",
        "pci_remap_storm",
        "virtio_indirect_65536_ms",
        "smp_bar_flip_reads",
        "smp_nvme_bring_ups_under_attack",
        "string_pio_in",
    ] {
        eprintln!("hostile: {key}: {}", report.info(key).unwrap_or("-"));
    }
    report.assert_all_passed(&run);
    for case in CASES {
        assert!(report.passed(case), "case {case} did not pass");
    }
    assert_eq!(run.status.code(), Some(128 + 15), "{}", run.stderr);

    // Bounded memory and CPU.
    assert!(rss_start > 0, "no RSS sample at PROBE-START");
    assert!(
        rss_max.saturating_sub(rss_start) < MAX_RSS_GROWTH_KIB,
        "RSS grew from {rss_start} KiB to {rss_max} KiB"
    );
    assert!(
        idle_cpu <= MAX_IDLE_CPU,
        "flint used {idle_cpu:?} of CPU in {idle_wall:?} while the guest was halted"
    );

    // Nothing the guest did can flood the host's log at the default level (warn): guest mistakes
    // are logged at debug level, except a refused BAR address, which PCI reports once per BAR.
    // The configuration warnings (--cpus/--memory override the instance type) are expected.
    let mut once_per_bar = std::collections::HashSet::new();
    let noisy: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.contains("flint::config"))
        .filter(|l| {
            let bar = l
                .split_once("devices::pci::root] ")
                .and_then(|(_, msg)| msg.split_once(": "))
                .map(|(bar, _)| bar.to_string());
            // A first refusal for its BAR is allowed; a second one is noise.
            !bar.is_some_and(|bar| once_per_bar.insert(bar))
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "the guest's attacks reached the host log:\n{}",
        noisy.join("\n")
    );

    // The serial flood arrived, every line intact and in order.
    check_flood(&run.stdout, "FLOOD", FLOOD_KIB * 16);
    check_flood(&run.stdout, "FLOODR", FLOOD_REP_KIB * 16);
}
