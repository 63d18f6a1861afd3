//! virtio over PCI (modern, virtio 1.x): the transport's register state,
//! the transport itself, and the devices behind it.

pub mod blk;
pub mod common;
pub mod device;
pub mod pci;

#[cfg(test)]
mod tests;

pub use common::{CommonConfig, Effect, QueueConfig};
pub use device::{Activation, VirtioDevice};
pub use pci::VirtioPci;
