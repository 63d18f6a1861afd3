//! The PC machine: its memory map and chipset pieces.

pub mod layout;
pub mod pam;
pub mod requests;

#[cfg(test)]
mod tests;

pub use layout::PcMemory;
pub use requests::{Request, Requests};
