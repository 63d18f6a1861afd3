//! The config space a passed-through function shows the guest, made from
//! the device's own.

use crate::interrupt::{MsiConfig, MsiMessage};
use crate::pci::config::{CAPABILITIES, SIZE as CONFIG_SIZE, STATUS, STATUS_CAP_LIST};
use crate::pci::ConfigSpace;

const CAP_MSI: u8 = 0x05;
const CAP_MSIX: u8 = 0x11;
/// MSI control: enable, Multiple Message Capable, Multiple Message
/// Enable, 64-bit address, per-vector masking.
const MSI_ENABLE: u16 = 1;
const MSI_MMC: u16 = 0x000e;
const MSI_MME: u16 = 0x0070;
const MSI_64BIT: u16 = 0x0080;
const MSI_PVM: u16 = 0x0100;

/// Where the MSI-X capability puts things.
#[derive(Clone, Copy, Debug)]
pub struct MsixLayout {
    pub cap: usize,
    pub vectors: u16,
    pub table_bar: usize,
    pub table_offset: u64,
    pub pba_bar: usize,
    pub pba_offset: u64,
}

/// Where the MSI capability puts things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiLayout {
    pub cap: usize,
    /// Vectors the device can do (Multiple Message Capable), 1 to 32.
    pub vectors: u16,
    pub is64: bool,
    pub per_vector_mask: bool,
}

impl MsiLayout {
    fn data_offset(&self) -> usize {
        self.cap + if self.is64 { 0x0c } else { 0x08 }
    }

    fn mask_offset(&self) -> Option<usize> {
        self.per_vector_mask.then(|| self.data_offset() + 4)
    }

    /// Bytes the capability takes.
    fn len(&self) -> usize {
        self.data_offset() + if self.per_vector_mask { 12 } else { 2 } - self.cap
    }

    /// Whether a config write to `[off, off + len)` touches the capability.
    pub fn touched(&self, off: usize, len: usize) -> bool {
        off < self.cap + self.len() && self.cap < off + len
    }

    /// What the guest programmed, read from our config space.
    pub fn read(&self, cfg: &ConfigSpace) -> MsiConfig {
        let ctl = cfg.u16(self.cap + 2);
        let lo = u64::from(cfg.u32(self.cap + 4));
        let hi = if self.is64 {
            u64::from(cfg.u32(self.cap + 8))
        } else {
            0
        };
        MsiConfig {
            enabled: ctl & MSI_ENABLE != 0,
            vectors: 1 << ((ctl & MSI_MME) >> 4).min(5),
            msg: MsiMessage {
                addr: hi << 32 | lo,
                data: u32::from(cfg.u16(self.data_offset())),
            },
            mask: self.mask_offset().map_or(0, |o| cfg.u32(o)),
        }
    }
}

/// The interrupt capabilities found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub msix: Option<MsixLayout>,
    pub msi: Option<MsiLayout>,
}

/// Our copy of the device's config space: identity, capabilities and
/// subsystem ids from the device; BARs empty (added as ours); MSI-X and
/// MSI disabled with their guest-programmable fields writable; no INTx.
pub fn virtual_config(raw: &[u8; CONFIG_SIZE]) -> (ConfigSpace, Caps) {
    let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
    let class = u32_at(0x08) >> 8;
    let mut cfg = ConfigSpace::new(u16_at(0), u16_at(2), class, raw[0x08]);
    cfg.set(0x2c, &raw[0x2c..0x30]);
    cfg.set(0x40, &raw[0x40..]);
    let mut caps = Caps::default();
    if u16_at(STATUS) & STATUS_CAP_LIST == 0 {
        return (cfg, caps);
    }
    cfg.set_u8(CAPABILITIES, raw[CAPABILITIES]);
    cfg.set_u16(STATUS, STATUS_CAP_LIST);
    let mut at = usize::from(raw[CAPABILITIES] & 0xfc);
    for _ in 0..48 {
        if at < 0x40 || at + 12 > CONFIG_SIZE {
            break;
        }
        if raw[at] == CAP_MSI && caps.msi.is_none() {
            let ctl = u16_at(at + 2);
            let l = MsiLayout {
                cap: at,
                vectors: 1 << ((ctl & MSI_MMC) >> 1).min(5),
                is64: ctl & MSI_64BIT != 0,
                per_vector_mask: ctl & MSI_PVM != 0,
            };
            if at + l.len() <= CONFIG_SIZE {
                cfg.set_u16(at + 2, ctl & (MSI_MMC | MSI_64BIT | MSI_PVM));
                cfg.set(at + 4, &vec![0; l.len() - 4]);
                cfg.set_writable(at + 2, &(MSI_ENABLE | MSI_MME).to_le_bytes());
                cfg.set_writable(at + 4, &0xffff_fffcu32.to_le_bytes());
                if l.is64 {
                    cfg.set_writable(at + 8, &[0xff; 4]);
                }
                cfg.set_writable(l.data_offset(), &[0xff; 2]);
                if let Some(m) = l.mask_offset() {
                    let bits = if l.vectors >= 32 {
                        u32::MAX
                    } else {
                        (1u32 << l.vectors) - 1
                    };
                    cfg.set_writable(m, &bits.to_le_bytes());
                }
                caps.msi = Some(l);
            }
        }
        if raw[at] == CAP_MSIX && caps.msix.is_none() {
            let ctl = u16_at(at + 2);
            let (table, pba) = (u32_at(at + 4), u32_at(at + 8));
            cfg.set_u16(at + 2, ctl & 0x7ff);
            cfg.set_writable(at + 2, &[0, 0xc0]);
            let layout = MsixLayout {
                cap: at,
                vectors: (ctl & 0x7ff) + 1,
                table_bar: (table & 7) as usize,
                table_offset: u64::from(table & !7),
                pba_bar: (pba & 7) as usize,
                pba_offset: u64::from(pba & !7),
            };
            caps.msix = Some(layout);
        }
        at = usize::from(raw[at + 1] & 0xfc);
    }
    (cfg, caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// edu's config space as vfio-user-edu serves it, BARs programmed.
    fn edu() -> [u8; CONFIG_SIZE] {
        let mut raw = [0u8; CONFIG_SIZE];
        raw[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
        raw[6] = 0x10;
        raw[8..12].copy_from_slice(&[0x10, 0, 0xff, 0]);
        raw[0x10..0x14].copy_from_slice(&0xfe00_0000u32.to_le_bytes());
        raw[0x2c..0x30].copy_from_slice(&0x1100_1af4u32.to_le_bytes());
        raw[0x34] = 0x40;
        // MSI-X: 2 vectors, enabled, table at BAR1+0, PBA at BAR1+0x800.
        raw[0x40..0x4c].copy_from_slice(&[0x11, 0, 0x01, 0x80, 1, 0, 0, 0, 1, 8, 0, 0]);
        raw
    }

    #[test]
    fn ids_and_caps_kept_bars_ours_msix_found_disabled_and_writable() {
        let (mut cfg, caps) = virtual_config(&edu());
        let layout = caps.msix;
        assert_eq!((cfg.u16(0), cfg.u16(2)), (0x1234, 0x11e8));
        assert_eq!(cfg.u32(0x08) >> 8, 0x00ff00, "class");
        assert_eq!(cfg.u32(0x2c), 0x1100_1af4, "subsystem");
        assert_eq!(cfg.u32(0x10), 0, "the device's BAR value is not ours");
        let l = layout.expect("MSI-X found");
        assert_eq!((l.cap, l.vectors), (0x40, 2));
        assert_eq!((l.table_bar, l.table_offset), (1, 0));
        assert_eq!((l.pba_bar, l.pba_offset), (1, 0x800));
        assert_eq!(cfg.u16(0x42), 1, "MSI-X starts disabled");
        cfg.write(0x42, &0xffffu16.to_le_bytes());
        assert_eq!(cfg.u16(0x42), 0xc001, "enable and mask writable, size not");
    }

    #[test]
    fn a_capability_list_that_loops_or_runs_off_the_end_is_survived() {
        let mut raw = edu();
        raw[0x40] = 0x09;
        raw[0x41] = 0x40; // points at itself
        assert!(virtual_config(&raw).1.msix.is_none());
        raw[0x34] = 0xfc; // too close to the end for a capability
        assert!(virtual_config(&raw).1.msix.is_none());
        raw[6] = 0; // no capability list at all
        let (cfg, caps) = virtual_config(&raw);
        assert!(caps.msix.is_none());
        assert_eq!(cfg.u8(0x34), 0);
    }

    /// edu's MSI capability as QEMU 7.2 lays it out: 1 vector, 64-bit.
    fn edu_msi() -> [u8; CONFIG_SIZE] {
        let mut raw = edu();
        raw[0x34] = 0x40;
        raw[0x40..0x4e].copy_from_slice(&[0x05, 0, 0x80, 0, 0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 0x41, 0]);
        raw
    }

    #[test]
    fn msi_found_disabled_with_address_data_and_enable_writable() {
        let (mut cfg, caps) = virtual_config(&edu_msi());
        let l = caps.msi.expect("MSI found");
        assert!(caps.msix.is_none());
        assert_eq!(
            (l.cap, l.vectors, l.is64, l.per_vector_mask),
            (0x40, 1, true, false)
        );
        assert_eq!(cfg.u16(0x42), 0x80, "disabled, 64-bit kept");
        assert_eq!(cfg.u32(0x44), 0, "the host's address is not shown");
        assert!(!l.read(&cfg).enabled);
        cfg.write(0x44, &0xfee0_1003u32.to_le_bytes());
        cfg.write(0x48, &1u32.to_le_bytes());
        cfg.write(0x4c, &0x4041u16.to_le_bytes());
        cfg.write(0x42, &0xffffu16.to_le_bytes());
        let c = l.read(&cfg);
        assert!(c.enabled);
        assert_eq!(
            c.msg.addr, 0x1_fee0_1000,
            "low two address bits are not writable"
        );
        assert_eq!(c.msg.data, 0x4041);
        assert_eq!(cfg.u16(0x42) & !0x0070, 0x81, "only enable and MME change");
        assert!(l.touched(0x4c, 2) && !l.touched(0x4e, 2) && !l.touched(0x3c, 4));
    }

    #[test]
    fn msi_with_per_vector_masks_and_32_bit_addresses() {
        let mut raw = edu_msi();
        // 8 vectors capable, 32-bit, per-vector masking.
        raw[0x42..0x44].copy_from_slice(&0x0106u16.to_le_bytes());
        let (mut cfg, caps) = virtual_config(&raw);
        let l = caps.msi.unwrap();
        assert_eq!((l.vectors, l.is64, l.per_vector_mask), (8, false, true));
        cfg.write(0x48, &0x4000u16.to_le_bytes()); // data
        cfg.write(0x4c, &0xffff_ffffu32.to_le_bytes()); // mask
        cfg.write(0x42, &0x0031u16.to_le_bytes()); // enable, 8 vectors
        let c = l.read(&cfg);
        assert_eq!((c.vectors, c.mask, c.msg.data), (8, 0xff, 0x4000));
    }
}
