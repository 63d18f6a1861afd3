//! The IOAPIC's redirection table through its index and data registers.

use crate::blk::mmio::{rd, wr};

const IOAPIC: u64 = 0xfec0_0000;
/// Redirection entry bits: level-triggered, active low, remote IRR (set
/// while a level interrupt is delivered and not yet EOI'd), masked.
pub const LEVEL: u32 = 1 << 15;
pub const ACTIVE_LOW: u32 = 1 << 13;
pub const REMOTE_IRR: u32 = 1 << 14;
pub const MASKED: u32 = 1 << 16;

pub fn write(index: u32, value: u32) {
    wr::<u32>(IOAPIC, index);
    wr::<u32>(IOAPIC + 0x10, value);
}

pub fn read(index: u32) -> u32 {
    wr::<u32>(IOAPIC, index);
    rd::<u32>(IOAPIC + 0x10)
}

/// Routes `pin` to `vector` on APIC 0 with `flags` ([`LEVEL`] ...).
pub fn route(pin: u32, vector: u8, flags: u32) {
    write(0x11 + 2 * pin, 0);
    write(0x10 + 2 * pin, u32::from(vector) | flags);
}

/// The low dword of `pin`'s redirection entry.
pub fn entry(pin: u32) -> u32 {
    read(0x10 + 2 * pin)
}

pub fn mask(pin: u32) {
    write(0x10 + 2 * pin, MASKED);
}
