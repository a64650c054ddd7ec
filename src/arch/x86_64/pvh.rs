//! The PVH boot protocol's `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h): what a PVH
//! entry point (Linux's vmlinux, the probe guests) reads to find its command line, memory map, initrd
//! module and ACPI RSDP.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PVH_MEMMAP_ADDR, PVH_START_INFO_ADDR};
use super::memory_map::MemoryMapEntry;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Version 1 carries the memory map.
const START_INFO_VERSION: u32 = 1;
/// How many memory-map entries fit between the memory map's start and the module list.
const MAX_MEMMAP_ENTRIES: usize = 32;
/// Where the initrd's module-list entry goes, after the memory map.
const MODLIST_ADDR: u64 =
    PVH_MEMMAP_ADDR + (MAX_MEMMAP_ENTRIES * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;

// The structures must not run into the zero page.
const _: () = assert!(
    MODLIST_ADDR + std::mem::size_of::<hvm_modlist_entry>() as u64 <= super::layout::ZERO_PAGE_ADDR
);

/// Errors writing the PVH structures.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// More memory-map entries than reserved room.
    #[error("the memory map has {0} entries; room for {MAX_MEMMAP_ENTRIES}")]
    TooManyEntries(usize),
    /// Writing guest memory failed.
    #[error("cannot write the PVH start info into guest memory")]
    Write,
}

/// Writes `hvm_start_info`, the memory map and (with an initrd) a one-module list.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    cmdline: GuestAddress,
    memory_map: &[MemoryMapEntry],
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<(), PvhError> {
    if memory_map.len() > MAX_MEMMAP_ENTRIES {
        return Err(PvhError::TooManyEntries(memory_map.len()));
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, entry) in memory_map.iter().enumerate() {
        let table_entry = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        mem.write_obj(
            table_entry,
            GuestAddress(PVH_MEMMAP_ADDR + i as u64 * entry_size),
        )
        .map_err(|_| PvhError::Write)?;
    }

    let mut start_info = hvm_start_info {
        magic: START_INFO_MAGIC,
        version: START_INFO_VERSION,
        cmdline_paddr: cmdline.0,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memory_map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_ADDR))
            .map_err(|_| PvhError::Write)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_ADDR;
    }
    mem.write_obj(start_info, GuestAddress(PVH_START_INFO_ADDR))
        .map_err(|_| PvhError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::memory_map::memory_map;

    #[test]
    fn start_info_points_at_everything() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let map = memory_map(1 << 30);
        write_start_info(
            &mem,
            GuestAddress(0x20000),
            &map,
            Some((GuestAddress(0x3000_0000), 4096)),
            GuestAddress(0xe0000),
        )
        .unwrap();
        let si: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO_ADDR)).unwrap();
        assert_eq!(si.magic, START_INFO_MAGIC);
        assert_eq!(si.version, 1);
        assert_eq!(si.cmdline_paddr, 0x20000);
        assert_eq!(si.rsdp_paddr, 0xe0000);
        assert_eq!(si.memmap_entries as usize, map.len());
        assert_eq!(si.nr_modules, 1);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(si.memmap_paddr + (map.len() as u64 - 1) * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (
                map[map.len() - 1].addr,
                map[map.len() - 1].size,
                map[map.len() - 1].kind
            )
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x3000_0000, 4096));
    }
}
