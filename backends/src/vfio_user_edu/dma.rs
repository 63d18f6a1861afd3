//! The client's memory as the server sees it: one shared mapping of the
//! client's file (a memfd) per DMA_MAP, looked up by IOVA.

use std::collections::BTreeMap;
use std::fs::File;

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};

/// Reasons a DMA_MAP is refused.
#[derive(Debug, thiserror::Error)]
pub enum DmaMapError {
    #[error("DMA map of iova {iova:#x} size {size:#x} carries no file descriptor")]
    NoFd { iova: u64, size: u64 },
    #[error("DMA map of iova {iova:#x} size {size:#x} is empty or wraps")]
    BadRange { iova: u64, size: u64 },
    #[error("DMA map of iova {iova:#x} size {size:#x} overlaps the mapping at {other:#x}")]
    Overlap { iova: u64, size: u64, other: u64 },
    #[error("mapping the file for iova {iova:#x} size {size:#x} at offset {offset:#x}")]
    Mmap {
        iova: u64,
        size: u64,
        offset: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// The DMA mappings a client holds, by IOVA.
#[derive(Default)]
pub struct DmaMappings {
    maps: BTreeMap<u64, MmapRegion>,
}

impl DmaMappings {
    /// Maps `size` bytes of `fd` from `offset` at `iova`.
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        offset: u64,
        fd: Option<File>,
    ) -> Result<(), DmaMapError> {
        let fd = fd.ok_or(DmaMapError::NoFd { iova, size })?;
        let len = usize::try_from(size)
            .ok()
            .filter(|_| size != 0 && iova.checked_add(size).is_some())
            .ok_or(DmaMapError::BadRange { iova, size })?;
        if let Some((&other, _)) = self
            .maps
            .range(..iova + size)
            .next_back()
            .filter(|(&start, region)| start + region.size() as u64 > iova)
        {
            return Err(DmaMapError::Overlap { iova, size, other });
        }
        let region = MmapRegion::from_file(FileOffset::new(fd, offset), len).map_err(|source| {
            DmaMapError::Mmap {
                iova,
                size,
                offset,
                source,
            }
        })?;
        self.maps.insert(iova, region);
        Ok(())
    }

    /// Drops every mapping inside `[iova, iova + size)`; returns how many.
    pub fn unmap(&mut self, iova: u64, size: u64) -> usize {
        let end = iova.saturating_add(size);
        let doomed: Vec<u64> = self
            .maps
            .range(iova..end)
            .filter(|(&start, region)| start.saturating_add(region.size() as u64) <= end)
            .map(|(&start, _)| start)
            .collect();
        for start in &doomed {
            self.maps.remove(start);
        }
        doomed.len()
    }

    pub fn clear(&mut self) {
        self.maps.clear();
    }

    /// `(iova, size)` of each mapping, in IOVA order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.maps
            .iter()
            .map(|(&iova, region)| (iova, region.size() as u64))
            .collect()
    }

    /// The mapping holding all of `[iova, iova + len)`, and the offset in it.
    fn find(&self, iova: u64, len: usize) -> Option<(&MmapRegion, usize)> {
        let (&start, region) = self.maps.range(..=iova).next_back()?;
        let offset = usize::try_from(iova - start).ok()?;
        (offset.checked_add(len)? <= region.size()).then_some((region, offset))
    }

    /// Copies client memory at `iova` into `data`; false if not all mapped.
    pub fn read(&self, iova: u64, data: &mut [u8]) -> bool {
        let Some((region, offset)) = self.find(iova, data.len()) else {
            return false;
        };
        match region.get_slice(offset, data.len()) {
            Ok(slice) => slice.copy_to(data) == data.len(),
            Err(_) => false,
        }
    }

    /// Copies `data` to client memory at `iova`; false, and nothing
    /// written, if not all mapped.
    pub fn write(&self, iova: u64, data: &[u8]) -> bool {
        let Some((region, offset)) = self.find(iova, data.len()) else {
            return false;
        };
        match region.get_slice(offset, data.len()) {
            Ok(slice) => {
                slice.copy_from(data);
                true
            }
            Err(_) => false,
        }
    }
}
