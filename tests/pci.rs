//! Boots the PCI probe guest under flint: bus 0 through 0xCF8/0xCFC and through the ECAM window the
//! MCFG describes must agree, the host bridge is at 00:00.0, absent functions read all ones, and every
//! device with BARs answers sizing probes and follows its BAR when the guest moves it.

mod common;

use common::{boot_probe, kvm_available};

/// With no device attached the guest sees the host bridge alone.
#[test]
fn pci_probe_host_bridge_only() {
    if !kvm_available() {
        return;
    }
    let report = boot_probe(
        "pci",
        &["--cpus", "1", "--memory", "256M"],
        "expect_pci_devices=1 exit=poweroff",
    );
    for check in [
        "pci_cf8_latch",
        "acpi_mcfg",
        "acpi_mcfg_base",
        "pci_ecam_reserved",
        "acpi_dsdt_host_bridge",
        "pci_device_count",
        "pci_host_bridge",
        "pci_host_bridge_no_bars",
        "pci_absent_reads_ones",
        "pci_ecam_matches_cf8",
        "pci_subdword_access",
    ] {
        assert!(report.passed(check), "{check} did not pass");
    }
    assert_eq!(
        report.info("pci_00.0"),
        Some("8086:0d57 class=060000 rev=0 header=0x00")
    );
    assert_eq!(report.info("pci_functions"), Some("1"));
}

/// Two vCPUs and RAM above 4 GiB change nothing on the bus (the 64-bit window moves up).
#[test]
fn pci_probe_two_vcpus_5g() {
    if !kvm_available() {
        return;
    }
    let report = boot_probe(
        "pci",
        &["--cpus", "2", "--memory", "5G"],
        "expect_pci_devices=1 exit=reset",
    );
    assert!(report.passed("pci_ecam_matches_cf8"));
}
