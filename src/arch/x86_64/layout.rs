//! Fixed guest-physical addresses and I/O ports of flint's x86_64 platform (docs/platform.md).

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// The PVH `hvm_start_info` structure.
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// The PVH memory map entries, right after `hvm_start_info` (56 bytes).
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Linux's `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory mapping the first 1 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line, including its NUL terminator.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area (reserved).
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory.
pub const LOW_MEMORY_END: u64 = 0xa0000;
/// Start of the area holding the ACPI tables (the BIOS read-only area guests scan for the RSDP).
pub const ACPI_AREA_START: u64 = 0xe0000;
/// End of the BIOS area; the kernel loads at or above it.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole: RAM below it, devices from here to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Guest RAM resumes at 4 GiB.
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;
/// The 32-bit PCI BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// The PCIe ECAM window.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window (256 buses).
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// The boot-marker register.
pub const BOOT_MARKER_ADDR: u64 = 0xf000_0000;
/// The in-kernel IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The in-kernel local APICs.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS (three pages), just below the identity-map page, both inside the MMIO hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity-map page (used for real-mode emulation on Intel).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;
/// The i8042 controller's first port (0x60 data, 0x64 command/status).
pub const I8042_PORT: u16 = 0x60;
/// The ACPI power-management register block.
pub const ACPI_PM_PORT: u16 = 0x600;
