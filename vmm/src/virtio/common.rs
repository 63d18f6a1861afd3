//! The virtio-pci common configuration structure (virtio 1.x, 4.1.4.3):
//! feature negotiation, the device status sequence and queue setup.
//!
//! Everything here is written by the guest. Illegal driver actions (changing
//! features after FEATURES_OK, clearing status bits without a reset,
//! DRIVER_OK without FEATURES_OK, touching a queue's setup after enabling
//! it, enabling a queue with a bad size) never panic: they set
//! DEVICE_NEEDS_RESET and the transport signals a configuration change.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

/// Size of the structure in the BAR.
pub const SIZE: u64 = 0x38;
/// "No vector" for MSI-X vector fields.
pub const NO_VECTOR: u16 = 0xffff;

const ACK: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub msix_vector: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            msix_vector: NO_VECTOR,
            ..Default::default()
        }
    }

    /// Why the driver's setup of this queue is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Some(format!(
                "size {} (max {}, a power of two)",
                self.size, self.max_size
            ));
        }
        if self.desc % 16 != 0 || self.driver % 2 != 0 || self.device % 4 != 0 {
            return Some(format!(
                "misaligned rings: desc {:#x} avail {:#x} used {:#x}",
                self.desc, self.driver, self.device
            ));
        }
        None
    }
}

/// What a write asks the transport to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Status 0 was written: reset the device.
    Reset,
    /// DRIVER_OK was set with valid queues: start the device.
    Activate,
    /// The driver did something illegal; DEVICE_NEEDS_RESET is now set and
    /// a configuration-change interrupt is due.
    NeedsReset(String),
}

#[derive(Clone, Debug)]
pub struct CommonConfig {
    pub device_features: u64,
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub msix_config: u16,
    pub status: u8,
    pub config_generation: u8,
    queue_select: u16,
    pub queues: Vec<QueueConfig>,
}

impl CommonConfig {
    /// `device_features` should include VIRTIO_F_VERSION_1; one queue per
    /// entry of `queue_max`.
    pub fn new(device_features: u64, queue_max: &[u16]) -> Self {
        CommonConfig {
            device_features: device_features | 1 << VIRTIO_F_VERSION_1,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max.iter().map(|&m| QueueConfig::new(m)).collect(),
        }
    }

    /// Back to the state after power-on (keeps the device's features).
    pub fn reset(&mut self) {
        *self = CommonConfig {
            device_features: self.device_features,
            config_generation: self.config_generation.wrapping_add(1),
            queues: self
                .queues
                .iter()
                .map(|q| QueueConfig::new(q.max_size))
                .collect(),
            ..CommonConfig::new(self.device_features, &[])
        };
    }

    pub fn driver_ok(&self) -> bool {
        self.status & DRIVER_OK != 0 && self.status & NEEDS_RESET == 0
    }

    fn queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn needs_reset(&mut self, why: String) -> Effect {
        self.status |= NEEDS_RESET;
        Effect::NeedsReset(why)
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let v: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.msix_config),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => self.queue().map_or(0, |q| u64::from(q.size)),
            (0x1a, 2) => self
                .queue()
                .map_or(NO_VECTOR.into(), |q| u64::from(q.msix_vector)),
            (0x1c, 2) => self.queue().map_or(0, |q| u64::from(q.ready)),
            // Every queue notifies at the start of its own 4-byte slot.
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20, 4 | 8) => self.queue().map_or(0, |q| q.desc),
            (0x24, 4) => self.queue().map_or(0, |q| q.desc >> 32),
            (0x28, 4 | 8) => self.queue().map_or(0, |q| q.driver),
            (0x2c, 4) => self.queue().map_or(0, |q| q.driver >> 32),
            (0x30, 4 | 8) => self.queue().map_or(0, |q| q.device),
            (0x34, 4) => self.queue().map_or(0, |q| q.device >> 32),
            _ => 0,
        };
        let b = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&b[..n]);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) => {
                if self.status & FEATURES_OK != 0 {
                    return self.needs_reset("driver features changed after FEATURES_OK".into());
                }
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                    _ => {}
                }
            }
            (0x10, 2) => self.msix_config = v as u16,
            (0x14, 1) => return self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18 | 0x1a | 0x1c | 0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, _) => {
                return self.write_queue(offset, data.len(), v)
            }
            _ => {}
        }
        Effect::None
    }

    fn write_status(&mut self, new: u8) -> Effect {
        if new == 0 {
            self.reset();
            return Effect::Reset;
        }
        let old = self.status;
        if new & old != old & !NEEDS_RESET {
            return self.needs_reset(format!("status {old:#x} -> {new:#x} clears bits"));
        }
        let mut new = new & !NEEDS_RESET | (old & NEEDS_RESET);
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 {
            let extra = self.driver_features & !self.device_features;
            let v1 = self.driver_features & 1 << VIRTIO_F_VERSION_1 != 0;
            if extra != 0 || !v1 {
                // The driver reads FEATURES_OK back to learn of the refusal.
                new &= !FEATURES_OK;
                log::info!(
                    "virtio: refusing driver features {:#x} (unknown {extra:#x}, VERSION_1 {v1})",
                    self.driver_features
                );
            }
        }
        if new & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            if new & FEATURES_OK == 0 || new & (ACK | DRIVER) != ACK | DRIVER {
                self.status = new & !DRIVER_OK;
                return self.needs_reset(format!("DRIVER_OK in status {new:#x}"));
            }
            if let Some((i, why)) = self
                .queues
                .iter()
                .enumerate()
                .filter(|(_, q)| q.ready)
                .find_map(|(i, q)| q.problem().map(|w| (i, w)))
            {
                self.status = new;
                return self.needs_reset(format!("queue {i}: {why}"));
            }
            self.status = new;
            return Effect::Activate;
        }
        if new & FAILED != 0 {
            log::info!("virtio: the driver gave up (FAILED)");
        }
        self.status = new;
        Effect::None
    }

    fn write_queue(&mut self, offset: u64, len: usize, v: u64) -> Effect {
        let locked = self.status & DRIVER_OK != 0;
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return Effect::None;
        };
        if (q.ready || locked) && offset != 0x1a {
            let sel = self.queue_select;
            return self.needs_reset(format!("queue {sel} setup changed after it was enabled"));
        }
        let lo = |old: u64| (old & !0xffff_ffff) | (v & 0xffff_ffff);
        let hi = |old: u64| (old & 0xffff_ffff) | (v << 32);
        match (offset, len) {
            (0x18, 2) => q.size = v as u16,
            (0x1a, 2) => q.msix_vector = v as u16,
            (0x1c, 2) if v == 1 => q.ready = true,
            (0x20, 8) => q.desc = v,
            (0x20, 4) => q.desc = lo(q.desc),
            (0x24, 4) => q.desc = hi(q.desc),
            (0x28, 8) => q.driver = v,
            (0x28, 4) => q.driver = lo(q.driver),
            (0x2c, 4) => q.driver = hi(q.driver),
            (0x30, 8) => q.device = v,
            (0x30, 4) => q.device = lo(q.device),
            (0x34, 4) => q.device = hi(q.device),
            _ => {}
        }
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(c: &mut CommonConfig, off: u64, v: u64, len: usize) -> Effect {
        c.write(off, &v.to_le_bytes()[..len])
    }
    fn r(c: &CommonConfig, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// A driver's normal bring-up of queue 0 at size 128.
    fn bring_up(c: &mut CommonConfig, features: u64) -> Effect {
        w(c, 0x14, u64::from(ACK), 1);
        w(c, 0x14, u64::from(ACK | DRIVER), 1);
        w(c, 0x08, 0, 4);
        w(c, 0x0c, features & 0xffff_ffff, 4);
        w(c, 0x08, 1, 4);
        w(c, 0x0c, features >> 32, 4);
        w(c, 0x14, u64::from(ACK | DRIVER | FEATURES_OK), 1);
        w(c, 0x16, 0, 2);
        w(c, 0x18, 128, 2);
        w(c, 0x20, 0x10_0000, 8);
        w(c, 0x28, 0x10_1000, 4);
        w(c, 0x30, 0x10_2000, 4);
        w(c, 0x1a, 1, 2);
        w(c, 0x1c, 1, 2);
        w(
            c,
            0x14,
            u64::from(ACK | DRIVER | FEATURES_OK | DRIVER_OK),
            1,
        )
    }

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn a_proper_bring_up_activates_with_the_queue_as_programmed() {
        let mut c = CommonConfig::new(1 << 9, &[256, 256]);
        assert_eq!(r(&c, 0x12, 2), 2);
        w(&mut c, 0x00, 1, 4);
        assert_eq!(r(&c, 0x04, 4), 1, "VERSION_1 is bit 32");
        assert_eq!(bring_up(&mut c, V1 | 1 << 9), Effect::Activate);
        assert!(c.driver_ok());
        let q = &c.queues[0];
        assert_eq!(
            (q.size, q.desc, q.driver, q.device, q.msix_vector, q.ready),
            (128, 0x10_0000, 0x10_1000, 0x10_2000, 1, true)
        );
        assert!(!c.queues[1].ready);
        assert_eq!(w(&mut c, 0x14, 0, 1), Effect::Reset);
        assert_eq!(
            (c.status, c.queues[0].ready, c.queues[0].size),
            (0, false, 256)
        );
        assert_eq!(c.config_generation, 1);
    }

    #[test]
    fn unknown_features_or_no_version_1_leave_features_ok_clear() {
        let mut c = CommonConfig::new(0, &[64]);
        w(&mut c, 0x14, u64::from(ACK | DRIVER), 1);
        w(&mut c, 0x08, 0, 4);
        w(&mut c, 0x0c, 1 << 5, 4);
        w(&mut c, 0x14, u64::from(ACK | DRIVER | FEATURES_OK), 1);
        assert_eq!(r(&c, 0x14, 1) as u8 & FEATURES_OK, 0);
        // Then DRIVER_OK without FEATURES_OK is illegal.
        assert!(matches!(
            w(&mut c, 0x14, u64::from(ACK | DRIVER | DRIVER_OK), 1),
            Effect::NeedsReset(_)
        ));
        assert_ne!(c.status & NEEDS_RESET, 0);
        assert!(!c.driver_ok());
    }

    #[test]
    fn illegal_driver_actions_set_needs_reset_and_never_panic() {
        let mut c = CommonConfig::new(0, &[64]);
        assert_eq!(
            bring_up(&mut c, V1),
            Effect::NeedsReset("queue 0: size 128 (max 64, a power of two)".into())
        );
        let mut c = CommonConfig::new(0, &[256]);
        assert_eq!(bring_up(&mut c, V1), Effect::Activate);
        assert!(
            matches!(w(&mut c, 0x18, 64, 2), Effect::NeedsReset(_)),
            "queue change after enable"
        );
        let mut c = CommonConfig::new(0, &[256]);
        w(&mut c, 0x14, u64::from(ACK | DRIVER), 1);
        assert!(
            matches!(w(&mut c, 0x14, u64::from(ACK), 1), Effect::NeedsReset(_)),
            "cleared DRIVER"
        );
        let mut c = CommonConfig::new(0, &[256]);
        bring_up(&mut c, V1);
        assert!(
            matches!(w(&mut c, 0x0c, 0, 4), Effect::NeedsReset(_)),
            "features after FEATURES_OK"
        );
        // Garbage accesses: wrong widths, offsets past the end, a queue
        // select past the last queue.
        let mut c = CommonConfig::new(0, &[256]);
        for off in 0..0x40 {
            for len in [1usize, 2, 3, 4, 8] {
                w(&mut c, off, u64::MAX, len);
                r(&c, off, len);
            }
        }
        w(&mut c, 0x14, 0, 1);
        w(&mut c, 0x16, 9, 2);
        assert_eq!(r(&c, 0x18, 2), 0, "no queue 9");
        assert_eq!(w(&mut c, 0x18, 16, 2), Effect::None);
    }
}
