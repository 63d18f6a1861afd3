//! Device DMA into a hot-added DIMM: every virtio-blk disk writes a buffer
//! that lives in the DIMM to its scratch area and reads it back into
//! another DIMM buffer (rings stay in low RAM; only the data is in the
//! DIMM, so the device must reach it through its own view of guest RAM:
//! the in-process device's DMA view, a vhost-user backend's memory table).

use super::dev::{S_OK, T_IN, T_OUT};
use super::mmio::rd;
use super::pattern::{self, SECTOR};
use super::req::Io;
use super::{open, DEVICE, VENDOR};
use crate::pci::{self, Bdf};

/// Bytes moved per disk (the 64-sector scratch area).
pub const LEN: u64 = 64 * SECTOR;

/// Runs the DMA for every disk; `out` holds the data (already filled by
/// the caller with `pattern::fill` of `seed`), `into` receives it.
pub fn run(out: u64, into: u64, seed: u64) {
    let mut found = [Bdf { bus: 0, device: 0, function: 0 }; 8];
    let n = pci::find(VENDOR, DEVICE, &mut found);
    for (i, bdf) in found[..n].iter().enumerate() {
        let Some(mut d) = open(*bdf, 0x90 + 0x10 * i as u8) else {
            continue;
        };
        let at = pattern::scratch(d.config.capacity);
        for s in 0..LEN / SECTOR {
            crate::blk::mmio::wr::<u64>(into + s * SECTOR, 0);
        }
        let w = d.request(Io::new(0, T_OUT, at).buf(out, LEN as u32));
        let r = d.request(Io::new(0, T_IN, at).buf(into, LEN as u32));
        let same = (0..LEN / 8).all(|k| rd::<u64>(out + k * 8) == rd::<u64>(into + k * 8));
        let first = rd::<u64>(into) == pattern::word(seed, 0, 0);
        crate::check!(
            crate::blk::label(*bdf, format_args!("DMA from and into the DIMM verifies"))
                .as_str(),
            w == S_OK && r == S_OK && same && first,
            "write status {w}, read status {r}, {} KiB at {out:#x} -> sector {at} -> {into:#x}",
            LEN / 1024
        );
    }
}
