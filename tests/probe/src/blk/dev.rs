//! One virtio-blk function: initialisation (3.1.1) and requests (5.2.6).

use core::sync::atomic::{AtomicU64, Ordering};

use super::mmio::{rd, wr};
pub use super::req::*;
use super::timer::Deadline;
use super::transport::*;
use super::virtq::{Virtq, MAX_SIZE, RING_BYTES};
use crate::pci::Bdf;

/// DMA memory: rings, request headers and buffers are bump-allocated from
/// [32 MiB, 48 MiB), usable RAM (the probe needs 64 MiB) outside the image
/// and the pages the RAM and memloop checks use.
const ARENA_BASE: u64 = 32 << 20;
const ARENA_END: u64 = 48 << 20;
static ARENA_NEXT: AtomicU64 = AtomicU64::new(ARENA_BASE);

/// Zeroed, `align`-aligned memory from the arena.
pub fn alloc(size: u64, align: u64) -> Option<u64> {
    let base = ARENA_NEXT.load(Ordering::Relaxed).div_ceil(align) * align;
    if base + size > ARENA_END {
        return None;
    }
    ARENA_NEXT.store(base + size, Ordering::Relaxed);
    for off in (0..size).step_by(8) {
        wr::<u64>(base + off, 0);
    }
    Some(base)
}

pub const MAX_QUEUES: usize = 16;

// Device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const NEEDS_RESET: u8 = 0x40;
const FAILED: u8 = 0x80;

// Feature bits.
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
const WANTED: u64 = F_SEG_MAX
    | F_RO
    | F_BLK_SIZE
    | F_FLUSH
    | F_MQ
    | F_DISCARD
    | F_WRITE_ZEROES
    | F_EVENT_IDX
    | F_VERSION_1;

#[derive(Clone, Copy, Default)]
pub struct BlkConfig {
    pub capacity: u64,
    pub seg_max: u32,
    pub blk_size: u32,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
}

pub struct Dev {
    pub bdf: Bdf,
    pub caps: Caps,
    pub common: Common,
    pub offered: u64,
    pub features: u64,
    pub config: BlkConfig,
    pub nq: usize,
    pub queues: [Virtq; MAX_QUEUES],
    /// Per queue: ring page, slot page.
    pub(super) rings: [(u64, u64); MAX_QUEUES],
    /// First queue vector; the config vector is 0x3f.
    pub vector_base: u8,
    /// Read-back of msix_config and of each queue's vector.
    pub vectors_read: [u16; MAX_QUEUES + 1],
    /// Completions of heads that had no request pending (a device that
    /// completed a request twice).
    pub strays: u32,
}

impl Dev {
    pub fn new(bdf: Bdf, caps: Caps, vector_base: u8) -> Dev {
        const Q: Virtq = Virtq::empty();
        Dev {
            bdf,
            caps,
            common: Common(caps.common.map_or(0, |r| r.addr)),
            offered: 0,
            features: 0,
            config: BlkConfig::default(),
            nq: 0,
            queues: [Q; MAX_QUEUES],
            rings: [(0, 0); MAX_QUEUES],
            vector_base,
            vectors_read: [0; MAX_QUEUES + 1],
            strays: 0,
        }
    }

    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    fn status(&self) -> u8 {
        self.common.r8(DEVICE_STATUS)
    }

    fn set_status(&self, bits: u8) {
        self.common.w8(DEVICE_STATUS, self.status() | bits);
    }

    /// Writes status 0 and waits (up to 1 s) until it reads back 0.
    pub fn reset(&self) -> bool {
        self.common.w8(DEVICE_STATUS, 0);
        let mut deadline = Deadline::after_ms(1000);
        while self.status() != 0 {
            if deadline.expired() {
                return false;
            }
        }
        true
    }

    /// Feature negotiation: up to FEATURES_OK. Returns whether VERSION_1
    /// was accepted and FEATURES_OK stuck.
    pub fn negotiate(&mut self) -> Result<(), &'static str> {
        if !self.reset() {
            return Err("status did not read 0 after reset");
        }
        self.set_status(ACKNOWLEDGE);
        self.set_status(DRIVER);
        let c = self.common;
        c.w32(DEVICE_FEATURE_SELECT, 0);
        let lo = c.r32(DEVICE_FEATURE);
        c.w32(DEVICE_FEATURE_SELECT, 1);
        let hi = c.r32(DEVICE_FEATURE);
        self.offered = u64::from(hi) << 32 | u64::from(lo);
        self.features = self.offered & WANTED;
        c.w32(DRIVER_FEATURE_SELECT, 0);
        c.w32(DRIVER_FEATURE, self.features as u32);
        c.w32(DRIVER_FEATURE_SELECT, 1);
        c.w32(DRIVER_FEATURE, (self.features >> 32) as u32);
        if !self.has(F_VERSION_1) {
            self.set_status(FAILED);
            return Err("VERSION_1 not offered");
        }
        self.set_status(FEATURES_OK);
        if self.status() & FEATURES_OK == 0 {
            self.set_status(FAILED);
            return Err("FEATURES_OK did not stick");
        }
        Ok(())
    }

    /// Reads the device configuration, retrying while config_generation
    /// changes under the reads.
    pub fn read_config(&mut self) {
        let Some(region) = self.caps.device else {
            return;
        };
        // Fields past the structure's length read as 0.
        let u32_at = |off: u64| if off + 4 <= u64::from(region.len) { rd::<u32>(region.addr + off) } else { 0 };
        for _ in 0..100 {
            let gen = self.common.r8(CONFIG_GENERATION);
            let config = BlkConfig {
                capacity: u64::from(u32_at(4)) << 32 | u64::from(u32_at(0)),
                seg_max: u32_at(12),
                blk_size: u32_at(20),
                num_queues: (u32_at(32) >> 16) as u16,
                max_discard_sectors: u32_at(36),
                max_write_zeroes_sectors: u32_at(48),
            };
            if self.common.r8(CONFIG_GENERATION) == gen {
                self.config = config;
                return;
            }
        }
    }

    /// Vector of MSI-X table entry `entry` (0: config, q + 1: queue q).
    pub fn vector(&self, entry: u16) -> u8 {
        if entry == 0 {
            0x3f
        } else {
            self.vector_base + (entry - 1) as u8
        }
    }

    /// After `negotiate`: the device config, MSI-X, every queue, DRIVER_OK.
    /// Ring memory is allocated on the first call and reused after.
    pub fn setup(&mut self) -> Result<(), &'static str> {
        self.read_config();
        let c = self.common;
        let mut nq = 1;
        if self.has(F_MQ) {
            nq = usize::from(self.config.num_queues.max(1));
        }
        nq = nq.min(usize::from(c.r16(NUM_QUEUES)).max(1)).min(MAX_QUEUES);
        self.nq = nq;
        let entries = nq as u16 + 1;
        let msix = self.caps.msix.filter(|m| m.entries >= entries);
        if let Some(m) = &msix {
            for e in 0..entries {
                msix_set(m, e, self.vector(e));
            }
            msix_enable(self.bdf, m);
        }
        let vector_of = |e: u16| if msix.is_some() { e } else { 0xffff };
        c.w16(MSIX_CONFIG, vector_of(0));
        self.vectors_read[0] = c.r16(MSIX_CONFIG);
        let notify = self.caps.notify.map_or(0, |r| r.addr);
        let event_idx = self.has(F_EVENT_IDX);
        for q in 0..nq {
            c.w16(QUEUE_SELECT, q as u16);
            let max = c.r16(QUEUE_SIZE);
            if max == 0 {
                return Err("a queue has size 0");
            }
            // A power of two: ring positions are indices modulo the size.
            let size = 1u16 << (15 - max.min(MAX_SIZE).leading_zeros());
            if self.rings[q].0 == 0 {
                let ring = alloc(RING_BYTES, 4096).ok_or("arena exhausted")?;
                let slots = alloc(u64::from(MAX_SIZE) * SLOT, 4096).ok_or("arena exhausted")?;
                self.rings[q] = (ring, slots);
            }
            c.w16(QUEUE_SIZE, size);
            let off = u64::from(c.r16(QUEUE_NOTIFY_OFF));
            let addr = notify + off * u64::from(self.caps.notify_multiplier);
            let vq = &mut self.queues[q];
            vq.setup(q as u16, size, self.rings[q].0, addr, event_idx);
            c.w64(QUEUE_DESC, vq.desc_addr());
            c.w64(QUEUE_DRIVER, vq.avail_addr());
            c.w64(QUEUE_DEVICE, vq.used_addr());
            c.w16(QUEUE_MSIX_VECTOR, vector_of(q as u16 + 1));
            self.vectors_read[q + 1] = c.r16(QUEUE_MSIX_VECTOR);
            c.w16(QUEUE_ENABLE, 1);
        }
        self.set_status(DRIVER_OK);
        let status = self.status();
        if status & DRIVER_OK == 0 || status & (NEEDS_RESET | FAILED) != 0 {
            return Err("DRIVER_OK not set or device failed");
        }
        Ok(())
    }
}
