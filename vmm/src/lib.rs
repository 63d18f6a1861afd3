//! A KVM PC machine built around a QEMU-style memory model.

pub mod acpi;
pub mod boot;
pub mod cli;
pub mod devices;
pub mod interrupt;
pub mod iothread;
pub mod kvm;
pub mod machine;
pub mod memory;
pub mod pci;
pub mod qmp;
pub mod ratelimit;
pub mod vfio;
pub mod vhost_user;
pub mod virtio;
