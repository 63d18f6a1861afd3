//! `blkbench=randread|randwrite`: 4 KiB requests at random 4 KiB-aligned
//! offsets over the whole disk, `blkbench-qd` of them in flight on queue
//! `blkbench-queue`, `blkbench-ops` in all; per-request latency by the TSC
//! (calibrated against the PM timer) into a log-linear histogram. Prints
//!
//! `# blkbench BDF rw=randread qd=N ops=N secs=F iops=N lat_us p50=F p90=F p99=F p999=F max=F`
//!
//! and the check `virtio-blk BDF blkbench completed`.

use core::fmt;

use super::dev::{alloc, Dev, Io, S_OK, T_IN, T_OUT};
use super::mmio::{rdtsc, wr};
use super::timer::{pm_now, ticks, Deadline, PM_HZ};
use crate::blk_check;
use crate::cmdline::Cmdline;
use crate::pci::Bdf;

const BLOCK: u64 = 4096;
const MAX_QD: usize = 64;

pub struct Options {
    /// `None`: an unknown `blkbench=` value.
    pub write: Option<bool>,
    pub qd: usize,
    pub ops: u64,
    pub queue: usize,
}

impl Options {
    pub fn parse(cmdline: &Cmdline) -> Option<Options> {
        let mode = cmdline.words().find_map(|w| w.strip_prefix("blkbench="))?;
        Some(Options {
            write: match mode {
                "randread" => Some(false),
                "randwrite" => Some(true),
                _ => None,
            },
            qd: cmdline.number("blkbench-qd").unwrap_or(1).clamp(1, MAX_QD as u64) as usize,
            ops: cmdline.number("blkbench-ops").unwrap_or(20_000),
            queue: cmdline.number("blkbench-queue").unwrap_or(0) as usize,
        })
    }
}

/// Latencies in ns: exact below 64, else 32 linear buckets per power of
/// two (at most 3% wide).
struct Histogram {
    counts: [u32; 64 + 36 * 32],
    total: u64,
    max: u64,
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let shift = (63 - v.leading_zeros()) - 5;
        (64 + (shift - 1) * 32 + ((v >> shift) - 32) as u32) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < 64 {
            return i as u64;
        }
        let shift = (i - 64) / 32 + 1;
        let m = ((i - 64) % 32 + 32) as u64;
        (m << shift) + (1 << shift) / 2
    }

    fn add(&mut self, ns: u64) {
        let i = Self::index(ns).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// The latency at or under which `per_mille` / 1000 of them fall.
    fn percentile(&self, per_mille: u64) -> u64 {
        let rank = (self.total * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

/// Nanoseconds as microseconds with one decimal.
struct Us(u64);

impl fmt::Display for Us {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let tenths = (self.0 + 50) / 100;
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

/// TSC ticks per second, measured over ~100 ms of the PM timer.
fn tsc_hz() -> Option<u64> {
    let (pm0, tsc0) = (pm_now(), rdtsc());
    let mut deadline = Deadline::after_ms(1000);
    let mut elapsed = 0;
    while elapsed < PM_HZ / 10 {
        if deadline.expired() {
            return None;
        }
        elapsed = ticks(pm0, pm_now());
    }
    let tsc = rdtsc() - tsc0;
    Some((u128::from(tsc) * u128::from(PM_HZ) / u128::from(elapsed)) as u64)
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

pub fn run(bdf: Bdf, opts: &Options) {
    let outcome = bench(bdf, opts);
    blk_check!(bdf, "blkbench completed", outcome.is_ok(), "{}", Outcome(outcome));
}

struct Outcome(Result<(u64, u64), &'static str>);

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Ok((ops, _)) => write!(f, "{ops} requests OK"),
            Err(e) => write!(f, "{e}"),
        }
    }
}

/// The requests in flight: slot i uses the i-th 4 KiB buffer.
struct Load {
    kind: u32,
    queue: usize,
    blocks: u64,
    bufs: u64,
    rng: u64,
    /// Slot of each head descriptor, and when each slot's request went out.
    slot_of: [u8; 128],
    started: [u64; MAX_QD],
    issued: u64,
}

impl Load {
    /// Queues the next request on `slot` (notified by the caller).
    fn submit(&mut self, d: &mut Dev, slot: usize) -> Result<(), &'static str> {
        let sector = xorshift(&mut self.rng) % self.blocks * (BLOCK / 512);
        let io = Io::new(self.queue, self.kind, sector).buf(self.bufs + slot as u64 * BLOCK, BLOCK as u32);
        let head = d.submit(&io).ok_or("queue full")?;
        self.slot_of[usize::from(head) % 128] = slot as u8;
        self.started[slot] = rdtsc();
        self.issued += 1;
        Ok(())
    }
}

fn bench(bdf: Bdf, opts: &Options) -> Result<(u64, u64), &'static str> {
    let write = opts.write.ok_or("blkbench= is neither randread nor randwrite")?;
    let mut d = super::open(bdf, 0x40).ok_or("device did not initialise")?;
    let q = opts.queue;
    if q >= d.nq {
        return Err("no such queue");
    }
    let blocks = d.config.capacity / (BLOCK / 512);
    if blocks == 0 {
        return Err("disk smaller than 4 KiB");
    }
    // Each request takes three descriptors.
    let qd = opts.qd.min(usize::from(d.queues[q].size) / 3).max(1);
    if qd != opts.qd {
        crate::diag!("blkbench {bdf}: qd {} does not fit queue size {}, using {qd}", opts.qd, d.queues[q].size);
    }
    let bufs = alloc(qd as u64 * BLOCK, 4096).ok_or("DMA arena exhausted")?;
    for off in (0..qd as u64 * BLOCK).step_by(8) {
        wr::<u64>(bufs + off, off.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    let hz = tsc_hz().ok_or("the PM timer does not move")?;
    let ns = |t: u64| (u128::from(t) * 1_000_000_000 / u128::from(hz)) as u64;
    let mut load = Load {
        kind: if write { T_OUT } else { T_IN },
        queue: q,
        blocks,
        bufs,
        rng: 0x2545_F491_4F6C_DD1D,
        slot_of: [0; 128],
        started: [0; MAX_QD],
        issued: 0,
    };
    let mut hist = Histogram { counts: [0; 64 + 36 * 32], total: 0, max: 0 };
    let (mut done, mut errors) = (0u64, 0u64);
    let begin = rdtsc();
    for slot in 0..qd.min(opts.ops as usize) {
        load.submit(&mut d, slot)?;
    }
    d.queues[q].kick();
    let mut progress = rdtsc();
    while done < opts.ops {
        let mut any = false;
        while let Some((head, status)) = d.complete(q) {
            let now = rdtsc();
            let slot = usize::from(load.slot_of[usize::from(head) % 128]);
            hist.add(ns(now - load.started[slot]));
            done += 1;
            errors += u64::from(status != S_OK);
            any = true;
            if load.issued < opts.ops {
                load.submit(&mut d, slot)?;
            }
        }
        if any {
            d.queues[q].kick();
            progress = rdtsc();
        } else if rdtsc() - progress > 5 * hz {
            return Err("no completion for 5 s");
        }
    }
    let elapsed = ns(rdtsc() - begin).max(1);
    let iops = u128::from(done) * 1_000_000_000 / u128::from(elapsed);
    crate::diag!(
        "blkbench {bdf} rw={} qd={qd} ops={done} secs={} iops={iops} lat_us p50={} p90={} p99={} p999={} max={}",
        if write { "randwrite" } else { "randread" },
        Us(elapsed / 1_000_000),
        Us(hist.percentile(500)),
        Us(hist.percentile(900)),
        Us(hist.percentile(990)),
        Us(hist.percentile(999)),
        Us(hist.max)
    );
    let vq = &d.queues[q];
    crate::diag!("virtio-blk {bdf} notifications sent={} skipped={}", vq.notifies, vq.skipped);
    if errors > 0 {
        return Err("requests failed");
    }
    Ok((done, errors))
}
