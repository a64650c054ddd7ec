//! The boot CPU's initial register state for each entry protocol, and the identity page tables the
//! 64-bit entry needs.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use super::layout::{PVH_START_INFO_ADDR, ZERO_PAGE_ADDR};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
const PAGE_PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// How the guest's boot CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, `%rsi` = boot_params.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, `%ebx` = hvm_start_info.
    Pvh,
}

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory too small or not mapped where the structures go.
    #[error("cannot write the boot {0} into guest memory")]
    Write(&'static str),
}

/// General-purpose registers at the entry point.
pub fn entry_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh => regs.rbx = PVH_START_INFO_ADDR,
    }
    regs
}

/// Writes the GDT (and, for the 64-bit entry, identity page tables for the first 1 GiB) and returns
/// `sregs` updated for the entry mode.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let code_flags = match mode {
        EntryMode::Linux64 => gdt::CODE64_FLAGS,
        EntryMode::Pvh => gdt::CODE32_FLAGS,
    };
    let table = gdt::boot_gdt(code_flags);
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i as u64) * 8))
            .map_err(|_| RegsError::Write("GDT"))?;
    }
    let code = gdt::segment_from_descriptor(table[CODE_INDEX as usize], CODE_INDEX);
    let data = gdt::segment_from_descriptor(table[DATA_INDEX as usize], DATA_INDEX);
    let tss = gdt::segment_from_descriptor(table[TSS_INDEX as usize], TSS_INDEX);

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    // No IDT: the guest installs its own before enabling interrupts.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = (sregs.cr0 & !CR0_PG) | CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Maps the first 1 GiB 1:1 with 2 MiB pages: enough for a Linux kernel's early 64-bit code.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |_| RegsError::Write("page tables");
    mem.write_obj(PDPT_ADDR | PAGE_PRESENT_WRITABLE, GuestAddress(PML4_ADDR))
        .map_err(err)?;
    mem.write_obj(PD_ADDR | PAGE_PRESENT_WRITABLE, GuestAddress(PDPT_ADDR))
        .map_err(err)?;
    for i in 0..512u64 {
        let entry = (i << 21) | PAGE_SIZE_2M | PAGE_PRESENT_WRITABLE;
        mem.write_obj(entry, GuestAddress(PD_ADDR + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

/// The FPU state every x86 CPU has after FNINIT, with SSE exceptions masked.
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn long_mode_state() {
        let m = mem();
        let s = setup_sregs(&m, EntryMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, 8);
        assert_eq!(s.ds.selector, 16);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        let pd_last: u64 = m.read_obj(GuestAddress(PD_ADDR + 511 * 8)).unwrap();
        assert_eq!(pd_last, (511 << 21) | 0x83);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let gdt1: u64 = m.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, 0x00af_9b00_0000_ffff);
        let r = entry_regs(EntryMode::Linux64, 0x100_0200);
        assert_eq!(
            (r.rip, r.rsi, r.rsp),
            (0x100_0200, ZERO_PAGE_ADDR, BOOT_STACK_POINTER)
        );
    }

    #[test]
    fn pvh_state() {
        let m = mem();
        let start = kvm_sregs {
            cr0: CR0_PG | CR0_PE,
            cr4: CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        let s = setup_sregs(&m, EntryMode::Pvh, start).unwrap();
        assert_eq!(s.cs.l, 0);
        assert_eq!(s.cs.db, 1);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr0 & CR0_PE, 0);
        assert_eq!((s.cr4, s.efer), (0, 0));
        let r = entry_regs(EntryMode::Pvh, 0x10_0000);
        assert_eq!(
            (r.rip, r.rbx, r.rflags),
            (0x10_0000, PVH_START_INFO_ADDR, 2)
        );
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(setup_sregs(&m, EntryMode::Linux64, kvm_sregs::default()).is_err());
    }
}
