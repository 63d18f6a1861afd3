//! Figures: the time to map and unmap 1 GiB of RAM through the `vfio`
//! listener (a transaction's commit), and how many mappings the PC memory
//! layout needs.

use std::time::Instant;

use vmm::machine::PcMemory;
use vmm::memory::{Memory, MemoryRegion};
use vmm::vfio::VfioListener;
use vmm_vfio::recorder::RecordingMapper;
use vmm_vfio::DmaRules;

use crate::Rig;

const GIB: u64 = 1 << 30;

pub fn run(rig: &Rig) -> Result<(), String> {
    let big = MemoryRegion::ram("bench-1g", GIB).map_err(|e| format!("1 GiB RAM: {e}"))?;
    // The first map faults the memfd's pages in (the kernel pins them);
    // the second finds them resident: pinning and IOMMU page tables only.
    for pages in ["fresh", "resident"] {
        let t = Instant::now();
        rig.add(GIB, &big)?;
        let map = t.elapsed();
        let mapped = rig.live.snapshot().get(&GIB).copied();
        let t = Instant::now();
        rig.remove(&big)?;
        let unmap = t.elapsed();
        if mapped != Some(GIB) {
            return Err(format!("the 1 GiB region was mapped as {mapped:x?}"));
        }
        println!(
            "bench: vfio listener DMA map of 1 GiB, {pages} pages (commit): {:.1} ms per GiB; unmap (removal): {:.1} ms per GiB",
            map.as_secs_f64() * 1e3,
            unmap.as_secs_f64() * 1e3
        );
    }

    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).map_err(|e| format!("PC memory layout: {e}"))?;
    let rec = RecordingMapper::default();
    mem.register_listener(
        &pc.memory,
        Box::new(VfioListener::new(rec.clone(), DmaRules::default())),
    )
    .map_err(|e| format!("vfio listener on the PC layout: {e}"))?;
    let live = rec.lock().live.clone();
    println!(
        "bench: PC memory layout with 512 MiB RAM needs {} vfio mappings: {}",
        live.len(),
        live.iter()
            .map(|(iova, (size, _, ro))| format!(
                "{iova:#x}+{size:#x}{}",
                if *ro { " ro" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
