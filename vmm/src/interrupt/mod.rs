//! Device interrupts: KVM GSI routes for MSI with an irqfd per vector, and
//! MSI-X table emulation shared by virtio-pci and VFIO devices.

pub mod msix;
pub mod routes;

pub use msix::{MsixConfig, MsixTable};
pub use routes::{GsiRouter, KvmRouting, MsiMessage, Routing};

#[cfg(test)]
mod tests;
