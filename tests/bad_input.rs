//! Bad user input: each case is one clear line on stderr naming the problem, a non-zero exit, and no
//! panic.

mod common;

use common::{assert_one_line_error, kvm_available, probe, scratch_path};

/// Runs flint and checks it failed with one `flint: error:` line containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    assert_one_line_error(args, &[needle]);
}

#[test]
fn missing_kernel_file() {
    if !kvm_available() {
        return;
    }
    fails_with(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn no_kernel_at_all() {
    fails_with(&["run"], "no kernel given");
}

#[test]
fn garbage_kernel_file() {
    if !kvm_available() {
        return;
    }
    let path = scratch_path("garbage-kernel");
    std::fs::write(&path, vec![0x5au8; 64 * 1024]).unwrap();
    fails_with(
        &["run", "--kernel", path.to_str().unwrap()],
        "neither a 64-bit ELF nor a bzImage",
    );
}

#[test]
fn empty_kernel_file() {
    if !kvm_available() {
        return;
    }
    let path = scratch_path("empty-kernel");
    std::fs::write(&path, b"").unwrap();
    fails_with(&["run", "--kernel", path.to_str().unwrap()], "is empty");
}

#[test]
fn zero_memory() {
    fails_with(&["run", "--kernel", "/k", "--memory", "0"], "--memory 0");
}

#[test]
fn memory_beyond_the_guest_address_space() {
    if !kvm_available() {
        return;
    }
    let kernel = probe("boot");
    fails_with(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "1000T",
        ],
        "physical address space",
    );
}

#[test]
fn malformed_memory_size() {
    fails_with(
        &["run", "--kernel", "/k", "--memory", "lots"],
        "--memory lots",
    );
}

#[test]
fn zero_cpus() {
    fails_with(&["run", "--kernel", "/k", "--cpus", "0"], "--cpus 0");
}

#[test]
fn too_many_cpus() {
    fails_with(&["run", "--kernel", "/k", "--cpus", "255"], "--cpus 255");
}

#[test]
fn unreadable_initrd() {
    if !kvm_available() {
        return;
    }
    let kernel = probe("boot");
    let kernel = kernel.to_str().unwrap();
    fails_with(
        &["run", "--kernel", kernel, "--initrd", "/nonexistent/initrd"],
        "initrd /nonexistent/initrd",
    );
    // A directory can't be read as a file even by root.
    fails_with(&["run", "--kernel", kernel, "--initrd", "/"], "initrd /");
}

#[test]
fn unknown_instance_type_lists_the_valid_ones() {
    fails_with(
        &["run", "--kernel", "/k", "--instance-type", "c5.huge"],
        "valid types are c5.large, c5.xlarge",
    );
    fails_with(
        &["run", "--kernel", "/k", "--instance-generation", "next"],
        "launch or current",
    );
}

#[test]
fn unknown_flag() {
    fails_with(&["run", "--kernel", "/k", "--frobnicate"], "--frobnicate");
}

#[test]
fn bad_serial_and_profile() {
    fails_with(&["run", "--kernel", "/k", "--serial", "tty"], "--serial");
    fails_with(
        &["run", "--kernel", "/k", "--cpu-profile", "fast"],
        "--cpu-profile",
    );
}

#[test]
fn unreadable_config_file() {
    fails_with(
        &["run", "--config", "/nonexistent/vm.json"],
        "/nonexistent/vm.json",
    );
    let path = scratch_path("bad.json");
    std::fs::write(&path, "{ not json").unwrap();
    fails_with(&["run", "--config", path.to_str().unwrap()], "bad.json");
}

#[test]
fn malformed_or_missing_volume() {
    fails_with(
        &[
            "run",
            "--kernel",
            "/k",
            "--volume",
            "path=a.img,block_size=1024",
        ],
        "512 or 4096",
    );
    fails_with(
        &["run", "--kernel", "/k", "--volume", "id=vol-1"],
        "missing path",
    );
    if !kvm_available() {
        return;
    }
    let kernel = probe("boot");
    fails_with(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--volume",
            "path=/nonexistent/disk.img",
        ],
        "--volume path=/nonexistent/disk.img",
    );
}
