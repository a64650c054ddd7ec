//! How guest RAM is laid out around the MMIO hole, and the memory map handed to the guest (e820 for the
//! Linux boot protocol, the same ranges for PVH).

use super::layout::{
    ACPI_AREA_START, EBDA_START, HIGH_MEMORY_START, LOW_MEMORY_END, MMIO_HOLE_START, PCI_ECAM_SIZE,
    PCI_ECAM_START, RAM_ABOVE_4G_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type.
    pub kind: u32,
}

/// The host-backed RAM ranges (guest address, length) for `mem_size` bytes of guest RAM: everything
/// below the MMIO hole, the rest from 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if mem_size > low {
        ranges.push((RAM_ABOVE_4G_START, mem_size - low));
    }
    ranges
}

/// The highest guest-physical address (exclusive) that RAM reaches.
pub fn ram_end(mem_size: u64) -> u64 {
    ram_ranges(mem_size)
        .last()
        .map(|(start, len)| start + len)
        .unwrap_or(0)
}

/// The memory map the guest is told about. `mem_size` must be at least [`HIGH_MEMORY_START`] plus a
/// little (the caller validates the size).
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: LOW_MEMORY_END - EBDA_START,
            kind: E820_RESERVED,
        },
        MemoryMapEntry {
            addr: ACPI_AREA_START,
            size: HIGH_MEMORY_START - ACPI_AREA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_size) {
        // The first range also holds the low 1 MiB, described above.
        let (start, len) = if start == 0 {
            (HIGH_MEMORY_START, len.saturating_sub(HIGH_MEMORY_START))
        } else {
            (start, len)
        };
        if len > 0 {
            map.push(MemoryMapEntry {
                addr: start,
                size: len,
                kind: E820_RAM,
            });
        }
    }
    // The PCIe ECAM window (issue 3): Linux uses the MCFG only if the window is reserved.
    map.push(MemoryMapEntry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram_total(map: &[MemoryMapEntry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_is_one_range_below_the_hole() {
        assert_eq!(ram_ranges(512 * MIB), vec![(0, 512 * MIB)]);
        let map = memory_map(512 * MIB);
        let last_ram = map.iter().rfind(|e| e.kind == E820_RAM).unwrap();
        assert_eq!(last_ram.addr + last_ram.size, 512 * MIB);
        // Everything but the EBDA and the 640K-1M hole is RAM.
        assert_eq!(
            ram_total(&map),
            512 * MIB - (HIGH_MEMORY_START - EBDA_START)
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let mem = 144 * GIB;
        assert_eq!(ram_ranges(mem), vec![(0, 3 * GIB), (4 * GIB, 141 * GIB)]);
        assert_eq!(ram_end(mem), 145 * GIB);
        let map = memory_map(mem);
        for e in map.iter().filter(|e| e.kind == E820_RAM) {
            let end = e.addr + e.size;
            assert!(
                end <= MMIO_HOLE_START || e.addr >= RAM_ABOVE_4G_START,
                "{e:?}"
            );
        }
        assert_eq!(ram_total(&map), mem - (HIGH_MEMORY_START - EBDA_START));
    }

    #[test]
    fn exactly_three_gib_has_no_high_range() {
        assert_eq!(ram_ranges(3 * GIB), vec![(0, 3 * GIB)]);
        assert_eq!(ram_end(3 * GIB), 3 * GIB);
    }

    #[test]
    fn ecam_window_is_reserved() {
        for mem in [2 * MIB, 3 * GIB, 144 * GIB] {
            let map = memory_map(mem);
            assert!(map.contains(&MemoryMapEntry {
                addr: 0xe000_0000,
                size: 0x1000_0000,
                kind: E820_RESERVED
            }));
        }
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for mem in [2 * MIB, 512 * MIB, 3 * GIB + MIB, 144 * GIB] {
            let map = memory_map(mem);
            for pair in map.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
            }
        }
    }
}
