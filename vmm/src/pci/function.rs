//! One PCI function: its configuration space, its BARs, and the device
//! behind it.

use super::bar::{Bar, BarKind, ROM_INDEX, ROM_MIN};
use super::config::{ConfigSpace, BAR0, COMMAND, INTERRUPT_LINE, ROM_BAR};
use super::PciError;
use crate::memory::{MemoryError, MemoryRegion, Transaction};

/// What a device adds to the generic config-space handling.
pub trait PciDevice: Send {
    /// A guest write to `[off, off + len)` was applied through the masks;
    /// react inside the same memory transaction (e.g. PAM switching).
    fn config_written(
        &mut self,
        _tx: &Transaction<'_>,
        _cfg: &ConfigSpace,
        _off: usize,
        _len: usize,
    ) {
    }
    /// A guest read of `[off, off + data.len())` filled `data` from `cfg`;
    /// a register whose value is computed on access (a window into a BAR)
    /// overwrites its bytes.
    fn config_read(&self, _cfg: &ConfigSpace, _off: usize, _data: &mut [u8]) {}
    /// The machine resets; the config space is already back to its initial
    /// bytes.
    fn reset(&mut self, _tx: &Transaction<'_>) {}
}

pub struct PciFunction {
    pub name: String,
    pub cfg: ConfigSpace,
    initial: ConfigSpace,
    bars: Vec<Bar>,
    dev: Box<dyn PciDevice>,
}

/// Where BARs map: the PCI memory space and the I/O port space.
pub struct Windows<'a> {
    pub mem: &'a MemoryRegion,
    pub io: &'a MemoryRegion,
}

impl PciFunction {
    pub fn new(name: &str, cfg: ConfigSpace, dev: Box<dyn PciDevice>) -> Self {
        PciFunction {
            name: name.into(),
            initial: cfg.clone(),
            cfg,
            bars: Vec::new(),
            dev,
        }
    }

    /// Adds BAR `index` backed by `region` (its size is the BAR's, a power
    /// of two: at least 16 bytes for memory, 4 for I/O, 2 KiB for the ROM,
    /// which is [`BarKind::Rom`] at index [`ROM_INDEX`]).
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        prefetchable: bool,
        region: MemoryRegion,
    ) -> Result<(), PciError> {
        let size = region.size();
        let min = match kind {
            BarKind::Io => 4,
            BarKind::Rom => ROM_MIN,
            _ => 16,
        };
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        let rom_ok = (kind == BarKind::Rom) == (index == ROM_INDEX);
        let taken = self
            .bars
            .iter()
            .any(|b| b.index == index || (b.kind == BarKind::Mem64 && b.index + 1 == index))
            || (slots == 2 && self.bars.iter().any(|b| b.index == index + 1));
        let limit = if kind == BarKind::Rom {
            ROM_INDEX + 1
        } else {
            6
        };
        if !rom_ok || index + slots > limit || taken || !size.is_power_of_two() || size < min {
            return Err(PciError::BadBar {
                function: self.name.clone(),
                index,
                size,
            });
        }
        let bar = Bar {
            index,
            kind,
            prefetchable,
            size,
            region,
        };
        bar.install(&mut self.cfg);
        bar.install(&mut self.initial);
        self.bars.push(bar);
        Ok(())
    }

    /// Sets the interrupt pin (1 = INTA#) and line (the GSI it is wired
    /// to), also in the power-on bytes a reset goes back to.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        for cfg in [&mut self.cfg, &mut self.initial] {
            cfg.set_u8(INTERRUPT_LINE, line);
            cfg.set_u8(INTERRUPT_LINE + 1, pin);
        }
    }

    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    pub fn read(&self, off: usize, data: &mut [u8]) {
        self.cfg.read(off, data);
        self.dev.config_read(&self.cfg, off, data);
    }

    /// A guest write. BAR and command changes remap BARs in `tx`.
    pub fn write(
        &mut self,
        tx: &Transaction<'_>,
        win: &Windows<'_>,
        off: usize,
        data: &[u8],
    ) -> Result<(), MemoryError> {
        let changed = self.cfg.write(off, data);
        let end = off + data.len();
        let touches = |lo: usize, hi: usize| off < hi && lo < end;
        let bars = touches(BAR0, BAR0 + 24) || touches(ROM_BAR, ROM_BAR + 4);
        if changed && (touches(COMMAND, COMMAND + 2) || bars) {
            self.update_bars(tx, win)?;
        }
        self.dev.config_written(tx, &self.cfg, off, data.len());
        Ok(())
    }

    fn update_bars(&self, tx: &Transaction<'_>, win: &Windows<'_>) -> Result<(), MemoryError> {
        for b in &self.bars {
            let parent = if b.kind == BarKind::Io {
                win.io
            } else {
                win.mem
            };
            b.update(tx, &self.cfg, parent)?;
        }
        Ok(())
    }

    /// Back to power-on: initial config bytes, BARs unmapped.
    pub fn reset(&mut self, tx: &Transaction<'_>, win: &Windows<'_>) -> Result<(), MemoryError> {
        self.cfg = self.initial.clone();
        self.update_bars(tx, win)?;
        self.dev.reset(tx);
        Ok(())
    }
}
