//! The config space a passed-through function shows the guest, made from
//! the device's own.

use crate::pci::config::{CAPABILITIES, SIZE as CONFIG_SIZE, STATUS, STATUS_CAP_LIST};
use crate::pci::ConfigSpace;

const CAP_MSIX: u8 = 0x11;

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

/// Our copy of the device's config space: identity, capabilities and
/// subsystem ids from the device; BARs empty (added as ours); MSI-X
/// disabled with its control bits writable; no INTx.
pub fn virtual_config(raw: &[u8; CONFIG_SIZE]) -> (ConfigSpace, Option<MsixLayout>) {
    let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
    let class = u32_at(0x08) >> 8;
    let mut cfg = ConfigSpace::new(u16_at(0), u16_at(2), class, raw[0x08]);
    cfg.set(0x2c, &raw[0x2c..0x30]);
    cfg.set(0x40, &raw[0x40..]);
    let caps = u16_at(STATUS) & STATUS_CAP_LIST != 0;
    if !caps {
        return (cfg, None);
    }
    cfg.set_u8(CAPABILITIES, raw[CAPABILITIES]);
    cfg.set_u16(STATUS, STATUS_CAP_LIST);
    let mut at = usize::from(raw[CAPABILITIES] & 0xfc);
    for _ in 0..48 {
        if at < 0x40 || at + 12 > CONFIG_SIZE {
            break;
        }
        if raw[at] == CAP_MSIX {
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
            return (cfg, Some(layout));
        }
        at = usize::from(raw[at + 1] & 0xfc);
    }
    (cfg, None)
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
        let (mut cfg, layout) = virtual_config(&edu());
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
        assert!(virtual_config(&raw).1.is_none());
        raw[0x34] = 0xfc; // too close to the end for a capability
        assert!(virtual_config(&raw).1.is_none());
        raw[6] = 0; // no capability list at all
        let (cfg, layout) = virtual_config(&raw);
        assert!(layout.is_none());
        assert_eq!(cfg.u8(0x34), 0);
    }
}
