//! The data pattern the host checks: sector `s` under seed `S` is 64
//! little-endian words, word w = splitmix64((S << 48) ^ (s * 64 + w)); and
//! the stamped set of a disk of C sectors: [0, 16), [M, M + 16) with
//! M = C / 2 rounded down to 8, and [C - 16, C).

use super::mmio::{rd, wr};

pub const SECTOR: u64 = 512;
/// Sectors in each stamped range, and ranges.
pub const RANGE: u64 = 16;
pub const RANGES: usize = 3;

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn word(seed: u64, sector: u64, w: u64) -> u64 {
    splitmix64((seed << 48) ^ (sector.wrapping_mul(64) + w))
}

/// First sector of each stamped range.
pub fn ranges(capacity: u64) -> [u64; RANGES] {
    [0, capacity / 2 / 8 * 8, capacity - RANGE]
}

/// First sector of the scratch area (64 sectors).
pub fn scratch(capacity: u64) -> u64 {
    capacity / 4 / 8 * 8
}

/// Writes sector `sector`'s pattern under `seed` to the 512 bytes at `addr`.
pub fn fill(addr: u64, seed: u64, sector: u64) {
    for w in 0..64 {
        wr::<u64>(addr + w * 8, word(seed, sector, w));
    }
}

/// Whether the 512 bytes at `addr` hold sector `sector`'s pattern.
pub fn matches(addr: u64, seed: u64, sector: u64) -> bool {
    (0..64).all(|w| rd::<u64>(addr + w * 8) == word(seed, sector, w))
}

/// Whether `len` bytes at `addr` are all zero.
pub fn is_zero(addr: u64, len: u64) -> bool {
    (0..len).step_by(8).all(|off| rd::<u64>(addr + off) == 0)
}
