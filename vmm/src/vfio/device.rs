//! A PCI function whose device lives outside the VMM, behind a
//! [`VfioBackend`] (a vfio-user server now, a kernel VFIO device later).
//!
//! The config space is read from the device once and virtualised: the
//! guest programs our copy, BARs are mapped by `PciFunction` through memory
//! transactions, the MSI-X capability's control bits drive our
//! [`MsixTable`], and command register writes are passed on. BAR accesses
//! are trapped and forwarded, except the MSI-X table and PBA, emulated
//! here. Each vector's eventfd (the irqfd KVM injects from) is handed to
//! the device with SET_IRQS, so device interrupts never pass through us.
//!
//! A backend that fails (peer died, garbage, timeout) makes the device
//! read all ones and drop writes, with one warning; the VMM carries on.
//!
//! Lock order: memory transaction, then the backend.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_vfio::backend::{
    CONFIG_REGION as VFIO_PCI_CONFIG_REGION_INDEX, MSIX_IRQ as VFIO_PCI_MSIX_IRQ_INDEX,
};
use vmm_vfio::{BackendError, VfioBackend};

use super::config::{virtual_config, MsixLayout};
use crate::interrupt::{GsiRouter, MsixConfig, MsixTable, Routing};
use crate::memory::{Memory, MemoryError, MemoryRegion, RegionOps, Transaction};
use crate::pci::config::{COMMAND, SIZE as CONFIG_SIZE};
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
    #[error("{0}: cannot set up MSI-X")]
    Msix(String, #[source] crate::interrupt::routes::RouteError),
    #[error("{name}: cannot hand the MSI-X vector eventfds to the device")]
    Irqs {
        name: String,
        #[source]
        source: BackendError,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Pci(#[from] crate::pci::PciError),
}

pub struct VfioPci<R: Routing> {
    name: String,
    backend: Arc<Mutex<dyn VfioBackend>>,
    msix: Option<(Arc<MsixTable<R>>, MsixLayout)>,
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
        let (cfg, layout) = virtual_config(&raw);
        let msix = match layout {
            Some(l) => {
                let t = MsixTable::new(router, l.vectors)
                    .map_err(|e| VfioPciError::Msix(name.into(), e))?;
                Some((t, l))
            }
            None => None,
        };
        let dev = Arc::new(VfioPci {
            name: name.into(),
            backend,
            msix,
            warned: AtomicBool::new(false),
        });
        if let Some((t, _)) = &dev.msix {
            let fds: Vec<_> = (0..t.vectors()).filter_map(|v| t.vector_fd(v)).collect();
            let raw_fds: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            dev.lock()
                .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, &raw_fds)
                .map_err(|source| VfioPciError::Irqs {
                    name: name.into(),
                    source,
                })?;
        }
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
            if size > 0 {
                let region = dev.bar_region(&tx, index, size)?;
                bars.push((index, kind, low & 8 != 0, region));
            }
            index += if kind == BarKind::Mem64 { 2 } else { 1 };
        }
        tx.commit()?;
        for (index, kind, prefetchable, region) in bars {
            f.add_bar(index, kind, prefetchable, region)?;
        }
        Ok((dev, f))
    }

    /// BAR `index`'s region: accesses forwarded to the device, with the
    /// MSI-X table and PBA laid over it where the capability puts them.
    fn bar_region(
        self: &Arc<Self>,
        tx: &Transaction<'_>,
        index: usize,
        size: u64,
    ) -> Result<MemoryRegion, MemoryError> {
        let bar_size = size.next_power_of_two().max(16);
        let ops = Arc::new(BarOps {
            dev: self.clone(),
            index: index as u32,
            size,
        });
        let forward = MemoryRegion::io(&format!("{}-bar{index}", self.name), bar_size, ops);
        let Some((t, l)) = self
            .msix
            .as_ref()
            .filter(|(_, l)| l.table_bar == index || l.pba_bar == index)
        else {
            return Ok(forward);
        };
        let bar = MemoryRegion::container(&format!("{}-bar{index}-msix", self.name), bar_size);
        tx.add_subregion(&bar, 0, &forward)?;
        let (table_ops, pba_ops) = t.regions();
        let (table_size, pba_size) = t.sizes();
        if l.table_bar == index {
            let table =
                MemoryRegion::io(&format!("{}-msix-table", self.name), table_size, table_ops);
            tx.add_subregion_overlap(&bar, l.table_offset, &table, 1)?;
        }
        if l.pba_bar == index {
            let pba = MemoryRegion::io(&format!("{}-msix-pba", self.name), pba_size, pba_ops);
            tx.add_subregion_overlap(&bar, l.pba_offset, &pba, 1)?;
        }
        Ok(bar)
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

    fn reset(&self) {
        if let Some((t, _)) = &self.msix {
            t.reset();
        }
        if let Err(e) = self.lock().reset() {
            self.failure("device reset", &e);
        }
    }
}

/// A BAR's accesses, forwarded to the device's region.
struct BarOps<R: Routing> {
    dev: Arc<VfioPci<R>>,
    index: u32,
    size: u64,
}

impl<R: Routing + 'static> RegionOps for BarOps<R> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if self.dev.failed() || offset + data.len() as u64 > self.size {
            return;
        }
        let res = self.dev.lock().region_read(self.index, offset, data);
        if let Err(e) = res {
            data.fill(0xff);
            self.dev
                .failure(&format!("BAR{} read at {offset:#x}", self.index), &e);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if self.dev.failed() || offset + data.len() as u64 > self.size {
            return;
        }
        let res = self.dev.lock().region_write(self.index, offset, data);
        if let Err(e) = res {
            self.dev
                .failure(&format!("BAR{} write at {offset:#x}", self.index), &e);
        }
    }
}

/// Config-space hooks: MSI-X control bits, the command register passed on
/// to the device, machine reset.
struct Hooks<R: Routing>(Arc<VfioPci<R>>);

impl<R: Routing + 'static> PciDevice for Hooks<R> {
    fn config_written(&mut self, _tx: &Transaction<'_>, cfg: &ConfigSpace, off: usize, len: usize) {
        let touches = |lo: usize, hi: usize| off < hi && lo < off + len;
        if let Some((t, l)) = &self.0.msix {
            if touches(l.cap + 2, l.cap + 4) {
                let v = cfg.u16(l.cap + 2);
                t.set_config(MsixConfig {
                    enabled: v & 0x8000 != 0,
                    function_mask: v & 0x4000 != 0,
                });
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
