//! The Linux x86 boot protocol's `boot_params` ("zero page"): what a bzImage or a 64-bit vmlinux entry
//! reads to find its command line, initrd, memory map and ACPI RSDP.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::ZERO_PAGE_ADDR;
use super::memory_map::MemoryMapEntry;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// `boot_params` as plain bytes for vm-memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: `boot_params` is a bindgen-generated `repr(C, packed)` struct made only of integers and
// arrays of integers (no pointers, references, enums or padding-sensitive invariants), so every byte
// pattern is a valid value and reading or writing it as bytes is sound. `ZeroPage` is
// `repr(transparent)` over it.
unsafe impl ByteValued for ZeroPage {}

/// What goes into the zero page.
pub struct ZeroPageConfig<'a> {
    /// The bzImage's setup header, or None for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Guest address and length (without NUL) of the command line.
    pub cmdline: (GuestAddress, usize),
    /// Guest address and length of the initrd, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// The guest's memory map.
    pub memory_map: &'a [MemoryMapEntry],
    /// Where the ACPI RSDP is.
    pub rsdp: GuestAddress,
}

/// Errors building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// More memory-map entries than the zero page holds.
    #[error("the memory map has {0} entries; the zero page holds 128")]
    TooManyE820Entries(usize),
    /// An address the boot protocol keeps in 32 bits is above 4 GiB.
    #[error("the {0} lies above 4 GiB, out of the boot protocol's reach")]
    AddressTooHigh(&'static str),
    /// Writing guest memory failed.
    #[error("cannot write boot_params into guest memory")]
    Write,
}

/// Builds the zero page and writes it at [`ZERO_PAGE_ADDR`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    config: &ZeroPageConfig,
) -> Result<(), ZeroPageError> {
    let mut params = boot_params::default();
    if let Some(header) = config.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HEADER_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = u32::try_from(config.cmdline.0 .0)
        .map_err(|_| ZeroPageError::AddressTooHigh("command line"))?;
    params.hdr.cmdline_size = config.cmdline.1 as u32;
    if let Some((addr, len)) = config.initrd {
        params.hdr.ramdisk_image =
            u32::try_from(addr.0).map_err(|_| ZeroPageError::AddressTooHigh("initrd"))?;
        params.hdr.ramdisk_size =
            u32::try_from(len).map_err(|_| ZeroPageError::AddressTooHigh("initrd end"))?;
    }
    params.acpi_rsdp_addr = config.rsdp.0;

    let table_len = params.e820_table.len();
    if config.memory_map.len() > table_len {
        return Err(ZeroPageError::TooManyE820Entries(config.memory_map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(config.memory_map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = config.memory_map.len() as u8;

    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|_| ZeroPageError::Write)
}

/// The highest address (inclusive) the kernel accepts for the initrd, from its setup header.
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    // Protocol 2.03+ kernels state it; older ones (and ELF entry) get the historical default.
    match header {
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        _ => 0x37ff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::memory_map::memory_map;

    #[test]
    fn zero_page_fields_land_at_their_protocol_offsets() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let map = memory_map(512 << 20);
        let config = ZeroPageConfig {
            setup_header: None,
            cmdline: (GuestAddress(0x20000), 17),
            initrd: Some((GuestAddress(0x1f00_0000), 0x1234)),
            memory_map: &map,
            rsdp: GuestAddress(0xe0000),
        };
        write_zero_page(&mem, &config).unwrap();
        let at = |off: u64| GuestAddress(ZERO_PAGE_ADDR + off);
        // Offsets from Documentation/arch/x86/boot.rst and zero-page.rst.
        assert_eq!(mem.read_obj::<u16>(at(0x1fe)).unwrap(), 0xaa55);
        assert_eq!(mem.read_obj::<u32>(at(0x202)).unwrap(), HEADER_MAGIC);
        assert_eq!(mem.read_obj::<u8>(at(0x210)).unwrap(), 0xff);
        assert_eq!(mem.read_obj::<u32>(at(0x228)).unwrap(), 0x20000);
        assert_eq!(mem.read_obj::<u32>(at(0x238)).unwrap(), 17);
        assert_eq!(mem.read_obj::<u32>(at(0x218)).unwrap(), 0x1f00_0000);
        assert_eq!(mem.read_obj::<u32>(at(0x21c)).unwrap(), 0x1234);
        assert_eq!(mem.read_obj::<u64>(at(0x070)).unwrap(), 0xe0000);
        assert_eq!(mem.read_obj::<u8>(at(0x1e8)).unwrap() as usize, map.len());
        // The first e820 entry: 20 bytes each at 0x2d0.
        assert_eq!(mem.read_obj::<u64>(at(0x2d0)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u64>(at(0x2d8)).unwrap(), map[0].size);
        assert_eq!(mem.read_obj::<u32>(at(0x2e0)).unwrap(), 1);
    }

    #[test]
    fn addresses_above_4g_are_rejected() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let config = ZeroPageConfig {
            setup_header: None,
            cmdline: (GuestAddress(0x20000), 1),
            initrd: Some((GuestAddress(1 << 33), 1)),
            memory_map: &[],
            rsdp: GuestAddress(0xe0000),
        };
        assert!(matches!(
            write_zero_page(&mem, &config),
            Err(ZeroPageError::AddressTooHigh("initrd"))
        ));
    }
}
