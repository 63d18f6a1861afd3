//! `probe=reset`: the first boot marks CMOS and resets the machine through
//! the PIIX3 reset control register (0xcf9), or with `probe=reset,kbd`
//! through the i8042's pulse-reset command; the second boot finds the mark,
//! clears it and passes.

use crate::port::{inb, outb};

const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
/// A CMOS byte nothing else uses.
const MARK_INDEX: u8 = 0x7e;
const MARK: u8 = 0xa5;
const RESET_CONTROL: u16 = 0xcf9;
const I8042_COMMAND: u16 = 0x64;

fn cmos_read(i: u8) -> u8 {
    outb(CMOS_INDEX, i);
    inb(CMOS_DATA)
}

fn cmos_write(i: u8, v: u8) {
    outb(CMOS_INDEX, i);
    outb(CMOS_DATA, v);
}

/// Whether this is the second boot of a `probe=reset` run: the first boot's
/// mark is still in CMOS (`run` clears it). Changes nothing.
pub fn second_boot() -> bool {
    cmos_read(MARK_INDEX) == MARK
}

pub fn run(through_i8042: bool) {
    if cmos_read(MARK_INDEX) == MARK {
        cmos_write(MARK_INDEX, 0);
        crate::check!("booted a second time after the reset", true);
        return;
    }
    cmos_write(MARK_INDEX, MARK);
    crate::check!(
        "CMOS keeps the reset mark",
        cmos_read(MARK_INDEX) == MARK,
        "read {:#x}",
        cmos_read(MARK_INDEX)
    );
    if through_i8042 {
        crate::diag!("first boot: resetting through the i8042");
        outb(I8042_COMMAND, 0xfe);
    } else {
        crate::diag!("first boot: resetting through 0xcf9");
        // Hard reset: system reset (bit 1) with reset CPU (bit 2).
        outb(RESET_CONTROL, 0x06);
    }
    // Still here: the reset did not happen. Give it a moment, then fail.
    for _ in 0..10_000_000u32 {
        core::hint::spin_loop();
    }
    crate::check!("the reset write reset the machine", false, "still running after it");
}
