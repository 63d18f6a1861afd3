//! The local APIC, as far as the probe's interrupt checks need it: turn
//! it on, and see which vectors are pending in its IRR.

use crate::blk::mmio::{rd, wr};

const IRR: u64 = 0xfee0_0200;
const SVR: u64 = 0xfee0_00f0;

/// Software-enables the local APIC (spurious vector 0xff): KVM drops
/// fixed interrupts to a disabled one.
pub fn enable() {
    wr::<u32>(SVR, 0x1ff);
}

/// Whether `vector` is pending in the IRR.
pub fn irr(vector: u8) -> bool {
    rd::<u32>(IRR + 0x10 * u64::from(vector / 32)) >> (vector % 32) & 1 == 1
}
