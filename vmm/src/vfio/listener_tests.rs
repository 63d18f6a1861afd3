//! The vfio listener with a recording mapper: mappings follow the view,
//! order against KVM, refusals and the mapping budget.

use std::sync::Arc;

use vmm_vfio::recorder::RecordingMapper;
use vmm_vfio::{DmaError, DmaMapper, DmaRequest, DmaRules};

use super::VfioListener;
use crate::machine::pam::PamMode;
use crate::machine::PcMemory;
use crate::memory::testing::{CallLog, Recorder};
use crate::memory::{Memory, MemoryError, MemoryRegion, RamBlock};

/// Forwards to a recorder and writes each call into the shared call log,
/// so the order against other listeners is visible.
struct Logged {
    inner: RecordingMapper,
    log: CallLog,
}

impl DmaMapper for Logged {
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        // SAFETY: forwarded under the caller's own guarantee.
        unsafe { self.inner.map(req) }?;
        self.log
            .lock()
            .unwrap()
            .push(format!("vfio map {:#x}+{:#x}", req.iova, req.size));
        Ok(())
    }
    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DmaError> {
        self.inner.unmap(iova, size)?;
        self.log
            .lock()
            .unwrap()
            .push(format!("vfio unmap {iova:#x}+{size:#x}"));
        Ok(())
    }
}

struct Rig {
    mem: Memory,
    pc: PcMemory,
    dma: RecordingMapper,
    log: CallLog,
}

fn rig(max_mappings: u32) -> Rig {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let dma = RecordingMapper::default();
    let log: CallLog = Arc::default();
    let rules = DmaRules {
        page_size: 4096,
        max_mappings,
    };
    let l = VfioListener::new(
        Logged {
            inner: dma.clone(),
            log: log.clone(),
        },
        rules,
    );
    mem.register_listener(&pc.memory, Box::new(l)).unwrap();
    let mut kvm = Recorder::new("kvm", 10, &log);
    kvm.verbose = true;
    mem.register_listener(&pc.memory, Box::new(kvm)).unwrap();
    log.lock().unwrap().clear();
    Rig { mem, pc, dma, log }
}

/// The view's RAM and ROM ranges as (iova, size, readonly).
fn ram_of_view(pc: &PcMemory) -> Vec<(u64, u64, bool)> {
    pc.memory
        .view()
        .ranges()
        .iter()
        .filter(|r| r.is_ram() || r.is_rom() || r.is_ram_device())
        .map(|r| (r.addr, r.size, r.readonly || r.is_rom()))
        .collect()
}

fn live(dma: &RecordingMapper) -> Vec<(u64, u64, bool)> {
    dma.lock()
        .live
        .iter()
        .map(|(&iova, &(size, _, ro))| (iova, size, ro))
        .collect()
}

#[test]
fn mappings_equal_the_views_ram_after_every_transaction() {
    let rig = rig(100);
    assert_eq!(live(&rig.dma), ram_of_view(&rig.pc));
    assert!(
        live(&rig.dma).contains(&(0xfffc0000, 0x40000, true)),
        "BIOS read-only"
    );
    for (idx, mode) in [
        (0, PamMode::ReadWrite),
        (3, PamMode::ReadOnly),
        (0, PamMode::Pci),
    ] {
        let tx = rig.mem.begin();
        rig.pc.pam().set_mode(&tx, idx, mode);
        tx.commit().unwrap();
        assert_eq!(live(&rig.dma), ram_of_view(&rig.pc), "after {idx} {mode:?}");
    }
}

#[test]
fn the_iommu_maps_before_kvm_adds_and_unmaps_after_kvm_deletes() {
    let rig = rig(100);
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.pc.system, 1 << 32, &dimm).unwrap();
    tx.commit().unwrap();
    let tx = rig.mem.begin();
    tx.del_subregion(&rig.pc.system, &dimm).unwrap();
    tx.commit().unwrap();
    let calls: Vec<String> = rig
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.contains("0x100000000"))
        .cloned()
        .collect();
    assert_eq!(
        calls,
        [
            "vfio map 0x100000000+0x8000000",
            "kvm add dimm0 0x100000000+0x8000000",
            "kvm del dimm0 0x100000000+0x8000000",
            "vfio unmap 0x100000000+0x8000000",
        ]
    );
}

#[test]
fn a_refused_map_fails_the_hot_add_and_leaves_nothing_behind() {
    let rig = rig(100);
    let before = live(&rig.dma);
    rig.dma.lock().refuse.push(1 << 32);
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.pc.system, 1 << 32, &dimm).unwrap();
    let err = tx.commit().unwrap_err();
    assert!(
        matches!(&err, MemoryError::Listener { listener, hook, .. } if listener == "vfio" && *hook == "region_add"),
        "{err}"
    );
    assert_eq!(live(&rig.dma), before);
    assert!(!rig
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.contains("kvm add dimm0")));
}

#[test]
fn the_mapping_budget_is_respected_with_a_clear_error() {
    let rig = rig(5); // the PC map needs exactly five
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.pc.system, 1 << 32, &dimm).unwrap();
    let err = tx.commit().unwrap_err();
    let msg = format!("{}", std::error::Error::source(&err).unwrap());
    assert!(msg.contains("dma_entry_limit"), "{msg}");
    assert_eq!(live(&rig.dma).len(), 5);
}

#[test]
fn peer_to_peer_bar_mappings_may_fail_with_a_warning() {
    let rig = rig(100);
    let bar_block = Arc::new(RamBlock::new_memfd("bar0", 0x10000).unwrap());
    let bar = MemoryRegion::ram_device("0000:01:00.0 BAR0", bar_block);
    rig.dma.lock().refuse.push(0xfe00_0000);
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.pc.pci, 0xfe00_0000, &bar).unwrap();
    tx.commit()
        .expect("a refused peer mapping does not fail the transaction");
    assert!(!live(&rig.dma).iter().any(|m| m.0 == 0xfe00_0000));
    // And an accepted one is mapped read-write.
    rig.dma.lock().refuse.clear();
    let tx = rig.mem.begin();
    tx.set_address(&bar, 0xfd00_0000);
    tx.commit().unwrap();
    assert!(live(&rig.dma).contains(&(0xfd00_0000, 0x10000, false)));
}

#[test]
fn unaligned_ram_pieces_are_mapped_by_whole_pages_only() {
    let rig = rig(100);
    let dev = MemoryRegion::io("dev", 0x100, Arc::new(crate::memory::testing::NopOps));
    let tx = rig.mem.begin();
    tx.add_subregion_overlap(&rig.pc.system, 0x20_1080, &dev, 2)
        .unwrap();
    tx.commit().unwrap();
    let l = live(&rig.dma);
    assert!(l.contains(&(0x100000, 0x101000, false)), "{l:x?}");
    assert!(
        l.contains(&(0x202000, 0x2000_0000 - 0x20_2000, false)),
        "{l:x?}"
    );
}

/// Keeps every map request, to look at what it carries.
struct Keep(Arc<std::sync::Mutex<Vec<DmaRequest>>>);

impl DmaMapper for Keep {
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        self.0.lock().unwrap().push(req);
        Ok(())
    }
    fn unmap(&mut self, _iova: u64, _size: u64) -> Result<(), DmaError> {
        Ok(())
    }
}

#[test]
fn requests_carry_the_ram_file_and_the_offset_of_their_first_byte() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let kept = Arc::default();
    let rules = DmaRules {
        page_size: 4096,
        max_mappings: 100,
    };
    let l = VfioListener::new(Keep(Arc::clone(&kept)), rules);
    mem.register_listener(&pc.memory, Box::new(l)).unwrap();
    let low = pc.ram.ram_block().unwrap();
    let find = |iova: u64| {
        kept.lock()
            .unwrap()
            .iter()
            .find(|r| r.iova == iova)
            .copied()
    };
    let req = find(0x10_0000).expect("RAM above 1 MiB is mapped");
    assert_eq!(req.file, Some((low.fd(), low.file_offset() + 0x10_0000)));

    // Hot-added RAM from the middle of a page (an alias 0x800 into its
    // block at 0x800 into a page): mapped from its first whole page, the
    // file offset moved along.
    let hot = MemoryRegion::ram("hot", 0x10_0000).unwrap();
    let part = MemoryRegion::alias("hot-part", &hot, 0x800, 0x10_0000 - 0x800);
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 0x1_0000_0800, &part).unwrap();
    tx.commit().unwrap();
    let block = hot.ram_block().unwrap();
    let req = find(0x1_0000_1000).expect("hot RAM is mapped");
    assert_eq!(req.file, Some((block.fd(), block.file_offset() + 0x1000)));
    assert_eq!(req.size, 0x10_0000 - 0x1000);
}
