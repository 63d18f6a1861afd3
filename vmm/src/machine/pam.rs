//! i440FX Programmable Attribute Map: the legacy window 0xc0000-0xfffff
//! switched, per segment, between RAM, read-only RAM and the PCI bus.
//!
//! As in QEMU, each segment has four aliases mapped over it at priority 1,
//! of which exactly one is enabled: mode 0 (disabled) routes to PCI, 1 (read
//! enable) is read-only RAM, 2 (write enable) is approximated by RAM as QEMU
//! does, 3 is RAM. Switching a segment is one transaction.

use crate::memory::{Memory, MemoryError, MemoryRegion, Transaction};

/// First PAM register in the host bridge's configuration space.
pub const PAM0: u8 = 0x59;
/// Number of PAM registers (0x59-0x5f).
pub const PAM_REGS: u8 = 7;
/// Segments: 0xf0000-0xfffff, then twelve 16 KiB pieces from 0xc0000.
pub const SEGMENTS: usize = 13;

/// Where segment `idx` starts and how long it is.
pub fn segment(idx: usize) -> (u64, u64) {
    if idx == 0 {
        (0xf0000, 0x10000)
    } else {
        (0xc0000 + (idx as u64 - 1) * 0x4000, 0x4000)
    }
}

/// The register holding segment `idx`'s attribute, and its bit shift.
pub fn register_of(idx: usize) -> (u8, u8) {
    let reg = PAM0 + idx.div_ceil(2) as u8;
    let shift = if idx & 1 == 1 { 0 } else { 4 };
    (reg, shift)
}

/// The attribute modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PamMode {
    Pci = 0,
    ReadOnly = 1,
    WriteOnly = 2,
    ReadWrite = 3,
}

impl PamMode {
    pub fn from_bits(v: u8) -> PamMode {
        match v & 3 {
            0 => PamMode::Pci,
            1 => PamMode::ReadOnly,
            2 => PamMode::WriteOnly,
            _ => PamMode::ReadWrite,
        }
    }
}

struct Segment {
    /// Indexed by mode.
    aliases: [MemoryRegion; 4],
    current: PamMode,
}

/// The thirteen PAM segments of one host bridge.
pub struct Pam {
    segments: Vec<Segment>,
}

impl Pam {
    /// Maps every segment's aliases into `system` with the PCI one enabled,
    /// as after reset.
    pub fn new(
        mem: &Memory,
        system: &MemoryRegion,
        ram: &MemoryRegion,
        pci: &MemoryRegion,
    ) -> Result<Pam, MemoryError> {
        let tx = mem.begin();
        let mut segments = Vec::with_capacity(SEGMENTS);
        for idx in 0..SEGMENTS {
            let (start, size) = segment(idx);
            let aliases = [
                MemoryRegion::alias("pam-pci", pci, start, size),
                MemoryRegion::alias("pam-rom", ram, start, size),
                MemoryRegion::alias("pam-pci", ram, start, size),
                MemoryRegion::alias("pam-ram", ram, start, size),
            ];
            tx.set_readonly(&aliases[PamMode::ReadOnly as usize], true);
            for (mode, a) in aliases.iter().enumerate() {
                tx.set_enabled(a, mode == PamMode::Pci as usize);
                tx.add_subregion_overlap(system, start, a, 1)?;
            }
            segments.push(Segment {
                aliases,
                current: PamMode::Pci,
            });
        }
        tx.commit()?;
        Ok(Pam { segments })
    }

    pub fn mode(&self, idx: usize) -> Option<PamMode> {
        self.segments.get(idx).map(|s| s.current)
    }

    /// Switches segment `idx` inside `tx`. The mode is applied to the
    /// tree at once; if the transaction is refused, the undo restores the
    /// aliases, and [`Pam::sync`] re-reads which one is enabled.
    pub fn set_mode(&mut self, tx: &Transaction<'_>, idx: usize, mode: PamMode) {
        let Some(seg) = self.segments.get_mut(idx) else {
            return;
        };
        if seg.current == mode {
            return;
        }
        tx.set_enabled(&seg.aliases[seg.current as usize], false);
        tx.set_enabled(&seg.aliases[mode as usize], true);
        seg.current = mode;
    }

    /// Applies a write of `value` to PAM register `reg` (0x59-0x5f).
    pub fn write_register(&mut self, tx: &Transaction<'_>, reg: u8, value: u8) {
        for idx in 0..SEGMENTS {
            let (r, shift) = register_of(idx);
            if r == reg {
                self.set_mode(tx, idx, PamMode::from_bits(value >> shift));
            }
        }
    }

    /// Routes every segment to PCI again, as after a hardware reset.
    pub fn reset(&mut self, tx: &Transaction<'_>) {
        for idx in 0..SEGMENTS {
            self.set_mode(tx, idx, PamMode::Pci);
        }
    }

    /// Re-derives each segment's mode from which alias is enabled (after a
    /// refused transaction undid a switch).
    pub fn sync(&mut self) {
        for seg in &mut self.segments {
            if let Some(m) = seg.aliases.iter().position(|a| a.is_enabled()) {
                seg.current = PamMode::from_bits(m as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_registers_follow_the_i440fx_datasheet() {
        assert_eq!(segment(0), (0xf0000, 0x10000));
        assert_eq!(segment(1), (0xc0000, 0x4000));
        assert_eq!(segment(12), (0xec000, 0x4000));
        assert_eq!(register_of(0), (0x59, 4));
        assert_eq!(register_of(1), (0x5a, 0));
        assert_eq!(register_of(2), (0x5a, 4));
        assert_eq!(register_of(12), (0x5f, 4));
    }
}
