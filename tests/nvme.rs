//! Boots the NVMe probe guest (tests/guests/nvme.c) under flint with `--volume` disks and checks both
//! sides: every check the guest driver makes (PCI function, bring-up, Identify with the EBS identity,
//! I/O queues with MSI-X and polling, PRP1/PRP2/PRP lists, Write Zeroes, deallocate, Flush, every
//! error status, full completion queues, queue deletion, log pages, shutdown), then the disk file on
//! the host: the probe's pattern must be exactly where it wrote it and nothing else may have changed.
//!
//! The pattern (the same formula is documented in tests/guests/nvme.c): the little-endian dword at
//! byte offset `o` of the disk of controller `c` (0 for the first `--volume`) is
//! `(o/4) * 0x9E3779B1 + 0x6E766D65 + c * 0x01000193` (mod 2^32), written at
//!
//! | range | bytes | how the probe wrote it |
//! |---|---|---|
//! | R0 | [0, 4K) | PRP1 only |
//! | R1 | [1M, 1M+8K) | PRP1 + PRP2 |
//! | R2 | [2M, 2M+4K) | PRP1 at a page offset + PRP2 |
//! | R3 | [4M, 4M+64K) | PRP list |
//! | R4 | [end-4K, end) | the last blocks |
//! | R5 | [6M, 6M+4K) | pattern; [6M+4K, 6M+12K) written then zeroed (Write Zeroes, deallocate) |
//! | Z | [8M, 8M+8K) | a write with PRP2 outside guest RAM: must stay zero |
//!
//! Everything outside those ranges stays as it was (zero for a fresh file).

mod common;

use std::path::Path;

use common::{
    assert_one_line_error, boot_probe, kvm_available, probe, scratch_disk, scratch_path,
    ProbeReport,
};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The probe's data pattern for disk byte offset `offset` (a multiple of 4) of controller `c`.
fn pattern(offset: u64, c: u32) -> u32 {
    ((offset / 4) as u32)
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(0x6E76_6D65)
        .wrapping_add(c.wrapping_mul(0x0100_0193))
}

fn fill_pattern(image: &mut [u8], offset: u64, len: u64, c: u32) {
    for o in (offset..offset + len).step_by(4) {
        image[o as usize..o as usize + 4].copy_from_slice(&pattern(o, c).to_le_bytes());
    }
}

/// The byte ranges the probe leaves holding the pattern on a writable volume of `size` bytes.
fn pattern_ranges(size: u64) -> [(&'static str, u64, u64); 6] {
    [
        ("R0", 0, PAGE),
        ("R1", MIB, 2 * PAGE),
        ("R2", 2 * MIB, PAGE),
        ("R3", 4 * MIB, 16 * PAGE),
        ("R4", size - PAGE, PAGE),
        ("R5", 6 * MIB, PAGE),
    ]
}

/// What a fresh (all-zero) disk of `size` bytes must hold after the probe ran on controller `c`.
fn expected_image(size: u64, c: u32) -> Vec<u8> {
    let mut image = vec![0u8; size as usize];
    for (_, offset, len) in pattern_ranges(size) {
        fill_pattern(&mut image, offset, len, c);
    }
    image
}

/// Compares the disk file with `want`, naming the first differing byte and the range it is in.
fn assert_disk(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).expect("read disk file back");
    assert_eq!(got.len(), want.len(), "{} changed size", path.display());
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        let size = want.len() as u64;
        let region = pattern_ranges(size)
            .iter()
            .chain(&[
                ("R5 zeroed part", 6 * MIB + PAGE, 2 * PAGE),
                ("Z", 8 * MIB, 2 * PAGE),
            ])
            .find(|(_, o, l)| (*o..o + l).contains(&(at as u64)))
            .map_or("outside every range the probe touches", |r| r.0);
        let dword = at & !3;
        panic!(
            "{}: byte {at:#x} ({region}) differs: dword there is {:#010x}, want {:#010x}",
            path.display(),
            u32::from_le_bytes(got[dword..dword + 4].try_into().unwrap()),
            u32::from_le_bytes(want[dword..dword + 4].try_into().unwrap()),
        );
    }
}

/// The checks every run must have made (so a probe that silently skipped a part cannot pass).
const CORE_CHECKS: &[&str] = &[
    "pci_ids",
    "pci_bar0",
    "msix_layout",
    "cap",
    "vs",
    "enable",
    "id_vendor",
    "id_model",
    "id_serial",
    "id_name",
    "ns_blocks",
    "ns_block_size",
    "ns_write_protect",
    "ns_list",
    "set_num_queues",
    "create_io_queues",
    "create_sq_bad_cq",
    "create_sq_qid0",
    "create_sq_too_big",
    "create_cq_bad_vector",
    "msix_irr",
    "msix_idt",
    "flush",
    "read_prp1",
    "read_prp2",
    "read_prp1_offset",
    "read_prp_chain",
    "read_last_lba",
    "read_zeroed",
    "msix_masked_pending",
    "err_lba_range",
    "err_opcode",
    "err_prp_outside_ram",
    "err_prp_list_entry_unaligned",
    "err_prp_loop",
    "aer_invalid_doorbell",
    "err_sq_doorbell_beyond",
    "err_cq_doorbell_beyond",
    "cq_full_resume",
    "delete_sq",
    "delete_cq",
    "msix_every_completion",
    "polled_no_interrupts",
    "log_smart_counts",
    "shutdown",
    "disable",
];

fn assert_core_checks(report: &ProbeReport, prefix: &str, extra: &[&str]) {
    for check in CORE_CHECKS.iter().chain(extra) {
        let name = format!("{prefix}_{check}");
        assert!(report.passed(&name), "{name} did not run or did not pass");
    }
}

/// One writable 512-byte-block volume with an EBS id and device name: the guest sees the EBS
/// identity, every check passes, and the host finds exactly the pattern the probe wrote.
#[test]
fn nvme_probe_read_write() {
    if !kvm_available() {
        return;
    }
    let size = 64 * MIB;
    let disk = scratch_disk("nvme-rw.img", size);
    let volume = format!("path={},id=vol-0123456789abcdef0,name=sdf", disk.display());
    let report = boot_probe(
        "nvme",
        &["--memory", "256M", "--cpus", "1", "--volume", &volume],
        "expect_controllers=1 expect_serial=vol0123456789abcdef0 expect_name=sdf \
         expect_blocks=131072 expect_block_size=512 exit=reset",
    );
    assert_core_checks(
        &report,
        "nvme",
        &[
            "write_prp1",
            "write_prp2",
            "write_prp1_offset",
            "write_prp_list",
            "write_last_lba",
            "write_zeroes",
            "dsm_deallocate",
            "err_write_prp2_outside_ram",
        ],
    );
    assert_eq!(report.info("controllers"), Some("1"));
    assert_eq!(
        report.info("nvme_pci"),
        Some("00:01.0 1d0f:8061 subsystem 1d0f:8061")
    );
    assert_disk(&disk, &expected_image(size, 0));
}

/// `readonly=on`: the namespace is write protected, every write-type command fails with Namespace is
/// Write Protected, reads return what the file holds, and the file is byte-for-byte unchanged.
#[test]
fn nvme_probe_read_only() {
    if !kvm_available() {
        return;
    }
    let size = 64 * MIB;
    let disk = scratch_disk("nvme-ro.img", size);
    // The probe verifies its reads against the pattern, over all of R0..R5 (R5 is 12 KiB).
    let mut image = vec![0u8; size as usize];
    for (_, offset, len) in pattern_ranges(size) {
        fill_pattern(&mut image, offset, len, 0);
    }
    fill_pattern(&mut image, 6 * MIB, 3 * PAGE, 0);
    // A recognisable byte outside the pattern ranges, which nothing may touch either.
    image[(8 * MIB) as usize..(8 * MIB + PAGE) as usize].fill(0x5a);
    std::fs::write(&disk, &image).unwrap();
    let volume = format!(
        "path={},id=vol-0123456789abcdef0,readonly=on",
        disk.display()
    );
    let report = boot_probe(
        "nvme",
        &["--memory", "256M", "--cpus", "1", "--volume", &volume],
        "expect_controllers=1 expect_serial=vol0123456789abcdef0 expect_blocks=131072 \
         expect_block_size=512 expect_readonly=1 exit=reset",
    );
    let core: Vec<&str> = CORE_CHECKS
        .iter()
        .copied()
        .filter(|c| *c != "id_name") // no name= given
        .collect();
    for check in core.iter().chain(&[
        "write_prp1",
        "write_prp_list",
        "write_zeroes",
        "dsm_deallocate",
        "err_write_readonly",
    ]) {
        let name = format!("nvme_{check}");
        assert!(report.passed(&name), "{name} did not run or did not pass");
    }
    assert!(report
        .info("nvme_ns")
        .is_some_and(|ns| ns.contains("nsattr=0x1")));
    assert_disk(&disk, &image);
}

/// Two volumes are two controllers (slots 1 and 2), each with its own identity, size and block
/// size, and each disk gets its own controller's pattern.
#[test]
fn nvme_probe_two_volumes() {
    if !kvm_available() {
        return;
    }
    let (size0, size1) = (64 * MIB, 32 * MIB);
    let disk0 = scratch_disk("nvme-two-0.img", size0);
    let disk1 = scratch_disk("nvme-two-1.img", size1);
    let volume0 = format!("path={},id=vol-0123456789abcdef0,name=sdf", disk0.display());
    let volume1 = format!(
        "path={},id=vol-0fedcba9876543210,name=sdg,block_size=4096",
        disk1.display()
    );
    let report = boot_probe(
        "nvme",
        &[
            "--memory", "256M", "--cpus", "1", "--volume", &volume0, "--volume", &volume1,
        ],
        "expect_controllers=2 expect_serial=vol0123456789abcdef0 expect_name=sdf \
         expect_blocks=131072 expect_block_size=512 expect_serial1=vol0fedcba9876543210 \
         expect_name1=sdg expect_blocks1=8192 expect_block_size1=4096 exit=reset",
    );
    assert_eq!(report.info("controllers"), Some("2"));
    assert!(report.passed("nvme_controller_count"));
    assert_core_checks(&report, "nvme", &[]);
    assert_core_checks(&report, "nvme1", &[]);
    assert_eq!(
        report.info("nvme1_pci"),
        Some("00:02.0 1d0f:8061 subsystem 1d0f:8061")
    );
    assert_disk(&disk0, &expected_image(size0, 0));
    assert_disk(&disk1, &expected_image(size1, 1));
}

/// `block_size=4096`: one LBA format of 4 KiB blocks; the same byte ranges end up with the pattern.
#[test]
fn nvme_probe_4k_blocks() {
    if !kvm_available() {
        return;
    }
    let size = 64 * MIB;
    let disk = scratch_disk("nvme-4k.img", size);
    let volume = format!(
        "path={},id=vol-0123456789abcdef0,name=sdf,block_size=4096",
        disk.display()
    );
    let report = boot_probe(
        "nvme",
        &["--memory", "256M", "--cpus", "1", "--volume", &volume],
        "expect_controllers=1 expect_serial=vol0123456789abcdef0 expect_name=sdf \
         expect_blocks=16384 expect_block_size=4096 exit=reset",
    );
    assert_core_checks(&report, "nvme", &["write_prp_list", "err_over_mdts"]);
    assert!(report
        .info("nvme_ns")
        .is_some_and(|ns| ns.contains("lbads=12")));
    assert_disk(&disk, &expected_image(size, 0));
}

/// Runs flint and checks it failed with one `flint: error:` line containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    assert_one_line_error(args, &[needle]);
}

/// Volumes flint cannot use: each is one clear error line naming the problem.
#[test]
fn nvme_bad_volumes() {
    if !kvm_available() {
        return;
    }
    let kernel = probe("nvme");
    let kernel = kernel.to_str().unwrap();
    let run = |volume: &str, needle: &str| {
        fails_with(&["run", "--kernel", kernel, "--volume", volume], needle)
    };
    run("path=/nonexistent/disk.img", "/nonexistent/disk.img");
    let tiny = scratch_path("nvme-tiny.img");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    run(
        &format!("path={}", tiny.display()),
        "smaller than one 512-byte block",
    );
    let dir = scratch_path("nvme-dir");
    std::fs::create_dir_all(&dir).unwrap();
    run(&format!("path={}", dir.display()), "Is a directory");
    let disk = scratch_disk("nvme-bad.img", MIB);
    let disk = disk.display();
    run(&format!("path={disk},id=vol-XYZ"), "volume id \"vol-XYZ\"");
    run(&format!("path={disk},block_size=1024"), "512 or 4096");
    run(&format!("path={disk},readonly=maybe"), "expected on or off");
    // The same file twice: the second controller cannot take the lock the first one holds.
    fails_with(
        &[
            "run",
            "--kernel",
            kernel,
            "--volume",
            &format!("path={disk}"),
            "--volume",
            &format!("path={disk}"),
        ],
        "in use by another process",
    );
}
