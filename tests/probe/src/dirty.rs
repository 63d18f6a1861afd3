//! `probe=dirty`: writes known sets of pages from ring 3 in steps the host
//! paces through a mailbox word in RAM, so the host can check that KVM's
//! dirty log reports exactly those pages, and after a clear only the next
//! set. Test area: 1 MiB at 64 MiB; set A is its even pages in the first
//! half (64 pages), set B its odd pages from page 129 to 191 (32 pages)
//! and page 0 again.
//! The mailbox is the first word at 63 MiB; the host writes 1, 2 and 3.

use crate::blk::mmio::{rd, wr};
use crate::blk::timer::Deadline;

const MIB: u64 = 1 << 20;
const MAILBOX: u64 = 63 * MIB;
const AREA: u64 = 64 * MIB;
const PAGE: u64 = 4096;

fn wait_for(step: u64) -> bool {
    let mut deadline = Deadline::after_ms(30_000);
    while rd::<u64>(MAILBOX) < step {
        if deadline.expired() {
            return false;
        }
    }
    true
}

fn write_pages(pages: impl Iterator<Item = u64>, tag: u64) {
    for p in pages {
        wr::<u64>(AREA + p * PAGE, tag ^ p);
    }
}

pub fn run() {
    wr::<u64>(MAILBOX, 0);
    crate::diag!("dirty: ready");
    let mut ok = wait_for(1);
    if ok {
        write_pages((0..128).step_by(2), 0xa);
        crate::diag!("dirty: A written");
        ok = wait_for(2);
    }
    if ok {
        // Set B, and page 0 of set A again: a page written after a sync
        // must be reported again.
        write_pages((129..192).step_by(2).chain([0]), 0xb);
        crate::diag!("dirty: B written");
        ok = wait_for(3);
    }
    crate::check!("dirty: the host paced both sets", ok, "mailbox {}", rd::<u64>(MAILBOX));
}

/// `probe=dirtydma`: after the host's first step, the first disk reads
/// 64 KiB into pages 64 to 79 of the test area; no vCPU writes them.
pub fn dma() {
    wr::<u64>(MAILBOX, 0);
    crate::diag!("dirty: ready");
    let mut ok = wait_for(1);
    if ok {
        let status = crate::blk::read_into(AREA + 64 * PAGE, 16 * PAGE as u32, 0);
        crate::diag!("dirty: dma done, status {status:?}");
        ok = status == Some(0) && wait_for(2);
    }
    crate::check!("dirty: the disk read went through", ok, "mailbox {}", rd::<u64>(MAILBOX));
}

/// `probe=dirtyrate dirtyrate-mb=N dirtyrate-secs=S`: writes one word in
/// each of N MiB worth of distinct pages per second, paced on the PM timer,
/// for S seconds, cycling through 128 MiB at 96 MiB (so a page is not
/// written twice within 128 / N seconds). The host's `calc-dirty-rate`
/// should report N.
pub fn rate(mb_per_s: u64, secs: u64) {
    use crate::blk::timer::{pm_now, ticks, PM_HZ};
    const BASE: u64 = 96 * MIB;
    const PAGES: u64 = 128 * MIB / PAGE;
    let per_s = mb_per_s * MIB / PAGE;
    crate::diag!("dirtyrate: writing {mb_per_s} MiB/s ({per_s} pages/s) for {secs} s");
    let (mut last, mut elapsed, mut written) = (pm_now(), 0u64, 0u64);
    while elapsed < secs * PM_HZ {
        let now = pm_now();
        elapsed += ticks(last, now);
        last = now;
        let due = (elapsed as u128 * per_s as u128 / PM_HZ as u128) as u64;
        while written < due {
            wr::<u64>(BASE + (written % PAGES) * PAGE, written);
            written += 1;
        }
    }
    crate::check!(
        "dirtyrate: pages written at the asked rate",
        written + per_s / 100 >= per_s * secs,
        "{written} pages in {secs} s"
    );
}
