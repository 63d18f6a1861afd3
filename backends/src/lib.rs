//! Block semantics (virtio-blk requests over a disk image) as a library, and
//! the `vhost-user-blk` daemon built on it.

pub mod block;
pub mod vhost_user_blk;
