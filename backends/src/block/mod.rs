//! virtio-blk semantics shared by the in-process device and the
//! vhost-user-blk daemon: a disk image, request parsing and execution, and
//! the device configuration space.

mod config;
mod image;
mod layout;
pub mod queue;
pub(crate) mod ratelimit;
mod request;

#[cfg(test)]
mod tests;

pub use config::{BlockConfig, BlockLimits, CONFIG_SPACE_SIZE};
pub use image::{DiskImage, ImageError, ImageOptions, ID_BYTES, SECTOR_SIZE};
pub use request::{BlockEngine, RequestError, Status};
