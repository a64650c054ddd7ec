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

use common::{in_ci, kvm_available, run_flint, scratch_path};

fn guest_images() -> Option<PathBuf> {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-images/out");
    let complete = [
        "vmlinux",
        "bzImage",
        "initramfs.cpio",
        "cmdline.txt",
        "rootfs.ext4",
    ]
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

/// Boots `kernel_file` (from guest-images/out) with the initramfs and checks what /init reports.
/// Returns the console transcript.
fn boot_linux_with_initramfs(kernel_file: &str) -> Option<String> {
    if !kvm_available() {
        return None;
    }
    let out = guest_images()?;
    let base_cmdline = std::fs::read_to_string(out.join("cmdline.txt")).expect("cmdline.txt");
    let cmdline = format!("{} flint.test=smoke-7f3a", base_cmdline.trim());
    let kernel = out.join(kernel_file);
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
        "Linux smoke test ({kernel_file}): launch to exit took {:.1} s",
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
    Some(console.clone())
}

#[test]
fn linux_boots_to_init_and_sees_its_cpus_memory_and_cmdline() {
    // vmlinux carries a PVH note: flint enters it through hvm_start_info.
    boot_linux_with_initramfs("vmlinux");
}

#[test]
fn linux_bzimage_boots_through_the_64_bit_boot_protocol() {
    // A bzImage is entered in long mode with boot_params: the kernel must see flint's e820 map.
    let Some(console) = boot_linux_with_initramfs("bzImage") else {
        return;
    };
    for needle in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
        "BIOS-e820: [mem 0x00000000e0000000-0x00000000efffffff] reserved",
    ] {
        assert!(console.contains(needle), "missing {needle:?}\n{console}");
    }
}

/// Runs a host tool and returns its stdout; fails the test if it cannot run or fails.
fn host_tool(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn linux_boots_with_its_root_filesystem_on_nvme() {
    if !kvm_available() {
        return;
    }
    let Some(out) = guest_images() else {
        return;
    };
    // The guest writes to its root filesystem: give it a copy.
    let disk = scratch_path("linux-root-nvme.ext4");
    std::fs::copy(out.join("rootfs.ext4"), &disk).expect("copy rootfs.ext4");
    let base_cmdline = std::fs::read_to_string(out.join("cmdline.txt")).expect("cmdline.txt");
    let cmdline = format!(
        "{} root=/dev/nvme0n1 rw rootfstype=ext4 flint.test=nvme-root-51c2",
        base_cmdline.trim()
    );
    let kernel = out.join("vmlinux");
    let volume = format!("path={},id=vol-0abcdef0123456789,name=sdf", disk.display());
    // A virtio-blk disk beside it: Linux's virtio_blk driver must bind it too (read-only here).
    let scratch = scratch_path("linux-virtio-scratch.img");
    std::fs::write(&scratch, vec![0u8; 8 << 20]).expect("create the scratch disk");
    let disk_spec = format!("path={},readonly=on,id=scratch-disk", scratch.display());
    let run = run_flint(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--volume",
            &volume,
            "--disk",
            &disk_spec,
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(20 * 60),
    );
    println!(
        "Linux root-on-NVMe test: launch to exit took {:.1} s",
        run.elapsed.as_secs_f64()
    );
    let console = &run.stdout;
    let context = || format!("--- console ---\n{console}\n--- stderr ---\n{}", run.stderr);
    // Linux's own nvme driver bound the controller and mounted the root filesystem from it.
    for needle in [
        "PCI host bridge to bus 0000:00",
        "nvme nvme0: pci function 0000:00:01.0",
        "virtio_blk virtio0: [vda] 16384 512-byte logical blocks",
        "EXT4-fs (nvme0n1): mounted filesystem",
        "VFS: Mounted root (ext4 filesystem)",
        "FLINT-INIT-OK",
    ] {
        assert!(
            console.contains(needle),
            "missing {needle:?}\n{}",
            context()
        );
    }
    assert_eq!(
        line_value(console, "FLINT-NVME-MODEL "),
        Some("Amazon Elastic Block Store"),
        "{}",
        context()
    );
    assert_eq!(
        line_value(console, "FLINT-NVME-SERIAL "),
        Some("vol0abcdef0123456789"),
        "{}",
        context()
    );
    assert!(
        run.status.success(),
        "flint exited with {:?}\n{}",
        run.status,
        context()
    );

    // What the guest wrote and synced is in the image file, and the filesystem is clean.
    let disk_arg = disk.to_str().unwrap();
    let written = host_tool("debugfs", &["-R", "cat /flint-cmdline", disk_arg]);
    assert!(
        written.contains("flint.test=nvme-root-51c2"),
        "file on disk: {written:?}"
    );
    host_tool("e2fsck", &["-fn", disk_arg]);
}
