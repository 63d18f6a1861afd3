//! `probe=dimm`: memory hotplug from the guest's side, through the ACPI
//! memory-hotplug registers at 0xa00 (QEMU's interface, which the DSDT's
//! methods use for an OS): wait for a DIMM, use it with the CPU and with
//! every disk's DMA, then wait for the host's removal request, eject, and
//! check the memory is gone. The insert must also raise the SCI (GPE0 bit
//! 3 through IOAPIC pin 9), which is how an OS hears of it.

use crate::blk::mmio::rd;
use crate::blk::pattern::{self, SECTOR};
use crate::blk::timer::Deadline;
use crate::port::{inb, inl, outb, outl};
use crate::sci;

const BASE: u16 = 0xa00;
const ENABLED: u8 = 1;
const INSERT: u8 = 2;
const REMOVE: u8 = 4;
const EJECT: u8 = 8;
const SEED: u64 = 0xd1;
const MIB: u64 = 1 << 20;
/// GPE0 bit of memory hotplug.
const GPE_MEMORY: u8 = 1 << 3;

fn select(slot: u32) {
    outl(BASE, slot);
}

fn status() -> u8 {
    inb(BASE + 0x14)
}

/// Waits (bounded) for a slot whose status has `bit`; returns it.
fn wait_for(bit: u8, ms: u64) -> Option<u32> {
    let mut deadline = Deadline::after_ms(ms);
    loop {
        for slot in 0..256 {
            select(slot);
            let s = inl(BASE + 0x14);
            if s == u32::MAX {
                break;
            }
            if s as u8 & bit != 0 {
                return Some(slot);
            }
        }
        if deadline.expired() {
            return None;
        }
    }
}

pub fn run() {
    select(0);
    if inl(BASE) == u32::MAX && inl(BASE + 0x14) == u32::MAX {
        crate::check!("dimm: the memory hotplug registers answer", false, "no slot 0");
        return;
    }
    sci::route(GPE_MEMORY);
    crate::check!("dimm: no SCI before any event", !sci::pending(), "");
    crate::diag!("dimm: waiting");
    let Some(slot) = wait_for(INSERT, 60_000) else {
        crate::check!("dimm: a DIMM is announced", false, "no insert event in 60 s");
        return;
    };
    let raised = sci::wait(1000);
    let gpe = inb(sci::GPE0);
    crate::check!(
        "dimm: the insert raised the SCI through GPE0 bit 3 and IOAPIC pin 9",
        raised && gpe & GPE_MEMORY != 0,
        "vector {:#x} pending {raised}, GPE0 status {gpe:#x}",
        sci::VECTOR
    );
    outb(sci::GPE0, GPE_MEMORY);
    let gpe = inb(sci::GPE0);
    crate::check!("dimm: GPE0 status clears by writing 1", gpe & GPE_MEMORY == 0, "{gpe:#x}");
    select(slot);
    let base = u64::from(inl(BASE)) | u64::from(inl(BASE + 4)) << 32;
    let size = u64::from(inl(BASE + 8)) | u64::from(inl(BASE + 0xc)) << 32;
    let node = inl(BASE + 0x10);
    outb(BASE + 0x14, INSERT);
    // _OST: device check (1) handled, status 0.
    outl(BASE + 4, 1);
    outl(BASE + 8, 0);
    crate::check!(
        "dimm: a DIMM is announced",
        status() & (ENABLED | INSERT) == ENABLED && size >= 2 * MIB,
        "slot {slot} at {base:#x}, {} MiB, node {node}",
        size / MIB
    );
    crate::diag!("dimm: slot={slot} base={base:#x} size={size:#x}");

    // The CPU writes the first and the last MiB, and reads them back.
    let last = base + size - MIB;
    for (n, at) in [base, last].into_iter().enumerate() {
        for s in 0..MIB / SECTOR {
            pattern::fill(at + s * SECTOR, SEED + n as u64, s);
        }
    }
    let cpu_ok = [base, last].into_iter().enumerate().all(|(n, at)| {
        (0..MIB / SECTOR).all(|s| pattern::matches(at + s * SECTOR, SEED + n as u64, s))
    });
    crate::check!("dimm: CPU writes to the DIMM read back", cpu_ok, "2 MiB");

    // Every disk moves data out of and into the DIMM by DMA.
    crate::blk::dimm_dma::run(base, base + 2 * MIB, SEED);
    crate::edu::dimm_dma(base);
    crate::diag!("dimm: used");

    let removal = wait_for(REMOVE, 60_000);
    crate::check!(
        "dimm: the host asks for removal",
        removal == Some(slot),
        "{removal:?}"
    );
    if removal != Some(slot) {
        return;
    }
    select(slot);
    outb(BASE + 0x14, REMOVE | EJECT);
    select(slot);
    let after = status();
    crate::check!("dimm: ejected, the slot is empty", after == 0, "status {after:#x}");
    let word = rd::<u64>(base);
    crate::check!(
        "dimm: the memory is gone after eject",
        word == u64::MAX,
        "{base:#x} reads {word:#x}"
    );
    sci::unroute();
}
