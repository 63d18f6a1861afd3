//! The ACPI SCI as an OS sees it: IOAPIC pin 9, level-triggered and active
//! high (the MADT's override), routed here to a vector on CPU 0 with
//! interrupts off, so an assertion shows as the vector's bit in the local
//! APIC's IRR (it stays there: the probe never takes the interrupt).

use crate::blk::mmio::{rd, wr};
use crate::blk::timer::Deadline;
use crate::ioapic;
use crate::port::outb;

const LAPIC_IRR: u64 = 0xfee0_0200;
const APIC_SVR: u64 = 0xfee0_00f0;
const SCI_PIN: u32 = 9;
pub const VECTOR: u8 = 0x72;
/// GPE0 status (write 1 to clear) and, 2 bytes on, enable.
pub const GPE0: u16 = 0xafe0;

/// Routes pin 9 to [`VECTOR`] on APIC 0 and enables the GPE0 `bits`.
pub fn route(gpe_bits: u8) {
    // KVM drops fixed interrupts to a software-disabled local APIC.
    wr::<u32>(APIC_SVR, 0x1ff);
    ioapic::route(SCI_PIN, VECTOR, ioapic::LEVEL);
    outb(GPE0 + 2, gpe_bits);
}

/// Whether the SCI's vector is pending in the IRR.
pub fn pending() -> bool {
    rd::<u32>(LAPIC_IRR + 0x10 * u64::from(VECTOR / 32)) >> (VECTOR % 32) & 1 == 1
}

/// Waits (bounded) for the SCI's vector.
pub fn wait(ms: u64) -> bool {
    let mut deadline = Deadline::after_ms(ms);
    while !pending() {
        if deadline.expired() {
            return false;
        }
    }
    true
}

/// Masks pin 9 again and disables GPE0.
pub fn unroute() {
    outb(GPE0 + 2, 0);
    ioapic::mask(SCI_PIN);
}
