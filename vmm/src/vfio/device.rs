//! A PCI function whose device lives outside the VMM, behind a
//! [`VfioBackend`]: a kernel VFIO device or a vfio-user server.
//!
//! The config space is read from the device once and virtualised: the
//! guest programs our copy, BARs are mapped by `PciFunction` through memory
//! transactions, the MSI-X capability's control bits drive our
//! [`MsixTable`], the MSI capability drives our [`MsiVectors`], and command
//! register writes are passed on. The parts of a BAR the backend can mmap
//! become RAM-device regions (KVM maps them into the guest: no exits); the
//! rest is trapped and forwarded, except the MSI-X table and PBA, emulated
//! here over everything. The expansion ROM, if the device has one, is a
//! read-only ROM BAR: reads forwarded to the ROM region, writes dropped.
//! While MSI or MSI-X is enabled, each vector's eventfd (the irqfd KVM
//! injects from) is handed to the device with SET_IRQS, so device
//! interrupts never pass through us.
//!
//! A backend that fails (peer died, garbage, timeout) makes the device
//! read all ones and drop writes, with one warning; the VMM carries on.
//!
//! Lock order: memory transaction, then the backend.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;
use vmm_vfio::backend::{
    CONFIG_REGION as VFIO_PCI_CONFIG_REGION_INDEX, INTX_IRQ as VFIO_PCI_INTX_IRQ_INDEX,
    ROM_REGION as VFIO_PCI_ROM_REGION_INDEX,
};
use vmm_vfio::{BackendError, VfioBackend};

use super::config::{virtual_config, MsiLayout, MsixLayout};
use super::irqs::IrqHandover;
use crate::interrupt::{GsiRouter, MsiVectors, MsixConfig, MsixTable, Routing};
use crate::memory::{
    Memory, MemoryError, MemoryRegion, RamBlock, RamError, RegionOps, Transaction,
};
use crate::pci::bar::{ROM_INDEX, ROM_MIN};
use crate::pci::config::{COMMAND, INTERRUPT_LINE, SIZE as CONFIG_SIZE};
use crate::pci::{BarKind, ConfigSpace, PciDevice, PciFunction};

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("{0}: the device has no PCI config space region")]
    NoConfig(String),
    #[error("{name}: cannot read the config space from the device")]
    Config {
        name: String,
        #[source]
        source: BackendError,
    },
    #[error("{0}: cannot set up {1}")]
    Routes(
        String,
        &'static str,
        #[source] crate::interrupt::routes::RouteError,
    ),
    #[error("{0}: cannot wire INTx: {1}")]
    Intx(String, String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Pci(#[from] crate::pci::PciError),
}

/// The largest BAR believed from a backend (its size is rounded up to a
/// power of two).
const MAX_BAR: u64 = 1 << 48;
/// The largest expansion ROM believed (PCI allows 16 MiB).
const MAX_ROM: u64 = 16 << 20;

/// INTx's IOAPIC pin, trigger and resample eventfds.
struct IntxLine {
    gsi: u32,
    trigger: Arc<EventFd>,
    resample: Arc<EventFd>,
}

pub struct VfioPci<R: Routing> {
    name: String,
    backend: Arc<Mutex<dyn VfioBackend>>,
    msix: Option<(Arc<MsixTable<R>>, MsixLayout)>,
    msi: Option<(Arc<MsiVectors<R>>, MsiLayout)>,
    /// Which interrupt eventfds the device holds.
    irqs: Mutex<IrqHandover>,
    /// INTx, once wired.
    intx: Mutex<Option<IntxLine>>,
    router: GsiRouter<R>,
    /// The RAM-device regions of mmap-able BAR parts.
    mmaps: Mutex<Vec<MemoryRegion>>,
    /// BAR accesses that trapped to us and went to the backend.
    traps: AtomicU64,
    warned: AtomicBool,
}

impl<R: Routing + 'static> VfioPci<R> {
    /// The device model and its PCI function, BAR regions built (in one
    /// transaction of `memory`) but not mapped.
    pub fn new(
        name: &str,
        backend: Arc<Mutex<dyn VfioBackend>>,
        router: GsiRouter<R>,
        memory: &Memory,
    ) -> Result<(Arc<Self>, PciFunction), VfioPciError> {
        let mut raw = [0u8; CONFIG_SIZE];
        {
            let mut b = backend.lock().unwrap_or_else(|e| e.into_inner());
            let info = b
                .region(VFIO_PCI_CONFIG_REGION_INDEX)
                .filter(|r| r.size >= 64)
                .ok_or_else(|| VfioPciError::NoConfig(name.into()))?;
            let len = (info.size as usize).min(CONFIG_SIZE);
            b.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut raw[..len])
                .map_err(|source| VfioPciError::Config {
                    name: name.into(),
                    source,
                })?;
        }
        let (cfg, caps) = virtual_config(&raw);
        let routes = |what| move |e| VfioPciError::Routes(name.into(), what, e);
        let msix = match caps.msix {
            Some(l) => Some((
                MsixTable::new(router.clone(), l.vectors).map_err(routes("MSI-X"))?,
                l,
            )),
            None => None,
        };
        let msi = match caps.msi {
            Some(l) => Some((
                MsiVectors::new(router.clone(), l.vectors).map_err(routes("MSI"))?,
                l,
            )),
            None => None,
        };
        let dev = Arc::new(VfioPci {
            name: name.into(),
            backend,
            msix,
            msi,
            irqs: Mutex::new(IrqHandover::default()),
            intx: Mutex::new(None),
            router,
            mmaps: Mutex::new(Vec::new()),
            traps: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        });
        let mut f = PciFunction::new(name, cfg, Box::new(Hooks(dev.clone())));
        let tx = memory.begin();
        let mut bars = Vec::new();
        let mut index = 0;
        while index < 6 {
            let low = u32::from_le_bytes(
                raw[0x10 + index * 4..0x14 + index * 4]
                    .try_into()
                    .unwrap_or_default(),
            );
            let kind = if low & 1 == 1 {
                BarKind::Io
            } else if (low >> 1) & 3 == 2 {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            };
            let size = dev.lock().region(index as u32).map_or(0, |r| r.size);
            if size > MAX_BAR {
                log::warn!("{name}: BAR{index} of {size:#x} bytes left out (too large)");
            } else if size > 0 {
                let region = dev.bar_region(&tx, index, size, kind != BarKind::Io)?;
                bars.push((index, kind, low & 8 != 0, region));
            }
            index += if kind == BarKind::Mem64 { 2 } else { 1 };
        }
        tx.commit()?;
        for (index, kind, prefetchable, region) in bars {
            f.add_bar(index, kind, prefetchable, region)?;
        }
        let rom = dev
            .lock()
            .region(VFIO_PCI_ROM_REGION_INDEX)
            .map_or(0, |r| r.size);
        if rom > MAX_ROM {
            log::warn!("{name}: expansion ROM of {rom:#x} bytes left out (too large)");
        } else if rom > 0 {
            let ops = Arc::new(BarOps {
                dev: dev.clone(),
                index: VFIO_PCI_ROM_REGION_INDEX,
                size: rom,
                read_only: true,
            });
            let size = rom.next_power_of_two().max(ROM_MIN);
            let region = MemoryRegion::io(&format!("{name}-rom"), size, ops);
            f.add_bar(ROM_INDEX, BarKind::Rom, false, region)?;
        }
        Ok((dev, f))
    }

    /// BAR `index`'s region: accesses forwarded to the device, with the
    /// parts the backend can mmap laid over as RAM-device regions, and the
    /// MSI-X table and PBA over everything where the capability puts them.
    fn bar_region(
        self: &Arc<Self>,
        tx: &Transaction<'_>,
        index: usize,
        size: u64,
        memory_bar: bool,
    ) -> Result<MemoryRegion, MemoryError> {
        let bar_size = size.next_power_of_two().max(16);
        let ops = Arc::new(BarOps {
            dev: self.clone(),
            index: index as u32,
            size,
            read_only: false,
        });
        let forward = MemoryRegion::io(&format!("{}-bar{index}", self.name), bar_size, ops);
        let mmaps = if memory_bar {
            self.mmap_regions(index, size)
        } else {
            Vec::new()
        };
        let msix = self
            .msix
            .as_ref()
            .filter(|(_, l)| l.table_bar == index || l.pba_bar == index);
        if mmaps.is_empty() && msix.is_none() {
            return Ok(forward);
        }
        let bar = MemoryRegion::container(&format!("{}-bar{index}-parts", self.name), bar_size);
        tx.add_subregion(&bar, 0, &forward)?;
        for (offset, r) in &mmaps {
            tx.add_subregion_overlap(&bar, *offset, r, 1)?;
        }
        self.mmaps_lock().extend(mmaps.into_iter().map(|(_, r)| r));
        let Some((t, l)) = msix else {
            return Ok(bar);
        };
        let (table_ops, pba_ops) = t.regions();
        let (table_size, pba_size) = t.sizes();
        if l.table_bar == index {
            let table =
                MemoryRegion::io(&format!("{}-msix-table", self.name), table_size, table_ops);
            tx.add_subregion_overlap(&bar, l.table_offset, &table, 2)?;
        }
        if l.pba_bar == index {
            let pba = MemoryRegion::io(&format!("{}-msix-pba", self.name), pba_size, pba_ops);
            tx.add_subregion_overlap(&bar, l.pba_offset, &pba, 2)?;
        }
        Ok(bar)
    }

    /// RAM-device regions for the mmap-able areas of BAR `index`, with
    /// their offsets; an area that cannot be mapped stays trapped.
    fn mmap_regions(&self, index: usize, size: u64) -> Vec<(u64, MemoryRegion)> {
        let Some(m) = self.lock().region_mmap(index as u32) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, &(offset, len)) in m.areas.iter().enumerate() {
            if !offset.checked_add(len).is_some_and(|end| end <= size) {
                continue;
            }
            let name = format!("{}-bar{index}-mmap{i}", self.name);
            let block = m
                .file
                .try_clone()
                .map_err(|source| RamError::Mmap {
                    name: name.clone(),
                    size: len,
                    source,
                })
                .and_then(|f| RamBlock::map_file(&name, f, m.offset.saturating_add(offset), len));
            match block {
                Ok(b) => out.push((offset, MemoryRegion::ram_device(&name, Arc::new(b)))),
                Err(e) => log::warn!("{name}: left to traps: {e}"),
            }
        }
        out
    }

    fn mmaps_lock(&self) -> MutexGuard<'_, Vec<MemoryRegion>> {
        self.mmaps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the BARs' RAM-device parts on or off (off: every access
    /// traps, as QEMU's `x-no-mmap`), in one transaction of `memory`.
    pub fn set_mmap_enabled(&self, memory: &Memory, enabled: bool) -> Result<(), MemoryError> {
        let tx = memory.begin();
        for r in self.mmaps_lock().iter() {
            tx.set_enabled(r, enabled);
        }
        tx.commit()
    }

    /// BAR accesses that trapped and were forwarded to the device.
    pub fn trapped_accesses(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, dyn VfioBackend + 'static> {
        self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn msix(&self) -> Option<&Arc<MsixTable<R>>> {
        self.msix.as_ref().map(|(t, _)| t)
    }

    pub fn msi(&self) -> Option<&Arc<MsiVectors<R>>> {
        self.msi.as_ref().map(|(v, _)| v)
    }

    /// Whether the device has failed (and said so once in the log).
    pub fn failed(&self) -> bool {
        self.warned.load(Ordering::Relaxed)
    }

    /// Logs the first failure; later ones are the same story.
    fn failure(&self, what: &str, e: &BackendError) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!("{}: {what}: {e}; the device now reads all ones", self.name);
        }
    }

    /// The device's interrupt pin (1 = INTA# .. 4 = INTD#), if it has INTx.
    pub fn intx_pin(&self) -> Result<u8, VfioPciError> {
        let intx_err = |what: String| VfioPciError::Intx(self.name.clone(), what);
        let mut b = self.lock();
        if b.irq_count(VFIO_PCI_INTX_IRQ_INDEX) == 0 {
            return Err(intx_err("the device has no INTx".into()));
        }
        let mut pin = [0u8];
        b.region_read(VFIO_PCI_CONFIG_REGION_INDEX, INTERRUPT_PIN as u64, &mut pin)
            .map_err(|e| intx_err(format!("reading the interrupt pin: {e}")))?;
        if !(1..=4).contains(&pin[0]) {
            return Err(intx_err(format!("interrupt pin {}", pin[0])));
        }
        Ok(pin[0])
    }

    /// Wires the device's INTx to IOAPIC pin `gsi` as a level-triggered
    /// irqfd whose resample eventfd (written by KVM on EOI) unmasks INTx
    /// in the device, and shows the pin and line in `f`'s config space.
    /// INTx is on while neither MSI nor MSI-X is enabled.
    pub fn wire_intx(&self, f: &mut PciFunction, gsi: u8) -> Result<(), VfioPciError> {
        let intx_err = |what: String| VfioPciError::Intx(self.name.clone(), what);
        let pin = self.intx_pin()?;
        let new_fd = || {
            EventFd::new(libc::EFD_NONBLOCK)
                .map(Arc::new)
                .map_err(|e| intx_err(format!("eventfd: {e}")))
        };
        let (trigger, resample) = (new_fd()?, new_fd()?);
        self.router
            .bind_line(u32::from(gsi), trigger.clone(), resample.clone())
            .map_err(|e| intx_err(e.to_string()))?;
        let res = {
            let mut b = self.lock();
            self.irqs_lock().wire_intx(&mut *b, &trigger, &resample)
        };
        if let Err(e) = res {
            self.router.unbind_line(u32::from(gsi));
            return Err(intx_err(format!("SET_IRQS: {e}")));
        }
        f.set_interrupt(pin, gsi);
        *self.intx.lock().unwrap_or_else(|e| e.into_inner()) = Some(IntxLine {
            gsi: u32::from(gsi),
            trigger,
            resample,
        });
        Ok(())
    }

    /// INTx's (trigger, resample) eventfds, once wired.
    pub fn intx(&self) -> Option<(Arc<EventFd>, Arc<EventFd>)> {
        let g = self.intx.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|l| (l.trigger.clone(), l.resample.clone()))
    }

    fn irqs_lock(&self) -> MutexGuard<'_, IrqHandover> {
        self.irqs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&self) {
        if let Some((t, _)) = &self.msix {
            t.reset();
        }
        if let Some((v, _)) = &self.msi {
            v.reset();
        }
        let mut b = self.lock();
        let mut irqs = self.irqs_lock();
        let res = irqs
            .release_all(&mut *b)
            .and_then(|()| b.reset())
            .and_then(|()| irqs.sync_intx(&mut *b));
        drop(irqs);
        drop(b);
        if let Err(e) = res {
            self.failure("device reset", &e);
        }
    }
}

impl<R: Routing + 'static> VfioPci<R> {
    /// Gives the device exactly `fds` as the triggers of IRQ index `index`.
    fn hand_over(&self, index: u32, fds: &[Arc<EventFd>]) {
        if self.failed() {
            return;
        }
        let res = {
            let mut b = self.backend.lock().unwrap_or_else(|e| e.into_inner());
            let mut h = self.irqs.lock().unwrap_or_else(|e| e.into_inner());
            h.set(&mut *b, index, fds)
        };
        if let Err(e) = res {
            self.failure(&format!("SET_IRQS of IRQ index {index}"), &e);
        }
    }
}

/// A BAR's accesses, forwarded to the device's region (a read-only one,
/// the ROM, drops writes).
struct BarOps<R: Routing> {
    dev: Arc<VfioPci<R>>,
    index: u32,
    size: u64,
    read_only: bool,
}

impl<R: Routing> Drop for VfioPci<R> {
    fn drop(&mut self) {
        let intx = self.intx.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = intx.take() {
            self.router.unbind_line(l.gsi);
        }
    }
}

const INTERRUPT_PIN: usize = INTERRUPT_LINE + 1;

impl<R: Routing + 'static> RegionOps for BarOps<R> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if self.dev.failed() || offset + data.len() as u64 > self.size {
            return;
        }
        self.dev.traps.fetch_add(1, Ordering::Relaxed);
        let res = self.dev.lock().region_read(self.index, offset, data);
        if let Err(e) = res {
            data.fill(0xff);
            self.dev
                .failure(&format!("BAR{} read at {offset:#x}", self.index), &e);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if self.read_only || self.dev.failed() || offset + data.len() as u64 > self.size {
            return;
        }
        self.dev.traps.fetch_add(1, Ordering::Relaxed);
        let res = self.dev.lock().region_write(self.index, offset, data);
        if let Err(e) = res {
            self.dev
                .failure(&format!("BAR{} write at {offset:#x}", self.index), &e);
        }
    }
}

/// Config-space hooks: MSI-X control bits and the MSI capability (each
/// with its eventfds handed to or taken from the device), the command
/// register passed on to the device, machine reset.
struct Hooks<R: Routing>(Arc<VfioPci<R>>);

impl<R: Routing + 'static> PciDevice for Hooks<R> {
    fn config_written(&mut self, _tx: &Transaction<'_>, cfg: &ConfigSpace, off: usize, len: usize) {
        let touches = |lo: usize, hi: usize| off < hi && lo < off + len;
        if let Some((t, l)) = &self.0.msix {
            if touches(l.cap + 2, l.cap + 4) {
                let v = cfg.u16(l.cap + 2);
                let c = MsixConfig {
                    enabled: v & 0x8000 != 0,
                    function_mask: v & 0x4000 != 0,
                };
                t.set_config(c);
                let fds: Vec<_> = (0..t.vectors()).filter_map(|v| t.vector_fd(v)).collect();
                let want = if c.enabled { fds.len() } else { 0 };
                self.0.hand_over(IrqHandover::MSIX, &fds[..want]);
            }
        }
        if let Some((v, l)) = &self.0.msi {
            if l.touched(off, len) {
                let c = l.read(cfg);
                v.set_config(c);
                let c = v.config();
                let fds: Vec<_> = (0..v.count()).filter_map(|i| v.vector_fd(i)).collect();
                let want = if c.enabled {
                    usize::from(c.vectors).min(fds.len())
                } else {
                    0
                };
                self.0.hand_over(IrqHandover::MSI, &fds[..want]);
            }
        }
        if touches(COMMAND, COMMAND + 2) && !self.0.failed() {
            let cmd = cfg.u16(COMMAND).to_le_bytes();
            let res =
                self.0
                    .lock()
                    .region_write(VFIO_PCI_CONFIG_REGION_INDEX, COMMAND as u64, &cmd);
            if let Err(e) = res {
                self.0.failure("command register write", &e);
            }
        }
    }

    fn reset(&mut self, _tx: &Transaction<'_>) {
        self.0.reset();
    }
}
