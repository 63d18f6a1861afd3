//! KVM: the memory listeners that follow the memory model.

pub mod ioevents;
pub mod memslots;

#[cfg(test)]
mod listener_tests;
