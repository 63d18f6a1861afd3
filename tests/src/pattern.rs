//! The disk pattern the probe guest's virtio-blk checks write and verify,
//! computed on the host to check images before and after a run.
//!
//! Sector `s` under seed `S` is 64 little-endian words,
//! `splitmix64((S << 48) ^ (s * 64 + w))`. The probe stamps its "stamped
//! set" (the first, middle and last 16 sectors) and may scribble over the
//! scratch area; nothing else.

use std::ops::Range;

pub const SECTOR: u64 = 512;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 512 bytes of sector `s` under `seed`.
pub fn sector(seed: u64, s: u64) -> [u8; SECTOR as usize] {
    let mut out = [0u8; SECTOR as usize];
    for (w, chunk) in out.chunks_exact_mut(8).enumerate() {
        let v = splitmix64((seed << 48) ^ (s * 64 + w as u64));
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// A whole image of `sectors` sectors under `seed`.
pub fn image(seed: u64, sectors: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((sectors * SECTOR) as usize);
    for s in 0..sectors {
        v.extend_from_slice(&sector(seed, s));
    }
    v
}

/// The sectors the probe stamps on a disk of `capacity` sectors.
pub fn stamped(capacity: u64) -> [Range<u64>; 3] {
    let mid = (capacity / 2) / 8 * 8;
    [0..16, mid..mid + 16, capacity - 16..capacity]
}

/// The sectors the probe may overwrite with anything.
pub fn scratch(capacity: u64) -> Range<u64> {
    let start = (capacity / 4) / 8 * 8;
    start..start + 64
}

/// Sectors of `disk` that do not hold what a run stamping `new` over an
/// image of `old` should leave (scratch sectors are not checked). Empty
/// when the image is exactly right.
pub fn mismatches(disk: &[u8], old: u64, new: Option<u64>) -> Vec<u64> {
    let capacity = disk.len() as u64 / SECTOR;
    let stamped = stamped(capacity);
    let scratch = scratch(capacity);
    (0..capacity)
        .filter(|s| !scratch.contains(s))
        .filter(|&s| {
            let seed = match new {
                Some(n) if stamped.iter().any(|r| r.contains(&s)) => n,
                _ => old,
            };
            let at = (s * SECTOR) as usize;
            disk[at..at + SECTOR as usize] != sector(seed, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_fixed_and_differs_by_seed_and_sector() {
        // Pinned so the guest's copy of the formula cannot drift unseen.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_ne!(sector(1, 0), sector(2, 0));
        assert_ne!(sector(1, 0), sector(1, 1));
        let mut disk = image(3, 2048);
        assert!(mismatches(&disk, 3, None).is_empty());
        disk[1024 * 512..1024 * 512 + 512].copy_from_slice(&sector(4, 1024));
        assert_eq!(mismatches(&disk, 3, Some(4)).len(), 47, "16 * 3 - 1 left");
    }
}
