//! Rendering a region tree into a flat, sorted list of ranges, and looking
//! addresses up in it.
//!
//! The rules are QEMU's: a subregion hides its container's own content; among
//! overlapping siblings the higher priority wins and, at equal priority, the
//! one added later; an alias renders its target shifted by the alias offset;
//! disabled regions vanish with everything below them; read-only is inherited
//! downwards; everything is clipped to its container. Adjacent pieces of one
//! region with equal attributes are merged.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::region::{dirty, Ioeventfd, MemoryRegion, RegionKind};

/// How deep aliases and containers may nest before rendering gives up.
pub const MAX_DEPTH: u32 = 64;

/// One piece of an address space that maps to one region.
#[derive(Clone, Debug)]
pub struct FlatRange {
    /// Start in the address space.
    pub addr: u64,
    pub size: u64,
    /// The region that answers accesses (never a container or an alias).
    pub region: MemoryRegion,
    /// Where `addr` falls inside `region`.
    pub offset_in_region: u64,
    pub readonly: bool,
    pub dirty_log_mask: u8,
    /// The region's coalesced ranges when this range was rendered.
    pub(crate) coalesced_set: Arc<Vec<(u64, u64)>>,
}

impl FlatRange {
    /// One past the last address. Ranges are clipped to their root, whose
    /// size is at most `u64::MAX`, so this never overflows.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }

    /// Whether two ranges map the same thing at the same place (the dirty
    /// mask is compared separately, as a change of it is not a remap).
    pub fn same_mapping(&self, o: &FlatRange) -> bool {
        self.addr == o.addr
            && self.size == o.size
            && self.region.same(&o.region)
            && self.offset_in_region == o.offset_in_region
            && self.readonly == o.readonly
            && Arc::ptr_eq(&self.coalesced_set, &o.coalesced_set)
    }

    /// Host address of the first byte, for RAM, ROM and RAM devices.
    pub fn host_addr(&self) -> Option<u64> {
        self.region
            .ram_block()
            .map(|b| b.host_addr() + self.offset_in_region)
    }

    /// File and offset of the first byte, for handing to another process.
    pub fn fd_offset(&self) -> Option<(RawFd, u64)> {
        self.region
            .ram_block()
            .map(|b| (b.fd(), b.file_offset() + self.offset_in_region))
    }

    pub fn is_ram(&self) -> bool {
        matches!(self.region.kind(), RegionKind::Ram(_))
    }

    pub fn is_rom(&self) -> bool {
        matches!(self.region.kind(), RegionKind::Rom(_))
    }

    pub fn is_ram_device(&self) -> bool {
        matches!(self.region.kind(), RegionKind::RamDevice(_))
    }

    /// The region's coalesced ranges that fall in this range, as
    /// (address, size) in the address space.
    pub fn coalesced(&self) -> Vec<(u64, u64)> {
        let lo = self.offset_in_region;
        let hi = lo + self.size;
        self.coalesced_set
            .iter()
            .filter_map(|&(off, size)| {
                let s = off.max(lo);
                let e = off.saturating_add(size).min(hi);
                (s < e).then(|| (self.addr + (s - lo), e - s))
            })
            .collect()
    }
}

/// The rendered view of one address space.
#[derive(Debug, Default)]
pub struct FlatView {
    ranges: Vec<FlatRange>,
    starts: Vec<u64>,
    ioeventfds: Vec<Ioeventfd>,
}

impl FlatView {
    pub fn ranges(&self) -> &[FlatRange] {
        &self.ranges
    }

    /// Ioeventfds of all regions in view, at address-space addresses, sorted.
    pub fn ioeventfds(&self) -> &[Ioeventfd] {
        &self.ioeventfds
    }

    /// The range holding `addr` and the offset of `addr` in its region.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<(&FlatRange, u64)> {
        let i = last_at_or_below(&self.starts, addr)?;
        let r = &self.ranges[i];
        (addr - r.addr < r.size).then(|| (r, r.offset_in_region + (addr - r.addr)))
    }

    /// Renders the tree under `root`, clipped to `[0, root size)`.
    pub fn render(root: &MemoryRegion, global_log: bool) -> FlatView {
        let mut b = Builder {
            pieces: BTreeMap::new(),
            global_log,
        };
        let limit = root.size() as i128;
        b.region(root, 0, (0, limit), false, MAX_DEPTH);
        let ranges = merge(b.pieces.into_values());
        let starts = ranges.iter().map(|r| r.addr).collect();
        let ioeventfds = collect_ioeventfds(&ranges);
        FlatView {
            ranges,
            starts,
            ioeventfds,
        }
    }
}

/// Index of the last start `<= addr`. Branch-free: the span halves every
/// step and the choice is a conditional move, so random addresses cost no
/// mispredictions (measured in benches/memory.rs).
#[inline]
fn last_at_or_below(starts: &[u64], addr: u64) -> Option<usize> {
    let (mut base, mut n) = (0usize, starts.len());
    if n == 0 || starts[0] > addr {
        return None;
    }
    while n > 1 {
        let half = n / 2;
        base = if starts[base + half] <= addr {
            base + half
        } else {
            base
        };
        n -= half;
    }
    Some(base)
}

struct Builder {
    pieces: BTreeMap<u64, FlatRange>,
    global_log: bool,
}

impl Builder {
    /// Renders `mr`, whose offset 0 sits at `base`, inside `clip`.
    fn region(
        &mut self,
        mr: &MemoryRegion,
        base: i128,
        clip: (i128, i128),
        readonly: bool,
        depth: u32,
    ) {
        if depth == 0 {
            log::error!("memory tree deeper than {MAX_DEPTH} at {:?}", mr.name());
            return;
        }
        let (enabled, size, ro, alias_offset, subs, mask, coalesced) = {
            let st = mr.lock();
            (
                st.enabled,
                st.size,
                st.readonly,
                st.alias_offset,
                st.subregions.clone(),
                st.dirty_log_mask,
                st.coalesced.clone(),
            )
        };
        if !enabled {
            return;
        }
        let start = base.max(clip.0);
        let end = (base + size as i128).min(clip.1);
        if start >= end {
            return;
        }
        let readonly = readonly || ro;
        if let Some(target) = mr.alias_target() {
            let tbase = base - alias_offset as i128;
            self.region(target, tbase, (start, end), readonly, depth - 1);
            return;
        }
        for s in &subs {
            let addr = s.addr() as i128;
            self.region(s, base + addr, (start, end), readonly, depth - 1);
        }
        if matches!(mr.kind(), RegionKind::Container) {
            return;
        }
        let mut mask = mask;
        // Global logging covers guest memory, not a device's BAR mapped in
        // (QEMU does not log RAM devices either: they are not migrated).
        if self.global_log && mr.is_ram_like() && !matches!(mr.kind(), RegionKind::RamDevice(_)) {
            mask |= dirty::MIGRATION;
        }
        self.fill(start as u64, end as u64, |s, e| FlatRange {
            addr: s,
            size: e - s,
            region: mr.clone(),
            offset_in_region: (s as i128 - base) as u64,
            readonly,
            dirty_log_mask: mask,
            coalesced_set: coalesced.clone(),
        });
    }

    /// Inserts pieces made by `make` into every gap of `[start, end)`.
    fn fill(&mut self, start: u64, end: u64, make: impl Fn(u64, u64) -> FlatRange) {
        let mut cur = start;
        if let Some((_, r)) = self.pieces.range(..=cur).next_back() {
            cur = cur.max(r.end());
        }
        let mut gaps = Vec::new();
        while cur < end {
            match self.pieces.range(cur..end).next() {
                Some((&s, r)) => {
                    if s > cur {
                        gaps.push((cur, s));
                    }
                    cur = r.end();
                }
                None => {
                    gaps.push((cur, end));
                    break;
                }
            }
        }
        for (s, e) in gaps {
            self.pieces.insert(s, make(s, e));
        }
    }
}

fn merge(pieces: impl Iterator<Item = FlatRange>) -> Vec<FlatRange> {
    let mut out: Vec<FlatRange> = Vec::new();
    for p in pieces {
        if let Some(last) = out.last_mut() {
            if last.end() == p.addr
                && last.region.same(&p.region)
                && last.offset_in_region + last.size == p.offset_in_region
                && last.readonly == p.readonly
                && last.dirty_log_mask == p.dirty_log_mask
                && Arc::ptr_eq(&last.coalesced_set, &p.coalesced_set)
            {
                last.size += p.size;
                continue;
            }
        }
        out.push(p);
    }
    out
}

fn collect_ioeventfds(ranges: &[FlatRange]) -> Vec<Ioeventfd> {
    let mut out = Vec::new();
    for r in ranges {
        for e in r.region.ioeventfds() {
            // An ioeventfd belongs to the range holding its first byte.
            if e.addr >= r.offset_in_region && e.addr - r.offset_in_region < r.size {
                out.push(Ioeventfd {
                    addr: r.addr + (e.addr - r.offset_in_region),
                    ..e
                });
            }
        }
    }
    out.sort_by_key(Ioeventfd::sort_key);
    out
}
