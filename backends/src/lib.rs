//! Block semantics (virtio-blk requests over a disk image) as a library, and
//! the `vhost-user-blk` daemon built on it; the `vfio-user-edu` test device.

pub mod block;
pub mod vfio_user_edu;
pub mod vhost_user_blk;
