//! Local APIC set-up a BIOS would do: LINT0 delivers the legacy PIC's ExtINT, LINT1 delivers NMI.

use kvm_bindings::kvm_lapic_state;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_NMI: u32 = 0x4;
const DELIVERY_MODE_EXTINT: u32 = 0x7;

fn read_register(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_register(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[offset + i] = byte as _;
    }
}

fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in `state`.
pub fn set_lint_delivery(state: &mut kvm_lapic_state) {
    let lint0 = read_register(state, APIC_LVT_LINT0);
    write_register(
        state,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, DELIVERY_MODE_EXTINT),
    );
    let lint1 = read_register(state, APIC_LVT_LINT1);
    write_register(
        state,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, DELIVERY_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes() {
        let mut s = kvm_lapic_state::default();
        write_register(&mut s, APIC_LVT_LINT0, 0x0001_0000);
        set_lint_delivery(&mut s);
        assert_eq!(read_register(&s, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(read_register(&s, APIC_LVT_LINT1), 0x400);
    }
}
