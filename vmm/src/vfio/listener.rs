//! The `vfio` listener (priority 0): every RAM and ROM range of the memory
//! address space is mapped for device DMA with IOVA = guest physical
//! address, ROM read-only; other devices' BARs (RAM-device ranges) are
//! mapped for peer-to-peer and may fail with a warning. Maps happen in
//! `region_add` and unmaps in `region_del`, so with the fan-out's order the
//! IOMMU covers a range before KVM does and after KVM has dropped it.

use std::collections::BTreeMap;

use vmm_vfio::{DmaError, DmaMapper, DmaRequest, DmaRules};

use crate::memory::{FlatRange, HookResult, MemoryListener};

pub const PRIORITY: i32 = 0;

struct Mapping {
    req: DmaRequest,
    /// Holds the host memory for as long as the IOMMU maps it.
    _range: FlatRange,
}

pub struct VfioListener<M: DmaMapper> {
    mapper: M,
    rules: DmaRules,
    live: BTreeMap<u64, Mapping>,
}

impl<M: DmaMapper> VfioListener<M> {
    pub fn new(mapper: M, rules: DmaRules) -> Self {
        VfioListener {
            mapper,
            rules,
            live: BTreeMap::new(),
        }
    }

    /// Live mappings as (iova, size, readonly).
    pub fn mappings(&self) -> Vec<(u64, u64, bool)> {
        self.live
            .values()
            .map(|m| (m.req.iova, m.req.size, m.req.readonly))
            .collect()
    }

    fn request(&self, r: &FlatRange) -> Option<DmaRequest> {
        if !(r.is_ram() || r.is_rom() || r.is_ram_device()) {
            return None;
        }
        let host = r.host_addr()?;
        let mut req = self
            .rules
            .window(r.addr, r.size, host, r.readonly || r.is_rom())?;
        req.file = r
            .fd_offset()
            .map(|(fd, offset)| (fd, offset + (req.iova - r.addr)));
        Some(req)
    }
}

impl<M: DmaMapper> MemoryListener for VfioListener<M> {
    fn name(&self) -> &str {
        "vfio"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        let Some(req) = self.request(r) else {
            return Ok(());
        };
        let peer = r.is_ram_device();
        if self.live.len() >= self.rules.max_mappings as usize {
            let e = DmaError::Budget {
                iova: req.iova,
                size: req.size,
                limit: self.rules.max_mappings,
            };
            if peer {
                log::warn!(
                    "vfio: peer-to-peer mapping of {} skipped: {e}",
                    r.region.name()
                );
                return Ok(());
            }
            return Err(e.into());
        }
        // SAFETY: the mapping keeps a clone of the range, and so of the
        // region and its host memory, until `region_del` unmaps it.
        match unsafe { self.mapper.map(req) } {
            Ok(()) => {
                self.live.insert(
                    req.iova,
                    Mapping {
                        req,
                        _range: r.clone(),
                    },
                );
                Ok(())
            }
            Err(e) if peer => {
                log::warn!(
                    "vfio: peer-to-peer mapping of {} failed: {e}",
                    r.region.name()
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn region_del(&mut self, r: &FlatRange) {
        let Some(req) = self.request(r) else { return };
        let Some(m) = self.live.get(&req.iova) else {
            return; // a peer mapping that had failed
        };
        if m.req.size != req.size {
            log::error!(
                "vfio: del of {:#x}+{:#x} does not match the mapping",
                req.iova,
                req.size
            );
            return;
        }
        if let Err(e) = self.mapper.unmap(req.iova, req.size) {
            log::error!("vfio: {e}");
        }
        self.live.remove(&req.iova);
    }
}
