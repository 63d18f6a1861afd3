//! Rendering rules and the access path.

use std::sync::Arc;

use super::{flat, io, system, Stub};
use crate::memory::{Access, MemoryError, MemoryRegion};

fn t(a: u64, b: u64, name: &str, off: u64, ro: bool) -> (u64, u64, String, u64, bool) {
    (a, b, name.to_string(), off, ro)
}

#[test]
fn higher_priority_wins_and_the_lower_shows_around_it() {
    let (mem, root, space) = system(0x10000);
    let low = io("low", 0x3000);
    let high = io("high", 0x1000);
    let tx = mem.begin();
    tx.add_subregion_overlap(&root, 0x1000, &low, 0).unwrap();
    tx.add_subregion_overlap(&root, 0x2000, &high, 1).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        flat(&space),
        vec![
            t(0x1000, 0x1fff, "low", 0, false),
            t(0x2000, 0x2fff, "high", 0, false),
            t(0x3000, 0x3fff, "low", 0x2000, false),
        ]
    );
}

#[test]
fn equal_priority_goes_to_the_later_added() {
    let (mem, root, space) = system(0x10000);
    let a = io("a", 0x2000);
    let b = io("b", 0x2000);
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &a).unwrap();
    tx.add_subregion(&root, 0x1000, &b).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        flat(&space),
        vec![t(0, 0xfff, "a", 0, false), t(0x1000, 0x2fff, "b", 0, false)]
    );
    // Moving `a` re-adds it, so it now wins the tie.
    let tx = mem.begin();
    tx.set_address(&a, 0x800);
    tx.commit().unwrap();
    assert_eq!(
        flat(&space),
        vec![
            t(0x800, 0x27ff, "a", 0, false),
            t(0x2800, 0x2fff, "b", 0x1800, false)
        ]
    );
}

#[test]
fn alias_renders_its_target_at_an_offset_and_clips_to_its_size() {
    let (mem, root, space) = system(0x100000);
    let ram = MemoryRegion::ram("ram", 0x10000).unwrap();
    let win = MemoryRegion::alias("win", &ram, 0x3000, 0x2000);
    let tx = mem.begin();
    tx.add_subregion(&root, 0x80000, &win).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        flat(&space),
        vec![t(0x80000, 0x81fff, "ram", 0x3000, false)]
    );
    let (r, off) = space.lookup(0x81234).unwrap();
    assert_eq!((r.region.name(), off), ("ram", 0x4234));
    assert_eq!(
        r.host_addr(),
        Some(ram.ram_block().unwrap().host_addr() + 0x3000)
    );
}

#[test]
fn subregions_of_an_alias_target_show_through_the_alias() {
    let (mem, root, space) = system(0x100000);
    let inner = MemoryRegion::container("inner", 0x4000);
    let dev = io("dev", 0x1000);
    let win = MemoryRegion::alias("win", &inner, 0x1000, 0x2000);
    let tx = mem.begin();
    tx.add_subregion(&inner, 0x2000, &dev).unwrap();
    tx.add_subregion(&root, 0x10000, &win).unwrap();
    tx.commit().unwrap();
    assert_eq!(flat(&space), vec![t(0x11000, 0x11fff, "dev", 0, false)]);
}

#[test]
fn disabled_regions_vanish_with_their_subtree() {
    let (mem, root, space) = system(0x10000);
    let c = MemoryRegion::container("c", 0x2000);
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&c, 0x1000, &ram).unwrap();
    tx.add_subregion(&root, 0x4000, &c).unwrap();
    tx.commit().unwrap();
    assert_eq!(flat(&space).len(), 1);
    let tx = mem.begin();
    tx.set_enabled(&c, false);
    tx.commit().unwrap();
    assert!(flat(&space).is_empty());
}

#[test]
fn read_only_is_inherited_downwards() {
    let (mem, root, space) = system(0x10000);
    let ram = MemoryRegion::ram("ram", 0x4000).unwrap();
    let ro = MemoryRegion::alias("ro", &ram, 0, 0x4000);
    let tx = mem.begin();
    tx.set_readonly(&ro, true);
    tx.add_subregion(&root, 0, &ro).unwrap();
    tx.commit().unwrap();
    assert_eq!(flat(&space), vec![t(0, 0x3fff, "ram", 0, true)]);
    assert_eq!(space.write(0x10, &[1, 2]), Access::Done);
    let mut b = [0u8; 2];
    space.read(0x10, &mut b);
    assert_eq!(b, [0, 0], "a read-only range drops writes");
}

#[test]
fn ranges_clip_to_their_container() {
    let (mem, root, space) = system(0x10000);
    let c = MemoryRegion::container("c", 0x1000);
    let big = io("big", 0x8000);
    let edge = io("edge", 0x1000);
    let tx = mem.begin();
    tx.add_subregion(&c, 0x800, &big).unwrap();
    tx.add_subregion(&root, 0x8000, &c).unwrap();
    tx.add_subregion(&root, 0xf800, &edge).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        flat(&space),
        vec![
            t(0x8800, 0x8fff, "big", 0, false),
            t(0xf800, 0xffff, "edge", 0, false)
        ]
    );
}

#[test]
fn adjacent_pieces_of_one_region_merge() {
    let (mem, root, space) = system(0x10000);
    let ram = MemoryRegion::ram("ram", 0x4000).unwrap();
    let hole = io("hole", 0x1000);
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &ram).unwrap();
    tx.add_subregion_overlap(&root, 0x1000, &hole, 1).unwrap();
    tx.commit().unwrap();
    assert_eq!(flat(&space).len(), 3);
    let tx = mem.begin();
    tx.del_subregion(&root, &hole).unwrap();
    tx.commit().unwrap();
    assert_eq!(flat(&space), vec![t(0, 0x3fff, "ram", 0, false)]);
}

#[test]
fn two_aliases_side_by_side_of_one_block_merge() {
    let (mem, root, space) = system(0x10000);
    let ram = MemoryRegion::ram("ram", 0x4000).unwrap();
    let lo = MemoryRegion::alias("lo", &ram, 0, 0x2000);
    let hi = MemoryRegion::alias("hi", &ram, 0x2000, 0x2000);
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &lo).unwrap();
    tx.add_subregion(&root, 0x2000, &hi).unwrap();
    tx.commit().unwrap();
    assert_eq!(flat(&space), vec![t(0, 0x3fff, "ram", 0, false)]);
}

#[test]
fn the_tree_refuses_cycles_and_double_mapping() {
    let (mem, root, _space) = system(0x10000);
    let a = MemoryRegion::container("a", 0x1000);
    let b = MemoryRegion::alias("b", &a, 0, 0x1000);
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &a).unwrap();
    assert!(matches!(
        tx.add_subregion(&root, 0x1000, &a),
        Err(MemoryError::AlreadyMapped { .. })
    ));
    assert!(matches!(
        tx.add_subregion(&a, 0, &b),
        Err(MemoryError::Cycle { .. })
    ));
    assert!(matches!(
        tx.del_subregion(&a, &root),
        Err(MemoryError::NotASubregion { .. })
    ));
    tx.commit().unwrap();
}

#[test]
fn accesses_dispatch_to_handlers_ram_and_unassigned() {
    let (mem, root, space) = system(0x10000);
    let stub = Arc::new(Stub {
        byte: 0x5a,
        ..Default::default()
    });
    let dev = MemoryRegion::io("dev", 0x100, stub.clone());
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&root, 0x2000, &dev).unwrap();
    tx.add_subregion(&root, 0x1000, &ram).unwrap();
    tx.commit().unwrap();

    let mut b = [0u8; 4];
    assert_eq!(space.read(0x2010, &mut b), Access::Done);
    assert_eq!(b, [0x5a; 4]);
    assert_eq!(space.write(0x2004, &[1, 2]), Access::Done);
    assert_eq!(stub.writes.lock().unwrap()[0], (4, vec![1, 2]));

    assert_eq!(space.write(0x1ffe, &[7, 8]), Access::Ram);
    let mut two = [0u8; 2];
    ram.ram_block().unwrap().read(0xffe, &mut two);
    assert_eq!(two, [7, 8]);

    // Straddling two ranges: each serves its own bytes; RAM is reported.
    let mut b = [0u8; 4];
    assert_eq!(space.read(0x1fff, &mut b), Access::Ram);
    assert_eq!(b, [8, 0x5a, 0x5a, 0x5a]);
    // Straddling into a hole: the hole's bytes read as all ones, reported.
    let mut b = [0u8; 2];
    assert_eq!(space.read(0x20ff, &mut b), Access::Unassigned);
    assert_eq!(b, [0x5a, 0xff]);
    let mut b = [0u8; 8];
    assert_eq!(space.read(0x9000, &mut b), Access::Unassigned);
    assert_eq!(b, [0xff; 8]);
    assert_eq!(space.write(0x9000, &[1]), Access::Unassigned);
}

#[test]
fn lookup_finds_every_range_edge() {
    let (mem, root, space) = system(0x100000);
    let tx = mem.begin();
    let mut regions = Vec::new();
    for i in 0..50u64 {
        let r = io(&format!("r{i}"), 0x800);
        tx.add_subregion(&root, i * 0x1000, &r).unwrap();
        regions.push(r);
    }
    tx.commit().unwrap();
    for i in 0..50u64 {
        let base = i * 0x1000;
        assert_eq!(space.lookup(base).unwrap().0.region.name(), format!("r{i}"));
        assert_eq!(space.lookup(base + 0x7ff).unwrap().1, 0x7ff);
        assert!(space.lookup(base + 0x800).is_none());
    }
}

#[test]
fn global_logging_covers_ram_but_not_a_ram_device_and_device_reads_keep_their_width() {
    use crate::memory::{dirty, RamBlock};
    let (mem, root, space) = system(0x10_0000);
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    let block = Arc::new(RamBlock::new_memfd("bar", 0x1000).unwrap());
    block.write(0, &0x0100_00edu32.to_le_bytes());
    let bar = MemoryRegion::ram_device("bar", block);
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &ram).unwrap();
    tx.add_subregion(&root, 0x8000, &bar).unwrap();
    tx.commit().unwrap();
    mem.log_global_start().unwrap();
    let mask = |a: u64| space.lookup(a).unwrap().0.dirty_log_mask;
    assert_eq!(mask(0) & dirty::MIGRATION, dirty::MIGRATION);
    assert_eq!(mask(0x8000), 0, "a RAM device is not logged");
    let mut b = [0u8; 4];
    assert_eq!(space.read(0x8000, &mut b), Access::Ram);
    assert_eq!(u32::from_le_bytes(b), 0x0100_00ed);
}
