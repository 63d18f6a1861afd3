//! The edu device behind the vfio_user crate's `ServerBackend` trait.

use std::fs::File;
use std::io::{Error, ErrorKind, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_ROM_REGION_INDEX,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};

use super::config::{EduConfig, BAR1_SIZE, MSIX_VECTORS};
use super::dma::DmaMappings;
use super::intx::{self, Intx};
use super::regs::{EduHost, EduRegs, BAR0_SIZE};

/// Everything the device holds; shared with the signal thread that dumps
/// the DMA mappings.
#[derive(Default)]
pub struct EduState {
    config: EduConfig,
    regs: EduRegs,
    bar1: Vec<u8>,
    dma: DmaMappings,
    /// One eventfd per MSI-X vector, as the client set them.
    vectors: Vec<Option<File>>,
    intx: Intx,
}

impl EduState {
    fn power_on(&mut self) {
        self.config = EduConfig::default();
        self.regs = EduRegs::default();
        self.bar1 = vec![0; BAR1_SIZE as usize];
    }

    pub(super) fn intx_generation(&self) -> u64 {
        self.intx.generation
    }

    /// The guest's EOI lowered INTx: up again if still pending (and MSI-X
    /// has not taken over).
    pub(super) fn resample(&self) {
        if self.regs.irq_status() != 0 && self.msix_vector0().is_none() {
            self.intx.raise();
        }
    }

    fn msix_vector0(&self) -> Option<&File> {
        self.vectors.first().and_then(Option::as_ref)
    }

    /// The DMA mappings as `dma iova=0x.. size=0x..` lines.
    pub fn dma_lines(&self) -> String {
        self.dma
            .ranges()
            .iter()
            .map(|(iova, size)| format!("dma iova={iova:#x} size={size:#x}\n"))
            .collect()
    }
}

/// Client memory and the interrupt (MSI-X vector 0's eventfd if the
/// client set one, else INTx), as the registers see them.
struct Host<'a> {
    dma: &'a DmaMappings,
    irq: Option<&'a File>,
    intx: &'a Intx,
}

impl EduHost for Host<'_> {
    fn dma_read(&mut self, iova: u64, data: &mut [u8]) -> bool {
        self.dma.read(iova, data)
    }
    fn dma_write(&mut self, iova: u64, data: &[u8]) -> bool {
        self.dma.write(iova, data)
    }
    fn raise_irq(&mut self) {
        match self.irq {
            Some(mut fd) => {
                if let Err(e) = fd.write_all(&1u64.to_ne_bytes()) {
                    warn!("edu: signalling MSI-X vector 0: {e}");
                }
            }
            None => self.intx.raise(),
        }
    }
}

#[derive(Clone, Default)]
pub struct EduBackend {
    state: Arc<Mutex<EduState>>,
}

impl EduBackend {
    pub fn new() -> Self {
        let backend = EduBackend::default();
        backend.lock().power_on();
        backend
    }

    pub fn lock(&self) -> MutexGuard<'_, EduState> {
        // A panic while locked cannot leave the registers worse than a
        // guest could: carry on with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the client that went away: its memory, its eventfds, and
    /// the device state it left.
    pub fn disconnect(&self) {
        let mut state = self.lock();
        state.dma.clear();
        state.vectors.clear();
        state.intx.trigger = None;
        state.intx.generation += 1;
        state.power_on();
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

impl ServerBackend for EduBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Error> {
        // Out-of-range reads answer all ones rather than an error reply, so
        // a client waiting for data stays in step with the stream.
        let state = self.lock();
        let len = data.len() as u64;
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => state.config.read(offset, data),
            VFIO_PCI_BAR0_REGION_INDEX if fits(offset, len, BAR0_SIZE) => {
                state.regs.read(offset, data)
            }
            VFIO_PCI_BAR1_REGION_INDEX if fits(offset, len, BAR1_SIZE) => {
                let start = offset as usize;
                data.copy_from_slice(&state.bar1[start..start + data.len()]);
            }
            VFIO_PCI_ROM_REGION_INDEX => super::rom::rom_read(offset, data),
            _ => data.fill(0xff),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let len = data.len() as u64;
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => state.config.write(offset, data),
            VFIO_PCI_BAR0_REGION_INDEX if fits(offset, len, BAR0_SIZE) => {
                let mut host = Host {
                    dma: &state.dma,
                    irq: state.vectors.first().and_then(Option::as_ref),
                    intx: &state.intx,
                };
                state.regs.write(offset, data, &mut host);
            }
            VFIO_PCI_BAR1_REGION_INDEX if fits(offset, len, BAR1_SIZE) => {
                let start = offset as usize;
                state.bar1[start..start + data.len()].copy_from_slice(data);
            }
            _ => debug!("edu: write to region {region} offset {offset:#x} ignored"),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> Result<(), Error> {
        let mut state = self.lock();
        state
            .dma
            .map(address, size, offset, fd)
            .inspect_err(|e| warn!("edu: {e}"))
            .map_err(|e| invalid(e.to_string()))?;
        info!("edu: dma map iova={address:#x} size={size:#x}");
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> Result<(), Error> {
        let mut state = self.lock();
        let count = if flags.contains(DmaUnmapFlags::UNMAP_ALL) {
            let n = state.dma.ranges().len();
            state.dma.clear();
            n
        } else {
            state.dma.unmap(address, size)
        };
        info!("edu: dma unmap iova={address:#x} size={size:#x}: {count} mapping(s)");
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Error> {
        info!("edu: device reset");
        self.lock().power_on();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), Error> {
        if index == VFIO_PCI_INTX_IRQ_INDEX {
            return self.set_intx(flags, start, count, fds);
        }
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            return Err(invalid(format!(
                "irq index {index} is not INTx (0) or MSI-X (2)"
            )));
        }
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER == 0 {
            return Err(invalid(format!("SET_IRQS flags {flags:#x}: only TRIGGER")));
        }
        let end = start
            .checked_add(count)
            .filter(|&end| end <= u32::from(MSIX_VECTORS))
            .ok_or_else(|| invalid(format!("vectors {start}+{count} exceed {MSIX_VECTORS}")))?;
        let mut state = self.lock();
        state
            .vectors
            .resize_with(usize::from(MSIX_VECTORS), || None);
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            state.vectors.iter_mut().for_each(|v| *v = None);
        } else if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            let mut fds = fds.into_iter();
            for v in start..end {
                state.vectors[v as usize] = fds.next();
            }
        }
        info!("edu: MSI-X vectors {start}..{end} set ({flags:#x})");
        Ok(())
    }
}

impl EduBackend {
    /// SET_IRQS on INTx: the trigger eventfd (none: INTx off), or the
    /// unmask eventfd whose writes (the guest's EOIs) re-raise a pending
    /// interrupt, or an unmask now.
    fn set_intx(
        &mut self,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), Error> {
        if start != 0 || count > 1 {
            return Err(invalid(format!("INTx has one vector, not {start}+{count}")));
        }
        let eventfd = flags & VFIO_IRQ_SET_DATA_EVENTFD != 0;
        let fd = fds.into_iter().next();
        if eventfd && count == 1 && fd.is_none() {
            return Err(invalid("INTx eventfd missing".into()));
        }
        let mut state = self.lock();
        if flags & VFIO_IRQ_SET_ACTION_TRIGGER != 0 {
            state.intx.trigger = if eventfd { fd } else { None };
            info!(
                "edu: INTx trigger {}",
                if state.intx.trigger.is_some() {
                    "set"
                } else {
                    "removed"
                }
            );
        } else if flags & VFIO_IRQ_SET_ACTION_UNMASK != 0 {
            state.intx.generation += 1;
            match fd {
                Some(fd) if eventfd => {
                    let (backend, generation) = (self.clone(), state.intx.generation);
                    std::thread::Builder::new()
                        .name("edu-intx".into())
                        .spawn(move || intx::watch(backend, fd, generation))
                        .map_err(|e| invalid(format!("starting the INTx watcher: {e}")))?;
                    info!("edu: INTx unmask eventfd set");
                }
                _ if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 1 => state.resample(),
                _ => info!("edu: INTx unmask eventfd removed"),
            }
        } else {
            return Err(invalid(format!(
                "INTx SET_IRQS flags {flags:#x}: only TRIGGER or UNMASK"
            )));
        }
        Ok(())
    }
}

fn fits(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}
