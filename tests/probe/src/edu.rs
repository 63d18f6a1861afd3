//! The edu device (1234:11e8, QEMU's test device; ours is served over
//! vfio-user by `vfio-user-edu`), driven through the virtio driver's PCI
//! helpers: BARs assigned, MSI-X entry 0 on vector 0x70, then the register
//! and DMA checks. With `probe=reset` the second boot runs them again on
//! the reset device. Before MSI-X is on, the expansion ROM through the ROM
//! BAR, and INTx through the IOAPIC pin the DSDT's `_PRT` routes the slot's
//! INTA# to. Every check is named `edu BDF ...`.
//!
//! DMA buffers live at 48-52 MiB, outside the virtio-blk arena.

use core::fmt::{self, Write};

use crate::blk::mmio::{fence, rd, wr};
use crate::blk::timer::Deadline;
use crate::blk::transport::{alloc_mmio, assign_bars, find_caps, msix_enable, msix_set};
use crate::{intr, ioapic, lapic};
use crate::pci::{self, Bdf};

const VENDOR: u16 = 0x1234;
const DEVICE: u16 = 0x11e8;
const VECTOR: u8 = 0x70;
/// Above the other checks' vectors (all below 0x80), for `intr::window`.
const INTX_VECTOR: u8 = intr::COUNTED;
const SRC: u64 = 48 << 20;
const DST: u64 = SRC + 0x1000;
const LEN: u64 = 0x800;
/// The device's DMA buffer, in its own address space.
const DEV_BUF: u64 = 0x4_0000;
/// Not guest RAM with the probe's memory sizes: inside the PCI hole.
const NOT_RAM: u64 = 0xd000_0000;
const DMA_START: u32 = 1;
const DMA_TO_RAM: u32 = 2;
const DMA_IRQ: u32 = 4;
const IRQ_DMA: u32 = 0x100;
const STATUS_DMA_ERROR: u32 = 0x100;

/// A check name `edu BDF what`, formatted on the stack.
struct Label {
    buf: [u8; 96],
    len: usize,
}

impl Write for Label {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn check(bdf: Bdf, what: fmt::Arguments, passed: bool, detail: fmt::Arguments) {
    let mut l = Label { buf: [0; 96], len: 0 };
    let _ = write!(l, "edu {bdf} {what}");
    let name = core::str::from_utf8(&l.buf[..l.len]).unwrap_or("edu");
    crate::tap::check(name, passed, detail);
}

pub fn run() {
    let found = pci::find_first(VENDOR, DEVICE);
    let Some(bdf) = found else {
        crate::diag!("edu: no device");
        return;
    };
    lapic::enable();
    let second = crate::reset::second_boot();
    crate::diag!("edu {bdf}: {} boot", if second { "second" } else { "first" });
    checks(bdf, if second { 0x5a } else { 0xa5 });
}

struct Edu(u64);

impl Edu {
    fn r(&self, off: u64) -> u32 {
        rd(self.0 + off)
    }
    fn w(&self, off: u64, v: u32) {
        wr(self.0 + off, v)
    }
    /// Runs one transfer and waits for the start bit to clear; returns the
    /// status register.
    fn dma(&self, src: u64, dst: u64, len: u64, cmd: u32) -> u32 {
        for (off, v) in [(0x80, src), (0x88, dst), (0x90, len)] {
            self.w(off, v as u32);
            self.w(off + 4, (v >> 32) as u32);
        }
        fence();
        self.w(0x98, cmd | DMA_START);
        let mut deadline = Deadline::after_ms(1000);
        while self.r(0x98) & DMA_START != 0 && !deadline.expired() {}
        fence();
        self.r(0x20)
    }
}

fn checks(bdf: Bdf, seed: u8) {
    let bars = assign_bars(bdf).unwrap_or([0; 6]);
    let caps = find_caps(bdf, &bars);
    check(bdf, format_args!("BAR0 assigned and MSI-X found"), bars[0] != 0 && caps.msix.is_some(), format_args!("BAR0 {:#x}", bars[0]));
    if bars[0] == 0 {
        return;
    }
    rom(bdf);
    let edu = Edu(bars[0]);
    // A reset device (and a fresh one) has factorial 1 and nothing raised;
    // the first boot leaves 120 and a raised interrupt behind.
    let (fact0, irq0) = (edu.r(0x08), edu.r(0x24));
    check(bdf, format_args!("registers hold their power-on values"), fact0 == 1 && irq0 == 0, format_args!("factorial {fact0}, irq status {irq0:#x}"));
    let id = edu.r(0x00);
    check(bdf, format_args!("id register reads 0x010000ed"), id == 0x0100_00ed, format_args!("read {id:#x}"));
    edu.w(0x04, 0x1234_5678);
    let live = edu.r(0x04);
    check(bdf, format_args!("liveness register inverts"), live == !0x1234_5678, format_args!("read {live:#x}"));
    edu.w(0x08, 5);
    let fact = edu.r(0x08);
    check(bdf, format_args!("factorial of 5 is 120"), fact == 120, format_args!("read {fact}"));

    intx(bdf, &edu);

    if let Some(m) = caps.msix {
        msix_set(&m, 0, VECTOR);
        msix_enable(bdf, &m);
    }
    let pattern = |i: u64| (i as u8).wrapping_mul(31) ^ seed;
    for i in 0..LEN {
        wr::<u8>(SRC + i, pattern(i));
        wr::<u8>(DST + i, 0);
    }
    let before = lapic::irr(VECTOR);
    let status = edu.dma(SRC, DEV_BUF, LEN, DMA_IRQ);
    let mut deadline = Deadline::after_ms(1000);
    let mut seen = lapic::irr(VECTOR);
    while !seen && !deadline.expired() {
        seen = lapic::irr(VECTOR);
    }
    let irq_status = edu.r(0x24);
    check(
        bdf,
        format_args!("DMA completion raises MSI-X vector {VECTOR:#x}"),
        seen && !before && irq_status & IRQ_DMA != 0,
        format_args!("IRR bit {} (before: {}), irq status {irq_status:#x}, status {status:#x}", u8::from(seen), u8::from(before)),
    );
    let status2 = edu.dma(DEV_BUF, DST, LEN, DMA_TO_RAM);
    let bad = (0..LEN).filter(|&i| rd::<u8>(DST + i) != pattern(i)).count();
    check(
        bdf,
        format_args!("DMA round trip RAM to device to RAM"),
        bad == 0 && (status | status2) & STATUS_DMA_ERROR == 0,
        format_args!("{bad} of {LEN} bytes differ, status {status:#x} then {status2:#x}"),
    );
    let refused = edu.dma(NOT_RAM, DEV_BUF, 64, 0);
    let after = edu.dma(SRC, DEV_BUF, 64, 0);
    check(
        bdf,
        format_args!("DMA from outside guest RAM is refused"),
        refused & STATUS_DMA_ERROR != 0 && after & STATUS_DMA_ERROR == 0,
        format_args!("status {refused:#x}, then {after:#x} for RAM"),
    );
}

/// INTx with MSI-X off: the Interrupt Pin and Line registers name INTA#
/// and the GSI the `_PRT` gives (the VMM's `pci::intx`: GSI 16 + (slot +
/// pin - 1) mod 8); that IOAPIC pin, programmed level-triggered and active
/// low, delivers the edu's raise as a vector in the IRR with the entry's
/// remote IRR set. Taken (the gate EOIs), it comes back while the device
/// still has it pending: KVM's resample eventfd reached the server, which
/// raised it again. Acknowledged in the device, it stays down after the
/// next EOI, and the device carries on.
fn intx(bdf: Bdf, edu: &Edu) {
    let reg = pci::read_config(bdf, 0x3c);
    let (line, pin) = (reg as u8, (reg >> 8) as u8);
    let want = 16 + (bdf.device + pin.wrapping_sub(1)) % 8;
    let routed = pin == 1 && line == want;
    check(bdf, format_args!("INTx is pin A on the _PRT's GSI"), routed, format_args!("pin {pin}, line {line} (want {want})"));
    if !routed {
        return;
    }
    let gsi = u32::from(line);
    ioapic::route(gsi, INTX_VECTOR, ioapic::LEVEL | ioapic::ACTIVE_LOW);
    let before = lapic::irr(INTX_VECTOR);
    edu.w(0x60, 1);
    let mut deadline = Deadline::after_ms(1000);
    let mut seen = lapic::irr(INTX_VECTOR);
    while !seen && !deadline.expired() {
        seen = lapic::irr(INTX_VECTOR);
    }
    let entry = ioapic::entry(gsi);
    check(
        bdf,
        format_args!("INTx raises vector {INTX_VECTOR:#x} through its IOAPIC pin with MSI-X off"),
        seen && !before && entry & ioapic::REMOTE_IRR != 0,
        format_args!("IRR bit {} (before: {}), GSI {gsi} entry {entry:#x}", u8::from(seen), u8::from(before)),
    );
    let again = intr::window(1000, |n| n >= 3);
    check(bdf, format_args!("INTx is raised again at each EOI until acknowledged"), again >= 3, format_args!("taken {again} times in the window"));
    edu.w(0x64, 1);
    let drained = intr::window(200, |_| false);
    let after = intr::window(200, |_| false);
    let (status, pending) = (edu.r(0x24), lapic::irr(INTX_VECTOR));
    edu.w(0x08, 4);
    let fact = edu.r(0x08);
    check(
        bdf,
        format_args!("INTx acknowledged stays down and the device carries on"),
        drained <= 1 && after == 0 && !pending && status == 0 && fact == 24,
        format_args!("taken {drained} then {after} times, IRR bit {}, irq status {status:#x}, factorial of 4 {fact}", u8::from(pending)),
    );
    ioapic::mask(gsi);
}

/// Byte `at` of vfio-user-edu's 2 KiB expansion ROM (its `rom_byte`).
fn rom_byte(at: u64) -> u8 {
    match at {
        0 => 0x55,
        1 => 0xaa,
        2 => 4,
        a => (a as u8) ^ ((a >> 8) as u8) ^ 0xed,
    }
}

/// The expansion ROM through the ROM BAR (0x30): sized with all ones
/// (enable clear), placed, decoded only once enabled, read whole, written
/// to (which must change nothing), then disabled again.
fn rom(bdf: Bdf) {
    const ROM_BAR: u8 = 0x30;
    pci::write_config(bdf, ROM_BAR, !1);
    let size = u64::from((!(pci::read_config(bdf, ROM_BAR) & !0x7ff)).wrapping_add(1));
    let base = alloc_mmio(size.max(0x800)).unwrap_or(0);
    pci::write_config(bdf, ROM_BAR, base as u32);
    let off = rd::<u32>(base);
    pci::write_config(bdf, ROM_BAR, base as u32 | 1);
    let head = rd::<u32>(base);
    check(bdf, format_args!("ROM BAR sizes to 2 KiB and decodes only when enabled"), size == 0x800 && base != 0 && off == u32::MAX && head != u32::MAX, format_args!("size {size:#x} at {base:#x}, disabled reads {off:#x}, enabled {head:#x}"));
    if size != 0x800 || base == 0 {
        return;
    }
    let word = |at: u64| u32::from_le_bytes([0, 1, 2, 3].map(|i| rom_byte(at + i)));
    let bad = (0..size).step_by(4).filter(|&a| rd::<u32>(base + a) != word(a)).count();
    check(bdf, format_args!("expansion ROM reads 55 aa and its pattern"), head & 0xffff == 0xaa55 && bad == 0, format_args!("first dword {head:#x}, {bad} of 512 dwords differ"));
    wr::<u32>(base + 8, 0);
    wr::<u8>(base, 0);
    let (after0, after8) = (rd::<u32>(base), rd::<u32>(base + 8));
    check(bdf, format_args!("a write to the ROM changes nothing"), after0 == word(0) && after8 == word(8), format_args!("read {after0:#x} and {after8:#x}"));
    pci::write_config(bdf, ROM_BAR, base as u32);
}

/// `probe=dimm`: the edu device DMAs a buffer out of the hot-added DIMM at
/// `base` into its own memory and back into another DIMM buffer, through
/// the DMA maps the `vfio` listener gave the server when the DIMM came.
pub fn dimm_dma(base: u64) {
    let found = pci::find_first(VENDOR, DEVICE);
    let Some(bdf) = found else {
        return;
    };
    let bars = assign_bars(bdf).unwrap_or([0; 6]);
    if bars[0] == 0 {
        check(bdf, format_args!("DMA from and into the DIMM verifies"), false, format_args!("no BAR0"));
        return;
    }
    let edu = Edu(bars[0]);
    let (src, dst) = (base + 0x30_0000, base + 0x30_1000);
    let pattern = |i: u64| (i as u8).wrapping_mul(7) ^ 0x3c;
    for i in 0..LEN {
        wr::<u8>(src + i, pattern(i));
        wr::<u8>(dst + i, 0);
    }
    let s1 = edu.dma(src, DEV_BUF, LEN, 0);
    let s2 = edu.dma(DEV_BUF, dst, LEN, DMA_TO_RAM);
    let bad = (0..LEN).filter(|&i| rd::<u8>(dst + i) != pattern(i)).count();
    check(
        bdf,
        format_args!("DMA from and into the DIMM verifies"),
        bad == 0 && (s1 | s2) & STATUS_DMA_ERROR == 0,
        format_args!("{bad} of {LEN} bytes differ, {src:#x} -> device -> {dst:#x}, status {s1:#x} then {s2:#x}"),
    );
}
