//! The virtio-blk configuration space (struct virtio_blk_config), so the
//! in-process device and the daemon answer the same bytes.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

use super::request::Limits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    pub capacity: u64,
    pub seg_max: u32,
    pub blk_size: u32,
    pub num_queues: u16,
    pub limits: Limits,
}

impl BlkConfig {
    /// The device features this configuration implies.
    pub fn features(&self, readonly: bool) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if self.num_queues > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    /// The structure's bytes (little endian, 60 bytes as in virtio 1.2).
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 60];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) unused: no SIZE_MAX feature.
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // geometry (16) unused.
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        // topology (24..32) zero.
        b[32] = 0; // writeback
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.limits.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.limits.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        b[48..52].copy_from_slice(&self.limits.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.limits.max_write_zeroes_seg.to_le_bytes());
        b[56] = 1; // write_zeroes_may_unmap
        b
    }
}
