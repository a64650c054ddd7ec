//! Boots the boot and SMP probe guests under flint and checks what the guest itself reports: the CPUs it
//! finds in the MADT and CPUID, the RAM in its memory map, the command line it received, and how the
//! VM ends.

mod common;

use std::time::{Duration, Instant};

use common::{
    boot_probe, kvm_available, probe, run_flint, run_probe, scratch_path, spawn_flint,
    wait_with_timeout,
};

const MIB: u64 = 1 << 20;

/// RAM the guest's memory map should show: all of it but the EBDA..1 MiB hole.
fn expected_ram_bytes(mem_mib: u64) -> u64 {
    mem_mib * MIB - (0x10_0000 - 0x9_fc00)
}

fn boot_with(cpus: u32, mem_mib: u64) {
    if !kvm_available() {
        return;
    }
    let cpus_arg = cpus.to_string();
    let mem_arg = format!("{mem_mib}M");
    let report = boot_probe(
        "boot",
        &["--cpus", &cpus_arg, "--memory", &mem_arg],
        &format!("expect_cpus={cpus} expect_mem_mib={mem_mib}"),
    );
    assert_eq!(report.info("cpus_madt"), Some(cpus_arg.as_str()));
    assert_eq!(report.info("cpus_cpuid"), Some(cpus_arg.as_str()));
    assert_eq!(
        report.info("ram_bytes"),
        Some(expected_ram_bytes(mem_mib).to_string().as_str())
    );
    for check in [
        "acpi_fadt_hw_reduced",
        "acpi_dsdt_s5",
        "cpus_madt",
        "ram_size",
    ] {
        assert!(report.passed(check), "{check} did not pass");
    }
}

#[test]
fn boot_probe_one_vcpu_512m() {
    boot_with(1, 512);
}

#[test]
fn boot_probe_two_vcpus_1g() {
    boot_with(2, 1024);
}

#[test]
fn boot_probe_eight_vcpus_4g_spans_the_mmio_hole() {
    boot_with(8, 4096);
}

#[test]
fn boot_probe_72_vcpus_144g() {
    boot_with(72, 144 * 1024);
}

#[test]
fn every_instance_type_boots_with_its_shape() {
    if !kvm_available() {
        return;
    }
    let shapes = [
        ("c5.large", 2, 4),
        ("c5.xlarge", 4, 8),
        ("c5.2xlarge", 8, 16),
        ("c5.4xlarge", 16, 32),
        ("c5.9xlarge", 36, 72),
        ("c5.18xlarge", 72, 144),
    ];
    for (name, cpus, gib) in shapes {
        let report = boot_probe(
            "boot",
            &["--instance-type", name],
            &format!("expect_cpus={cpus} expect_mem_mib={}", gib * 1024),
        );
        assert_eq!(
            report.info("cpus_madt"),
            Some(cpus.to_string().as_str()),
            "{name}"
        );
        let smp = boot_probe(
            "smp",
            &["--instance-type", name],
            &format!("expect_cpus={cpus}"),
        );
        assert_eq!(
            smp.info("cpus_started"),
            Some(cpus.to_string().as_str()),
            "{name}"
        );
    }
}

fn smp_with(cpus: u32) {
    if !kvm_available() {
        return;
    }
    let cpus_arg = cpus.to_string();
    let report = boot_probe(
        "smp",
        &["--cpus", &cpus_arg, "--memory", "256M"],
        &format!("expect_cpus={cpus}"),
    );
    assert_eq!(report.info("cpus_started"), Some(cpus_arg.as_str()));
}

#[test]
fn smp_probe_starts_two_vcpus() {
    smp_with(2);
}

#[test]
fn smp_probe_starts_eight_vcpus() {
    smp_with(8);
}

#[test]
fn smp_probe_starts_72_vcpus() {
    smp_with(72);
}

#[test]
fn command_line_arrives_intact() {
    if !kvm_available() {
        return;
    }
    let cmdline =
        "expect_cmdline_token=flint-rt-42 flint-rt-42 a=b,c quote=\"x y\" path=/dev/nvme0n1p1 x=~!@#$%^&*()";
    let report = boot_probe("boot", &["--cpu-profile", "host"], cmdline);
    assert_eq!(report.info("cmdline"), Some(cmdline));
    assert!(report.passed("cmdline"));
}

#[test]
fn every_guest_exit_path_ends_flint_with_status_0() {
    if !kvm_available() {
        return;
    }
    for mode in ["reset", "poweroff", "acpi-reset", "triple-fault"] {
        let report = boot_probe("boot", &[], &format!("exit={mode}"));
        assert_eq!(report.info("exit"), Some(mode), "exit mode {mode}");
    }
}

fn wait_for_file_line(path: &std::path::Path, needle: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{needle} never appeared in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal_stops_a_hung_guest(signum: i32) {
    if !kvm_available() {
        return;
    }
    let console = scratch_path(&format!("hang-{signum}.log"));
    let _ = std::fs::remove_file(&console);
    let kernel = probe("boot");
    let serial = format!("file={}", console.display());
    let started = Instant::now();
    let child = spawn_flint(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "2",
        "--serial",
        &serial,
        "--cmdline",
        "exit=hang",
    ]);
    wait_for_file_line(&console, "PROBE-DONE", Duration::from_secs(30));
    let pid = child.id() as i32;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, signum) }, 0);
    let signalled = Instant::now();
    let run = wait_with_timeout(child, Duration::from_secs(60), started);
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        signalled.elapsed()
    );
    assert_eq!(
        run.status.code(),
        Some(128 + signum),
        "stderr: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn sigterm_stops_a_hung_guest() {
    signal_stops_a_hung_guest(libc::SIGTERM);
}

#[test]
fn sigint_stops_a_hung_guest() {
    signal_stops_a_hung_guest(libc::SIGINT);
}

#[test]
fn serial_to_a_file_or_nowhere() {
    if !kvm_available() {
        return;
    }
    let kernel = probe("boot");
    let kernel = kernel.to_str().unwrap();
    let console = scratch_path("serial-file.log");
    let _ = std::fs::remove_file(&console);
    let serial = format!("file={}", console.display());
    let run = run_flint(
        &["run", "--kernel", kernel, "--serial", &serial],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        !run.stdout.contains("PROBE"),
        "console output leaked to stdout"
    );
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("PROBE-DONE pass="), "{text}");

    let run = run_flint(
        &["run", "--kernel", kernel, "--serial", "off"],
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn config_files_in_json_and_toml_with_flags_overriding() {
    if !kvm_available() {
        return;
    }
    let kernel = probe("boot");
    let json = scratch_path("vm.json");
    std::fs::write(
        &json,
        format!(
            r#"{{"kernel": "{}", "cpus": 3, "memory": "768M", "cmdline": "expect_cpus=3 expect_mem_mib=768"}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let run = run_flint(
        &["run", "--config", json.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let report = run.probe();
    report.assert_all_passed(&run);
    assert_eq!(report.info("cpus_madt"), Some("3"));

    let toml = scratch_path("vm.toml");
    std::fs::write(
        &toml,
        format!(
            "kernel = \"{}\"\ncpus = 3\nmemory = 768\n",
            kernel.display()
        ),
    )
    .unwrap();
    let run = run_flint(
        &[
            "run",
            "--config",
            toml.to_str().unwrap(),
            "--cpus",
            "2",
            "--cmdline",
            "expect_cpus=2",
        ],
        Duration::from_secs(60),
    );
    let report = run.probe();
    report.assert_all_passed(&run);
    assert_eq!(report.info("cpus_madt"), Some("2"));
    assert_eq!(
        report.info("ram_bytes"),
        Some(expected_ram_bytes(768).to_string().as_str())
    );
}

#[test]
fn start_up_and_boot_times_are_logged() {
    if !kvm_available() {
        return;
    }
    let run = run_probe("boot", &["--log-level", "info"], Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("VMM start-up:"), "{}", run.stderr);
    assert!(run.stderr.contains("guest boot marker:"), "{}", run.stderr);
}
