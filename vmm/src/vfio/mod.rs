//! VFIO in the machine: the `vfio` memory listener that keeps the IOMMU in
//! step with guest memory.

pub mod listener;

#[cfg(test)]
mod listener_tests;

pub use listener::VfioListener;
