//! Block semantics (virtio-blk requests over a disk image) as a library, and
//! the `vhost-user-blk` daemon built on it.
