//! VFIO in the machine: the `vfio` memory listener that keeps the IOMMU in
//! step with guest memory, and the PCI device model of a passed-through
//! device (behind vmm-vfio's `VfioBackend`: a kernel VFIO device or a
//! vfio-user server).

mod config;
pub mod device;
mod irqs;
pub mod listener;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod listener_tests;

pub use device::{VfioPci, VfioPciError};
pub use listener::VfioListener;
