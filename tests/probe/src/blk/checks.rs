//! The checks run on each virtio-blk function (every name starts with
//! `virtio-blk BDF`): interrupts per queue, capacity, GET_ID, the stamped
//! set (verify, stamp, flush, read back), malformed requests, the scratch
//! area (WRITE_ZEROES, DISCARD, or an OUT that a read-only disk refuses),
//! and a device reset with full re-initialisation.

use super::dev::*;
use super::mmio::{rd, wr};
use super::pattern::{self, SECTOR};
use super::timer::Deadline;
use super::{label, Options, Why};
use crate::blk_check;
use crate::pci::Bdf;

/// Buffer layout (per device): stamped-set write area, read area, misc.
const WRITE_AREA: u64 = 0;
const READ_AREA: u64 = 0x8000;
const MISC: u64 = 0x10000;
const BUF_BYTES: u64 = 0x11000;
const STAMPED: usize = 48;

/// The stamped set as requests: 16 single-sector ones, two of 8 sectors,
/// one of 16 sectors over `per`-sector descriptors, queues round robin.
struct Stamped {
    ranges: [u64; pattern::RANGES],
    /// Sectors per data descriptor of the 16-sector request.
    per: u64,
}

impl Stamped {
    fn sector(&self, i: usize) -> u64 {
        self.ranges[i / 16] + (i % 16) as u64
    }

    /// Buffer address of stamped sector `i`: the 16-sector request's
    /// descriptors are 512 bytes apart, so a device that ignores all but
    /// the first address is caught.
    fn addr(&self, area: u64, i: usize) -> u64 {
        let gap = if i >= 32 { (i as u64 - 32) / self.per * SECTOR } else { 0 };
        area + i as u64 * SECTOR + gap
    }

    /// Runs the set as `kind` (IN or OUT) on `area`; the first bad status.
    fn run(&self, d: &mut Dev, kind: u32, area: u64) -> u8 {
        let mut ios = [Io::new(0, kind, 0); 19];
        let mut q = 0;
        let mut next_q = || {
            q += 1;
            (q - 1) % d.nq
        };
        for (i, io) in ios.iter_mut().enumerate().take(16) {
            *io = Io::new(next_q(), kind, self.sector(i)).buf(self.addr(area, i), 512);
        }
        for j in 0..2 {
            let i = 16 + 8 * j;
            ios[16 + j] = Io::new(next_q(), kind, self.sector(i)).buf(self.addr(area, i), 4096);
        }
        let mut big = Io::new(next_q(), kind, self.sector(32));
        for j in 0..(16 / self.per) as usize {
            big = big.buf(self.addr(area, 32 + j * self.per as usize), (self.per * SECTOR) as u32);
        }
        ios[18] = big;
        let mut statuses = [S_OK; 19];
        d.batch(&ios, &mut statuses);
        statuses.iter().copied().find(|&s| s != S_OK).unwrap_or(S_OK)
    }

    /// Sectors of `area` that do not hold `seed`'s pattern, and the first.
    fn compare(&self, area: u64, seed: u64) -> (usize, u64) {
        let bad = (0..STAMPED).filter(|&i| !pattern::matches(self.addr(area, i), seed, self.sector(i)));
        let first = bad.clone().next().map_or(0, |i| self.sector(i));
        (bad.count(), first)
    }
}

/// GET_ID's answer up to the first NUL, non-printable bytes as '?'.
struct Serial([u8; 20]);

impl core::fmt::Display for Serial {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        for &b in self.0.iter().take_while(|&&b| b != 0) {
            let c = if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

pub fn run(bdf: Bdf, vector_base: u8, opts: &Options) {
    let Some(mut d) = super::open(bdf, vector_base) else {
        return;
    };
    let Some(buf) = alloc(BUF_BYTES, 4096) else {
        blk_check!(bdf, "buffers allocated", false, "DMA arena exhausted");
        return;
    };
    let (wa, ra, misc) = (buf + WRITE_AREA, buf + READ_AREA, buf + MISC);
    let cfg = d.config;
    let cap = cfg.capacity;
    let ro = d.has(F_RO);
    blk_check!(bdf, "capacity read", cap >= 1024, "{cap} sectors");
    crate::diag!(
        "virtio-blk {bdf} capacity={cap} queues={} size={} seg_max={} blk_size={} ro={}",
        d.nq,
        d.queues[0].size,
        if d.has(F_SEG_MAX) { cfg.seg_max } else { 0 },
        if d.has(F_BLK_SIZE) { cfg.blk_size } else { 0 },
        u8::from(ro)
    );

    // The first completion on each queue raises its MSI-X vector, which
    // stays pending in the IRR (interrupts are off). The IRR is watched
    // before the used ring is read: reaping the completion first would move
    // used_event past it, and an EVENT_IDX device that looks after that is
    // right not to interrupt.
    for q in 0..d.nq {
        let v = d.vector(q as u16 + 1);
        let before = crate::lapic::irr(v);
        let submitted = d.submit(&Io::new(q, T_IN, 0).buf(ra, 512)).is_some();
        d.queues[q].kick();
        let mut deadline = Deadline::after_ms(1000);
        let mut seen = crate::lapic::irr(v);
        while submitted && !seen && !deadline.expired() {
            seen = crate::lapic::irr(v);
        }
        let mut status = S_TIMEOUT;
        let mut deadline = Deadline::after_ms(5000);
        while submitted && status == S_TIMEOUT && !deadline.expired() {
            if let Some((_, s)) = d.complete(q) {
                status = s;
            }
        }
        crate::check!(
            label(bdf, format_args!("queue {q} interrupt arrives on vector {v:#x}")).as_str(),
            seen && status == S_OK,
            "read status {status}, IRR bit {} (before the request: {})",
            u8::from(seen),
            u8::from(before)
        );
    }

    for off in (0..20).step_by(4) {
        wr::<u32>(misc + off, 0);
    }
    let status = d.request(Io::new(0, T_GET_ID, 0).buf(misc, 20));
    blk_check!(bdf, "GET_ID returns a serial", status == S_OK, "status {status}");
    if status == S_OK {
        crate::diag!("virtio-blk {bdf} serial=\"{}\"", Serial(rd::<[u8; 20]>(misc)));
    }

    let big = cap >= 1024;
    let per = match (d.has(F_SEG_MAX), cfg.seg_max) {
        (true, 0..=1) => 16,
        (true, 2..=3) => 8,
        _ => 4,
    };
    let set = Stamped { ranges: pattern::ranges(cap), per };
    // Which seed sector 0 should hold afterwards, if known.
    let mut sector0_seed = None;
    if let (Some(a), true) = (opts.verify, big) {
        let status = set.run(&mut d, T_IN, ra);
        let (bad, first) = set.compare(ra, a);
        crate::check!(
            label(bdf, format_args!("holds seed {a} from before")).as_str(),
            status == S_OK && bad == 0,
            "seed {a}: {bad} of {STAMPED} sectors differ (first {first}), status {status}"
        );
        if status == S_OK && bad == 0 {
            sector0_seed = Some(a);
        }
    }
    if big && !ro {
        let seed = opts.seed;
        for i in 0..STAMPED {
            pattern::fill(set.addr(wa, i), seed, set.sector(i));
        }
        let status = set.run(&mut d, T_OUT, wa);
        blk_check!(bdf, "stamped set written", status == S_OK, "seed {seed}, 19 requests, status {status}");
        if d.has(F_FLUSH) {
            let status = d.request(Io::new(0, T_FLUSH, 0));
            blk_check!(bdf, "flush OK", status == S_OK, "status {status}");
        } else {
            crate::diag!("virtio-blk {bdf} FLUSH not offered");
        }
        for off in (0..READ_AREA).step_by(8) {
            wr::<u64>(ra + off, !0);
        }
        let status = set.run(&mut d, T_IN, ra);
        let (bad, first) = set.compare(ra, seed);
        blk_check!(
            bdf,
            "stamped set verifies",
            status == S_OK && bad == 0,
            "seed {seed}: {bad} of {STAMPED} sectors differ (first {first}), status {status}, {per} sectors per descriptor"
        );
        sector0_seed = Some(seed);
    }

    malformed(&mut d, ra, sector0_seed);
    if big {
        scratch(&mut d, wa, ra, misc);
    }

    let reinit = d.negotiate().and_then(|_| d.setup());
    blk_check!(
        bdf,
        "device reset and re-initialisation",
        reinit.is_ok(),
        "{} queues{}",
        d.nq,
        Why(reinit.err())
    );
    if reinit.is_ok() {
        read_sector0(&mut d, ra, sector0_seed, "sector 0 reads back after the reset");
    }
    let (sent, skipped) = d.notify_counts();
    crate::diag!(
        "virtio-blk {bdf} notifications sent={sent} skipped={skipped} event_idx={}",
        u8::from(d.has(F_EVENT_IDX))
    );
}

/// Reads sector 0 into `ra`; checks the status and, when known, the seed.
fn read_sector0(d: &mut Dev, ra: u64, seed: Option<u64>, what: &str) {
    wr::<u64>(ra, !0);
    let status = d.request(Io::new(0, T_IN, 0).buf(ra, 512));
    let matches = seed.is_none_or(|s| pattern::matches(ra, s, 0));
    crate::check!(
        label(d.bdf, format_args!("{what}")).as_str(),
        status == S_OK && matches,
        "status {status}, pattern {}",
        match seed {
            Some(_) if matches => "matches",
            Some(_) => "differs",
            None => "not known",
        }
    );
}

fn malformed(d: &mut Dev, ra: u64, seed: Option<u64>) {
    let bdf = d.bdf;
    let cap = d.config.capacity;
    let status = d.request(Io::new(0, T_IN, cap.saturating_sub(1)).buf(ra, 1024));
    blk_check!(bdf, "read past the end gets IOERR", status == S_IOERR, "sector {}, 2 sectors: status {status}", cap.saturating_sub(1));
    let status = d.request(Io::new(0, 0xff, 0));
    blk_check!(bdf, "unknown request type gets UNSUPP", status == S_UNSUPP, "type 0xff: status {status}");
    let status = d.request(Io::new(0, T_IN, 0).buf(ra, 100));
    blk_check!(bdf, "IN of 100 bytes gets IOERR", status == S_IOERR, "status {status}");
    read_sector0(d, ra, seed, "sector 0 reads after the malformed requests");
}

/// Destructive checks in the scratch area (64 sectors at C/4).
fn scratch(d: &mut Dev, wa: u64, ra: u64, misc: u64) {
    let bdf = d.bdf;
    let s = pattern::scratch(d.config.capacity);
    let segment = |sector: u64, n: u32| {
        wr::<u64>(misc, sector);
        wr::<u32>(misc + 8, n);
        wr::<u32>(misc + 12, 0);
    };
    if d.has(F_RO) {
        let status = d.request(Io::new(0, T_OUT, s).buf(wa, 512));
        blk_check!(bdf, "OUT to a read-only disk gets IOERR", status == S_IOERR, "status {status}");
        return;
    }
    if d.has(F_WRITE_ZEROES) {
        let max = d.config.max_write_zeroes_sectors;
        let n = if max == 0 { 16 } else { max.min(16) };
        let bytes = u64::from(n) * SECTOR;
        for i in 0..u64::from(n) {
            pattern::fill(wa + i * SECTOR, 0xffff, s + i);
        }
        let pre = d.request(Io::new(0, T_OUT, s).buf(wa, bytes as u32));
        segment(s, n);
        let wz = d.request(Io::new(d.nq - 1, T_WRITE_ZEROES, 0).buf(misc, 16));
        for off in (0..bytes).step_by(8) {
            wr::<u64>(ra + off, !0);
        }
        let read = d.request(Io::new(0, T_IN, s).buf(ra, bytes as u32));
        let zero = pattern::is_zero(ra, bytes);
        blk_check!(
            bdf,
            "WRITE_ZEROES reads back zeros",
            pre == S_OK && wz == S_OK && read == S_OK && zero,
            "{n} sectors at {s}: write status {pre}, WRITE_ZEROES status {wz}, read status {read}, zeros {}",
            u8::from(zero)
        );
    } else {
        crate::diag!("virtio-blk {bdf} WRITE_ZEROES not offered");
    }
    if d.has(F_DISCARD) {
        let max = d.config.max_discard_sectors;
        let n = if max == 0 { 16 } else { max.min(16) };
        segment(s + 16, n);
        let status = d.request(Io::new(0, T_DISCARD, 0).buf(misc, 16));
        blk_check!(bdf, "DISCARD gets OK", status == S_OK, "{n} sectors at {}: status {status}", s + 16);
    } else {
        crate::diag!("virtio-blk {bdf} DISCARD not offered");
    }
}
