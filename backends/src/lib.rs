//! Block semantics (virtio-blk requests over a disk image) as a library,
//! shared by the in-process virtio-blk device and the vhost-user-blk daemon:
//! two transports, one truth.

pub mod block;
pub mod vhost_user_blk;
