//! Device interrupts: KVM GSI routes for MSI with an irqfd per vector,
//! MSI-X table emulation shared by virtio-pci and VFIO devices, and the
//! MSI capability's vectors.

pub mod msi;
pub mod msix;
pub mod routes;

pub use msi::{MsiConfig, MsiVectors};
pub use msix::{MsixConfig, MsixTable};
pub use routes::{GsiRouter, KvmRouting, MsiMessage, Routing};

#[cfg(test)]
mod tests;
