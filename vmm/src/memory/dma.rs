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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use vm_memory::bitmap::{Bitmap, BitmapSlice, NewBitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

use super::ram::RamBlock;

/// Guest memory as devices see it: every write they make marks the pages
/// in the RAM block's dirty bitmap, so dirty logging sees device DMA as it
/// sees vCPU writes (through KVM) and backend writes (through their logs).
pub type DmaMemory = vm_memory::GuestMemoryMmap<RamDirty>;

/// vm-memory's write tracking, pointed at a RAM block's bitmap.
#[derive(Clone, Debug, Default)]
pub struct RamDirty {
    block: Option<Arc<RamBlock>>,
    /// Byte offset in the block of this (slice of a) region.
    base: usize,
    /// The view's logging switch; no switch means never mark.
    logging: Option<Arc<AtomicBool>>,
}

impl RamDirty {
    fn logging(&self) -> bool {
        self.logging
            .as_ref()
            .is_some_and(|l| l.load(Ordering::SeqCst))
    }
}

impl WithBitmapSlice<'_> for RamDirty {
    type S = Self;
}

impl BitmapSlice for RamDirty {}

impl Bitmap for RamDirty {
    fn mark_dirty(&self, offset: usize, len: usize) {
        // The data is written before this check: a write that finds logging
        // off happened before it started, and the consumer's first full
        // pass after the start covers it.
        if !self.logging() {
            return;
        }
        if let Some(b) = &self.block {
            b.dirty.mark((self.base + offset) as u64, len as u64);
        }
    }
    fn dirty_at(&self, offset: usize) -> bool {
        self.block
            .as_ref()
            .is_some_and(|b| b.dirty.is_dirty((self.base + offset) as u64))
    }
    fn slice_at(&self, offset: usize) -> Self {
        RamDirty {
            block: self.block.clone(),
            base: self.base + offset,
            logging: self.logging.clone(),
        }
    }
}

impl NewBitmap for RamDirty {
    fn with_len(_len: usize) -> Self {
        RamDirty::default()
    }
}

use super::flatview::FlatRange;
use super::listener::{HookResult, MemoryListener};
use super::region::MemoryRegion;

/// Priority of the listener: before `vfio` (0) for adds, after it for
/// deletes.
pub const PRIORITY: i32 = -10;

/// One snapshot of guest RAM for devices.
pub struct DmaRam {
    mem: DmaMemory,
    /// Keeps the RAM blocks behind `mem` alive.
    _regions: Vec<MemoryRegion>,
}

impl Deref for DmaRam {
    type Target = DmaMemory;
    fn deref(&self) -> &DmaMemory {
        &self.mem
    }
}

/// The shared handle devices keep.
#[derive(Clone)]
pub struct DmaView {
    ram: Arc<ArcSwap<DmaRam>>,
    /// Global dirty logging is on: device writes mark their pages.
    logging: Arc<AtomicBool>,
}

impl Default for DmaView {
    fn default() -> Self {
        DmaView {
            ram: Arc::new(ArcSwap::from_pointee(DmaRam {
                mem: DmaMemory::default(),
                _regions: Vec::new(),
            })),
            logging: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl DmaView {
    pub fn snapshot(&self) -> Arc<DmaRam> {
        self.ram.load_full()
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

/// Maps `r`'s host memory as a vm-memory region at its guest address,
/// with writes marking its RAM block's dirty bitmap.
fn region_of(r: &FlatRange, logging: &Arc<AtomicBool>) -> Option<GuestRegionMmap<RamDirty>> {
    let host = r.host_addr()? as *mut u8;
    let size = usize::try_from(r.size).ok()?;
    let dirty = RamDirty {
        block: r.region.ram_block().cloned(),
        base: usize::try_from(r.offset_in_region).ok()?,
        logging: Some(logging.clone()),
    };
    // SAFETY: `host..host + size` lies inside the RAM block of `r.region`,
    // a live shared mapping that the snapshot keeps alive (it holds the
    // region) for as long as this MmapRegion exists. A raw pointer does not
    // give the region ownership: the block unmaps itself when its last
    // holder drops it.
    let builder =
        unsafe { MmapRegionBuilder::new_with_bitmap(size, dirty).with_raw_mmap_pointer(host) };
    let mapping = builder
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
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
    fn log_global_start(&mut self) -> HookResult {
        self.view.logging.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn log_global_stop(&mut self) {
        self.view.logging.store(false, Ordering::SeqCst);
    }
    fn commit(&mut self) -> HookResult {
        let logging = &self.view.logging;
        let regions: Vec<GuestRegionMmap<RamDirty>> = self
            .ranges
            .iter()
            .filter_map(|r| region_of(r, logging))
            .collect();
        let mem = if regions.is_empty() {
            DmaMemory::default()
        } else {
            DmaMemory::from_regions(regions)
                .map_err(|e| format!("cannot build the DMA view of guest RAM: {e}"))?
        };
        let keep = self.ranges.drain(..).map(|r| r.region).collect();
        self.view.ram.store(Arc::new(DmaRam {
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

    /// A 4 GiB address space with a DMA view listening to it.
    fn viewed_space() -> (Memory, MemoryRegion, DmaView) {
        let memory = Memory::new();
        let root = MemoryRegion::container("root", 1 << 32);
        let space = memory.add_address_space("memory", root.clone());
        let view = DmaView::default();
        memory
            .register_listener(&space, Box::new(view.listener()))
            .unwrap();
        (memory, root, view)
    }

    #[test]
    fn the_view_follows_ram_and_a_snapshot_outlives_removal() {
        let (memory, root, view) = viewed_space();
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

    #[test]
    fn device_writes_mark_pages_only_while_logging() {
        let (memory, root, view) = viewed_space();
        let ram = MemoryRegion::ram("ram", 1 << 20).unwrap();
        let tx = memory.begin();
        tx.add_subregion(&root, 0, &ram).unwrap();
        tx.commit().unwrap();
        let dirty = || ram.ram_block().unwrap().dirty.count();
        let snap = view.snapshot();

        snap.write_obj(1u64, GuestAddress(0x1000)).unwrap();
        assert_eq!(dirty(), 0, "logging off: nothing marked");

        memory.log_global_start().unwrap();
        snap.write_obj(2u64, GuestAddress(0x3000)).unwrap();
        view.snapshot()
            .write_slice(&[7; 0x2000], GuestAddress(0x8000))
            .unwrap();
        assert_eq!(
            ram.ram_block().unwrap().dirty.take(),
            vec![3, 8, 9],
            "a snapshot taken before the start marks too"
        );

        memory.log_global_stop().unwrap();
        snap.write_obj(3u64, GuestAddress(0x5000)).unwrap();
        assert_eq!(dirty(), 0, "logging stopped: nothing marked");
    }
}
