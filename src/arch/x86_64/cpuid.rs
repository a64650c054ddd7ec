//! Shapes the CPUID the guest sees from what KVM supports: each vCPU's APIC ID, a topology of one socket
//! with N single-thread cores (so the guest counts exactly N CPUs), the hypervisor bit, and — on PVM
//! hosts — the features whose instructions the host's emulator cannot run.

use kvm_bindings::kvm_cpuid_entry2;

/// Which CPU features the guest may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuProfile {
    /// Everything KVM supports.
    Host,
    /// Hide what a PVM host's instruction emulator lacks (../docs/pvm.md).
    PvmCompat,
}

impl std::fmt::Display for CpuProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuProfile::Host => "host",
            CpuProfile::PvmCompat => "pvm-compat",
        })
    }
}

// Leaf 1.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const CLFLUSH_LINE_SIZE_QWORDS: u32 = 8;
// Leaf 0xB / 0x1F level types.
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
// KVM's feature leaf.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;

/// Features hidden under [`CpuProfile::PvmCompat`]: (leaf, subleaf, register, mask of bits to clear).
/// Each one either encodes an instruction the PVM emulator lacks (cmpxchg16b, popcnt, xsave/xrstor,
/// clac/stac behind SMAP, SSSE3 and later SIMD, rdrand/rdseed, rdpid, fsgsbase, invpcid) or a feature
/// whose use leads there (AVX needs XSAVE, PCID needs INVPCID paths, ERMS/FSRM change string copies).
const PVM_HIDDEN: &[(u32, u32, Reg, u32)] = &[
    // pclmulqdq 1, ssse3 9, fma 12, cx16 13, pcid 17, sse4.1 19, sse4.2 20, movbe 22, popcnt 23,
    // aes 25, xsave 26, osxsave 27, avx 28, f16c 29, rdrand 30
    (
        1,
        0,
        Reg::Ecx,
        (1 << 1)
            | (1 << 9)
            | (1 << 12)
            | (1 << 13)
            | (1 << 17)
            | (1 << 19)
            | (1 << 20)
            | (1 << 22)
            | (1 << 23)
            | (1 << 25)
            | (1 << 26)
            | (1 << 27)
            | (1 << 28)
            | (1 << 29)
            | (1 << 30),
    ),
    // fsgsbase 0, bmi1 3, hle 4, avx2 5, bmi2 8, erms 9, invpcid 10, rtm 11, avx512f 16, avx512dq 17,
    // rdseed 18, adx 19, smap 20, avx512ifma 21, avx512pf 26, avx512er 27, avx512cd 28, sha 29,
    // avx512bw 30, avx512vl 31
    (
        7,
        0,
        Reg::Ebx,
        (1 << 0)
            | (1 << 3)
            | (1 << 4)
            | (1 << 5)
            | (1 << 8)
            | (1 << 9)
            | (1 << 10)
            | (1 << 11)
            | (1 << 16)
            | (1 << 17)
            | (1 << 18)
            | (1 << 19)
            | (1 << 20)
            | (1 << 21)
            | (1 << 26)
            | (1 << 27)
            | (1 << 28)
            | (1 << 29)
            | (1 << 30)
            | (1 << 31),
    ),
    // avx512vbmi 1, pku 3, ospke 4, waitpkg 5, avx512vbmi2 6, gfni 8, vaes 9, vpclmulqdq 10,
    // avx512vnni 11, avx512bitalg 12, avx512vpopcntdq 14, rdpid 22
    (
        7,
        0,
        Reg::Ecx,
        (1 << 1)
            | (1 << 3)
            | (1 << 4)
            | (1 << 5)
            | (1 << 6)
            | (1 << 8)
            | (1 << 9)
            | (1 << 10)
            | (1 << 11)
            | (1 << 12)
            | (1 << 14)
            | (1 << 22),
    ),
    // avx512_4vnniw 2, avx512_4fmaps 3, fsrm 4, avx512_vp2intersect 8, amx 22/24/25, avx512fp16 23,
    // arch_capabilities 29 (QEMU found PVM refuses IA32_ARCH_CAPABILITIES)
    (
        7,
        0,
        Reg::Edx,
        (1 << 2)
            | (1 << 3)
            | (1 << 4)
            | (1 << 8)
            | (1 << 22)
            | (1 << 23)
            | (1 << 24)
            | (1 << 25)
            | (1 << 29),
    ),
    // avx-vnni 4, avx512bf16 5
    (7, 1, Reg::Eax, (1 << 4) | (1 << 5)),
    // lzcnt/abm 5, sse4a 6, misalignsse 7, xop 11, fma4 16, tbm 21
    (
        0x8000_0001,
        0,
        Reg::Ecx,
        (1 << 5) | (1 << 6) | (1 << 7) | (1 << 11) | (1 << 16) | (1 << 21),
    ),
    (KVM_CPUID_FEATURES, 0, Reg::Eax, KVM_FEATURE_STEAL_TIME),
];

#[derive(Debug, Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut entry.eax,
        Reg::Ebx => &mut entry.ebx,
        Reg::Ecx => &mut entry.ecx,
        Reg::Edx => &mut entry.edx,
    }
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == 0
            && e.ebx == u32::from_le_bytes(*b"Auth")
            && e.ecx == u32::from_le_bytes(*b"cAMD")
    })
}

/// Shapes `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_index` of `num_cpus`.
pub fn shape_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    cpu_index: u32,
    num_cpus: u32,
    profile: CpuProfile,
) {
    let apic_id = cpu_index;
    let amd = is_amd(entries);
    let core_bits = bits_for(num_cpus);
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                // The logical-processor count field is the size of the APIC ID space per package.
                let logical = (1u32 << core_bits).min(255);
                entry.ebx = (apic_id << 24) | (logical << 16) | (CLFLUSH_LINE_SIZE_QWORDS << 8);
                if num_cpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // Deterministic cache parameters: cores per package, and who shares each cache.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { num_cpus - 1 } else { 0 };
                let cores = (num_cpus - 1).min(63);
                entry.eax = (entry.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores << 26);
            }
            0xb | 0x1f => {
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = num_cpus;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = (LEVEL_TYPE_INVALID << 8) | entry.index;
                    }
                }
            }
            0x8000_0008 if amd => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (num_cpus - 1);
            }
            _ => {}
        }
    }
    // KVM may not list the core level of leaf 0xB; the guest needs it to count its CPUs.
    for leaf in [0xb, 0x1f] {
        let has_leaf = entries.iter().any(|e| e.function == leaf);
        let has_core_level = entries.iter().any(|e| e.function == leaf && e.index == 1);
        if has_leaf && !has_core_level {
            entries.push(kvm_cpuid_entry2 {
                function: leaf,
                index: 1,
                flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: core_bits,
                ebx: num_cpus,
                ecx: (LEVEL_TYPE_CORE << 8) | 1,
                edx: apic_id,
                ..Default::default()
            });
        }
    }

    if profile == CpuProfile::PvmCompat {
        for &(leaf, subleaf, reg, mask) in PVM_HIDDEN {
            for entry in entries
                .iter_mut()
                .filter(|e| e.function == leaf && e.index == subleaf)
            {
                *reg_mut(entry, reg) &= !mask;
            }
        }
        // Leaf 0xD describes XSAVE state components; without XSAVE there are none.
        for entry in entries.iter_mut().filter(|e| e.function == 0xd) {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
    }
}

/// The guest-physical address width the guest CPU reports (leaf 0x8000_0008 EAX[7:0]), if present.
pub fn physical_address_bits(entries: &[kvm_cpuid_entry2]) -> Option<u32> {
    entries
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| e.eax & 0xff)
        .filter(|bits| *bits > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_id_and_topology_for_72_cpus() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(4, 0)];
        e[2].eax = 3 << 5 | 0x3; // an L3 cache descriptor
        shape_cpuid(&mut e, 71, 72, CpuProfile::Host);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 71);
        assert_eq!((l1.ebx >> 16) & 0xff, 128);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 71));
        let core = find(&e, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8, core.edx),
            (7, 72, 2, 71)
        );
        let l3 = find(&e, 4, 0);
        assert_eq!(l3.eax >> 26, 63);
        assert_eq!((l3.eax >> 14) & 0xfff, 71);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![entry(1, 0)];
        shape_cpuid(&mut e, 0, 1, CpuProfile::Host);
        assert_eq!(find(&e, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&e, 1, 0).ebx >> 16 & 0xff, 1);
    }

    #[test]
    fn pvm_profile_hides_emulator_gaps_and_steal_time() {
        let mut e = vec![
            entry(1, 0),
            entry(7, 0),
            entry(0xd, 0),
            entry(0xd, 1),
            entry(KVM_CPUID_FEATURES, 0),
        ];
        shape_cpuid(&mut e, 0, 2, CpuProfile::PvmCompat);
        let l1 = find(&e, 1, 0);
        for bit in [9, 13, 23, 26, 27, 30] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        let l7 = find(&e, 7, 0);
        for bit in [0, 18, 20] {
            assert_eq!(l7.ebx & (1 << bit), 0, "leaf 7 ebx bit {bit}");
        }
        assert_eq!(l7.ecx & (1 << 22), 0);
        assert_eq!(find(&e, 0xd, 1).eax, 0);
        assert_eq!(
            find(&e, KVM_CPUID_FEATURES, 0).eax & KVM_FEATURE_STEAL_TIME,
            0
        );
        // The host profile leaves them alone.
        let mut h = vec![entry(1, 0), entry(7, 0)];
        shape_cpuid(&mut h, 0, 2, CpuProfile::Host);
        assert_ne!(find(&h, 1, 0).ecx & (1 << 23), 0);
        assert_ne!(find(&h, 7, 0).ebx & (1 << 20), 0);
    }

    #[test]
    fn missing_core_level_is_added() {
        let mut e = vec![entry(0xb, 0)];
        shape_cpuid(&mut e, 3, 8, CpuProfile::Host);
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (3, 8, 3));
    }

    #[test]
    fn address_bits() {
        let mut e = vec![entry(0x8000_0008, 0)];
        e[0].eax = 0x3027;
        assert_eq!(physical_address_bits(&e), Some(0x27));
        assert_eq!(physical_address_bits(&[]), None);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(72), 7);
        assert_eq!(bits_for(64), 6);
    }
}
