//! Base address registers: sizing through the write masks, and mapping the
//! BAR's region where the guest put it when decoding is on.
//!
//! The expansion ROM BAR (0x30, [`BarKind::Rom`], index [`ROM_INDEX`]) is
//! a 32-bit memory BAR that decodes only while its enable bit (bit 0) and
//! the command register's memory bit are both set; its size is at least
//! 2 KiB.
//!
//! Where a BAR is mapped is read from its region, not kept on the side: if
//! a listener refuses the transaction, the rollback restores the tree and
//! with it the truth about the BAR.

use super::config::{ConfigSpace, BAR0, CMD_IO, CMD_MEMORY, COMMAND, ROM_BAR, ROM_ENABLE};
use crate::memory::{MemoryError, MemoryRegion, Transaction};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
    /// The expansion ROM (config 0x30); always index [`ROM_INDEX`].
    Rom,
}

/// The index a ROM BAR goes by (VFIO's `VFIO_PCI_ROM_REGION_INDEX` too).
pub const ROM_INDEX: usize = 6;
/// The smallest ROM BAR: address bits 11 and up.
pub const ROM_MIN: u64 = 0x800;

#[derive(Clone, Debug)]
pub struct Bar {
    pub index: usize,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub size: u64,
    pub region: MemoryRegion,
}

impl Bar {
    pub fn offset(&self) -> usize {
        match self.kind {
            BarKind::Rom => ROM_BAR,
            _ => BAR0 + self.index * 4,
        }
    }

    /// The flag bits in the low dword.
    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => 1,
            BarKind::Mem32 => u32::from(self.prefetchable) << 3,
            BarKind::Mem64 => 0b100 | u32::from(self.prefetchable) << 3,
            BarKind::Rom => 0,
        }
    }

    /// Writes the flags and the masks that make sizing work: address bits
    /// below the size are read-only zero.
    pub fn install(&self, cfg: &mut ConfigSpace) {
        let mask = !(self.size - 1);
        let writable = match self.kind {
            BarKind::Io => (mask as u32) & !0b11,
            BarKind::Rom => ((mask as u32) & !(ROM_MIN as u32 - 1)) | ROM_ENABLE,
            _ => (mask as u32) & !0b1111,
        };
        cfg.set_u32(self.offset(), self.flags());
        cfg.set_writable(self.offset(), &writable.to_le_bytes());
        if self.kind == BarKind::Mem64 {
            cfg.set_u32(self.offset() + 4, 0);
            cfg.set_writable(self.offset() + 4, &((mask >> 32) as u32).to_le_bytes());
        }
    }

    /// Where the guest wants the BAR, or None if it is not decoded or its
    /// address is unusable (zero, wrapping, past its address space, or
    /// half-written during sizing).
    pub fn wanted(&self, cfg: &ConfigSpace) -> Option<u64> {
        let cmd = cfg.u16(COMMAND);
        let low = u64::from(cfg.u32(self.offset()));
        let (addr, limit) = match self.kind {
            BarKind::Io if cmd & CMD_IO != 0 => (low & !0b11, 1u64 << 16),
            BarKind::Mem32 if cmd & CMD_MEMORY != 0 => (low & !0b1111, 1 << 32),
            BarKind::Mem64 if cmd & CMD_MEMORY != 0 => {
                let high = u64::from(cfg.u32(self.offset() + 4));
                (high << 32 | (low & !0b1111), u64::MAX)
            }
            BarKind::Rom if cmd & CMD_MEMORY != 0 && low & u64::from(ROM_ENABLE) != 0 => {
                (low & !(ROM_MIN - 1), 1 << 32)
            }
            _ => return None,
        };
        let end = addr.checked_add(self.size)?;
        // A 32-bit BAR (or ROM) reaching the last byte below 4 GiB is how sizing
        // leaves it: treat as unmapped, as QEMU does.
        if addr == 0 || end >= limit {
            return None;
        }
        Some(addr)
    }

    /// Maps, moves or unmaps the region in `parent` to match the config.
    pub fn update(
        &self,
        tx: &Transaction<'_>,
        cfg: &ConfigSpace,
        parent: &MemoryRegion,
    ) -> Result<(), MemoryError> {
        let now = self.region.is_mapped().then(|| self.region.addr());
        match (now, self.wanted(cfg)) {
            (a, b) if a == b => Ok(()),
            (None, Some(at)) => tx.add_subregion(parent, at, &self.region),
            (Some(_), None) => tx.del_subregion(parent, &self.region),
            (Some(_), Some(at)) => {
                tx.set_address(&self.region, at);
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }
}
