//! Property tests: rendering against a naive per-unit model of the same
//! rules, and random transactions against a recording listener.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::io;
use crate::memory::testing::{held_of, CallLog, Recorder, Refuse};
use crate::memory::{FlatView, Memory, MemoryRegion, RegionKind};

const UNIT: u64 = 0x1000;
const UNITS: u64 = 64;

#[derive(Clone, Debug)]
struct Node {
    /// 0 container, 1 I/O, 2 RAM, 3 alias.
    kind: u8,
    /// Index of an earlier node (0 is the root).
    parent: usize,
    addr: u64,
    size: u64,
    prio: i32,
    enabled: bool,
    readonly: bool,
    target: usize,
    alias_off: u64,
}

fn node() -> impl Strategy<Value = Node> {
    (
        0u8..4,
        any::<prop::sample::Index>(),
        0..UNITS,
        1..UNITS / 2,
        -2i32..3,
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.15),
        0usize..4,
        0..UNITS / 2,
    )
        .prop_map(
            |(kind, p, addr, size, prio, enabled, readonly, target, alias_off)| Node {
                kind,
                parent: p.index(usize::MAX),
                addr,
                size,
                prio,
                enabled,
                readonly,
                target,
                alias_off,
            },
        )
}

/// Alias targets, never mapped into the tree so no cycle can form: two
/// terminal regions and a container holding two more.
fn pool() -> Vec<MemoryRegion> {
    let mem = Memory::new();
    let c = MemoryRegion::container("pool-c", UNITS / 2 * UNIT);
    let a = io("pool-a", 4 * UNIT);
    let b = MemoryRegion::ram("pool-b", 8 * UNIT).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&c, 2 * UNIT, &a).unwrap();
    tx.add_subregion_overlap(&c, 4 * UNIT, &b, 1).unwrap();
    tx.commit().unwrap();
    vec![
        c,
        io("pool-d", UNITS * UNIT),
        MemoryRegion::ram("pool-e", 16 * UNIT).unwrap(),
        a,
    ]
}

fn build(nodes: &[Node], pool: &[MemoryRegion]) -> (Memory, Arc<crate::memory::AddressSpace>) {
    let mem = Memory::new();
    let root = MemoryRegion::container("root", UNITS * UNIT);
    let space = mem.add_address_space("memory", root.clone());
    let mut made = vec![root];
    let tx = mem.begin();
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("n{i}");
        let size = n.size * UNIT;
        let r = match n.kind {
            0 => MemoryRegion::container(&name, size),
            1 => io(&name, size),
            2 => MemoryRegion::ram(&name, size).unwrap(),
            _ => MemoryRegion::alias(&name, &pool[n.target], n.alias_off * UNIT, size),
        };
        tx.set_enabled(&r, n.enabled);
        tx.set_readonly(&r, n.readonly);
        let parent = &made[n.parent % made.len()];
        tx.add_subregion_overlap(parent, n.addr * UNIT, &r, n.prio)
            .unwrap();
        made.push(r);
    }
    tx.commit().unwrap();
    (mem, space)
}

/// What answers offset `off` of `mr`: (region id, offset in it, read-only).
fn resolve(mr: &MemoryRegion, off: u64, ro: bool) -> Option<(u64, u64, bool)> {
    if !mr.is_enabled() || off >= mr.size() {
        return None;
    }
    let ro = ro || mr.is_readonly();
    if let Some(t) = mr.alias_target() {
        return resolve(t, off + mr.alias_offset(), ro);
    }
    // Order siblings independently of the tree's own sorting: higher
    // priority first, then the later-added (nodes are named n<seq>).
    let mut subs = mr.subregions();
    subs.sort_by_key(|s| (std::cmp::Reverse(s.priority()), std::cmp::Reverse(seq(s))));
    for s in subs {
        if off >= s.addr() && off - s.addr() < s.size() {
            if let Some(hit) = resolve(&s, off - s.addr(), ro) {
                return Some(hit);
            }
        }
    }
    match mr.kind() {
        RegionKind::Container => None,
        _ => Some((mr.id(), off, ro)),
    }
}

fn seq(r: &MemoryRegion) -> i64 {
    r.name()
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// Checks the view is sorted, disjoint and merged; with `model`, also that
/// every unit resolves as the naive model says (only valid while insertion
/// order equals node order, i.e. before any `set_address`).
fn check_view(view: &FlatView, root: &MemoryRegion, model: bool) -> Result<(), TestCaseError> {
    let r = view.ranges();
    for w in r.windows(2) {
        prop_assert!(w[0].end() <= w[1].addr, "overlap or disorder");
        let mergeable = w[0].end() == w[1].addr
            && w[0].region.same(&w[1].region)
            && w[0].offset_in_region + w[0].size == w[1].offset_in_region
            && w[0].readonly == w[1].readonly;
        prop_assert!(!mergeable, "unmerged neighbours at {:#x}", w[1].addr);
    }
    if !model {
        return Ok(());
    }
    for u in 0..UNITS {
        // Probe both ends of every unit: every edge in the tree is on a unit.
        for a in [u * UNIT, u * UNIT + UNIT - 1] {
            let got = view
                .lookup(a)
                .map(|(fr, off)| (fr.region.id(), off, fr.readonly));
            prop_assert_eq!(got, resolve(root, a, false), "at {:#x}", a);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rendering_matches_the_per_unit_model(nodes in prop::collection::vec(node(), 1..14)) {
        let pool = pool();
        let (_mem, space) = build(&nodes, &pool);
        check_view(&space.view(), space.root(), true)?;
    }

    #[test]
    fn listeners_hold_the_view_after_every_commit_or_refusal(
        nodes in prop::collection::vec(node(), 1..10),
        ops in prop::collection::vec((0usize..16, 0u8..4, 0..UNITS, any::<bool>()), 1..12),
    ) {
        let pool = pool();
        let (mem, space) = build(&nodes, &pool);
        let log: CallLog = Arc::default();
        let mut held = Vec::new();
        let mut refuse: Vec<Arc<Mutex<Option<Refuse>>>> = Vec::new();
        for (name, prio) in [("vfio", 0), ("vhost", 5), ("kvm", 10)] {
            let mut r = Recorder::new(name, prio, &log);
            r.verbose = false;
            held.push(r.held.clone());
            refuse.push(r.refuse.clone());
            mem.register_listener(&space, Box::new(r)).unwrap();
        }
        let regions: Vec<MemoryRegion> = all_regions(space.root());
        for (pick, op, val, fail) in ops {
            let r = &regions[pick % regions.len()];
            // Sometimes one listener refuses every new mapping.
            let before = held_of(&space.view());
            *refuse[pick % 3].lock().unwrap() = fail.then(|| Refuse {
                hook: "region_add",
                region: None,
                addr: None,
                keep: Some(before.clone()),
            });
            let tx = mem.begin();
            match op {
                0 => tx.set_enabled(r, !r.is_enabled()),
                1 => tx.set_address(r, val * UNIT),
                2 => tx.set_size(r, (val % (UNITS / 2) + 1) * UNIT),
                _ => tx.set_readonly(r, !r.is_readonly()),
            }
            let ok = tx.commit().is_ok();
            let now = held_of(&space.view());
            if !ok {
                prop_assert_eq!(&now, &before, "a refused commit changed the view");
            }
            // The tree itself was undone: rendering it afresh gives the view.
            let fresh = held_of(&FlatView::render(space.root(), false));
            prop_assert_eq!(&fresh, &now, "tree and view disagree");
            for h in &held {
                prop_assert_eq!(&*h.lock().unwrap(), &now);
            }
            check_view(&space.view(), space.root(), false)?;
        }
    }
}

fn all_regions(root: &MemoryRegion) -> Vec<MemoryRegion> {
    let mut out = Vec::new();
    for s in root.subregions() {
        out.push(s.clone());
        out.extend(all_regions(&s));
    }
    if out.is_empty() {
        out.push(root.clone());
    }
    out
}
