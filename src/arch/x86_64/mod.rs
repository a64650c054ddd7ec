//! The x86_64 platform: guest memory layout, boot protocols, CPU state, CPUID and ACPI tables.
//! docs/platform.md is the guest-visible contract these modules implement.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod memory_map;
pub mod msr;
pub mod pvh;
pub mod regs;
