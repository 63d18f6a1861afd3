//! What a VFIO device model needs from wherever the device lives: the
//! kernel (a VFIO device fd) or a vfio-user server. Region and IRQ indices
//! are VFIO's (`VFIO_PCI_*_REGION_INDEX`, `VFIO_PCI_*_IRQ_INDEX`).

use std::fs::File;
use std::os::fd::RawFd;

pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// One region of the device as `VFIO_DEVICE_GET_REGION_INFO` describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    pub size: u64,
}

/// Where the mmap-able parts of a region can be mapped from: `file` at
/// `offset + area.0` for each `(offset in region, size)` area, page aligned
/// (a region without `VFIO_REGION_INFO_FLAG_MMAP` has none).
#[derive(Debug)]
pub struct RegionMmap {
    pub file: File,
    pub offset: u64,
    pub areas: Vec<(u64, u64)>,
}

pub trait VfioBackend: Send {
    /// Region `index`, if the device has it (size may be 0: unimplemented).
    fn region(&self, index: u32) -> Option<RegionInfo>;
    /// Number of vectors of IRQ index `index` (0: none).
    fn irq_count(&self, index: u32) -> u32;
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8])
        -> Result<(), BackendError>;
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Triggers of IRQ index `index`: vector `i` signals `fds[i]`; no fds
    /// disables them all.
    fn set_irq_eventfds(&mut self, index: u32, fds: &[RawFd]) -> Result<(), BackendError>;
    /// The action that unmasks IRQ index `index` (INTx): a write to `fd`
    /// unmasks it (KVM's resamplefd, on the guest's EOI); `None` removes it.
    fn set_irq_unmask_eventfd(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
    ) -> Result<(), BackendError> {
        let _ = fd;
        Err(format!("unmasking IRQ index {index} by eventfd is not supported").into())
    }
    /// Device reset (`VFIO_DEVICE_RESET`).
    fn reset(&mut self) -> Result<(), BackendError>;
    /// The parts of region `index` that may be mapped into memory instead
    /// of trapped, if any.
    fn region_mmap(&self, index: u32) -> Option<RegionMmap> {
        let _ = index;
        None
    }
}

/// The indices a PCI device model uses.
pub use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX as CONFIG_REGION, VFIO_PCI_INTX_IRQ_INDEX as INTX_IRQ,
    VFIO_PCI_MSIX_IRQ_INDEX as MSIX_IRQ, VFIO_PCI_MSI_IRQ_INDEX as MSI_IRQ,
    VFIO_PCI_ROM_REGION_INDEX as ROM_REGION,
};
