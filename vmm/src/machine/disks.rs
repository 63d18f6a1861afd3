//! Devices on the PCI bus beyond the chipset: iothreads and virtio-blk
//! disks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmm_backends::block::{BlockEngine, BlockLimits, DiskImage, ImageOptions};

use super::error_chain;
use super::pc::{Machine, MachineError};
use crate::interrupt::KvmRouting;
use crate::iothread::IoThread;
use crate::vhost_user::blk::{Placement, VhostUserBlk};
use crate::vhost_user::VhostListener;
use crate::virtio::blk::Blk;
use crate::virtio::{VirtioDevice, VirtioPci};

/// First PCI slot for added devices (0 and 1 are the chipset).
const FIRST_SLOT: u8 = 3;

/// A virtio-blk disk as `--disk` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// Iothread ids; queue `q` runs on `iothreads[q % len]`. Empty: the
    /// disk gets an iothread of its own.
    pub iothreads: Vec<String>,
    pub num_queues: u16,
    pub queue_size: u16,
    pub serial: String,
    pub direct: bool,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            path: PathBuf::new(),
            readonly: false,
            iothreads: Vec::new(),
            num_queues: 1,
            queue_size: 256,
            serial: String::new(),
            direct: false,
        }
    }
}

/// A vhost-user-blk disk as `--vhost-user-blk` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserBlkConfig {
    pub socket: PathBuf,
    pub num_queues: u16,
    pub queue_size: u16,
    /// How long to wait for the backend's socket.
    pub timeout: Duration,
    /// How long to wait for a backend that went away to come back (zero:
    /// do not wait; the device needs a reset).
    pub reconnect: Duration,
    /// Whether dirty logging uses the backend's log (off only to show that
    /// the backend's writes are found through it and nowhere else).
    pub dirty_log: bool,
}

impl Default for VhostUserBlkConfig {
    fn default() -> Self {
        VhostUserBlkConfig {
            socket: PathBuf::new(),
            num_queues: 1,
            queue_size: 256,
            timeout: Duration::from_secs(10),
            reconnect: Duration::from_secs(10),
            dirty_log: true,
        }
    }
}

impl Machine {
    /// Starts iothread `id` (`--iothread id=...`).
    pub fn add_iothread(&mut self, id: &str) -> Result<Arc<IoThread>, MachineError> {
        if self
            .iothreads
            .iter()
            .any(|t| t.name() == format!("iothread-{id}"))
        {
            return Err(MachineError::Config(format!(
                "--iothread id={id} is defined twice"
            )));
        }
        let t = IoThread::new(id).map_err(|e| MachineError::Config(e.to_string()))?;
        self.iothreads.push(t.clone());
        Ok(t)
    }

    fn iothread(&self, id: &str) -> Option<Arc<IoThread>> {
        let name = format!("iothread-{id}");
        self.iothreads.iter().find(|t| t.name() == name).cloned()
    }

    /// Adds a virtio-blk disk in the next free PCI slot; returns its name
    /// (`virtio-blk<N>`).
    pub fn add_disk(&mut self, d: &DiskConfig) -> Result<String, MachineError> {
        let name = format!("virtio-blk{}", self.disks);
        self.disks += 1;
        let bad =
            |what: String| MachineError::Config(format!("--disk {}: {what}", d.path.display()));
        let options = ImageOptions {
            read_only: d.readonly,
            direct: d.direct,
            serial: d.serial.clone(),
        };
        let image = DiskImage::open(&d.path, &options).map_err(|e| bad(error_chain(&e)))?;
        let engine = Arc::new(BlockEngine::new(image, BlockLimits::default()));
        let mut threads = Vec::new();
        for id in &d.iothreads {
            threads.push(self.iothread(id).ok_or_else(|| {
                bad(format!(
                    "iothread {id:?} is not defined (add --iothread id={id})"
                ))
            })?);
        }
        if threads.is_empty() {
            threads.push(self.add_iothread(&name)?);
        }
        let blk = Blk::new(engine, d.num_queues, d.queue_size, threads);
        self.plug(&name, Box::new(blk)).map_err(bad)?;
        self.monitor.add_block(crate::qmp::BlockInfo {
            device: name.clone(),
            file: d.path.display().to_string(),
            read_only: d.readonly,
            driver: "raw",
        });
        Ok(name)
    }

    /// Adds a vhost-user-blk disk whose backend listens on `socket`;
    /// returns its name (`vhost-user-blk<N>`).
    pub fn add_vhost_user_blk(&mut self, c: &VhostUserBlkConfig) -> Result<String, MachineError> {
        let name = format!("vhost-user-blk{}", self.vhost_user.len());
        let bad = |what: String| {
            MachineError::Config(format!("--vhost-user-blk {}: {what}", c.socket.display()))
        };
        let at = Placement {
            memory: self.memory.clone(),
            space: self.pc.memory.clone(),
            dma: self.dma.clone(),
        };
        let dev = VhostUserBlk::connect(
            &c.socket,
            c.num_queues,
            c.queue_size,
            c.timeout,
            c.reconnect,
            at,
        )
        .map_err(|e| bad(error_chain(&e)))?;
        let mut listener = VhostListener::new(&format!("vhost:{name}"), dev.conn().sink());
        listener.use_log = c.dirty_log;
        let id = self
            .memory
            .register_listener(&self.pc.memory, Box::new(listener))
            .map_err(|e| bad(error_chain(&e)))?;
        if let Err(e) = self.plug(&name, Box::new(dev)) {
            self.memory.unregister_listener(&self.pc.memory, id);
            return Err(bad(e));
        }
        self.vhost_user.push(id);
        self.monitor.add_block(crate::qmp::BlockInfo {
            device: name.clone(),
            file: c.socket.display().to_string(),
            read_only: false,
            driver: "vhost-user",
        });
        Ok(name)
    }

    /// Puts a virtio device behind a transport in the next free slot.
    fn plug(&mut self, name: &str, dev: Box<dyn VirtioDevice>) -> Result<(), String> {
        let slot = u8::try_from(self.virtio.len())
            .ok()
            .map(|i| i + FIRST_SLOT)
            .filter(|s| *s <= 31)
            .ok_or("no free PCI slot")?;
        let (t, f) = VirtioPci::new(
            name,
            dev,
            self.router.clone(),
            &self.memory,
            self.dma.clone(),
        )
        .map_err(|e| error_chain(&e))?;
        self.pci.add(slot, 0, f).map_err(|e| error_chain(&e))?;
        self.virtio.push(t);
        Ok(())
    }

    /// The virtio transports, in slot order.
    pub fn virtio_devices(&self) -> &[Arc<VirtioPci<KvmRouting>>] {
        &self.virtio
    }

    /// Exit counts by kind, per virtio device and per iothread: what
    /// `--exit-stats` prints.
    pub fn exit_report(&self) -> String {
        let s = self.stats.snapshot();
        let mut out = format!(
            "exits: pio_read={} pio_write={} mmio_read={} mmio_write={} unassigned={} mmio_on_ram={}\n",
            s[0], s[1], s[2], s[3], s[4], s[5]
        );
        for v in &self.virtio {
            out.push_str(&v.report());
            out.push('\n');
        }
        for t in &self.iothreads {
            out.push_str(&format!("{}: runs={}\n", t.name(), t.runs()));
        }
        out
    }
}
