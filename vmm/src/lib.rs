//! A KVM PC machine built around a QEMU-style memory model.
pub mod boot;
pub mod kvm;
