//! PCI INTx routing on the PC machine: slot `s`'s INTA#..INTD# go to
//! IOAPIC pins 16-23, rotated by slot (pin p of slot s on GSI
//! 16 + (s + p - 1) mod 8), so neighbouring slots' INTA# do not share a
//! line. PCI interrupts are level-triggered and active low; the DSDT's
//! `_PRT` tells the OS this table, and a function's Interrupt Line
//! register (0x3c) carries its GSI.

/// The first IOAPIC pin PCI INTx uses (pins 0-15 are ISA's).
pub const FIRST_GSI: u8 = 16;
/// How many pins the slots rotate over (KVM's IOAPIC has 24).
pub const GSIS: u8 = 8;

/// The GSI that interrupt pin `pin` (1 = INTA# .. 4 = INTD#) of PCI slot
/// `slot` is wired to; None if `pin` is not a pin or `slot` not a slot.
pub fn gsi(slot: u8, pin: u8) -> Option<u8> {
    if slot >= 32 || !(1..=4).contains(&pin) {
        return None;
    }
    Some(FIRST_GSI + (slot + pin - 1) % GSIS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_rotate_over_gsis_16_to_23() {
        assert_eq!(gsi(0, 1), Some(16));
        assert_eq!(gsi(3, 1), Some(19));
        assert_eq!(gsi(3, 4), Some(22));
        assert_eq!(gsi(31, 1), Some(23));
        assert_eq!(gsi(31, 2), Some(16));
        assert_eq!((gsi(5, 0), gsi(5, 5), gsi(32, 1)), (None, None, None));
    }
}
