//! The Linux smoke test: boots the minimal kernel from guest-images/ with its busybox initramfs and
//! checks what the guest's /init reports (CPU count, MemTotal, the command line), and that the guest's
//! reboot ends flint with status 0.
//!
//! On a hardware-KVM host this takes about a second of guest time. On a PVM host the guest kernel runs
//! through KVM's instruction emulator and takes about a minute (docs/pvm.md); the test prints how long
//! the boot took either way.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{in_ci, kvm_available, run_flint};

fn guest_images() -> Option<PathBuf> {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-images/out");
    let complete = ["vmlinux", "initramfs.cpio", "cmdline.txt"]
        .iter()
        .all(|f| out.join(f).exists());
    if complete {
        return Some(out);
    }
    assert!(
        !in_ci(),
        "CI=true but the guest images are missing: run guest-images/build.sh"
    );
    eprintln!("SKIPPED: guest-images/out is incomplete; run guest-images/build.sh");
    None
}

fn line_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(str::trim)
}

#[test]
fn linux_boots_to_init_and_sees_its_cpus_memory_and_cmdline() {
    if !kvm_available() {
        return;
    }
    let Some(out) = guest_images() else {
        return;
    };
    let base_cmdline = std::fs::read_to_string(out.join("cmdline.txt")).expect("cmdline.txt");
    let cmdline = format!("{} flint.test=smoke-7f3a", base_cmdline.trim());
    let kernel = out.join("vmlinux");
    let initrd = out.join("initramfs.cpio");
    let run = run_flint(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--cmdline",
            &cmdline,
            "--log-level",
            "info",
        ],
        Duration::from_secs(20 * 60),
    );
    println!(
        "Linux smoke test: launch to exit took {:.1} s",
        run.elapsed.as_secs_f64()
    );
    let console = &run.stdout;
    let context = || format!("--- console ---\n{console}\n--- stderr ---\n{}", run.stderr);
    assert!(
        console.contains("FLINT-INIT-OK"),
        "/init never ran\n{}",
        context()
    );
    // What the kernel did before /init is real too: it found the CPU and the ACPI tables.
    assert!(console.contains("ACPI: "), "{}", context());
    assert_eq!(
        line_value(console, "FLINT-CPUS "),
        Some("1"),
        "{}",
        context()
    );
    let mem_kb: u64 = line_value(console, "FLINT-MEMTOTAL-KB ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal\n{}", context()));
    // MemTotal is RAM less what the kernel keeps for itself: a few MiB under 512 MiB.
    assert!(
        (400 * 1024..512 * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB\n{}",
        context()
    );
    let seen_cmdline = line_value(console, "FLINT-CMDLINE ").unwrap_or_default();
    assert!(
        seen_cmdline.contains("flint.test=smoke-7f3a"),
        "{}",
        context()
    );
    assert!(
        run.status.success(),
        "flint exited with {:?}\n{}",
        run.status,
        context()
    );
}
