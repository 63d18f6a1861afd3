//! PCI bus 0 and configuration mechanism 1 (0xcf8 address, 0xcfc data).
//!
//! One 8-port region owns 0xcf8-0xcff: a dword at 0xcf8 is the address
//! register, a byte at 0xcf9 is the PIIX reset-control register (handed to
//! a hook), 0xcfc-0xcff the data window. Splitting these into overlapping
//! regions would break the dword at 0xcf8 into pieces, one of which would
//! hit the reset register.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::function::{PciFunction, Windows};
use super::PciError;
use crate::memory::{Memory, MemoryRegion, RegionOps};
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// First port of configuration mechanism 1.
pub const CONFIG_PORT: u64 = 0xcf8;
pub const CONFIG_PORTS: u64 = 8;

pub struct PciBus {
    memory: Arc<Memory>,
    mem_window: MemoryRegion,
    io_window: MemoryRegion,
    functions: Mutex<BTreeMap<u8, PciFunction>>,
    limit: RateLimit,
}

fn devfn(device: u8, function: u8) -> u8 {
    (device & 0x1f) << 3 | (function & 7)
}

impl PciBus {
    /// A bus whose memory BARs map into `mem_window` (the PCI address space)
    /// and I/O BARs into `io_window`.
    pub fn new(memory: Arc<Memory>, mem_window: MemoryRegion, io_window: MemoryRegion) -> Self {
        PciBus {
            memory,
            mem_window,
            io_window,
            functions: Mutex::new(BTreeMap::new()),
            limit: RateLimit::new(5),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u8, PciFunction>> {
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, device: u8, function: u8, f: PciFunction) -> Result<(), PciError> {
        let mut fs = self.lock();
        let at = devfn(device, function);
        if device > 31 || function > 7 || fs.contains_key(&at) {
            return Err(PciError::SlotTaken { device, function });
        }
        fs.insert(at, f);
        Ok(())
    }

    /// (device, function, vendor, device id) of every function.
    pub fn list(&self) -> Vec<(u8, u8, u16, u16)> {
        self.lock()
            .iter()
            .map(|(&df, f)| (df >> 3, df & 7, f.cfg.u16(0), f.cfg.u16(2)))
            .collect()
    }

    pub fn config_read(&self, bus: u8, devfn: u8, reg: usize, data: &mut [u8]) {
        let fs = self.lock();
        match fs.get(&devfn).filter(|_| bus == 0) {
            Some(f) => f.read(reg, data),
            None => data.fill(0xff),
        }
    }

    /// A guest config write, in one memory transaction (BAR and PAM changes
    /// take effect together). A refusal is logged; the guest cannot be told.
    pub fn config_write(&self, bus: u8, devfn: u8, reg: usize, data: &[u8]) {
        if bus != 0 {
            return;
        }
        // Lock order: the memory transaction, then the functions.
        let tx = self.memory.begin();
        let res = {
            let mut fs = self.lock();
            let Some(f) = fs.get_mut(&devfn) else { return };
            let win = Windows {
                mem: &self.mem_window,
                io: &self.io_window,
            };
            f.write(&tx, &win, reg, data)
        };
        let res = res
            .map_err(|e| e.to_string())
            .and_then(|()| tx.commit().map_err(|e| e.to_string()));
        if let Err(e) = res {
            warn_limited!(
                self.limit,
                "PCI config write to {devfn:#04x}:{reg:#x} left the memory map unchanged: {e}"
            );
        }
    }

    /// Resets every function (BARs unmapped, initial config bytes).
    pub fn reset(&self) -> Result<(), crate::memory::MemoryError> {
        let tx = self.memory.begin();
        {
            let mut fs = self.lock();
            let win = Windows {
                mem: &self.mem_window,
                io: &self.io_window,
            };
            for f in fs.values_mut() {
                f.reset(&tx, &win)?;
            }
        }
        tx.commit()
    }
}

/// Called with the byte the guest writes to 0xcf9.
pub type ResetControl = Box<dyn Fn(u8) + Send + Sync>;

/// The handler of ports 0xcf8-0xcff.
pub struct ConfigIo {
    bus: Arc<PciBus>,
    address: AtomicU32,
    rcr: AtomicU8,
    on_rcr: ResetControl,
}

impl ConfigIo {
    pub fn new(bus: Arc<PciBus>, on_rcr: ResetControl) -> Self {
        ConfigIo {
            bus,
            address: AtomicU32::new(0),
            rcr: AtomicU8::new(0),
            on_rcr,
        }
    }

    /// (bus, devfn, register) the address register selects, if enabled.
    fn target(&self, byte: u64) -> Option<(u8, u8, usize)> {
        let a = self.address.load(Ordering::Acquire);
        if a & 0x8000_0000 == 0 {
            return None;
        }
        Some((
            (a >> 16) as u8,
            (a >> 8) as u8,
            (a & 0xfc) as usize + byte as usize,
        ))
    }
}

impl RegionOps for ConfigIo {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.load(Ordering::Acquire).to_le_bytes()),
            (1, 1) => data[0] = self.rcr.load(Ordering::Acquire),
            (4..=7, n) if offset - 4 + n as u64 <= 4 => match self.target(offset - 4) {
                Some((bus, devfn, reg)) => self.bus.config_read(bus, devfn, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address.store(u32::from_le_bytes(b), Ordering::Release);
            }
            (1, 1) => {
                self.rcr.store(data[0] & 0x0e, Ordering::Release);
                (self.on_rcr)(data[0]);
            }
            (4..=7, n) if offset - 4 + n as u64 <= 4 => {
                if let Some((bus, devfn, reg)) = self.target(offset - 4) {
                    self.bus.config_write(bus, devfn, reg, data);
                }
            }
            _ => {}
        }
    }
}
