//! Boots the virtio-blk probe guest under flint with `--disk`: the guest drives the modern
//! virtio-pci transport and the block device like a driver (docs/virtio.md), and the test checks the
//! disk file from the host afterwards. Also: a read-only disk stays byte-identical, several disks
//! land after the NVMe volumes on the bus, and bad `--disk` input is one line on stderr.

mod common;

use std::path::Path;

use common::{assert_one_line_error, boot_probe, kvm_available, probe, scratch_disk, scratch_path};

/// The probe's data pattern: the little-endian dword at byte offset `o` of the disk.
fn pattern(o: u64) -> u32 {
    ((o / 4) as u32)
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(0x766C_626B)
}

fn pattern_bytes(from: u64, len: usize) -> Vec<u8> {
    (0..len as u64 / 4)
        .flat_map(|i| pattern(from + 4 * i).to_le_bytes())
        .collect()
}

fn disk_arg(path: &Path, extra: &str) -> String {
    format!("path={}{extra}", path.display())
}

/// Every check the probe runs on a writable disk.
const WRITABLE_CHECKS: &[&str] = &[
    "vblk_found",
    "vblk_ids",
    "vblk_bar0",
    "vblk_caps",
    "vblk_msix_cap",
    "vblk_reset_initial",
    "vblk_version_1",
    "vblk_ro_feature",
    "vblk_features_ok_needs_version_1",
    "vblk_features_ok",
    "vblk_capacity",
    "vblk_config",
    "vblk_queue_size_not_pow2_rejected",
    "vblk_msix_vectors",
    "vblk_driver_ok",
    "vblk_msix_pending",
    "vblk_msix_irq",
    "vblk_write",
    "vblk_flush",
    "vblk_read_verify",
    "vblk_read_verify_last",
    "vblk_indirect_read",
    "vblk_get_id",
    "vblk_beyond_capacity",
    "vblk_discard",
    "vblk_bad_descriptor0",
    "vblk_after_bad_descriptor0",
    "vblk_bad_descriptor1",
    "vblk_after_bad_descriptor1",
    "vblk_descriptor_loop",
    "vblk_after_descriptor_loop",
    "vblk_reset",
    "vblk_reinit",
    "vblk_read_after_reset",
];

#[test]
fn virtio_blk_probe_writes_the_pattern() {
    if !kvm_available() {
        return;
    }
    const SIZE: u64 = 8 << 20;
    let disk = scratch_disk("virtio-blk-rw.img", SIZE);
    let report = boot_probe(
        "virtio_blk",
        &[
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--disk",
            &disk_arg(&disk, ",id=scratch-0"),
        ],
        "expect_id=scratch-0 expect_sectors=16384 expect_disks=1 exit=poweroff",
    );
    for check in WRITABLE_CHECKS {
        assert!(report.passed(check), "{check} did not pass");
    }
    assert_eq!(report.info("vblk_id"), Some("scratch-0"));
    // The pattern is in the file: sectors 0-7 and the last 8.
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(data.len() as u64, SIZE);
    assert!(data[..4096] == pattern_bytes(0, 4096)[..], "sectors 0-7");
    let last = SIZE - 4096;
    assert!(
        data[last as usize..] == pattern_bytes(last, 4096)[..],
        "the last 8 sectors"
    );
    // Sectors 16-23 were written, then discarded: zeroes.
    assert!(data[16 * 512..24 * 512].iter().all(|b| *b == 0));
}

#[test]
fn virtio_blk_read_only_disk_is_untouched() {
    if !kvm_available() {
        return;
    }
    const SIZE: u64 = 1 << 20;
    let disk = scratch_path("virtio-blk-ro.img");
    let contents = pattern_bytes(0, SIZE as usize);
    std::fs::write(&disk, &contents).unwrap();
    let report = boot_probe(
        "virtio_blk",
        &[
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--disk",
            &disk_arg(&disk, ",readonly=on"),
        ],
        "expect_readonly=1 expect_sectors=2048 exit=poweroff",
    );
    for check in [
        "vblk_ro_feature",
        "vblk_readonly_write",
        "vblk_flush",
        "vblk_read_verify",
        "vblk_read_verify_last",
        "vblk_beyond_capacity",
        "vblk_bad_descriptor0",
        "vblk_descriptor_loop",
        "vblk_reinit",
        "vblk_read_after_reset",
    ] {
        assert!(report.passed(check), "{check} did not pass");
    }
    assert!(!report.checks.iter().any(|(n, _, _)| n == "vblk_discard"));
    // A stable id derived from the path.
    let id = report.info("vblk_id").unwrap();
    assert!(id.starts_with("flint-") && id.len() == 20, "{id}");
    assert!(
        std::fs::read(&disk).unwrap() == contents,
        "the read-only disk changed"
    );
}

#[test]
fn virtio_blk_disks_follow_the_volumes_on_the_bus() {
    if !kvm_available() {
        return;
    }
    let volume = scratch_disk("virtio-blk-order-vol.img", 1 << 20);
    let first = scratch_disk("virtio-blk-order-a.img", 2 << 20);
    let second = scratch_disk("virtio-blk-order-b.img", 1 << 20);
    let report = boot_probe(
        "virtio_blk",
        &[
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--volume",
            &disk_arg(&volume, ""),
            "--disk",
            &disk_arg(&first, ",queues=2"),
            "--disk",
            &disk_arg(&second, ""),
        ],
        "expect_disks=2 expect_sectors=4096 exit=poweroff",
    );
    // The NVMe controller takes slot 1; the first disk (probed) is in slot 2.
    assert_eq!(report.info("vblk_slot"), Some("02"));
    assert_eq!(report.info("vblk_queue"), Some("max size 256, 2 queue(s)"));
    assert!(report.passed("vblk_read_after_reset"));
}

/// Runs flint and checks it failed with one `flint: error:` line containing all of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    assert_one_line_error(args, needles);
}

#[test]
fn bad_disk_input_is_one_line() {
    let kernel = probe("virtio_blk");
    let kernel = kernel.to_str().unwrap();
    fn run<'a>(kernel: &'a str, disk: &'a str) -> Vec<&'a str> {
        vec!["run", "--kernel", kernel, "--memory", "64M", "--disk", disk]
    }
    // Malformed specs are refused before anything starts.
    fails_with(
        &run(kernel, "readonly=on"),
        &["--disk readonly=on: missing path=FILE"],
    );
    fails_with(
        &run(kernel, "path=x.img,readonly=maybe"),
        &["--disk path=x.img,readonly=maybe: readonly=maybe: expected on or off"],
    );
    fails_with(
        &run(kernel, "path=x.img,id=this-id-is-longer-than-20"),
        &[
            "--disk path=x.img,id=this-id-is-longer-than-20",
            "1 to 20 printable ASCII",
        ],
    );
    fails_with(
        &run(kernel, "path=x.img,cache=none"),
        &["unknown or empty setting 'cache=none'"],
    );
    // Malformed rate caps.
    fails_with(
        &run(kernel, "path=x.img,iops=0"),
        &["--disk path=x.img,iops=0: iops=0: expected a whole number of requests per second"],
    );
    fails_with(
        &run(kernel, "path=x.img,throughput=fast"),
        &["--disk path=x.img,throughput=fast: throughput=fast: expected bytes per second"],
    );
    fails_with(
        &run(kernel, "path=x.img,bandwidth=0"),
        &["bandwidth=0: expected 1 byte/s"],
    );
    if !kvm_available() {
        return;
    }
    // Files that cannot be used.
    fails_with(
        &run(kernel, "path=/nonexistent/flint-disk.img"),
        &["--disk path=/nonexistent/flint-disk.img: cannot open disk"],
    );
    let tiny = scratch_path("virtio-blk-tiny.img");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    fails_with(
        &run(kernel, &disk_arg(&tiny, "")),
        &["--disk path=", "smaller than one 512-byte sector"],
    );
    // The same file twice: the second open finds it locked.
    let shared = scratch_disk("virtio-blk-twice.img", 1 << 20);
    let spec = disk_arg(&shared, "");
    let mut args = run(kernel, &spec);
    args.extend(["--disk", spec.as_str()]);
    fails_with(&args, &["--disk path=", "is in use by another process"]);
}
