//! The i440FX host bridge (00:00.0, 8086:1237) whose PAM registers switch
//! the legacy window, and the PIIX3 ISA bridge (00:01.0, 8086:7000, the
//! first function of a multi-function device, as in QEMU's `pc`).

use std::sync::{Arc, Mutex};

use super::config::{ConfigSpace, HEADER_TYPE};
use super::function::{PciDevice, PciFunction};
use crate::machine::pam::{Pam, PAM0, PAM_REGS};
use crate::memory::Transaction;

pub struct HostBridge {
    pam: Arc<Mutex<Pam>>,
}

impl HostBridge {
    pub fn function(pam: Arc<Mutex<Pam>>) -> PciFunction {
        let mut cfg = ConfigSpace::new(0x8086, 0x1237, 0x06_0000, 0x02);
        // PAM0 has only the BIOS segment's nibble; PAM1-6 two segments each.
        cfg.set_writable(usize::from(PAM0), &[0x30]);
        let pam_regs = usize::from(PAM_REGS) - 1;
        cfg.set_writable(usize::from(PAM0) + 1, &vec![0x33; pam_regs]);
        PciFunction::new("i440FX", cfg, Box::new(HostBridge { pam }))
    }
}

impl PciDevice for HostBridge {
    fn config_written(&mut self, tx: &Transaction<'_>, cfg: &ConfigSpace, off: usize, len: usize) {
        let (lo, hi) = (usize::from(PAM0), usize::from(PAM0 + PAM_REGS));
        let mut pam = self.pam.lock().unwrap_or_else(|e| e.into_inner());
        for reg in off.max(lo)..(off + len).min(hi) {
            pam.write_register(tx, reg as u8, cfg.u8(reg));
        }
    }

    fn reset(&mut self, tx: &Transaction<'_>) {
        self.pam.lock().unwrap_or_else(|e| e.into_inner()).reset(tx);
    }
}

/// The PIIX3 has no behaviour of its own here yet; its reset-control
/// register lives with configuration mechanism 1 (see bus.rs).
pub struct IsaBridge;

impl IsaBridge {
    pub fn function() -> PciFunction {
        let mut cfg = ConfigSpace::new(0x8086, 0x7000, 0x06_0100, 0x00);
        cfg.set_u8(HEADER_TYPE, 0x80);
        PciFunction::new("PIIX3", cfg, Box::new(IsaBridge))
    }
}

impl PciDevice for IsaBridge {}
