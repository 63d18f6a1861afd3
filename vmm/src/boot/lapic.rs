//! Local APIC LINT pins as a PC wires them: LINT0 ExtINT (the 8259), LINT1 NMI.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::BootError;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_EXTINT: u32 = 0x700;
const DELIVERY_NMI: u32 = 0x400;

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

/// Sets the delivery modes of LINT0 and LINT1, other bits kept.
pub fn wire_lints(state: &mut kvm_lapic_state) {
    let lint0 = read_reg(state, APIC_LVT_LINT0);
    write_reg(
        state,
        APIC_LVT_LINT0,
        (lint0 & !DELIVERY_MODE_MASK) | DELIVERY_EXTINT,
    );
    let lint1 = read_reg(state, APIC_LVT_LINT1);
    write_reg(
        state,
        APIC_LVT_LINT1,
        (lint1 & !DELIVERY_MODE_MASK) | DELIVERY_NMI,
    );
}

/// Needs the in-kernel irqchip.
pub fn set_lints(vcpu: &VcpuFd) -> Result<(), BootError> {
    let mut state = vcpu.get_lapic().map_err(BootError::Vcpu)?;
    wire_lints(&mut state);
    vcpu.set_lapic(&state).map_err(BootError::Vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes() {
        let mut state = kvm_lapic_state::default();
        write_reg(&mut state, APIC_LVT_LINT0, 0x1_0000);
        wire_lints(&mut state);
        assert_eq!(read_reg(&state, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(read_reg(&state, APIC_LVT_LINT1), 0x400);
    }
}
