//! `probe=memtable`: stamps known bytes at known guest-physical addresses
//! for the host to find through a vhost-user backend's own mappings of
//! guest RAM: 64 KiB at 80 MiB, the last 64 KiB of the RAM below 3 GiB,
//! and the first and last 64 KiB of the RAM at 4 GiB when there is some.
//! Each 512 bytes at `gpa` hold the disk pattern of sector `gpa / 512`
//! under seed `SEED`, so the bytes say where they belong. One diagnostic
//! line per area: `memtable: stamped 0x...+0x...`.

use crate::blk::pattern::{self, SECTOR};
use crate::bootparams::BootParams;

pub const SEED: u64 = 0x3e;
const MIB: u64 = 1 << 20;
const AREA: u64 = 64 * 1024;
/// The probe's map is write-back below 3 GiB and from 4 to 8 GiB.
const LOW_LIMIT: u64 = 3 << 30;
const FOUR_GIB: u64 = 1 << 32;
const HIGH_LIMIT: u64 = 8 << 30;

fn stamp(at: u64) {
    for s in 0..AREA / SECTOR {
        let gpa = at + s * SECTOR;
        pattern::fill(gpa, SEED, gpa / SECTOR);
    }
    crate::diag!("memtable: stamped {at:#x}+{AREA:#x}");
}

pub fn run(params: &BootParams) {
    let mut areas = [None; 4];
    if let Some(low) = params.ram_at(MIB) {
        let end = low.end().min(LOW_LIMIT) / AREA * AREA;
        if 80 * MIB + AREA <= end {
            areas[0] = Some(80 * MIB);
        }
        if end >= 80 * MIB + 2 * AREA {
            areas[1] = Some(end - AREA);
        }
    }
    if let Some(high) = params.ram_at(FOUR_GIB) {
        let end = high.end().min(HIGH_LIMIT) / AREA * AREA;
        if FOUR_GIB + AREA <= end {
            areas[2] = Some(FOUR_GIB);
        }
        if end >= FOUR_GIB + 2 * AREA {
            areas[3] = Some(end - AREA);
        }
    }
    let mut count = 0;
    for at in areas.into_iter().flatten() {
        stamp(at);
        count += 1;
    }
    crate::check!(
        "memtable: known bytes stamped",
        count > 0,
        "{count} areas of 64 KiB"
    );
}
