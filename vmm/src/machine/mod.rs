//! The PC machine: its memory map and chipset pieces.

pub mod layout;
pub mod pam;

#[cfg(test)]
mod tests;

pub use layout::PcMemory;
