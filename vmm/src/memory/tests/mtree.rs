//! Text dumps beyond the PC golden files in `machine/testdata`.

use std::sync::Arc;

use super::{io, system};
use crate::memory::testing::{CallLog, Recorder};
use crate::memory::{mtree, MemoryRegion};

#[test]
fn mtree_marks_disabled_regions_and_aliases_of_device_memory() {
    let (mem, root, _space) = system(1 << 32);
    let dev = io("dev", 0x1000);
    let block = MemoryRegion::ram("bar", 0x2000).unwrap();
    let bar = MemoryRegion::ram_device("bar", block.ram_block().unwrap().clone());
    let win = MemoryRegion::alias("bar-win", &bar, 0x1000, 0x1000);
    let tx = mem.begin();
    tx.add_subregion_overlap(&root, 0x1000, &dev, 2).unwrap();
    tx.set_enabled(&dev, false);
    tx.add_subregion(&root, 0x8000, &win).unwrap();
    tx.commit().unwrap();
    let text = mtree::info_mtree(&mem);
    assert_eq!(
        text,
        "address-space: memory\n\
         \x20 0000000000000000-00000000ffffffff (prio 0, i/o): system\n\
         \x20   0000000000001000-0000000000001fff (prio 2, i/o): dev [disabled]\n\
         \x20   0000000000008000-0000000000008fff (prio 0, ramd): alias bar-win @bar 0000000000001000-0000000000001fff\n\
         \n\
         memory-region: bar\n\
         \x20 0000000000000000-0000000000001fff (prio 0, ramd): bar\n\
         \n"
    );
    let flat = mtree::info_mtree_flat(&mem);
    assert!(
        flat.contains(
            "  0000000000008000-0000000000008fff (prio 0, ramd): bar @0000000000001000\n"
        ),
        "{flat}"
    );
}

#[test]
fn listener_list_shows_each_address_space_in_add_order() {
    let (mem, _root, space) = system(1 << 32);
    let io_space = mem.add_address_space("I/O", MemoryRegion::container("io", 0x10000));
    let log: CallLog = Arc::default();
    for (name, prio) in [("kvm-memory", 10), ("vfio", 0), ("vhost", 5)] {
        mem.register_listener(&space, Box::new(Recorder::new(name, prio, &log)))
            .unwrap();
    }
    mem.register_listener(&io_space, Box::new(Recorder::new("kvm-io", 10, &log)))
        .unwrap();
    assert_eq!(
        mtree::info_listeners(&mem),
        "address-space: memory\n  vfio (prio 0)\n  vhost (prio 5)\n  kvm-memory (prio 10)\n\n\
         address-space: I/O\n  kvm-io (prio 10)\n\n"
    );
}
