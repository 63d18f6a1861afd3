//! vhost-user in the machine: the `vhost` memory listener that keeps every
//! backend's memory table equal to guest RAM, and the vhost-user-blk
//! PCI device.

pub mod blk;
pub mod listener;

#[cfg(test)]
mod blk_tests;
#[cfg(test)]
mod listener_tests;

pub use listener::VhostListener;
