//! Port I/O, usable from ring 3 because the probe runs with IOPL 3.

use core::arch::asm;

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input has no memory effects; IOPL 3 permits it in ring 3.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: port output has no memory effects on the probe's own state.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

pub fn outw(port: u16, value: u16) {
    // SAFETY: ring-3 port I/O is granted by the TSS I/O bitmap; the VMM
    // answers the access.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack)) }
}
