//! Segment descriptors for the boot GDT, and their KVM segment-register form.
//!
//! Encoding per the Intel SDM vol. 3, 3.4.5: `flags` packs the access byte (bits 0-7) and the
//! granularity/size/long nibble (bits 12-15) of a descriptor.

use kvm_bindings::kvm_segment;

/// A flat 64-bit code segment (present, DPL 0, execute/read, L=1, 4 KiB granularity).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// A flat 32-bit code segment (present, DPL 0, execute/read, D=1, 4 KiB granularity).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// A flat read/write data segment (present, DPL 0, D/B=1, 4 KiB granularity).
pub const DATA_FLAGS: u16 = 0xc093;
/// A busy 64-bit TSS (required by VM entry even if the guest never uses it).
pub const TSS_FLAGS: u16 = 0x808b;

/// GDT index of the code segment.
pub const CODE_INDEX: u16 = 1;
/// GDT index of the data segment.
pub const DATA_INDEX: u16 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u16 = 3;

/// Encodes a segment descriptor.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, code, data, TSS. `code_flags` picks 64-bit or 32-bit code.
pub fn boot_gdt(code_flags: u16) -> [u64; 4] {
    [
        0,
        descriptor(code_flags, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// The segment register a CPU would load from `entry` at GDT `index`.
pub fn segment_from_descriptor(entry: u64, index: u16) -> kvm_segment {
    let granular = (entry >> 55) & 1 == 1;
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if granular {
            ((raw_limit << 12) | 0xfff) as u32
        } else {
            raw_limit as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code64_segment_decodes() {
        let seg = segment_from_descriptor(descriptor(CODE64_FLAGS, 0, 0xfffff), CODE_INDEX);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 8);
        assert_eq!((seg.type_, seg.present, seg.dpl, seg.s), (0xb, 1, 0, 1));
        assert_eq!((seg.l, seg.db, seg.g, seg.unusable), (1, 0, 1, 0));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let seg = segment_from_descriptor(descriptor(0x0093, 0x1234_5678, 0xabcde), 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!(seg.selector, 40);
        assert_eq!(seg.g, 0);
        // A descriptor without the present bit is unusable.
        assert_eq!(segment_from_descriptor(0, 0).unusable, 1);
    }

    #[test]
    fn known_encodings() {
        // The values every x86 boot loader writes for a flat 4 GiB segment.
        assert_eq!(descriptor(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }
}
