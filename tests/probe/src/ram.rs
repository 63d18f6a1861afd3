//! RAM checks: pages above 1 MiB hold what is written to them.

use crate::bootparams::BootParams;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// The probe's own map is write-back below 3 GiB; test only there.
const CACHED_LIMIT: u64 = 3 << 30;

extern "C" {
    static __image_end: u8;
}

fn image_end() -> u64 {
    // Only the address of the linker symbol is taken, never its value.
    core::ptr::addr_of!(__image_end) as u64
}

/// Writes a pattern to the page at `addr` and reads it back; returns the
/// first offset that differs.
fn test_page(addr: u64) -> Result<(), (u64, u64, u64)> {
    let words = (PAGE / 8) as usize;
    let base = addr as *mut u64;
    let pattern = |i: usize| (addr + i as u64 * 8) ^ 0x5a5a_a5a5_0f0f_f0f0;
    for i in 0..words {
        // SAFETY: `addr` is a page of usable RAM (per e820) outside the probe
        // image, identity-mapped and writable.
        unsafe { base.add(i).write_volatile(pattern(i)) };
    }
    for i in 0..words {
        // SAFETY: as above.
        let got = unsafe { base.add(i).read_volatile() };
        if got != pattern(i) {
            return Err((addr + i as u64 * 8, pattern(i), got));
        }
    }
    Ok(())
}

/// Pages to test: just past the image, at 2, 4 and 16 MiB and the last page
/// of the RAM entry that holds 1 MiB (all below `CACHED_LIMIT`).
fn candidates(params: &BootParams) -> [Option<u64>; 5] {
    let Some(ram) = params.ram_at(MIB) else {
        return [None; 5];
    };
    let end = ram.end().min(CACHED_LIMIT);
    let first = image_end().div_ceil(PAGE) * PAGE;
    let pick = |addr: u64| (addr >= first && addr + PAGE <= end).then_some(addr);
    [
        pick(first),
        pick(2 * MIB),
        pick(4 * MIB),
        pick(16 * MIB),
        pick(end.saturating_sub(PAGE) / PAGE * PAGE),
    ]
}

pub fn run(params: &BootParams) {
    let pages = candidates(params);
    let mut tested = 0;
    let mut failure = None;
    for (i, addr) in pages.iter().enumerate() {
        let Some(addr) = addr else { continue };
        if pages[..i].contains(&Some(*addr)) {
            continue;
        }
        tested += 1;
        if let Err(bad) = test_page(*addr) {
            failure = Some(bad);
            break;
        }
    }
    match failure {
        Some((addr, want, got)) => crate::check!(
            "RAM above 1 MiB is read/write",
            false,
            "at {addr:#x} wrote {want:#x}, read {got:#x}"
        ),
        None => crate::check!(
            "RAM above 1 MiB is read/write",
            tested > 0,
            "{tested} pages tested"
        ),
    }
}
