//! What a VFIO device model needs from wherever the device lives: the
//! kernel (a VFIO device fd) or a vfio-user server. Region and IRQ indices
//! are VFIO's (`VFIO_PCI_*_REGION_INDEX`, `VFIO_PCI_*_IRQ_INDEX`).

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
    /// Device reset (`VFIO_DEVICE_RESET`).
    fn reset(&mut self) -> Result<(), BackendError>;
}

/// The indices a PCI device model uses.
pub use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX as CONFIG_REGION, VFIO_PCI_MSIX_IRQ_INDEX as MSIX_IRQ,
};
