//! The seccomp sandbox (docs/security.md): a forbidden system call from any thread class stops flint
//! with one line naming the class and the call; every thread of a running VM is filtered, device
//! workers on top of the spawner's filter; `--no-seccomp` turns it all off.
//!
//! The forbidden call comes from `--debug-forbidden-syscall THREAD`, a hidden test hook: threads
//! of that class call socket(2) right after installing their filter.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    kvm_available, probe, run_flint, run_probe, scratch_disk, scratch_path, spawn_flint,
    wait_with_timeout,
};

/// flint's exit status after a violation: 128 + SIGSYS.
const VIOLATION_STATUS: i32 = 128 + libc::SIGSYS;

/// Boots probe `guest` (powering off when done) with a forbidden call in `class`'s threads and
/// checks that flint died of it, with exactly the one-line message. Threads that exist before the
/// guest starts must have stopped flint before its first instruction.
fn forbidden_call_stops_flint(guest: &str, class: &str, class_name: &str, extra: &[&str]) {
    let kernel = probe(guest);
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "2",
        "--cmdline",
        "exit=poweroff",
        "--debug-forbidden-syscall",
        class,
    ];
    args.extend_from_slice(extra);
    let run = run_flint(&args, Duration::from_secs(60));
    assert_eq!(
        run.status.code(),
        Some(VIOLATION_STATUS),
        "{class}: status {:?}, stderr: {}",
        run.status,
        run.stderr
    );
    assert_eq!(
        run.stderr_without_warnings(),
        [format!(
            "flint: error: seccomp: the {class_name} thread made a forbidden system call, socket ({}); the VMM is stopped (--no-seccomp turns the sandbox off)",
            libc::SYS_socket
        )],
        "{class}"
    );
    // Every thread is filtered before the guest's first instruction.
    if guest == "boot" {
        assert!(
            !run.stdout.contains("PROBE-START"),
            "{class}: the guest ran: {}",
            run.stdout
        );
    } else {
        assert!(run.stdout.contains("PROBE-START"), "{}", run.stdout);
    }
}

#[test]
fn a_forbidden_call_from_a_vcpu_thread_stops_flint_with_one_line() {
    if !kvm_available() {
        return;
    }
    forbidden_call_stops_flint("boot", "vcpu", "vCPU", &[]);
}

#[test]
fn a_forbidden_call_from_any_other_thread_class_stops_flint_too() {
    if !kvm_available() {
        return;
    }
    forbidden_call_stops_flint("boot", "main", "main", &[]);
    forbidden_call_stops_flint("boot", "spawner", "worker spawner", &[]);
    // An NVMe volume's worker starts (and is sandboxed) while the VM is built.
    let volume = scratch_disk("seccomp-forbidden.img", 1 << 20);
    let volume = format!("path={}", volume.display());
    forbidden_call_stops_flint("boot", "device", "device I/O", &["--volume", &volume]);
}

#[test]
fn a_device_worker_started_by_the_guest_is_filtered() {
    if !kvm_available() {
        return;
    }
    // The virtio-blk worker starts when the guest's driver sets DRIVER_OK, from a vCPU thread.
    // (That it runs under the spawner's filter, not the vCPU's, which has no file I/O, the
    // virtio-blk tests show by passing with the sandbox on.)
    let disk = scratch_disk("seccomp-forbidden-disk.img", 8 << 20);
    let disk = format!("path={}", disk.display());
    forbidden_call_stops_flint("virtio_blk", "device", "device I/O", &["--disk", &disk]);
}

#[test]
fn without_the_sandbox_the_forbidden_call_is_harmless() {
    if !kvm_available() {
        return;
    }
    let run = run_probe(
        "boot",
        &[
            "--cmdline",
            "exit=poweroff",
            "--no-seccomp",
            "--debug-forbidden-syscall",
            "vcpu",
        ],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{:?}: {}", run.status, run.stderr);
    assert!(run.stderr.contains("socket() succeeded"), "{}", run.stderr);
    let (_, fail) = run.probe().done.expect("PROBE-DONE");
    assert_eq!(fail, 0, "{}", run.stdout);
}

fn wait_for_file_line(path: &Path, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
        assert!(
            start.elapsed() < timeout,
            "{needle} never appeared in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One thread of a process: its name and the `Seccomp:` / `Seccomp_filters:` lines of its status.
#[derive(Debug)]
struct ThreadState {
    name: String,
    mode: u32,
    filters: u32,
}

fn threads_of(pid: u32) -> Vec<ThreadState> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the task list") {
        let dir = task.expect("task entry").path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let field: HashMap<&str, &str> = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        let number = |key: &str| field.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        threads.push(ThreadState {
            name: comm.trim().to_string(),
            mode: number("Seccomp"),
            filters: number("Seccomp_filters"),
        });
    }
    threads
}

/// Boots the virtio-blk probe with an NVMe volume too, leaves it hanging after its checks (the
/// probe resets the virtio-blk device at the end, so its worker is gone; the NVMe worker runs),
/// and returns the threads of the live flint.
fn threads_of_a_running_vm(name: &str, extra: &[&str]) -> Vec<ThreadState> {
    let console = scratch_path(&format!("{name}.log"));
    let _ = std::fs::remove_file(&console);
    let disk = scratch_disk(&format!("{name}-disk.img"), 8 << 20);
    let volume = scratch_disk(&format!("{name}-volume.img"), 1 << 20);
    let kernel = probe("virtio_blk");
    let serial = format!("file={}", console.display());
    let disk = format!("path={}", disk.display());
    let volume = format!("path={}", volume.display());
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "2",
        "--serial",
        &serial,
        "--volume",
        &volume,
        "--disk",
        &disk,
        "--cmdline",
        "exit=hang",
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let child = spawn_flint(&args);
    wait_for_file_line(&console, "PROBE-DONE", Duration::from_secs(60));
    let threads = threads_of(child.id());
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped has no memory effects.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let run = wait_with_timeout(child, Duration::from_secs(30), started);
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        run.stderr
    );
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(console.contains("PROBE-DONE pass="), "{console}");
    assert!(!console.contains(" FAIL"), "{console}");
    threads
}

#[test]
fn every_thread_of_a_running_vm_is_filtered() {
    if !kvm_available() {
        return;
    }
    let threads = threads_of_a_running_vm("seccomp-threads", &[]);
    let names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    for expected in ["flint", "worker-spawner", "vcpu0", "vcpu1", "nvme-worker"] {
        assert!(
            names.contains(&expected),
            "no {expected} thread: {threads:?}"
        );
    }
    // Seccomp: 2 is filter mode.
    for t in &threads {
        assert_eq!(t.mode, 2, "thread {} is not filtered: {threads:?}", t.name);
        assert!(t.filters > 0, "{threads:?}");
    }
    // A worker runs under the spawner's filters plus its own.
    let filters = |name: &str| {
        threads
            .iter()
            .find(|t| t.name == name)
            .map_or(0, |t| t.filters)
    };
    assert!(
        filters("nvme-worker") > filters("worker-spawner"),
        "{threads:?}"
    );
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    if !kvm_available() {
        return;
    }
    let threads = threads_of_a_running_vm("seccomp-off", &["--no-seccomp"]);
    assert!(threads.len() >= 5, "{threads:?}");
    for t in &threads {
        assert_eq!(t.mode, 0, "thread {} is filtered: {threads:?}", t.name);
    }
}
