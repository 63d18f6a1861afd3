//! What may be mapped for device DMA, and the interface to whatever maps it
//! (a VFIO container, an iommufd IOAS, a vfio-user server, or a recorder).

use std::os::fd::RawFd;

/// One mapping: the guest physical range `iova .. iova + size` (IOVA equals
/// guest physical address) backed by host memory at `vaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    pub iova: u64,
    pub size: u64,
    pub vaddr: u64,
    /// The device may only read (ROM).
    pub readonly: bool,
    /// The file behind `vaddr` and the offset of the first byte in it, for
    /// mappers that hand memory to another process (vfio-user).
    pub file: Option<(RawFd, u64)>,
}

/// Errors of DMA mapping.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("mapping {iova:#x}+{size:#x} would exceed the kernel's DMA mapping budget of {limit} (vfio_iommu_type1 dma_entry_limit)")]
    Budget { iova: u64, size: u64, limit: u32 },
    #[error("the kernel refused to map {iova:#x}+{size:#x}: the container's DMA mapping budget{} is used up (ENOSPC from vfio_iommu_type1; its dma_entry_limit counts mappings)", limit_text(*.limit))]
    BudgetExhausted {
        iova: u64,
        size: u64,
        /// The module parameter when the error was seen (the container's
        /// budget was fixed when it was opened).
        limit: Option<u32>,
    },
    #[error("the IOMMU refused to map {iova:#x}+{size:#x}")]
    Map {
        iova: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the IOMMU refused to unmap {iova:#x}+{size:#x}")]
    Unmap {
        iova: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

fn limit_text(limit: Option<u32>) -> String {
    limit.map_or_else(String::new, |l| format!(" of {l} mappings"))
}

/// Maps and unmaps guest memory for device DMA.
pub trait DmaMapper: Send {
    /// Maps `req`.
    ///
    /// # Safety
    ///
    /// `req.vaddr .. + req.size` must stay mapped in this process until the
    /// range is unmapped again: the device may access it at any time.
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError>;
    /// Unmaps exactly a range earlier mapped with `map`.
    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DmaError>;
}

/// The rules a listener applies before mapping.
#[derive(Clone, Copy, Debug)]
pub struct DmaRules {
    /// Mappings are shrunk inward to this alignment (the host page size).
    pub page_size: u64,
    /// At most this many mappings may be live.
    pub max_mappings: u32,
}

impl Default for DmaRules {
    fn default() -> Self {
        DmaRules {
            page_size: 4096,
            max_mappings: Self::kernel_limit().unwrap_or(65535),
        }
    }
}

impl DmaRules {
    /// The running kernel's vfio_iommu_type1 `dma_entry_limit`, if loaded.
    pub fn kernel_limit() -> Option<u32> {
        std::fs::read_to_string("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit")
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The page-aligned part of a section, or `None` if it holds no whole
    /// page or its host address is not page aligned where the IOVA is.
    pub fn window(&self, iova: u64, size: u64, vaddr: u64, readonly: bool) -> Option<DmaRequest> {
        let p = self.page_size;
        let start = iova.checked_add(p - 1)? & !(p - 1);
        let end = iova.checked_add(size)? & !(p - 1);
        if end <= start {
            return None;
        }
        let shift = start - iova;
        let vaddr = vaddr.checked_add(shift)?;
        if vaddr % p != 0 {
            return None;
        }
        Some(DmaRequest {
            iova: start,
            size: end - start,
            vaddr,
            readonly,
            file: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_shrink_inward_to_whole_pages() {
        let r = DmaRules {
            page_size: 0x1000,
            max_mappings: 10,
        };
        let w = r.window(0x1800, 0x3000, 0x7f00_0000_1800, false).unwrap();
        assert_eq!(
            (w.iova, w.size, w.vaddr),
            (0x2000, 0x2000, 0x7f00_0000_2000)
        );
        assert!(r.window(0x1800, 0x800, 0x7f00_0000_1800, false).is_none());
        assert!(r.window(0x1000, 0x1000, 0x7f00_0000_0800, false).is_none());
        assert!(r.window(u64::MAX - 0xfff, 0x2000, 0, false).is_none());
    }
}
