//! The modern virtio-pci transport (virtio 1.2, 4.1): BAR assignment, the
//! capability list, the common configuration structure and MSI-X.

use core::sync::atomic::{AtomicU64, Ordering};

use super::mmio::{rd, wr};
use crate::pci::{read_config, size_bars, write_config, Bdf};

/// Memory BARs are placed in this window, bump-allocated across devices.
const MMIO_BASE: u64 = 0xe000_0000;
const MMIO_LIMIT: u64 = 0xfe00_0000;
static NEXT_MMIO: AtomicU64 = AtomicU64::new(MMIO_BASE);

const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

// Common configuration offsets (4.1.4.3).
pub const DEVICE_FEATURE_SELECT: u64 = 0;
pub const DEVICE_FEATURE: u64 = 4;
pub const DRIVER_FEATURE_SELECT: u64 = 8;
pub const DRIVER_FEATURE: u64 = 12;
pub const MSIX_CONFIG: u64 = 16;
pub const NUM_QUEUES: u64 = 18;
pub const DEVICE_STATUS: u64 = 20;
pub const CONFIG_GENERATION: u64 = 21;
pub const QUEUE_SELECT: u64 = 22;
pub const QUEUE_SIZE: u64 = 24;
pub const QUEUE_MSIX_VECTOR: u64 = 26;
pub const QUEUE_ENABLE: u64 = 28;
pub const QUEUE_NOTIFY_OFF: u64 = 30;
pub const QUEUE_DESC: u64 = 32;
pub const QUEUE_DRIVER: u64 = 40;
pub const QUEUE_DEVICE: u64 = 48;

/// A structure in a BAR: its address and length.
#[derive(Clone, Copy, Default)]
pub struct Region {
    pub addr: u64,
    pub len: u32,
}

#[derive(Clone, Copy, Default)]
pub struct Msix {
    /// Config-space offset of the capability.
    pub cap: u8,
    pub table: u64,
    pub pba: u64,
    pub entries: u16,
}

#[derive(Clone, Copy, Default)]
pub struct Caps {
    pub common: Option<Region>,
    pub notify: Option<Region>,
    pub notify_multiplier: u32,
    pub isr: Option<Region>,
    pub device: Option<Region>,
    pub msix: Option<Msix>,
}

fn cfg8(bdf: Bdf, off: u8) -> u8 {
    (read_config(bdf, off) >> ((off & 3) * 8)) as u8
}

fn cfg16(bdf: Bdf, off: u8) -> u16 {
    (read_config(bdf, off) >> ((off & 2) * 8)) as u16
}

/// `size` bytes of the MMIO window, naturally aligned (at least 4 KiB).
pub fn alloc_mmio(size: u64) -> Option<u64> {
    let align = size.max(4096);
    let base = NEXT_MMIO.load(Ordering::Relaxed).div_ceil(align) * align;
    if base + size > MMIO_LIMIT {
        return None;
    }
    NEXT_MMIO.store(base + size, Ordering::Relaxed);
    Some(base)
}

/// Sizes the BARs and places the memory ones naturally aligned (at least
/// 4 KiB) in the MMIO window; 64-bit BARs get a zero high dword. Enables
/// memory space and bus mastering. Returns each BAR's base (0: none).
pub fn assign_bars(bdf: Bdf) -> Result<[u64; 6], &'static str> {
    let (found, n, _) = size_bars(bdf);
    let mut bases = [0u64; 6];
    for &(i, size, io) in &found[..n] {
        if io || size == 0 || !size.is_power_of_two() {
            continue;
        }
        let base = alloc_mmio(size).ok_or("MMIO window exhausted")?;
        let off = 0x10 + i * 4;
        let wide = (read_config(bdf, off) >> 1) & 3 == 2;
        write_config(bdf, off, base as u32);
        if wide {
            write_config(bdf, off + 4, 0);
        }
        bases[usize::from(i)] = base;
    }
    let cmd = read_config(bdf, 0x04) & 0xffff;
    // Memory space (bit 1) and bus master (bit 2); the status half written
    // as zero so that no RW1C bit is cleared.
    write_config(bdf, 0x04, cmd | 0x6);
    Ok(bases)
}

/// Walks the capability list; the first capability of each kind wins.
pub fn find_caps(bdf: Bdf, bars: &[u64; 6]) -> Caps {
    let mut caps = Caps::default();
    if (read_config(bdf, 0x04) >> 16) & 0x10 == 0 {
        return caps;
    }
    let mut ptr = cfg8(bdf, 0x34) & 0xfc;
    let mut steps = 0;
    while ptr >= 0x40 && steps < 48 {
        steps += 1;
        let id = cfg8(bdf, ptr);
        if id == CAP_VENDOR {
            let kind = cfg8(bdf, ptr + 3);
            let bar = usize::from(cfg8(bdf, ptr + 4));
            if bar < 6 && bars[bar] != 0 {
                let region = Some(Region {
                    addr: bars[bar] + u64::from(read_config(bdf, ptr + 8)),
                    len: read_config(bdf, ptr + 12),
                });
                match kind {
                    CFG_COMMON if caps.common.is_none() => caps.common = region,
                    CFG_NOTIFY if caps.notify.is_none() => {
                        caps.notify = region;
                        caps.notify_multiplier = read_config(bdf, ptr + 16);
                    }
                    CFG_ISR if caps.isr.is_none() => caps.isr = region,
                    CFG_DEVICE if caps.device.is_none() => caps.device = region,
                    _ => {}
                }
            }
        } else if id == CAP_MSIX && caps.msix.is_none() {
            let table = read_config(bdf, ptr + 4);
            let pba = read_config(bdf, ptr + 8);
            let (tbar, pbar) = ((table & 7) as usize, (pba & 7) as usize);
            if tbar < 6 && pbar < 6 && bars[tbar] != 0 && bars[pbar] != 0 {
                caps.msix = Some(Msix {
                    cap: ptr,
                    table: bars[tbar] + u64::from(table & !7),
                    pba: bars[pbar] + u64::from(pba & !7),
                    entries: (cfg16(bdf, ptr + 2) & 0x7ff) + 1,
                });
            }
        }
        ptr = cfg8(bdf, ptr + 1) & 0xfc;
    }
    caps
}

/// Points MSI-X table entry `entry` at the local APIC of CPU 0 (physical
/// destination, fixed delivery, edge) with `vector`, unmasked.
pub fn msix_set(msix: &Msix, entry: u16, vector: u8) {
    let e = msix.table + u64::from(entry) * 16;
    wr::<u32>(e, 0xfee0_0000);
    wr::<u32>(e + 4, 0);
    wr::<u32>(e + 8, u32::from(vector));
    wr::<u32>(e + 12, 0);
}

/// Sets MSI-X enable (message control bit 15) with the function mask
/// (bit 14) clear.
pub fn msix_enable(bdf: Bdf, msix: &Msix) {
    let v = read_config(bdf, msix.cap);
    write_config(bdf, msix.cap, (v | 1 << 31) & !(1 << 30));
}

/// The common configuration structure.
#[derive(Clone, Copy, Default)]
pub struct Common(pub u64);

impl Common {
    pub fn r8(&self, off: u64) -> u8 {
        rd(self.0 + off)
    }
    pub fn r16(&self, off: u64) -> u16 {
        rd(self.0 + off)
    }
    pub fn r32(&self, off: u64) -> u32 {
        rd(self.0 + off)
    }
    pub fn w8(&self, off: u64, v: u8) {
        wr(self.0 + off, v)
    }
    pub fn w16(&self, off: u64, v: u16) {
        wr(self.0 + off, v)
    }
    pub fn w32(&self, off: u64, v: u32) {
        wr(self.0 + off, v)
    }
    /// 64-bit fields as two 32-bit writes, low half first.
    pub fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}
