//! Physical Region Page (PRP) walking (NVMe 1.4 §4.3): turns a command's PRP1/PRP2 into the list of
//! guest memory segments its data occupies, and copies data between those segments and host buffers.
//!
//! - PRP1 points at the first byte (any dword-aligned offset in a page); the transfer runs to the end
//!   of that page.
//! - If the rest fits in one page, PRP2 points at that page (page aligned).
//! - Otherwise PRP2 points at a PRP list: 8-byte entries, each a page-aligned data page. If the entries
//!   do not fit in the rest of the list's page, the last entry of the page points at the next list
//!   page (chained lists).
//!
//! Every data segment and every list entry is checked against guest RAM (Data Transfer Error if
//! outside); misaligned entries give PRP Offset Invalid. Only as many entries as the transfer needs are
//! read, so a list longer than needed is ignored, and a chain that comes back to a list page it already
//! visited is a Data Transfer Error, so a looping chain cannot spin. Callers bound the length by MDTS
//! before walking.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::status::Status;

/// A contiguous run of guest physical memory that a transfer touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Whether `[addr, addr + len)` is all guest RAM.
pub(crate) fn in_ram(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    addr.checked_add(len as u64).is_some()
        && (len == 0 || GuestMemoryBackend::check_range(mem, GuestAddress(addr), len))
}

fn push(mem: &GuestMemoryMmap, out: &mut Vec<Segment>, addr: u64, len: u64) -> Result<(), Status> {
    if !in_ram(mem, addr, len) {
        return Err(Status::DATA_TRANSFER_ERROR);
    }
    match out.last_mut() {
        Some(last) if last.addr + last.len == addr => last.len += len,
        _ => out.push(Segment { addr, len }),
    }
    Ok(())
}

/// Maps a transfer of `len` bytes described by `prp1`/`prp2` with memory pages of `page_size` bytes
/// into `out` (cleared first; adjacent pages are merged into one segment).
pub(crate) fn map_prps(
    mem: &GuestMemoryMmap,
    prp1: u64,
    prp2: u64,
    len: u64,
    page_size: u64,
    out: &mut Vec<Segment>,
) -> Result<(), Status> {
    out.clear();
    if len == 0 {
        return Ok(());
    }
    let page_mask = page_size - 1;
    if prp1 & 0x3 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let first = len.min(page_size - (prp1 & page_mask));
    push(mem, out, prp1, first)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= page_size {
        if prp2 & page_mask != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        return push(mem, out, prp2, remaining);
    }

    // PRP2 is a list pointer; it may start anywhere in its page at an 8-byte boundary.
    if prp2 & 0x7 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let mut list = prp2;
    let mut visited: Vec<u64> = Vec::new();
    let mut entries = [0u8; 8 * 64];
    while remaining > 0 {
        let page = list & !page_mask;
        if visited.contains(&page) {
            // The chain came back to a list page it already read: a loop.
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        visited.push(page);
        let slots = (page_size - (list & page_mask)) / 8;
        let needed = remaining.div_ceil(page_size);
        let (data_entries, chained) = if needed <= slots {
            (needed, false)
        } else {
            (slots - 1, true)
        };
        // Read the entries this page contributes, a bounded batch at a time.
        let total = data_entries + u64::from(chained);
        let mut index = 0u64;
        while index < total {
            let batch = (total - index).min(64);
            let bytes = &mut entries[..(batch * 8) as usize];
            let at = list + index * 8;
            if !in_ram(mem, at, batch * 8) || mem.read_slice(bytes, GuestAddress(at)).is_err() {
                return Err(Status::DATA_TRANSFER_ERROR);
            }
            for i in 0..batch {
                let raw = &bytes[(i * 8) as usize..(i * 8 + 8) as usize];
                let entry = u64::from_le_bytes(raw.try_into().unwrap_or([0xff; 8]));
                if index + i == data_entries {
                    // The chain pointer to the next list page.
                    if entry & page_mask != 0 {
                        return Err(Status::PRP_OFFSET_INVALID);
                    }
                    list = entry;
                    continue;
                }
                if entry & page_mask != 0 {
                    return Err(Status::PRP_OFFSET_INVALID);
                }
                let n = remaining.min(page_size);
                push(mem, out, entry, n)?;
                remaining -= n;
            }
            index += batch;
        }
    }
    Ok(())
}

/// Copies `data` into the guest segments, in order. Their total length must equal `data.len()`.
pub(crate) fn write_to_guest(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    data: &[u8],
) -> Result<(), Status> {
    let mut done = 0usize;
    for s in segments {
        let n = s.len as usize;
        let chunk = data
            .get(done..done + n)
            .ok_or(Status::DATA_TRANSFER_ERROR)?;
        mem.write_slice(chunk, GuestAddress(s.addr))
            .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        done += n;
    }
    Ok(())
}

/// Fills `data` from the guest segments, in order. Their total length must equal `data.len()`.
pub(crate) fn read_from_guest(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    data: &mut [u8],
) -> Result<(), Status> {
    let mut done = 0usize;
    for s in segments {
        let n = s.len as usize;
        let chunk = data
            .get_mut(done..done + n)
            .ok_or(Status::DATA_TRANSFER_ERROR)?;
        mem.read_slice(chunk, GuestAddress(s.addr))
            .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 4096;
    const RAM: u64 = 16 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn write_list(mem: &GuestMemoryMmap, at: u64, entries: &[u64]) {
        for (i, e) in entries.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(at + 8 * i as u64)).unwrap();
        }
    }

    fn map(mem: &GuestMemoryMmap, prp1: u64, prp2: u64, len: u64) -> Result<Vec<Segment>, Status> {
        let mut v = Vec::new();
        map_prps(mem, prp1, prp2, len, PS, &mut v).map(|()| v)
    }

    fn seg(addr: u64, len: u64) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn prp1_only() {
        let m = mem();
        assert_eq!(map(&m, 0x10000, 0, 4096).unwrap(), vec![seg(0x10000, 4096)]);
        assert_eq!(map(&m, 0x10200, 0, 512).unwrap(), vec![seg(0x10200, 512)]);
        assert_eq!(map(&m, 0x10000, 0, 0).unwrap(), vec![]);
    }

    #[test]
    fn prp1_and_prp2() {
        let m = mem();
        assert_eq!(
            map(&m, 0x10800, 0x30000, 4096).unwrap(),
            vec![seg(0x10800, 2048), seg(0x30000, 2048)]
        );
        assert_eq!(
            map(&m, 0x10000, 0x11000, 8192).unwrap(),
            vec![seg(0x10000, 8192)],
            "adjacent pages merge"
        );
        assert_eq!(
            map(&m, 0x10000, 0x30010, 8192),
            Err(Status::PRP_OFFSET_INVALID)
        );
        assert_eq!(map(&m, 0x10002, 0, 512), Err(Status::PRP_OFFSET_INVALID));
    }

    #[test]
    fn prp_list() {
        let m = mem();
        write_list(&m, 0x5000, &[0x40000, 0x60000, 0x41000]);
        assert_eq!(
            map(&m, 0x20000, 0x5000, 4 * PS).unwrap(),
            vec![
                seg(0x20000, PS),
                seg(0x40000, PS),
                seg(0x60000, PS),
                seg(0x41000, PS)
            ]
        );
        // The last page may be partial; entries beyond what the transfer needs are not read.
        write_list(&m, 0x5018, &[0xdead_beef_0001]);
        assert_eq!(
            map(&m, 0x20000, 0x5000, 3 * PS + 100).unwrap(),
            vec![
                seg(0x20000, PS),
                seg(0x40000, PS),
                seg(0x60000, PS),
                seg(0x41000, 100)
            ]
        );
    }

    #[test]
    fn chained_prp_lists_across_a_page_boundary() {
        let m = mem();
        // The list starts 3 entries before the end of its page: two data entries, then a chain
        // pointer to a second list page.
        let list = 0x6000 + PS - 24;
        write_list(&m, list, &[0x100000, 0x101000, 0x8000]);
        write_list(&m, 0x8000, &[0x200000, 0x300000]);
        assert_eq!(
            map(&m, 0x20000, list, 5 * PS).unwrap(),
            vec![
                seg(0x20000, PS),
                seg(0x100000, 2 * PS),
                seg(0x200000, PS),
                seg(0x300000, PS)
            ]
        );
        // 513 list entries: a full first list page (511 data + chain) and a second page.
        let pages: Vec<u64> = (0..511).map(|i| 0x400000 + i * PS).collect();
        let mut first = pages.clone();
        first.push(0x9000);
        write_list(&m, 0xa000, &first);
        write_list(&m, 0x9000, &[0x800000, 0x900000]);
        let segs = map(&m, 0x20000, 0xa000, 514 * PS).unwrap();
        assert_eq!(
            segs,
            vec![
                seg(0x20000, PS),
                seg(0x400000, 511 * PS),
                seg(0x800000, PS),
                seg(0x900000, PS)
            ]
        );
    }

    #[test]
    fn malformed_lists() {
        let m = mem();
        // A data entry that is not page aligned.
        write_list(&m, 0x5000, &[0x40000, 0x60010]);
        assert_eq!(
            map(&m, 0x20000, 0x5000, 3 * PS),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // A list pointer that is not 8-byte aligned.
        assert_eq!(
            map(&m, 0x20000, 0x5004, 3 * PS),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // A data entry outside guest RAM.
        write_list(&m, 0x5000, &[0x40000, RAM]);
        assert_eq!(
            map(&m, 0x20000, 0x5000, 3 * PS),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // PRP1 or PRP2 outside guest RAM, or wrapping the address space.
        assert_eq!(map(&m, RAM, 0, 512), Err(Status::DATA_TRANSFER_ERROR));
        assert_eq!(
            map(&m, RAM - PS, RAM, 2 * PS),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        assert_eq!(map(&m, !0xfff, 0, 4096), Err(Status::DATA_TRANSFER_ERROR));
        // The list itself outside guest RAM.
        assert_eq!(
            map(&m, 0x20000, RAM + 0x1000, 3 * PS),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // A chain pointer to a list page outside guest RAM.
        let list = RAM - 8;
        m.write_obj(RAM, GuestAddress(list)).unwrap();
        assert_eq!(
            map(&m, 0x20000, list, 3 * PS),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }

    #[test]
    fn looping_chains_are_caught() {
        let m = mem();
        // The last entry of a full list page points back at the same page.
        let mut page: Vec<u64> = (0..511).map(|i| 0x400000 + i * PS).collect();
        page.push(0xa000);
        write_list(&m, 0xa000, &page);
        assert_eq!(
            map(&m, 0x20000, 0xa000, 600 * PS),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // Two list pages pointing at each other, each holding a single chain entry at its end.
        let a = 0xb000 + PS - 8;
        let b = 0xc000 + PS - 8;
        write_list(&m, a, &[0xc000]);
        write_list(&m, 0xc000, &vec![0x400000; 511]);
        write_list(&m, b, &[0xb000]);
        write_list(&m, 0xb000, &vec![0x400000; 511]);
        assert_eq!(
            map(&m, 0x20000, a, 2000 * PS),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // A chain pointer that is not page aligned.
        write_list(&m, a, &[0xc008]);
        assert_eq!(map(&m, 0x20000, a, 3 * PS), Err(Status::PRP_OFFSET_INVALID));
    }

    #[test]
    fn copies_follow_the_segments() {
        let m = mem();
        let segs = vec![seg(0x1000, 3), seg(0x3000, 5)];
        write_to_guest(&m, &segs, b"abcdefgh").unwrap();
        let mut back = [0u8; 8];
        read_from_guest(&m, &segs, &mut back).unwrap();
        assert_eq!(&back, b"abcdefgh");
        let mut x = [0u8; 5];
        m.read_slice(&mut x, GuestAddress(0x3000)).unwrap();
        assert_eq!(&x, b"defgh");
        assert_eq!(
            write_to_guest(&m, &segs, b"short"),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }
}
