//! virtio-blk requests over a raw disk image.

pub mod config;
pub mod disk;
pub mod request;

#[cfg(test)]
mod tests;

pub use config::BlkConfig;
pub use disk::{DiskError, DiskImage};
pub use request::{process, Completion, Limits, RequestError};

pub const SECTOR: u64 = 512;
