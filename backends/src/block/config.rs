//! The virtio-blk configuration space (`struct virtio_blk_config`).

use super::image::{DiskImage, SECTOR_SIZE};

/// Bytes of config space we answer: up to and including
/// `write_zeroes_may_unmap` and its padding (offset 60).
pub const CONFIG_SPACE_SIZE: usize = 60;

/// Request limits the device advertises and enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLimits {
    /// Maximum data descriptors in one request.
    pub seg_max: u32,
    /// Maximum sectors in one discard segment.
    pub max_discard_sectors: u32,
    /// Maximum discard segments in one request.
    pub max_discard_seg: u32,
    /// Maximum sectors in one write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
    /// Maximum write-zeroes segments in one request.
    pub max_write_zeroes_seg: u32,
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits {
            seg_max: 126,
            max_discard_sectors: 1 << 22,
            max_discard_seg: 32,
            max_write_zeroes_sectors: 1 << 22,
            max_write_zeroes_seg: 32,
        }
    }
}

/// `struct virtio_blk_config` as plain fields; `to_bytes` gives the
/// little-endian layout the guest reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlockConfig {
    /// The config a device over `image` with `num_queues` queues answers.
    pub fn new(image: &DiskImage, limits: &BlockLimits, num_queues: u16) -> Self {
        BlockConfig {
            capacity: image.sectors(),
            size_max: 0,
            seg_max: limits.seg_max,
            blk_size: SECTOR_SIZE as u32,
            writeback: 1,
            num_queues,
            max_discard_sectors: limits.max_discard_sectors,
            max_discard_seg: limits.max_discard_seg,
            discard_sector_alignment: 1,
            max_write_zeroes_sectors: limits.max_write_zeroes_sectors,
            max_write_zeroes_seg: limits.max_write_zeroes_seg,
            write_zeroes_may_unmap: 1,
        }
    }

    /// The config space bytes (geometry and topology left zero).
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut b = [0u8; CONFIG_SPACE_SIZE];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[32] = self.writeback;
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }

    /// Reads `data.len()` bytes at `offset` of the config space; bytes past
    /// its end read as zero, as a vhost-user GET_CONFIG may ask for more.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let bytes = self.to_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i)
                .and_then(|at| bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
}
