//! Hermetic tests of the memory model: rendering, the fan-out and its
//! rollback, text dumps, and a property test against a per-page model.

mod fanout;
mod model;
mod mtree;
mod render;

use std::sync::Arc;

use super::{Memory, MemoryRegion, RegionOps};

/// An I/O region handler that answers reads with a fixed byte and counts
/// writes.
#[derive(Default)]
pub(super) struct Stub {
    pub byte: u8,
    pub writes: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
}

impl RegionOps for Stub {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(self.byte);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
    }
}

pub(super) fn io(name: &str, size: u64) -> MemoryRegion {
    MemoryRegion::io(name, size, Arc::new(Stub::default()))
}

/// A memory system with one address space of `size` bytes over a container.
pub(super) fn system(size: u64) -> (Memory, MemoryRegion, Arc<super::AddressSpace>) {
    let mem = Memory::new();
    let root = MemoryRegion::container("system", size);
    let space = mem.add_address_space("memory", root.clone());
    (mem, root, space)
}

/// The view as (start, end-inclusive, region name, offset, readonly) tuples.
pub(super) fn flat(space: &super::AddressSpace) -> Vec<(u64, u64, String, u64, bool)> {
    space
        .view()
        .ranges()
        .iter()
        .map(|r| {
            (
                r.addr,
                r.end() - 1,
                r.region.name().to_string(),
                r.offset_in_region,
                r.readonly,
            )
        })
        .collect()
}
