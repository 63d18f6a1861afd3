//! The real mapper: a VFIO container (legacy type1 IOMMU).
//!
//! vfio-ioctls' `vfio_dma_map` always grants read and write; ROM must be
//! read-only to the device, so the map ioctl is issued here with the
//! kernel's struct on the container's descriptor.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
};
use vfio_ioctls::VfioContainer;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;

use crate::dma::{DmaError, DmaMapper, DmaRequest};

const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE, VFIO_BASE + 13);

/// Maps through one VFIO container.
pub struct ContainerMapper {
    container: Arc<VfioContainer>,
}

impl ContainerMapper {
    pub fn new(container: Arc<VfioContainer>) -> Self {
        ContainerMapper { container }
    }
}

impl DmaMapper for ContainerMapper {
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        let mut flags = VFIO_DMA_MAP_FLAG_READ;
        if !req.readonly {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let arg = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr: req.vaddr,
            iova: req.iova,
            size: req.size,
        };
        // SAFETY: the container fd is a VFIO container with an IOMMU set;
        // the kernel reads one struct that outlives the call; the caller
        // keeps `vaddr .. + size` mapped until it is unmapped (this
        // function's contract).
        let ret =
            unsafe { ioctl_with_ref(&self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA(), &arg) };
        if ret != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ENOSPC) {
                // type1 answers ENOSPC only when the container has no
                // mapping left of its budget (dma_entry_limit).
                return Err(DmaError::BudgetExhausted {
                    iova: req.iova,
                    size: req.size,
                    limit: crate::dma::DmaRules::kernel_limit(),
                });
            }
            return Err(DmaError::Map {
                iova: req.iova,
                size: req.size,
                source,
            });
        }
        log::debug!(
            "vfio: mapped {:#x}+{:#x}{}",
            req.iova,
            req.size,
            if req.readonly { " ro" } else { "" }
        );
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DmaError> {
        let len = usize::try_from(size).map_err(|_| DmaError::Unmap {
            iova,
            size,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        self.container
            .vfio_dma_unmap(iova, len)
            .map_err(|e| DmaError::Unmap {
                iova,
                size,
                source: std::io::Error::other(e.to_string()),
            })
    }
}
