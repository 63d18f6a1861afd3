//! virtio over PCI (modern, virtio 1.x): the transport's register state and,
//! in later work, the devices.

pub mod common;

pub use common::{CommonConfig, Effect, QueueConfig};
