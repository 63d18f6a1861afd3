//! The ACPI GPE0 block (PIIX4's, at 0xafe0: 2 bytes of status, write 1 to
//! clear, then 2 bytes of enable) and the SCI line it drives. Bit 3 is
//! memory hotplug, as in QEMU, so the DSDT's `_E03` runs the slot scan.
//! It holds the shared SCI up while an enabled event is pending.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use super::sci::{SciLine, SciSource};
use crate::memory::RegionOps;

pub const PORT: u64 = 0xafe0;
pub const SIZE: u64 = 4;
/// GPE0 bit of memory hotplug events.
pub const MEMORY_HOTPLUG: u16 = 1 << 3;

pub struct Gpe0 {
    status: AtomicU16,
    enable: AtomicU16,
    sci: Arc<SciLine>,
}

impl Gpe0 {
    pub fn new(sci: Arc<SciLine>) -> Self {
        Gpe0 {
            status: AtomicU16::default(),
            enable: AtomicU16::default(),
            sci,
        }
    }

    /// Sets status `bits` (an event happened) and updates the SCI.
    pub fn raise(&self, bits: u16) {
        self.status.fetch_or(bits, Ordering::AcqRel);
        self.update();
    }

    fn update(&self) {
        let on = self.status.load(Ordering::Acquire) & self.enable.load(Ordering::Acquire) != 0;
        self.sci.set(SciSource::Gpe0, on);
    }

    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.enable.store(0, Ordering::Release);
        self.update();
    }
}

impl RegionOps for Gpe0 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut block = [0u8; SIZE as usize];
        block[0..2].copy_from_slice(&self.status.load(Ordering::Acquire).to_le_bytes());
        block[2..4].copy_from_slice(&self.enable.load(Ordering::Acquire).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = block.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let byte = offset as usize + i;
            let shift = 8 * (byte % 2);
            let bits = u16::from(v) << shift;
            match byte {
                0 | 1 => {
                    self.status.fetch_and(!bits, Ordering::AcqRel);
                }
                2 | 3 => {
                    let keep = 0xff00u16 >> shift;
                    let e = self.enable.load(Ordering::Acquire);
                    self.enable.store((e & keep) | bits, Ordering::Release);
                }
                _ => {}
            }
        }
        self.update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_write_one_to_clear_and_enable_is_plain() {
        let g = Gpe0::new(Arc::default());
        g.raise(MEMORY_HOTPLUG);
        let mut b = [0u8; 4];
        g.read(0, &mut b);
        assert_eq!(b, [8, 0, 0, 0]);
        g.write(2, &[8]);
        assert!(g.sci.is_raised(), "enabled and pending");
        g.write(0, &[8]);
        g.read(0, &mut b);
        assert_eq!(b, [0, 0, 8, 0]);
        assert!(!g.sci.is_raised());
    }
}
