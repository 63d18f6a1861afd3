//! The virtio-pci modern transport (virtio 1.x, 4.1): a PCI function with
//! the common, ISR, device and notify structures in BAR 4 (64-bit) and the
//! MSI-X table and PBA in BAR 1.
//!
//! Each queue's notify address carries an ioeventfd on the BAR's region, so
//! `kvm-io` registers it with KVM wherever the guest puts the BAR and a
//! notify never reaches a vCPU thread; a notify that does arrive here (no
//! KVM, or an odd access) is forwarded to the same eventfd. Each vector's
//! interrupt is the MSI-X table's irqfd.
//!
//! The PCI configuration access capability (`VIRTIO_PCI_CAP_PCI_CFG`) is a
//! window into BAR 4 through config space, for firmware that cannot reach
//! the BAR (one placed above 4 GiB): the driver sets offset and length,
//! then reads or writes the data field.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::EventFd;

use super::common::{CommonConfig, Effect, NO_VECTOR, SIZE as COMMON_SIZE};
use super::device::{make_queue, Activation, ActiveQueue, Broken, Signal, VirtioDevice};
use super::device::{ISR_CONFIG, ISR_QUEUE};
use crate::interrupt::{GsiRouter, MsixConfig, MsixTable, Routing};
use crate::memory::dma::DmaView;
use crate::memory::{Ioeventfd, Memory, MemoryError, MemoryRegion, RegionOps, Transaction};
use crate::pci::{BarKind, ConfigSpace, PciDevice, PciFunction};

pub const VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const DEVICE_BASE: u16 = 0x1040;

pub const MSIX_BAR: usize = 1;
pub const MSIX_BAR_SIZE: u64 = 0x1000;
const PBA_OFFSET: u64 = 0x800;
pub const CAPS_BAR: usize = 4;
pub const CAPS_BAR_SIZE: u64 = 0x4000;
const COMMON_AT: u64 = 0x0000;
const ISR_AT: u64 = 0x1000;
const DEVICE_AT: u64 = 0x2000;
const NOTIFY_AT: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
/// Queues the notify area has room for.
pub const MAX_QUEUES: usize = 0x1000 / NOTIFY_MULTIPLIER as usize;

const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}: {1} queues (1 to {MAX_QUEUES})")]
    Queues(String, usize),
    #[error("{0}: cannot set up MSI-X")]
    Msix(String, #[source] crate::interrupt::routes::RouteError),
    #[error("{0}: cannot create a queue eventfd")]
    EventFd(String, #[source] std::io::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Pci(#[from] crate::pci::PciError),
}

/// Guest accesses that reached the transport, by structure: what the vCPU
/// threads saw of this device.
#[derive(Debug, Default)]
pub struct AccessStats {
    pub common: AtomicU64,
    pub isr: AtomicU64,
    pub device: AtomicU64,
    pub notify: AtomicU64,
}

struct State {
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
}

pub struct VirtioPci<R: Routing> {
    name: String,
    state: Mutex<State>,
    isr: Arc<AtomicU8>,
    broken: Arc<Broken>,
    msix: Arc<MsixTable<R>>,
    msix_cap: usize,
    /// Offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability.
    pci_cfg_cap: usize,
    kicks: Vec<Arc<EventFd>>,
    mem: DmaView,
    pub stats: AccessStats,
}

impl<R: Routing + 'static> VirtioPci<R> {
    /// The transport for `device` and its PCI function, with both BARs'
    /// regions built (in one transaction of `memory`) but not yet mapped.
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        router: GsiRouter<R>,
        memory: &Memory,
        mem: DmaView,
    ) -> Result<(Arc<Self>, PciFunction), TransportError> {
        let queues = device.queue_max_sizes().len();
        if queues == 0 || queues > MAX_QUEUES {
            return Err(TransportError::Queues(name.into(), queues));
        }
        let vectors = u16::try_from(queues + 1).unwrap_or(u16::MAX);
        let msix =
            MsixTable::new(router, vectors).map_err(|e| TransportError::Msix(name.into(), e))?;
        let kicks = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::EventFd(name.into(), e))?;
        let mut cfg = ConfigSpace::new(
            VENDOR,
            DEVICE_BASE + device.device_type(),
            class_of(device.device_type()),
            1,
        );
        cfg.set_u16(0x2c, VENDOR);
        cfg.set_u16(0x2e, device.device_type());
        let config_len = device.config_size().min(0x1000) as u32;
        add_virtio_cap(&mut cfg, CFG_COMMON, COMMON_AT, COMMON_SIZE as u32, None);
        add_virtio_cap(
            &mut cfg,
            CFG_NOTIFY,
            NOTIFY_AT,
            queues as u32 * NOTIFY_MULTIPLIER,
            Some(NOTIFY_MULTIPLIER),
        );
        add_virtio_cap(&mut cfg, CFG_ISR, ISR_AT, 1, None);
        add_virtio_cap(&mut cfg, CFG_DEVICE, DEVICE_AT, config_len, None);
        let pci_cfg_cap = add_pci_cfg_cap(&mut cfg);
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(vectors - 1).to_le_bytes());
        body.extend_from_slice(&(MSIX_BAR as u32).to_le_bytes());
        body.extend_from_slice(&(PBA_OFFSET as u32 | MSIX_BAR as u32).to_le_bytes());
        let msix_cap = cfg
            .add_capability(CAP_MSIX, &body)
            .expect("a fresh config space has room for five capabilities");
        // Enable and function mask are the writable control bits.
        cfg.set_writable(msix_cap + 2, &[0, 0xc0]);

        let features = device.features();
        let sizes = device.queue_max_sizes();
        let t = Arc::new(VirtioPci {
            name: name.into(),
            state: Mutex::new(State {
                common: CommonConfig::new(features, &sizes),
                device,
            }),
            isr: Arc::default(),
            broken: Arc::default(),
            msix,
            msix_cap,
            pci_cfg_cap,
            kicks,
            mem,
            stats: AccessStats::default(),
        });

        let caps = MemoryRegion::io(&format!("{name}-bar4"), CAPS_BAR_SIZE, t.clone());
        let msix_bar = MemoryRegion::container(&format!("{name}-msix"), MSIX_BAR_SIZE);
        let (table_ops, pba_ops) = t.msix.regions();
        let (table_size, pba_size) = t.msix.sizes();
        let table = MemoryRegion::io(&format!("{name}-msix-table"), table_size, table_ops);
        let pba = MemoryRegion::io(&format!("{name}-msix-pba"), pba_size, pba_ops);
        let tx = memory.begin();
        tx.add_subregion(&msix_bar, 0, &table)?;
        tx.add_subregion(&msix_bar, PBA_OFFSET, &pba)?;
        for (q, fd) in t.kicks.iter().enumerate() {
            let at = NOTIFY_AT + q as u64 * u64::from(NOTIFY_MULTIPLIER);
            tx.add_eventfd(
                &caps,
                Ioeventfd {
                    addr: at,
                    size: 0,
                    datamatch: None,
                    fd: fd.clone(),
                },
            )?;
        }
        tx.commit()?;

        let mut f = PciFunction::new(name, cfg, Box::new(Hooks(t.clone())));
        f.add_bar(MSIX_BAR, BarKind::Mem32, false, msix_bar)?;
        f.add_bar(CAPS_BAR, BarKind::Mem64, true, caps)?;
        Ok((t, f))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The eventfd a guest notify of queue `q` signals.
    pub fn kick(&self, q: usize) -> Option<&Arc<EventFd>> {
        self.kicks.get(q)
    }

    pub fn msix(&self) -> &Arc<MsixTable<R>> {
        &self.msix
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u8 {
        let s = self.lock().common.status;
        if self.broken.is_set() {
            s | virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8
        } else {
            s
        }
    }

    /// Why the device last asked for a reset, if it did.
    pub fn broken_reason(&self) -> Option<String> {
        self.broken.is_set().then(|| self.broken.reason())
    }

    /// One line for exit reports: accesses by structure and device stats.
    pub fn report(&self) -> String {
        let s = &self.stats;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{}: exits common={} isr={} device={} notify={} {}",
            self.name,
            ld(&s.common),
            ld(&s.isr),
            ld(&s.device),
            ld(&s.notify),
            self.lock().device.stats()
        )
    }

    fn vector(&self, v: u16) -> Option<Arc<EventFd>> {
        (v != NO_VECTOR).then(|| self.msix.vector_fd(v)).flatten()
    }

    fn config_signal(&self, common: &CommonConfig) -> Signal {
        Signal {
            fd: self.vector(common.msix_config),
            isr: self.isr.clone(),
            bit: ISR_CONFIG,
        }
    }

    fn reset_device(&self, st: &mut State) {
        st.device.reset();
        self.isr.store(0, Ordering::Release);
        self.broken.clear();
    }

    fn activate(&self, st: &mut State) -> Result<(), String> {
        let features = st.common.driver_features;
        let event_idx = features & 1 << VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (i, qc) in st.common.queues.iter().enumerate() {
            if !qc.ready {
                continue;
            }
            let queue = make_queue(qc, event_idx).map_err(|e| format!("queue {i}: {e}"))?;
            queues.push(ActiveQueue {
                index: i as u16,
                queue,
                kick: self.kicks[i].clone(),
                call: Signal {
                    fd: self.vector(qc.msix_vector),
                    isr: self.isr.clone(),
                    bit: ISR_QUEUE,
                },
            });
        }
        st.device.activate(Activation {
            features,
            mem: self.mem.clone(),
            queues,
            broken: self.broken.clone(),
        })
    }

    fn common_write(&self, offset: u64, data: &[u8]) {
        let mut st = self.lock();
        let effect = st.common.write(offset, data);
        *self.broken.config.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(self.config_signal(&st.common));
        match effect {
            Effect::None => {}
            Effect::Reset => self.reset_device(&mut st),
            Effect::Activate => {
                if let Err(why) = self.activate(&mut st) {
                    drop(st);
                    self.broken.report(&format!("{}: {why}", self.name));
                }
            }
            Effect::NeedsReset(why) => {
                drop(st);
                self.broken.report(&format!("{}: {why}", self.name));
            }
        }
    }

    /// The machine is going away.
    pub fn shutdown(&self) {
        self.lock().device.shutdown();
    }

    /// Machine reset: device stopped, common config and MSI-X as at
    /// power-on.
    fn machine_reset(&self) {
        let mut st = self.lock();
        st.common.reset();
        self.reset_device(&mut st);
        self.msix.reset();
    }
}

impl<R: Routing + 'static> RegionOps for VirtioPci<R> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            COMMON_AT..=0xfff => {
                self.stats.common.fetch_add(1, Ordering::Relaxed);
                let st = self.lock();
                st.common.read(offset - COMMON_AT, data);
                if offset - COMMON_AT == 0x14 && self.broken.is_set() {
                    data[0] |= virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
                }
            }
            ISR_AT => {
                self.stats.isr.fetch_add(1, Ordering::Relaxed);
                data[0] = self.isr.swap(0, Ordering::AcqRel);
            }
            DEVICE_AT..=0x2fff => {
                self.stats.device.fetch_add(1, Ordering::Relaxed);
                let st = self.lock();
                let off = offset - DEVICE_AT;
                if off + data.len() as u64 <= st.device.config_size() {
                    st.device.read_config(off, data);
                }
            }
            _ => {}
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match offset {
            COMMON_AT..=0xfff => {
                self.stats.common.fetch_add(1, Ordering::Relaxed);
                self.common_write(offset - COMMON_AT, data);
            }
            DEVICE_AT..=0x2fff => {
                self.stats.device.fetch_add(1, Ordering::Relaxed);
                let mut st = self.lock();
                let off = offset - DEVICE_AT;
                if off + data.len() as u64 <= st.device.config_size() {
                    st.device.write_config(off, data);
                }
            }
            NOTIFY_AT..=0x3fff => {
                self.stats.notify.fetch_add(1, Ordering::Relaxed);
                let q = ((offset - NOTIFY_AT) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(fd) = self.kicks.get(q) {
                    let _ = fd.write(1);
                }
            }
            _ => {}
        }
    }
}

/// The PCI-side hooks: MSI-X control bits and machine reset.
struct Hooks<R: Routing>(Arc<VirtioPci<R>>);

impl<R: Routing> Hooks<R> {
    /// The BAR 4 range the PCI_CFG window selects, if it is one the spec
    /// allows (1, 2 or 4 bytes, aligned, in BAR 4); else the window is inert.
    fn window(&self, cfg: &ConfigSpace) -> Option<(u64, usize)> {
        let cap = self.0.pci_cfg_cap;
        let (bar, at, len) = (cfg.u8(cap + 4), cfg.u32(cap + 8), cfg.u32(cap + 12));
        let ok = usize::from(bar) == CAPS_BAR
            && matches!(len, 1 | 2 | 4)
            && at % len == 0
            && u64::from(at) + u64::from(len) <= CAPS_BAR_SIZE;
        ok.then_some((u64::from(at), len as usize))
    }
}

/// Whether `[off, off + len)` overlaps the 4 bytes at `field`.
fn touches(off: usize, len: usize, field: usize) -> bool {
    off < field + 4 && field < off + len
}

impl<R: Routing + 'static> PciDevice for Hooks<R> {
    fn config_written(&mut self, _tx: &Transaction<'_>, cfg: &ConfigSpace, off: usize, len: usize) {
        let ctl = self.0.msix_cap + 2;
        if off < ctl + 2 && ctl < off + len {
            let v = cfg.u16(ctl);
            self.0.msix.set_config(MsixConfig {
                enabled: v & 0x8000 != 0,
                function_mask: v & 0x4000 != 0,
            });
        }
        let data = self.0.pci_cfg_cap + 16;
        if touches(off, len, data) {
            if let Some((at, n)) = self.window(cfg) {
                let bytes = cfg.u32(data).to_le_bytes();
                self.0.write(at, &bytes[..n]);
            }
        }
    }

    fn config_read(&self, cfg: &ConfigSpace, off: usize, out: &mut [u8]) {
        let data = self.0.pci_cfg_cap + 16;
        if !touches(off, out.len(), data) {
            return;
        }
        let Some((at, n)) = self.window(cfg) else {
            return;
        };
        let mut value = [0u8; 4];
        self.0.read(at, &mut value[..n]);
        for (i, b) in out.iter_mut().enumerate() {
            if let Some(v) = (off + i).checked_sub(data).and_then(|k| value.get(k)) {
                *b = *v;
            }
        }
    }

    fn reset(&mut self, _tx: &Transaction<'_>) {
        self.0.machine_reset();
    }
}

fn class_of(device_type: u16) -> u32 {
    match device_type {
        2 => 0x01_00_00, // mass storage, SCSI-like
        1 => 0x02_00_00, // network
        _ => 0xff_00_00,
    }
}

/// `struct virtio_pci_cap` (and the notify multiplier) pointing into BAR 4.
fn add_virtio_cap(cfg: &mut ConfigSpace, kind: u8, offset: u64, len: u32, mult: Option<u32>) {
    let cap_len = if mult.is_some() { 20u8 } else { 16 };
    let mut body = vec![cap_len, kind, CAPS_BAR as u8, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    if let Some(m) = mult {
        body.extend_from_slice(&m.to_le_bytes());
    }
    cfg.add_capability(CAP_VENDOR, &body)
        .expect("a fresh config space has room for five capabilities");
}

/// `struct virtio_pci_cfg_cap`: bar, offset and length writable, then the
/// 4-byte data field; returns the capability's offset.
fn add_pci_cfg_cap(cfg: &mut ConfigSpace) -> usize {
    let mut body = vec![20u8, CFG_PCI, 0, 0, 0, 0];
    body.extend_from_slice(&[0; 12]);
    let cap = cfg
        .add_capability(CAP_VENDOR, &body)
        .expect("a fresh config space has room for six capabilities");
    cfg.set_writable(cap + 4, &[0xff]);
    cfg.set_writable(cap + 8, &[0xff; 12]);
    cap
}
