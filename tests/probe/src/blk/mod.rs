//! A virtio-blk driver (modern virtio-pci, split virtqueues) and the checks
//! run through it on every virtio-blk function on bus 0; see `checks` for
//! what is checked and `bench` for the `blkbench=` load generator.
//!
//! Command-line words: `blk-seed=S` (default 1) stamps the stamped set with
//! seed S; `blk-verify=A` first checks that it holds seed A (after a
//! `probe=reset` reboot: seed S); `blkbench=randread|randwrite` with
//! `blkbench-qd=N`, `blkbench-ops=N`, `blkbench-queue=q` runs the load
//! generator on the first device instead of the checks.

mod bench;
mod checks;
mod dev;
pub mod dimm_dma;
pub mod mmio;
pub mod pattern;
mod req;
mod stream;
pub mod timer;
pub(crate) mod transport;
mod virtq;

use core::fmt::{self, Write};

use crate::cmdline::Cmdline;
use crate::pci::{self, Bdf};

pub const VENDOR: u16 = 0x1af4;
pub const DEVICE: u16 = 0x1042;
const MAX_DEVICES: usize = 11;

/// A check name `virtio-blk BDF what`, formatted on the stack.
pub struct Label {
    buf: [u8; 120],
    len: usize,
}

impl Label {
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("virtio-blk")
    }
}

impl Write for Label {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

pub fn label(bdf: Bdf, what: fmt::Arguments) -> Label {
    let mut l = Label { buf: [0; 120], len: 0 };
    let _ = write!(l, "virtio-blk {bdf} {what}");
    l
}

/// `check!` with the name `virtio-blk BDF <what>`.
#[macro_export]
macro_rules! blk_check {
    ($bdf:expr, $what:literal, $passed:expr) => {
        $crate::check!($crate::blk::label($bdf, format_args!($what)).as_str(), $passed)
    };
    ($bdf:expr, $what:literal, $passed:expr, $($detail:tt)+) => {
        $crate::check!($crate::blk::label($bdf, format_args!($what)).as_str(), $passed, $($detail)+)
    };
}

/// Formats an optional error as ` (error)`, or nothing.
pub struct Why(pub Option<&'static str>);

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(e) => write!(f, " ({e})"),
            None => Ok(()),
        }
    }
}

pub struct Options {
    pub seed: u64,
    pub verify: Option<u64>,
}

pub fn run(cmdline: &Cmdline) {
    let mut bdfs = [Bdf { bus: 0, device: 0, function: 0 }; MAX_DEVICES];
    let n = pci::find(VENDOR, DEVICE, &mut bdfs);
    if n == 0 {
        crate::diag!("virtio-blk: no device");
        return;
    }
    crate::lapic::enable();
    if let Some(bench) = bench::Options::parse(cmdline) {
        bench::run(bdfs[0], &bench);
        for bdf in &bdfs[1..n] {
            crate::diag!("virtio-blk {bdf}: blkbench runs on the first device only");
        }
        return;
    }
    if let Some(passes) = cmdline.number("blk-stream") {
        if let Some(mut d) = open(bdfs[0], 0x40) {
            stream::run(bdfs[0], &mut d, passes);
        }
        return;
    }
    let seed = cmdline.number("blk-seed").unwrap_or(1);
    let verify = if cmdline.selects("reset") && crate::reset::second_boot() {
        Some(seed)
    } else {
        cmdline.number("blk-verify")
    };
    let options = Options { seed, verify };
    for (i, bdf) in bdfs[..n].iter().enumerate() {
        checks::run(*bdf, 0x40 + 0x10 * i as u8, &options);
    }
}

/// Assigns the BARs, finds the capabilities, negotiates and sets up the
/// device, with a check for each step; `None` when it cannot be used.
pub fn open(bdf: Bdf, vector_base: u8) -> Option<dev::Dev> {
    let bars = transport::assign_bars(bdf);
    let caps = bars.map(|b| transport::find_caps(bdf, &b));
    // The common structure must reach queue_device, the blk config capacity.
    let found = caps.is_ok_and(|c| {
        c.common.is_some_and(|r| r.len >= 56) && c.notify.is_some() && c.device.is_some_and(|r| r.len >= 8)
    });
    let c = caps.unwrap_or_default();
    let at = |r: Option<transport::Region>| r.map_or(0, |r| r.addr);
    crate::diag!(
        "virtio-blk {bdf} common {:#x} notify {:#x} isr {:#x} device {:#x} msix table {:#x} pba {:#x}",
        at(c.common),
        at(c.notify),
        at(c.isr),
        at(c.device),
        c.msix.map_or(0, |m| m.table),
        c.msix.map_or(0, |m| m.pba)
    );
    blk_check!(
        bdf,
        "virtio capabilities found",
        found,
        "common {} notify {} (multiplier {}) isr {} device {} msix {} entries{}",
        c.common.is_some(),
        c.notify.is_some(),
        c.notify_multiplier,
        c.isr.is_some(),
        c.device.is_some(),
        c.msix.map_or(0, |m| m.entries),
        Why(bars.err())
    );
    if !found {
        return None;
    }
    let mut d = dev::Dev::new(bdf, c, vector_base);
    let negotiated = d.negotiate();
    blk_check!(
        bdf,
        "features negotiated",
        negotiated.is_ok(),
        "{:#x} of {:#x} offered{}",
        d.features,
        d.offered,
        Why(negotiated.err())
    );
    negotiated.ok()?;
    let setup = d.setup();
    let want = |e: usize| if d.caps.msix.is_some_and(|m| usize::from(m.entries) > d.nq) { e as u16 } else { 0xffff };
    let vectors_ok = (0..=d.nq).all(|e| d.vectors_read[e] == want(e) && want(e) != 0xffff);
    blk_check!(
        bdf,
        "MSI-X vectors read back",
        vectors_ok,
        "config {:#x}, queue 0 {:#x}, {} queues",
        d.vectors_read[0],
        d.vectors_read[1],
        d.nq
    );
    blk_check!(
        bdf,
        "DRIVER_OK set",
        setup.is_ok(),
        "{} queues of {}{}",
        d.nq,
        d.queues[0].size,
        Why(setup.err())
    );
    setup.ok()?;
    Some(d)
}

/// One read of `len` bytes from `sector` of the first virtio-blk disk into
/// `buf` (anywhere in RAM): the device writes guest memory, no vCPU does.
/// Returns the status, or None without a disk.
pub fn read_into(buf: u64, len: u32, sector: u64) -> Option<u8> {
    let mut d = open(pci::find_first(VENDOR, DEVICE)?, 0xa0)?;
    Some(d.request(req::Io::new(0, req::T_IN, sector).buf(buf, len)))
}
