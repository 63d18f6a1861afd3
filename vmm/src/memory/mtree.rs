//! `info mtree`, `info mtree -f`, `info ramblock` and the listener list, in
//! QEMU's text format so users' habits and scripts carry over.

use std::fmt::Write;
use std::sync::Arc;

use super::region::{MemoryRegion, RegionKind};
use super::{FlatView, Memory, RamBlock};

const INDENT: &str = "  ";

/// QEMU's type word for a region: an alias shows its target's.
fn type_word(mr: &MemoryRegion) -> &'static str {
    match mr.kind() {
        RegionKind::Alias(t) => type_word(t),
        RegionKind::RamDevice(_) => "ramd",
        RegionKind::Ram(_) | RegionKind::Rom(_) if mr.is_readonly() => "rom",
        RegionKind::Ram(_) | RegionKind::Rom(_) => "ram",
        RegionKind::Io(_) | RegionKind::Container => "i/o",
    }
}

/// The last byte of `[start, start + size)`, as QEMU prints it: a size of
/// `u64::MAX` stands for the whole 64-bit space, as in QEMU.
fn last(start: u64, size: u64) -> u64 {
    if size == u64::MAX {
        return start.wrapping_add(u64::MAX);
    }
    start.wrapping_add(size.saturating_sub(1))
}

/// `info mtree`: the region tree of every address space, then the regions
/// that aliases point at.
pub fn info_mtree(mem: &Memory) -> String {
    let mut out = String::new();
    let mut aliased: Vec<MemoryRegion> = Vec::new();
    for space in mem.address_spaces() {
        let _ = writeln!(out, "address-space: {}", space.name());
        print_region(&mut out, space.root(), 1, 0, &mut aliased);
        out.push('\n');
    }
    let mut i = 0;
    while i < aliased.len() {
        let mr = aliased[i].clone();
        let _ = writeln!(out, "memory-region: {}", mr.name());
        print_region(&mut out, &mr, 1, 0, &mut aliased);
        out.push('\n');
        i += 1;
    }
    out
}

fn print_region(
    out: &mut String,
    mr: &MemoryRegion,
    level: usize,
    base: u64,
    aliased: &mut Vec<MemoryRegion>,
) {
    let start = base.wrapping_add(mr.addr());
    let size = mr.size();
    let disabled = if mr.is_enabled() { "" } else { " [disabled]" };
    out.push_str(&INDENT.repeat(level));
    let _ = write!(
        out,
        "{:016x}-{:016x} (prio {}, {}): ",
        start,
        last(start, size),
        mr.priority(),
        type_word(mr)
    );
    if let Some(t) = mr.alias_target() {
        if !aliased.iter().any(|a| a.same(t)) {
            aliased.push(t.clone());
        }
        let off = mr.alias_offset();
        let _ = writeln!(
            out,
            "alias {} @{} {:016x}-{:016x}{disabled}",
            mr.name(),
            t.name(),
            off,
            last(off, size)
        );
    } else {
        let _ = writeln!(out, "{}{disabled}", mr.name());
    }
    let mut subs = mr.subregions();
    // Address order; at one address the higher priority first.
    subs.sort_by_key(|s| (s.addr(), std::cmp::Reverse(s.priority())));
    for s in &subs {
        print_region(out, s, level + 1, start, aliased);
    }
}

/// `info mtree -f`: the flat view of every address space.
pub fn info_mtree_flat(mem: &Memory) -> String {
    let mut out = String::new();
    for (n, space) in mem.address_spaces().iter().enumerate() {
        let _ = writeln!(out, "FlatView #{n}");
        let _ = writeln!(
            out,
            " AS \"{}\", root: {}",
            space.name(),
            space.root().name()
        );
        let _ = writeln!(out, " Root memory region: {}", space.root().name());
        print_flat(&mut out, &space.view());
        out.push('\n');
    }
    out
}

fn print_flat(out: &mut String, view: &FlatView) {
    if view.ranges().is_empty() {
        out.push_str(" No rendered FlatView\n");
        return;
    }
    for r in view.ranges() {
        let kind = if r.readonly {
            "rom"
        } else {
            type_word(&r.region)
        };
        let _ = write!(
            out,
            "{INDENT}{:016x}-{:016x} (prio {}, {}): {}",
            r.addr,
            last(r.addr, r.size),
            r.region.priority(),
            kind,
            r.region.name()
        );
        if r.offset_in_region != 0 {
            let _ = write!(out, " @{:016x}", r.offset_in_region);
        }
        out.push('\n');
    }
}

/// Every RAM block reachable from an address space, in order of first
/// appearance (aliases followed).
pub fn ram_blocks(mem: &Memory) -> Vec<(Arc<RamBlock>, bool)> {
    let mut seen: Vec<(Arc<RamBlock>, bool)> = Vec::new();
    fn walk(mr: &MemoryRegion, seen: &mut Vec<(Arc<RamBlock>, bool)>, depth: u32) {
        if depth == 0 {
            return;
        }
        if let Some(b) = mr.ram_block() {
            if !seen.iter().any(|(s, _)| Arc::ptr_eq(s, b)) {
                seen.push((b.clone(), mr.is_readonly()));
            }
        }
        if let Some(t) = mr.alias_target() {
            walk(t, seen, depth - 1);
        }
        for s in mr.subregions() {
            walk(&s, seen, depth - 1);
        }
    }
    for space in mem.address_spaces() {
        walk(space.root(), &mut seen, super::flatview::MAX_DEPTH);
    }
    seen
}

/// `info ramblock`. Offsets number the blocks one after another, as QEMU's
/// ram_addr space does.
pub fn info_ramblock(mem: &Memory) -> String {
    let mut out = format!(
        "{:>24} {:>8}  {:>18} {:>18} {:>18} {:>18} {:>3}\n",
        "Block Name", "PSize", "Offset", "Used", "Total", "HVA", "RO"
    );
    let mut offset = 0u64;
    for (b, ro) in ram_blocks(mem) {
        let _ = writeln!(
            out,
            "{:>24} {:>8}  0x{:016x} 0x{:016x} 0x{:016x} 0x{:016x} {:>3}",
            b.name(),
            "4 KiB",
            offset,
            b.size(),
            b.size(),
            b.host_addr(),
            if ro { "ro" } else { "rw" }
        );
        offset = offset.saturating_add(b.size());
    }
    out
}

/// The listeners of every address space, in the order adds reach them.
pub fn info_listeners(mem: &Memory) -> String {
    let mut out = String::new();
    for space in mem.address_spaces() {
        let _ = writeln!(out, "address-space: {}", space.name());
        for (name, prio) in space.listener_list() {
            let _ = writeln!(out, "{INDENT}{name} (prio {prio})");
        }
        out.push('\n');
    }
    out
}
