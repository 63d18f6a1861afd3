//! Guest RAM as in-process devices reach it by DMA: a `vm-memory` view of
//! the RAM ranges of an address space, kept current by a memory listener
//! (QEMU's address-space cache, for the devices that use virtio-queue).
//!
//! The view is rebuilt at each commit and swapped in whole; a device takes a
//! snapshot ([`DmaView::snapshot`]) per batch of requests. A snapshot holds
//! the regions behind its ranges, so the host mappings stay valid while a
//! device uses it even if the guest's map changed meanwhile. The listener
//! runs below every device-side consumer of the fan-out (adds first, deletes
//! last), so what devices can reach is always a superset of what vCPUs can.

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::flatview::FlatRange;
use super::listener::{HookResult, MemoryListener};
use super::region::MemoryRegion;

/// Priority of the listener: before `vfio` (0) for adds, after it for
/// deletes.
pub const PRIORITY: i32 = -10;

/// One snapshot of guest RAM for devices.
pub struct DmaRam {
    mem: GuestMemoryMmap,
    /// Keeps the RAM blocks behind `mem` alive.
    _regions: Vec<MemoryRegion>,
}

impl Deref for DmaRam {
    type Target = GuestMemoryMmap;
    fn deref(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

/// The shared handle devices keep.
#[derive(Clone)]
pub struct DmaView(Arc<ArcSwap<DmaRam>>);

impl Default for DmaView {
    fn default() -> Self {
        DmaView(Arc::new(ArcSwap::from_pointee(DmaRam {
            mem: GuestMemoryMmap::default(),
            _regions: Vec::new(),
        })))
    }
}

impl DmaView {
    pub fn snapshot(&self) -> Arc<DmaRam> {
        self.0.load_full()
    }

    /// The listener that keeps this view current.
    pub fn listener(&self) -> DmaListener {
        DmaListener {
            view: self.clone(),
            ranges: Vec::new(),
        }
    }
}

/// Collects the RAM ranges of a round and publishes them at commit.
pub struct DmaListener {
    view: DmaView,
    ranges: Vec<FlatRange>,
}

impl DmaListener {
    fn take(&mut self, r: &FlatRange) {
        if r.is_ram() {
            self.ranges.push(r.clone());
        }
    }
}

/// Maps `r`'s host memory as a vm-memory region at its guest address.
fn region_of(r: &FlatRange) -> Option<GuestRegionMmap> {
    let host = r.host_addr()? as *mut u8;
    let size = usize::try_from(r.size).ok()?;
    // SAFETY: `host..host + size` lies inside the RAM block of `r.region`,
    // a live shared mapping that the snapshot keeps alive (it holds the
    // region) for as long as this MmapRegion exists. build_raw does not take
    // ownership: the block unmaps itself when its last holder drops it.
    let mapping = unsafe {
        MmapRegion::build_raw(
            host,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
    }
    .ok()?;
    GuestRegionMmap::new(mapping, GuestAddress(r.addr))
}

impl MemoryListener for DmaListener {
    fn name(&self) -> &str {
        "dma"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn begin(&mut self) {
        self.ranges.clear();
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        self.take(r);
        Ok(())
    }
    fn region_nop(&mut self, r: &FlatRange) {
        self.take(r);
    }
    fn commit(&mut self) -> HookResult {
        let regions: Vec<GuestRegionMmap> = self.ranges.iter().filter_map(region_of).collect();
        let mem = if regions.is_empty() {
            GuestMemoryMmap::default()
        } else {
            GuestMemoryMmap::from_regions(regions)
                .map_err(|e| format!("cannot build the DMA view of guest RAM: {e}"))?
        };
        let keep = self.ranges.drain(..).map(|r| r.region).collect();
        self.view.0.store(Arc::new(DmaRam {
            mem,
            _regions: keep,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Memory, MemoryRegion};
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn the_view_follows_ram_and_a_snapshot_outlives_removal() {
        let memory = Memory::new();
        let root = MemoryRegion::container("root", 1 << 32);
        let space = memory.add_address_space("memory", root.clone());
        let view = DmaView::default();
        memory
            .register_listener(&space, Box::new(view.listener()))
            .unwrap();
        let low = MemoryRegion::ram("low", 1 << 20).unwrap();
        let dimm = MemoryRegion::ram("dimm", 1 << 20).unwrap();
        let mmio = MemoryRegion::container("mmio", 0x1000);
        let tx = memory.begin();
        tx.add_subregion(&root, 0, &low).unwrap();
        tx.add_subregion(&root, 1 << 30, &dimm).unwrap();
        tx.add_subregion(&root, 0xe000_0000, &mmio).unwrap();
        tx.commit().unwrap();
        let snap = view.snapshot();
        assert_eq!(snap.num_regions(), 2, "RAM only");
        snap.write_obj(0xabcd_u32, GuestAddress((1 << 30) + 8))
            .unwrap();
        let mut b = [0u8; 4];
        dimm.ram_block().unwrap().read(8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xabcd, "same host memory");

        let tx = memory.begin();
        tx.del_subregion(&root, &dimm).unwrap();
        tx.commit().unwrap();
        drop(dimm);
        assert!(view
            .snapshot()
            .read_obj::<u32>(GuestAddress((1 << 30) + 8))
            .is_err());
        assert_eq!(
            snap.read_obj::<u32>(GuestAddress((1 << 30) + 8)).unwrap(),
            0xabcd,
            "the old snapshot keeps its block mapped"
        );
    }
}
