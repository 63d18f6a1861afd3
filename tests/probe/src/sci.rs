//! The ACPI SCI as an OS sees it: IOAPIC pin 9, level-triggered and active
//! high (the MADT's override), routed here to a vector on CPU 0 with
//! interrupts off, so an assertion shows as the vector's bit in the local
//! APIC's IRR (it stays there: the probe never takes the interrupt).

use crate::blk::timer::Deadline;
use crate::port::outb;
use crate::{ioapic, lapic};

const SCI_PIN: u32 = 9;
pub const VECTOR: u8 = 0x72;
/// GPE0 status (write 1 to clear) and, 2 bytes on, enable.
pub const GPE0: u16 = 0xafe0;

/// Routes pin 9 to [`VECTOR`] on APIC 0 and enables the GPE0 `bits`.
pub fn route(gpe_bits: u8) {
    lapic::enable();
    ioapic::route(SCI_PIN, VECTOR, ioapic::LEVEL);
    outb(GPE0 + 2, gpe_bits);
}

/// Whether the SCI's vector is pending in the IRR.
pub fn pending() -> bool {
    lapic::irr(VECTOR)
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
