//! Taking an interrupt in ring 3: vector [`COUNTED`]'s gate (entry.rs)
//! counts it and EOIs the local APIC; `int3` flips IF for ring 3 (`sti` and
//! `cli` fault there under PVM). A window opens interrupts with the task
//! priority at class 7, so only vectors 0x80 and up get in (the other
//! checks leave theirs pending in the IRR), and LINT0 masked, so nothing
//! from the PIC does either.

use crate::blk::mmio::{rd, wr};
use crate::blk::timer::Deadline;

/// The vector whose gate counts.
pub const COUNTED: u8 = 0x84;
const APIC_TPR: u64 = 0xfee0_0080;
const APIC_LVT_LINT0: u64 = 0xfee0_0350;

extern "C" {
    static interrupts_taken: u32;
}

/// How many times vector [`COUNTED`] was taken since boot.
pub fn taken() -> u32 {
    // SAFETY: a u32 in the probe's .data that only the interrupt stub
    // writes (atomically); reading it volatile sees its updates.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(interrupts_taken)) }
}

/// Flips IF through the #BP gate.
fn toggle_if() {
    // SAFETY: the gate returns right after the int3 with only IF changed.
    unsafe { core::arch::asm!("int3", options(nomem)) };
}

/// Interrupts on for up to `ms` milliseconds, or until `done(count)` (the
/// count taken since the window opened); returns that count.
pub fn window(ms: u64, done: impl Fn(u32) -> bool) -> u32 {
    let (tpr, lint0) = (rd::<u32>(APIC_TPR), rd::<u32>(APIC_LVT_LINT0));
    wr::<u32>(APIC_TPR, 0x70);
    wr::<u32>(APIC_LVT_LINT0, lint0 | 1 << 16);
    let start = taken();
    let mut deadline = Deadline::after_ms(ms);
    toggle_if();
    while !done(taken().wrapping_sub(start)) && !deadline.expired() {}
    toggle_if();
    wr::<u32>(APIC_LVT_LINT0, lint0);
    wr::<u32>(APIC_TPR, tpr);
    taken().wrapping_sub(start)
}
