//! The guest's ACPI tables (docs/platform.md, "ACPI"), built with rust-vmm's `acpi_tables` crate.
//!
//! Layout: the RSDP (revision 2) at [`RSDP_ADDR`], then the DSDT, FADT, MADT and XSDT packed after it,
//! each 8-byte aligned, all inside `RSDP_ADDR..ACPI_AREA_END` (the BIOS read-only area the e820 map
//! reserves). The XSDT lists the FADT and the MADT; the FADT points at the DSDT.
//!
//! The platform is hardware-reduced ACPI: no SCI, no GPEs, no PM timer, no FACS. Sleep and reset go
//! through the sleep control/status registers and the reset register (I/O ports 0x600, 0x601, 0x602).
//! For guests that ignore the hardware-reduced flag the FADT also carries a PM1a control block at 0x604.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags as FadtFlags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use devices::{acpi_pm, i8042};

use super::layout::{self, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START};

/// Guest-physical address of the RSDP; also the start of the ACPI area.
pub const RSDP_ADDR: u64 = layout::ACPI_AREA_START;
/// End (exclusive) of the ACPI area: every table lies in `RSDP_ADDR..ACPI_AREA_END`.
pub const ACPI_AREA_END: u64 = layout::HIGH_MEMORY_START;

/// OEM ID in every table header and in the RSDP.
pub const OEM_ID: [u8; 6] = *b"FLINT ";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"FLINTVMM";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// Creator ID in every table header (the crate would put its own "RVAT" there).
pub const CREATOR_ID: [u8; 4] = *b"FLNT";
/// Creator revision in every table header.
pub const CREATOR_REVISION: u32 = 1;

/// The local APICs' MMIO base (in-kernel, KVM).
pub const LAPIC_ADDR: u32 = layout::LAPIC_ADDR as u32;
/// The IOAPIC's MMIO base (in-kernel, KVM).
pub const IOAPIC_ADDR: u32 = layout::IOAPIC_ADDR as u32;

// The ACPI power-management registers are those of `devices::acpi_pm`, at `layout::ACPI_PM_PORT`.
/// ACPI sleep control register (8-bit): SLP_TYP in bits 2-4, SLP_EN bit 5.
pub const SLEEP_CONTROL_PORT: u16 = layout::ACPI_PM_PORT + acpi_pm::SLEEP_CONTROL_OFFSET as u16;
/// ACPI sleep status register (8-bit).
pub const SLEEP_STATUS_PORT: u16 = layout::ACPI_PM_PORT + acpi_pm::SLEEP_STATUS_OFFSET as u16;
/// ACPI reset register (8-bit).
pub const RESET_PORT: u16 = layout::ACPI_PM_PORT + acpi_pm::RESET_OFFSET as u16;
/// The value the guest writes to [`RESET_PORT`] to reset the machine.
pub const RESET_VALUE: u8 = acpi_pm::RESET_VALUE;
/// ACPI PM1a control block (16-bit), for guests that ignore the hardware-reduced flag.
pub const PM1A_CNT_PORT: u16 = layout::ACPI_PM_PORT + acpi_pm::PM1A_CONTROL_OFFSET as u16;
/// Length in bytes of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// The SLP_TYP value of the S5 (soft off) state, as declared by `\_S5_`.
pub const S5_SLP_TYP: u8 = acpi_pm::S5_SLEEP_TYPE;

/// COM1's I/O base.
const COM1_PORT: u16 = layout::COM1_PORT;
/// COM1's ISA IRQ.
const COM1_IRQ: u32 = layout::COM1_IRQ;
/// The i8042 data port.
const I8042_DATA_PORT: u16 = layout::I8042_PORT + i8042::DATA_OFFSET as u16;
/// The i8042 command/status port.
const I8042_COMMAND_PORT: u16 = layout::I8042_PORT + i8042::COMMAND_OFFSET as u16;
/// The i8042 keyboard's ISA IRQ.
const I8042_KBD_IRQ: u32 = 1;

/// Alignment of every table in the ACPI area.
const TABLE_ALIGN: u64 = 8;
/// Size of a table header (SDT header).
const HEADER_LEN: usize = 36;
/// Size of the MADT's fixed part: the header, the local interrupt controller address and the flags.
const MADT_FIXED_LEN: usize = 44;
/// MADT revision (5 as in ACPI 6.3; Linux honours the "online capable" flag only from 5 on).
const MADT_REVISION: u8 = 5;
/// DSDT revision: 2 and above means 64-bit AML integers.
const DSDT_REVISION: u8 = 2;

/// MADT flags: PCAT_COMPAT, the system also has a PC-AT-compatible dual 8259 (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// Highest APIC ID a Processor Local APIC structure may describe; from 255 on, x2APIC structures.
const MAX_XAPIC_ID: u32 = 254;
/// ACPI processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS_UID: u8 = 0xff;
/// ACPI processor UID meaning "all processors" in a Local x2APIC NMI structure.
const ALL_PROCESSORS_X2APIC_UID: u32 = 0xffff_ffff;
/// The LAPIC input the NMI is wired to.
const NMI_LINT: u8 = 1;
/// MPS INTI flags: active high (bits 0-1 = 01), edge triggered (bits 2-3 = 01).
const MPS_INTI_EDGE_HIGH: u16 = 0b0101;
/// MADT interrupt source override bus: ISA.
const ISA_BUS: u8 = 0;

/// FADT IA-PC boot architecture flags (ACPI 6.5, table 5.11).
mod iapc_boot_arch {
    /// LEGACY_DEVICES: user-visible ISA/LPC devices exist (COM1, the i8042).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// 8042: an 8042-compatible keyboard controller is present at ports 0x60/0x64.
    pub const I8042: u16 = 1 << 1;
    /// VGA Not Present: the OSPM must not probe for VGA hardware.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// MSI Not Supported: left clear, MSI works (KVM's in-kernel LAPIC).
    #[allow(dead_code)]
    pub const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    /// PCIe ASPM Controls: the OSPM must not enable ASPM (virtual PCIe links have no power states).
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    /// CMOS RTC Not Present: no MC146818 RTC at ports 0x70/0x71.
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// What the guest's ACPI tables describe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcpiConfig {
    /// Number of vCPUs; vCPU i has APIC ID i and ACPI processor UID i.
    pub num_cpus: u32,
    /// The 64-bit PCI BAR window (base, size) the host bridge's `_CRS` announces, if any
    /// (`crate::pci::mmio64_window`).
    pub pci_mmio64: Option<(u64, u64)>,
}

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The configuration asks for no vCPU.
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    /// The tables do not fit in the ACPI area.
    #[error(
        "ACPI table {signature} ({len} bytes at {addr:#x}) does not fit in the ACPI area, which ends at {end:#x}",
        end = ACPI_AREA_END
    )]
    TooLarge {
        /// Signature of the table that did not fit.
        signature: String,
        /// Its size.
        len: usize,
        /// Where it would have started.
        addr: u64,
    },
    /// Writing a table to guest memory failed.
    #[error("cannot write ACPI table {signature} into guest memory at {addr:#x}")]
    GuestMemory {
        /// Signature of the table.
        signature: String,
        /// Where it was being written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the ACPI tables for `config` into `mem` and returns the address of the RSDP
/// ([`RSDP_ADDR`]), the value for PVH's `rsdp_paddr` and `boot_params.acpi_rsdp_addr`.
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    config: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if config.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    // Each vCPU needs at least an 8-byte MADT entry: refuse absurd counts before building anything.
    let min_madt_len = u64::from(config.num_cpus).saturating_mul(8);
    if min_madt_len > ACPI_AREA_END - RSDP_ADDR {
        return Err(AcpiError::TooLarge {
            signature: "APIC".to_string(),
            len: usize::try_from(min_madt_len).unwrap_or(usize::MAX),
            addr: RSDP_ADDR,
        });
    }

    let mut area = AcpiArea::new(mem);
    // Clear the whole area so that nothing stale can pass for a table (guests scan it for the RSDP).
    area.clear()?;

    // The RSDP is written last, once the XSDT's address is known; reserve its room first.
    area.reserve(Rsdp::len());

    let com1 = Com1;
    let i8042 = I8042Keyboard;
    // --- PCI (issue 3): the host bridge and the ECAM window's motherboard reservation.
    let pci = PciHostBridge {
        mmio64: config.pci_mmio64,
    };
    let ecam_reservation = EcamReservation;
    let dsdt = build_dsdt(&[&com1, &i8042, &pci, &ecam_reservation]);
    let dsdt_addr = area.place(&dsdt)?;

    // The tables the XSDT lists; adding a table is one line here (e.g. an MCFG for the ECAM).
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(area.place(&build_fadt(dsdt_addr))?);
    xsdt.add_entry(area.place(&build_madt(config.num_cpus))?);
    xsdt.add_entry(area.place(&build_mcfg())?);

    let xsdt_addr = area.place(&xsdt)?;

    area.write_at(RSDP_ADDR, &Rsdp::new(OEM_ID, xsdt_addr))?;
    Ok(GuestAddress(RSDP_ADDR))
}

/// Bump allocator over the ACPI area that writes tables to guest memory.
struct AcpiArea<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl<'a> AcpiArea<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        AcpiArea {
            mem,
            next: RSDP_ADDR,
        }
    }

    /// Zeroes the whole ACPI area.
    fn clear(&self) -> Result<(), AcpiError> {
        let zeros = vec![0u8; (ACPI_AREA_END - RSDP_ADDR) as usize];
        self.mem
            .write_slice(&zeros, GuestAddress(RSDP_ADDR))
            .map_err(|source| AcpiError::GuestMemory {
                signature: "(area)".to_string(),
                addr: RSDP_ADDR,
                source,
            })
    }

    /// Skips `len` bytes (plus alignment), for something written later at the current position.
    fn reserve(&mut self, len: usize) {
        self.next = align_up(self.next.saturating_add(len as u64));
    }

    /// Writes the system description table `table` at the next aligned free address, with flint's
    /// creator ID and revision, and returns that address.
    fn place(&mut self, table: &dyn Aml) -> Result<u64, AcpiError> {
        let mut bytes = to_bytes(table);
        set_creator(&mut bytes);
        let addr = self.next;
        let end = addr.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > ACPI_AREA_END) {
            return Err(AcpiError::TooLarge {
                signature: signature_of(&bytes),
                len: bytes.len(),
                addr,
            });
        }
        self.write_bytes(addr, &bytes)?;
        self.next = align_up(addr + bytes.len() as u64);
        Ok(addr)
    }

    /// Writes `table` at `addr`, which the caller reserved.
    fn write_at(&self, addr: u64, table: &dyn Aml) -> Result<(), AcpiError> {
        self.write_bytes(addr, &to_bytes(table))
    }

    fn write_bytes(&self, addr: u64, bytes: &[u8]) -> Result<(), AcpiError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::GuestMemory {
                signature: signature_of(bytes),
                addr,
                source,
            })
    }
}

/// Puts [`CREATOR_ID`] and [`CREATOR_REVISION`] in a serialized table's header and fixes its
/// checksum. The crate hard-codes its own creator fields (and stores the revision byte-swapped).
fn set_creator(table: &mut [u8]) {
    const CHECKSUM: usize = 9;
    const CREATOR: std::ops::Range<usize> = 28..36;
    if let Some(creator) = table.get_mut(CREATOR) {
        creator[..4].copy_from_slice(&CREATOR_ID);
        creator[4..].copy_from_slice(&CREATOR_REVISION.to_le_bytes());
    }
    if table.len() >= HEADER_LEN {
        table[CHECKSUM] = 0;
        let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        table[CHECKSUM] = sum.wrapping_neg();
    }
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN).saturating_mul(TABLE_ALIGN)
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// The signature of a serialized table, for error messages (the RSDP's is "RSD PTR ").
fn signature_of(bytes: &[u8]) -> String {
    let len = if bytes.starts_with(b"RSD PTR ") { 8 } else { 4 };
    String::from_utf8_lossy(bytes.get(..len).unwrap_or(bytes)).into_owned()
}

/// Builds the FADT: hardware-reduced ACPI 6.5 with the sleep and reset registers of docs/platform.md.
pub fn build_fadt(dsdt_addr: u64) -> impl Aml {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        // Only X_DSDT (the 32-bit DSDT field stays 0).
        .dsdt_64(dsdt_addr)
        .flag(FadtFlags::HwReducedAcpi)
        // No fixed-feature power/sleep buttons (set = "control method device or not present").
        .flag(FadtFlags::PwrButton)
        .flag(FadtFlags::SlpButton)
        .flag(FadtFlags::ResetRegSup);
    // Fields the builder has no method for are public: set them directly.
    fadt.iapc_boot_arch = (iapc_boot_arch::LEGACY_DEVICES
        | iapc_boot_arch::I8042
        | iapc_boot_arch::VGA_NOT_PRESENT
        | iapc_boot_arch::PCIE_ASPM_CONTROLS
        | iapc_boot_arch::CMOS_RTC_NOT_PRESENT)
        .into();
    fadt.reset_reg = io_register_8(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register_8(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register_8(SLEEP_STATUS_PORT);
    fadt.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.x_pm1a_cnt_blk = GAS::new(
        AddressSpace::SystemIo,
        PM1_CNT_LEN * 8,
        0,
        AccessSize::WordAccess,
        u64::from(PM1A_CNT_PORT),
    );
    fadt.finalize()
}

/// An 8-bit System I/O register.
fn io_register_8(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Builds the MADT: one enabled local APIC per vCPU (APIC ID = ACPI UID = index), the IOAPIC, the
/// ISA IRQ0 -> GSI 2 override and the LINT1 NMI of all processors.
pub fn build_madt(num_cpus: u32) -> impl Aml {
    let mut entries: Vec<u8> = Vec::new();
    for id in 0..num_cpus {
        match u8::try_from(id) {
            Ok(id8) if id <= MAX_XAPIC_ID => {
                ProcessorLocalApic::new(id8, id8, EnabledStatus::Enabled).to_aml_bytes(&mut entries)
            }
            _ => LocalX2Apic {
                x2apic_id: id,
                uid: id,
            }
            .to_aml_bytes(&mut entries),
        }
    }
    // The IOAPIC ID must not collide with a local APIC ID: use the first free one (255 is the
    // xAPIC broadcast ID, so with more vCPUs than that fall back to 0; x2APIC guests don't use it).
    let ioapic_id = u8::try_from(num_cpus)
        .ok()
        .filter(|&id| u32::from(id) <= MAX_XAPIC_ID)
        .unwrap_or(0);
    IoApic::new(ioapic_id, IOAPIC_ADDR, 0).to_aml_bytes(&mut entries);
    InterruptSourceOverride {
        bus: ISA_BUS,
        source: 0,
        gsi: 2,
        flags: MPS_INTI_EDGE_HIGH,
    }
    .to_aml_bytes(&mut entries);
    // No SCI (hardware-reduced), hence no override for ISA IRQ 9.
    LocalApicNmi {
        uid: ALL_PROCESSORS_UID,
        flags: MPS_INTI_EDGE_HIGH,
        lint: NMI_LINT,
    }
    .to_aml_bytes(&mut entries);
    if num_cpus > MAX_XAPIC_ID + 1 {
        LocalX2ApicNmi {
            uid: ALL_PROCESSORS_X2APIC_UID,
            flags: MPS_INTI_EDGE_HIGH,
            lint: NMI_LINT,
        }
        .to_aml_bytes(&mut entries);
    }

    let mut madt = Sdt::new(
        *b"APIC",
        MADT_FIXED_LEN as u32,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(HEADER_LEN, LAPIC_ADDR);
    madt.write_u32(HEADER_LEN + 4, MADT_PCAT_COMPAT);
    madt.append_slice(&entries);
    madt
}

/// MADT Interrupt Source Override structure (type 2). The crate has no type for it.
struct InterruptSourceOverride {
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(2); // type
        sink.byte(10); // length
        sink.byte(self.bus);
        sink.byte(self.source);
        sink.dword(self.gsi);
        sink.word(self.flags);
    }
}

/// MADT Local APIC NMI structure (type 4). The crate has no type for it.
struct LocalApicNmi {
    uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(4); // type
        sink.byte(6); // length
        sink.byte(self.uid);
        sink.word(self.flags);
        sink.byte(self.lint);
    }
}

/// MADT Processor Local x2APIC structure (type 9), enabled. The crate has no type for it.
struct LocalX2Apic {
    x2apic_id: u32,
    uid: u32,
}

impl Aml for LocalX2Apic {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(9); // type
        sink.byte(16); // length
        sink.word(0); // reserved
        sink.dword(self.x2apic_id);
        sink.dword(EnabledStatus::Enabled as u32); // flags
        sink.dword(self.uid);
    }
}

/// MADT Local x2APIC NMI structure (type 0xA). The crate has no type for it.
struct LocalX2ApicNmi {
    uid: u32,
    flags: u16,
    lint: u8,
}

impl Aml for LocalX2ApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0xa); // type
        sink.byte(12); // length
        sink.word(self.flags);
        sink.dword(self.uid);
        sink.byte(self.lint);
        sink.vec(&[0; 3]); // reserved
    }
}

/// Builds the DSDT: `\_S5_` and a `\_SB_` scope holding `sb_devices` (AML `Device`s or anything
/// else that belongs in `\_SB_`).
pub fn build_dsdt(sb_devices: &[&dyn Aml]) -> impl Aml {
    let mut body = Vec::new();
    // \_S5_: SLP_TYPa, SLP_TYPb, two reserved.
    let s5_values: [&dyn Aml; 4] = [&S5_SLP_TYP, &aml::ZERO, &aml::ZERO, &aml::ZERO];
    aml::Name::new("_S5_".into(), &aml::Package::new(s5_values.to_vec())).to_aml_bytes(&mut body);
    aml::Scope::new("\\_SB_".into(), sb_devices.to_vec()).to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt
}

/// An ISA device with fixed I/O ports and edge-triggered, active-high ISA interrupts.
struct IsaDevice<'a> {
    /// The 4-character AML name.
    name: &'static str,
    /// `_HID` EISA ID.
    hid: &'static str,
    /// `_UID`.
    uid: u8,
    /// (base port, length) ranges.
    ports: &'a [(u16, u8)],
    /// ISA IRQs.
    irqs: &'a [u32],
}

impl Aml for IsaDevice<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let ios: Vec<aml::IO> = self
            .ports
            .iter()
            .map(|&(base, len)| aml::IO::new(base, base, 1, len))
            .collect();
        let irqs: Vec<aml::Interrupt> = self
            .irqs
            .iter()
            .map(|&irq| aml::Interrupt::new(true, true, false, false, irq))
            .collect();
        let resources: Vec<&dyn Aml> = ios
            .iter()
            .map(|io| io as &dyn Aml)
            .chain(irqs.iter().map(|irq| irq as &dyn Aml))
            .collect();
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new(self.hid));
        let uid = aml::Name::new("_UID".into(), &self.uid);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(resources));
        aml::Device::new(self.name.into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

/// COM1, the 16550A console UART.
struct Com1;

impl Aml for Com1 {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        IsaDevice {
            name: "COM1",
            hid: "PNP0501",
            uid: 0,
            ports: &[(COM1_PORT, 8)],
            irqs: &[COM1_IRQ],
        }
        .to_aml_bytes(sink)
    }
}

/// The i8042 controller's keyboard port.
struct I8042Keyboard;

impl Aml for I8042Keyboard {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        IsaDevice {
            name: "PS2K",
            hid: "PNP0303",
            uid: 0,
            ports: &[(I8042_DATA_PORT, 1), (I8042_COMMAND_PORT, 1)],
            irqs: &[I8042_KBD_IRQ],
        }
        .to_aml_bytes(sink)
    }
}

// --- PCI (issue 3, docs/pci.md) ---

/// Builds the MCFG: one ECAM window, segment 0, buses 0–0, at [`PCI_ECAM_START`].
pub fn build_mcfg() -> impl Aml {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    mcfg
}

/// `\_SB_.PCI0`: the PCIe host bridge of segment 0, bus 0, and the windows it decodes: bus 0, the
/// configuration ports 0xCF8–0xCFF, the 32-bit BAR window and the 64-bit one if there is one. No
/// `_PRT`: flint's PCI devices interrupt with MSI-X only.
struct PciHostBridge {
    mmio64: Option<(u64, u64)>,
}

impl Aml for PciHostBridge {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
        let config_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
        let mmio32 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            PCI_MMIO32_START as u32,
            (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
            None,
        );
        let mmio64 = self.mmio64.map(|(base, size)| {
            aml::AddressSpace::new_memory(
                aml::AddressSpaceCacheable::NotCacheable,
                true,
                base,
                base + (size - 1),
                None,
            )
        });
        let mut resources: Vec<&dyn Aml> = vec![&bus, &config_ports, &mmio32];
        if let Some(m) = &mmio64 {
            resources.push(m);
        }
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
        let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
        let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(resources));
        aml::Device::new("PCI0".into(), vec![&hid, &cid, &uid, &seg, &bbn, &crs])
            .to_aml_bytes(sink);
    }
}

/// `\_SB_.MBRD`: a motherboard-resources device (PNP0C02) claiming the ECAM window, which Linux
/// wants reserved there (or in the e820 map, which flint also does) before it trusts the MCFG.
struct EcamReservation;

impl Aml for EcamReservation {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let ecam = aml::Memory32Fixed::new(true, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&ecam]));
        aml::Device::new("MBRD".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

// --- end PCI ---

#[cfg(test)]
mod tests {
    use super::*;

    const MEM_SIZE: usize = 16 << 20;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u16_at(bytes: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn in_area(addr: u64, len: usize) -> bool {
        addr >= RSDP_ADDR && addr + len as u64 <= ACPI_AREA_END
    }

    /// Reads the table at `addr`: checks it lies in the area and its checksum, returns its bytes.
    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        assert_eq!(
            addr % TABLE_ALIGN,
            0,
            "table at {addr:#x} not 8-byte aligned"
        );
        let header = read(mem, addr, HEADER_LEN);
        let len = u32_at(&header, 4) as usize;
        assert!(len >= HEADER_LEN);
        assert!(in_area(addr, len), "table at {addr:#x}+{len} outside area");
        let bytes = read(mem, addr, len);
        assert_eq!(sum(&bytes), 0, "bad checksum for {}", signature_of(&bytes));
        assert_eq!(&bytes[10..16], &OEM_ID);
        assert_eq!(&bytes[16..24], &OEM_TABLE_ID);
        assert_eq!(&bytes[28..32], b"FLNT");
        assert_eq!(u32_at(&bytes, 32), 1, "creator revision");
        bytes
    }

    struct Tables {
        rsdp: Vec<u8>,
        xsdt: Vec<u8>,
        fadt: Vec<u8>,
        madt: Vec<u8>,
        mcfg: Vec<u8>,
        dsdt: Vec<u8>,
    }

    /// The 64-bit PCI window the tests announce.
    const TEST_MMIO64: (u64, u64) = (0x1_0000_0000, 0x10_0000_0000);

    fn build(num_cpus: u32) -> Tables {
        let mem = guest_memory();
        let config = AcpiConfig {
            num_cpus,
            pci_mmio64: Some(TEST_MMIO64),
        };
        let rsdp_addr = write_acpi_tables(&mem, &config).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(RSDP_ADDR));
        let rsdp = read(&mem, RSDP_ADDR, 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24));
        let entries: Vec<u64> = (HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|off| u64_at(&xsdt, off))
            .collect();
        assert_eq!(entries.len(), 3);
        let fadt = table(&mem, entries[0]);
        let madt = table(&mem, entries[1]);
        let mcfg = table(&mem, entries[2]);
        let dsdt = table(&mem, u64_at(&fadt, 140));
        Tables {
            rsdp,
            xsdt,
            fadt,
            madt,
            mcfg,
            dsdt,
        }
    }

    /// The MADT's interrupt controller structures as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut off = MADT_FIXED_LEN;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2 && off + len <= madt.len());
            entries.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        entries
    }

    #[test]
    fn rsdp() {
        let t = build(1);
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(t.rsdp[15], 2, "revision");
        assert_eq!(&t.rsdp[9..15], &OEM_ID);
        assert_eq!(sum(&t.rsdp[..20]), 0, "20-byte checksum");
        assert_eq!(u32_at(&t.rsdp, 20), 36, "length");
        assert_eq!(sum(&t.rsdp), 0, "extended checksum");
        assert_eq!(&t.xsdt[0..4], b"XSDT");
    }

    #[test]
    fn xsdt_lists_fadt_and_madt() {
        let t = build(2);
        assert_eq!(&t.fadt[0..4], b"FACP");
        assert_eq!(&t.madt[0..4], b"APIC");
        assert_eq!(&t.dsdt[0..4], b"DSDT");
    }

    #[test]
    fn fadt() {
        let t = build(1);
        let f = &t.fadt;
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "major revision");
        assert_eq!(f[131], 5, "minor revision");
        let flags = u32_at(f, 112);
        assert_ne!(flags & FadtFlags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & FadtFlags::ResetRegSup as u32, 0);
        assert_ne!(flags & FadtFlags::PwrButton as u32, 0);
        assert_ne!(flags & FadtFlags::SlpButton as u32, 0);
        assert_eq!(u32_at(f, 40), 0, "32-bit DSDT unused");
        assert_eq!(u32_at(f, 36), 0, "no FACS");
        assert_eq!(u16_at(f, 46), 0, "no SCI");
        // IA-PC boot architecture flags.
        let boot = u16_at(f, 109);
        assert_ne!(boot & iapc_boot_arch::I8042, 0);
        assert_ne!(boot & iapc_boot_arch::VGA_NOT_PRESENT, 0);
        assert_ne!(boot & iapc_boot_arch::CMOS_RTC_NOT_PRESENT, 0);
        assert_eq!(boot & iapc_boot_arch::MSI_NOT_SUPPORTED, 0);
        // Reset register: System I/O 0x602, 8 bits, byte access; reset value 1.
        assert_eq!(&f[116..128], &[1, 8, 0, 1, 0x02, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f[128], 0x01);
        // Sleep control / status registers: System I/O 0x600 / 0x601, 8 bits.
        assert_eq!(&f[244..256], &[1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[256..268], &[1, 8, 0, 1, 0x01, 0x06, 0, 0, 0, 0, 0, 0]);
        // PM1a control block: 32-bit field, length, and the 16-bit X_ GAS.
        assert_eq!(u32_at(f, 64), 0x604);
        assert_eq!(f[89], 2);
        assert_eq!(&f[172..184], &[1, 16, 0, 2, 0x04, 0x06, 0, 0, 0, 0, 0, 0]);
        // No PM1a event block, PM timer or GPE blocks.
        assert_eq!(u32_at(f, 56), 0);
        assert_eq!(u32_at(f, 76), 0);
        assert_eq!(u32_at(f, 80), 0);
    }

    fn check_madt(num_cpus: u32) {
        let t = build(num_cpus);
        let m = &t.madt;
        assert_eq!(u32_at(m, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(m, 40) & 1, 1, "PCAT_COMPAT");
        let entries = madt_entries(m);

        let lapics: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|(t, _)| *t == 0)
            .map(|(_, e)| e)
            .collect();
        let x2apics: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|(t, _)| *t == 9)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(lapics.len() as u32, num_cpus.min(255));
        assert_eq!(x2apics.len() as u32, num_cpus.saturating_sub(255));
        for (i, e) in lapics.iter().enumerate() {
            assert_eq!(e.len(), 8);
            assert_eq!(e[2] as usize, i, "UID");
            assert_eq!(e[3] as usize, i, "APIC ID");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        for (i, e) in x2apics.iter().enumerate() {
            assert_eq!(u32_at(e, 4) as usize, 255 + i, "x2APIC ID");
            assert_eq!(u32_at(e, 8), 1, "enabled");
            assert_eq!(u32_at(e, 12) as usize, 255 + i, "UID");
        }

        let ioapics: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|(t, _)| *t == 1)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        if num_cpus <= 254 {
            // With 255 or more vCPUs every 8-bit ID is taken (or the broadcast ID).
            assert_eq!(u32::from(ioapic[2]), num_cpus, "IOAPIC ID");
            assert!(
                lapics.iter().all(|l| l[3] != ioapic[2]),
                "IOAPIC ID collides"
            );
        }
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");

        let overrides: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|(t, _)| *t == 2)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(overrides.len(), 1);
        assert_eq!(overrides[0].as_slice(), &[2, 10, 0, 0, 2, 0, 0, 0, 5, 0]);

        let nmis: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|(t, _)| *t == 4)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(nmis[0].as_slice(), &[4, 6, 0xff, 5, 0, 1]);
        let x2nmis = entries.iter().filter(|(t, _)| *t == 0xa).count();
        assert_eq!(x2nmis, usize::from(num_cpus > 255));
    }

    #[test]
    fn madt_1() {
        check_madt(1);
    }

    #[test]
    fn madt_2() {
        check_madt(2);
    }

    #[test]
    fn madt_72() {
        check_madt(72);
    }

    #[test]
    fn madt_254() {
        check_madt(254);
    }

    #[test]
    fn madt_x2apic() {
        check_madt(255);
        check_madt(256);
        check_madt(300);
    }

    #[test]
    fn dsdt() {
        let t = build(4);
        let d = &t.dsdt;
        assert_eq!(d[8], DSDT_REVISION);
        let find = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        // Name(_S5_, Package(4) {5, 0, 0, 0})
        assert!(find(&[
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0, 0, 0
        ]));
        assert!(find(b"\\_SB_"));
        assert!(find(b"COM1"));
        assert!(find(b"PS2K"));
        // EISAID("PNP0501") and EISAID("PNP0303") as DWord constants.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(find(&[0x0c, 0x41, 0xd0, 0x03, 0x03]));
        // IO(Decode16, 0x3F8, 0x3F8, 1, 8), IO 0x60 and 0x64.
        assert!(find(&[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]));
        assert!(find(&[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]));
        assert!(find(&[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]));
        // Extended IRQ descriptors: consumer, edge, active high, exclusive; IRQ 4 and IRQ 1.
        assert!(find(&[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]));
        assert!(find(&[0x89, 6, 0, 0x03, 1, 1, 0, 0, 0]));
    }

    #[test]
    fn mcfg_describes_the_ecam_window() {
        let t = build(1);
        let m = &t.mcfg;
        assert_eq!(&m[0..4], b"MCFG");
        // Header, 8 reserved bytes, one 16-byte allocation structure.
        assert_eq!(m.len(), HEADER_LEN + 8 + 16);
        let e = &m[HEADER_LEN + 8..];
        assert_eq!(u64_at(e, 0), 0xe000_0000, "ECAM base");
        assert_eq!(u16_at(e, 8), 0, "segment");
        assert_eq!((e[10], e[11]), (0, 0), "bus range");
    }

    #[test]
    fn dsdt_pci_host_bridge() {
        let t = build(1);
        let d = &t.dsdt;
        let find = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"PCI0"));
        // EISAID("PNP0A08"), EISAID("PNP0A03"), _SEG, _BBN.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        assert!(find(&[0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        assert!(find(b"_SEG"));
        assert!(find(b"_BBN"));
        // WordBusNumber 0-0: descriptor 0x88, type 2, min 0, max 0, length 1.
        assert!(find(&[
            0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0
        ]));
        // IO(Decode16, 0xCF8, 0xCF8, 1, 8).
        assert!(find(&[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        // DWordMemory 0xC0000000-0xDFFFFFFF, read-write, non-cacheable.
        let mut dword = vec![0x87, 23, 0, 0, 0x0c, 0x01, 0, 0, 0, 0];
        dword.extend_from_slice(&0xc000_0000u32.to_le_bytes());
        dword.extend_from_slice(&0xdfff_ffffu32.to_le_bytes());
        dword.extend_from_slice(&0u32.to_le_bytes());
        dword.extend_from_slice(&0x2000_0000u32.to_le_bytes());
        assert!(find(&dword));
        // QWordMemory for the 64-bit window.
        let (base, size) = TEST_MMIO64;
        let mut qword = vec![0x8a, 43, 0, 0, 0x0c, 0x01];
        qword.extend_from_slice(&0u64.to_le_bytes());
        qword.extend_from_slice(&base.to_le_bytes());
        qword.extend_from_slice(&(base + size - 1).to_le_bytes());
        qword.extend_from_slice(&0u64.to_le_bytes());
        qword.extend_from_slice(&size.to_le_bytes());
        assert!(find(&qword));
        // MBRD (PNP0C02) reserves the ECAM window: Memory32Fixed(RW, 0xE0000000, 0x10000000).
        assert!(find(b"MBRD"));
        assert!(find(&[0x0c, 0x41, 0xd0, 0x0c, 0x02]));
        assert!(find(&[0x86, 9, 0, 1, 0, 0, 0, 0xe0, 0, 0, 0, 0x10]));
        // Without a 64-bit window there is no QWordMemory.
        let mem = guest_memory();
        write_acpi_tables(
            &mem,
            &AcpiConfig {
                num_cpus: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let rsdp = read(&mem, RSDP_ADDR, 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24));
        let fadt = table(&mem, u64_at(&xsdt, HEADER_LEN));
        let dsdt = table(&mem, u64_at(&fadt, 140));
        assert!(!dsdt.windows(2).any(|w| w == [0x8a, 43]));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
    }

    #[test]
    fn tables_are_packed_in_area_and_checksummed() {
        // table() checks the area bounds, alignment and checksum of each table.
        let t = build(254);
        for bytes in [&t.xsdt, &t.fadt, &t.madt, &t.mcfg, &t.dsdt] {
            assert_eq!(sum(bytes), 0);
        }
    }

    #[test]
    fn zero_cpus_is_an_error() {
        let mem = guest_memory();
        assert!(matches!(
            write_acpi_tables(
                &mem,
                &AcpiConfig {
                    num_cpus: 0,
                    ..Default::default()
                }
            ),
            Err(AcpiError::NoCpus)
        ));
    }

    #[test]
    fn too_many_cpus_is_an_error_not_a_panic() {
        let mem = guest_memory();
        for num_cpus in [9000, 100_000, u32::MAX] {
            assert!(matches!(
                write_acpi_tables(
                    &mem,
                    &AcpiConfig {
                        num_cpus,
                        ..Default::default()
                    }
                ),
                Err(AcpiError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn missing_guest_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xa0000)]).unwrap();
        assert!(matches!(
            write_acpi_tables(
                &mem,
                &AcpiConfig {
                    num_cpus: 1,
                    ..Default::default()
                }
            ),
            Err(AcpiError::GuestMemory { .. })
        ));
    }
}
