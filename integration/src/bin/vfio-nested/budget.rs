//! The kernel's DMA mapping budget: the guest script lowered
//! vfio_iommu_type1's `dma_entry_limit` before the container was opened,
//! so the container may hold only that many mappings. A second address
//! space's listener on the same container (another user the rig's
//! listener cannot count) takes some; then a transaction that fits the
//! rig listener's own count but not the kernel's runs into ENOSPC, which
//! must come back as an error naming the budget, with the transaction
//! rolled back. One fewer region fits, to show where the edge is.

use integration::nested::{BUDGET, DMA_ENTRY_LIMIT};
use vmm::memory::MemoryRegion;
use vmm::vfio::VfioListener;
use vmm_vfio::{ContainerMapper, DmaRules};

use crate::Rig;

/// Mappings the other address space takes.
const OTHERS: u64 = 4;
const OTHER_IOVA: u64 = 0x4000_0000;
const TEST_IOVA: u64 = 0x2000_0000;
const STRIDE: u64 = 0x1_0000;

fn regions(prefix: &str, n: u64) -> Result<Vec<MemoryRegion>, String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            MemoryRegion::ram(&name, 0x1000).map_err(|e| format!("RAM region {name}: {e}"))
        })
        .collect()
}

/// Adds (or removes) `rs` under `root` at `base + i * STRIDE` in one
/// transaction.
fn change(
    memory: &vmm::memory::Memory,
    root: &MemoryRegion,
    base: u64,
    rs: &[MemoryRegion],
    add: bool,
) -> Result<(), vmm::memory::MemoryError> {
    let tx = memory.begin();
    for (i, r) in rs.iter().enumerate() {
        if add {
            tx.add_subregion(root, base + i as u64 * STRIDE, r)?;
        } else {
            tx.del_subregion(root, r)?;
        }
    }
    tx.commit()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

fn budget(rig: &Rig) -> Result<(), String> {
    let limit = DmaRules::kernel_limit().ok_or("vfio_iommu_type1 has no dma_entry_limit")?;
    if limit != DMA_ENTRY_LIMIT {
        return Err(format!(
            "dma_entry_limit is {limit}; the guest script sets {DMA_ENTRY_LIMIT}"
        ));
    }
    let before = rig.live.snapshot();
    let other_root = MemoryRegion::container("other", u64::MAX);
    let other = rig.memory.add_address_space("other", other_root.clone());
    let mapper = ContainerMapper::new(rig.container.clone());
    let id = rig
        .memory
        .register_listener(
            &other,
            Box::new(VfioListener::new(mapper, DmaRules::default())),
        )
        .map_err(|e| format!("the other listener: {e}"))?;
    let theirs = regions("other", OTHERS)?;
    let res = (|| {
        change(&rig.memory, &other_root, OTHER_IOVA, &theirs, true)
            .map_err(|e| format!("the other space's mappings: {}", chain(&e)))?;
        let used = before.len() as u64 + OTHERS;
        let free = u64::from(limit)
            .checked_sub(used)
            .filter(|&f| f > 0)
            .ok_or_else(|| format!("{used} mappings already use the budget of {limit}"))?;
        let fits = regions("fits", free)?;
        change(&rig.memory, &rig.root, TEST_IOVA, &fits, true)
            .map_err(|e| format!("{free} regions should fit the budget: {}", chain(&e)))?;
        change(&rig.memory, &rig.root, TEST_IOVA, &fits, false)
            .map_err(|e| format!("removing them: {}", chain(&e)))?;
        let too_many = regions("over", free + 1)?;
        let e = match change(&rig.memory, &rig.root, TEST_IOVA, &too_many, true) {
            Ok(()) => return Err(format!("{} regions were all mapped", free + 1)),
            Err(e) => e,
        };
        let text = chain(&e);
        println!("budget: {free} regions fit; {} refused: {text}", free + 1);
        for needed in ["listener \"vfio\"", "dma_entry_limit", "ENOSPC", "budget"] {
            if !text.contains(needed) {
                return Err(format!("the error does not say {needed:?}: {text}"));
            }
        }
        let after = rig.live.snapshot();
        if after != before {
            return Err(format!("mappings before {before:x?}, after {after:x?}"));
        }
        if too_many.iter().any(|r| r.is_mapped()) || rig.space.lookup(TEST_IOVA).is_some() {
            return Err("a region of the refused transaction is in the view".into());
        }
        Ok(())
    })();
    rig.memory.unregister_listener(&other, id);
    res
}

pub fn run(rig: &Rig) -> u32 {
    match budget(rig) {
        Ok(()) => {
            println!("ok - {BUDGET}");
            0
        }
        Err(e) => {
            println!("not ok - {BUDGET}: {e}");
            1
        }
    }
}
