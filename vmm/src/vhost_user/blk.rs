//! vhost-user-blk as a PCI device: the VMM keeps the virtio-pci transport
//! and the configuration space; the backend process gets guest RAM (through
//! the `vhost` listener), the rings, the queues' ioeventfds as kick fds and
//! the vectors' irqfds as call fds, so the data path never enters the VMM.
//!
//! Reconnect: a watcher thread sees the backend's socket hang up, marks the
//! connection gone (memory-table changes are then accepted and not sent)
//! and connects again for up to the configured time. It then replays, in
//! one memory transaction so the map cannot change meanwhile, the whole
//! memory table, the features and every started ring, each from the used
//! index in guest memory, and kicks every ring once (the guest's last kick
//! may have died with the old backend). Requests the old backend took but
//! never completed are taken again (virtio-blk requests can be repeated),
//! exactly so when it completed them in the order it took them: a backend
//! that completes out of order can leave one before the used index
//! unfinished and one after it finished, and resuming at the used index
//! then loses the first and redoes the second. Only inflight tracking
//! (below) recovers that. If the backend does not come back the device
//! sets DEVICE_NEEDS_RESET and the VMM runs on.
//!
//! Inflight tracking: a backend that offers INFLIGHT_SHMFD is asked for its
//! inflight region (GET_INFLIGHT_FD) when the driver first starts the
//! device; the device keeps the file for its lifetime and hands it over
//! (SET_INFLIGHT_FD) before any ring starts, on the first start and on
//! every replay, so a restarted backend finds the requests its predecessor
//! took and never completed, and submits them again (it then starts each
//! ring after them, whatever the used index says). A device reset drops
//! the region, so a new driver starts with a clean one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_vhost::frontend::VringSetup;
use vmm_vhost::{apply, BackendConn, FrontendError, Inflight, InflightSlot, MemTable};

use super::listener::section;
use crate::machine::error_chain;
use crate::memory::dma::DmaView;
use crate::memory::{AddressSpace, Memory};
use crate::virtio::blk::TYPE_BLOCK;
use crate::virtio::device::{Activation, Broken, VirtioDevice};

/// Bytes of `struct virtio_blk_config` the device forwards.
const CONFIG_SIZE: u32 = 60;
/// Offset of `num_queues` in the config.
const NUM_QUEUES_AT: usize = 34;
/// Features the transport can carry: VERSION_1, EVENT_IDX, INDIRECT_DESC
/// and the block feature bits 0 to 14 (no packed rings, no IOMMU).
const PASSED: u64 = 1 << 32 | 1 << 29 | 1 << 28 | 0x7fff;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum VhostBlkError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot start the reconnect watcher")]
    Watcher(#[source] std::io::Error),
}

/// One started ring, enough to start it again on a new backend.
#[derive(Clone)]
struct Ring {
    index: usize,
    size: u16,
    /// Guest-physical addresses of the three parts.
    gpa: [u64; 3],
    kick: Arc<EventFd>,
    call: Arc<EventFd>,
}

struct Rings {
    features: u64,
    started: Vec<Ring>,
    broken: Option<Arc<Broken>>,
    /// The backend's inflight region, from the driver's first start until
    /// a device reset.
    inflight: InflightSlot,
}

/// What the device and its watcher share.
struct Shared {
    conn: BackendConn,
    rings: Mutex<Rings>,
    memory: Arc<Memory>,
    space: Arc<AddressSpace>,
    dma: DmaView,
    reconnect: Duration,
    stop: AtomicBool,
    reconnects: AtomicU64,
    /// Replays that handed a restarted backend the inflight region.
    inflight_replays: AtomicU64,
    /// Requests the region held in flight at those replays.
    resubmitted: AtomicU64,
}

pub struct VhostUserBlk {
    shared: Arc<Shared>,
    config: Vec<u8>,
    queues: u16,
    queue_size: u16,
    /// Call fd for a queue the driver gave no vector.
    no_vector: Arc<EventFd>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

/// Where the device lives, for table replays on reconnect.
pub struct Placement {
    pub memory: Arc<Memory>,
    pub space: Arc<AddressSpace>,
    pub dma: DmaView,
}

impl VhostUserBlk {
    /// Connects to the backend at `socket` (waiting up to `timeout` for it)
    /// and reads its configuration. With a non-zero `reconnect` the device
    /// waits that long for a backend that went away to come back.
    pub fn connect(
        socket: &Path,
        num_queues: u16,
        queue_size: u16,
        timeout: Duration,
        reconnect: Duration,
        at: Placement,
    ) -> Result<Self, VhostBlkError> {
        let conn = BackendConn::connect(socket, u64::from(num_queues.max(1)), timeout)?;
        let queues = num_queues.max(1).min(
            u16::try_from(conn.negotiated.queues)
                .unwrap_or(u16::MAX)
                .max(1),
        );
        let mut config = conn.config(0, CONFIG_SIZE)?;
        config.resize(CONFIG_SIZE as usize, 0);
        config[NUM_QUEUES_AT..NUM_QUEUES_AT + 2].copy_from_slice(&queues.to_le_bytes());
        let no_vector = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VhostBlkError::EventFd)?);
        let shared = Arc::new(Shared {
            conn,
            rings: Mutex::new(Rings {
                features: 0,
                started: Vec::new(),
                broken: None,
                inflight: InflightSlot::new(queues, queue_size),
            }),
            memory: at.memory,
            space: at.space,
            dma: at.dma,
            reconnect,
            stop: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            inflight_replays: AtomicU64::new(0),
            resubmitted: AtomicU64::new(0),
        });
        let watcher = if reconnect.is_zero() {
            None
        } else {
            let s = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("vhost-user-watch".into())
                    .spawn(move || watch(&s))
                    .map_err(VhostBlkError::Watcher)?,
            )
        };
        Ok(VhostUserBlk {
            shared,
            config,
            queues,
            queue_size,
            no_vector,
            watcher,
        })
    }

    /// The connection, for the `vhost` memory listener's sink.
    pub fn conn(&self) -> &BackendConn {
        &self.shared.conn
    }

    /// How many times the backend came back.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    fn socket(&self) -> &Path {
        self.shared.conn.path()
    }

    fn stop_rings(&mut self) {
        let mut r = self.shared.lock();
        for ring in std::mem::take(&mut r.started) {
            if !self.shared.conn.is_connected() {
                continue;
            }
            if let Err(e) = self.shared.conn.stop_vring(ring.index) {
                log::warn!(
                    "vhost-user-blk {}: stopping queue {}: {e}",
                    self.socket().display(),
                    ring.index
                );
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the backend the device's inflight region before its rings
    /// start (asking for one first if the device has none).
    fn hand_inflight<'r>(&self, rings: &'r mut Rings) -> Result<Option<&'r Inflight>, String> {
        rings.inflight.hand_over(&self.conn).map_err(|e| {
            format!(
                "backend {}: {}",
                self.conn.path().display(),
                error_chain(&e)
            )
        })
    }

    /// Hands `ring` to the backend, starting where the used ring says.
    fn start(&self, ring: &Ring, base: u16) -> Result<(), String> {
        let ram = self.dma.snapshot();
        let host = |gpa: u64| {
            ram.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| format!("ring address {gpa:#x} is not in guest RAM"))
        };
        let setup = VringSetup {
            index: ring.index,
            size: ring.size,
            desc: host(ring.gpa[0])?,
            avail: host(ring.gpa[1])?,
            used: host(ring.gpa[2])?,
            base,
            kick: &ring.kick,
            call: &ring.call,
        };
        self.conn
            .start_vring(&setup)
            .map_err(|e| format!("backend {}: {e}", self.conn.path().display()))
    }

    /// How many requests of `rings` the inflight region holds (a region it
    /// cannot read counts none: the backend reads it, not the VMM).
    fn pending(&self, inflight: &Inflight, rings: &[Ring], used: &[u16]) -> u64 {
        rings
            .iter()
            .zip(used)
            .map(|(r, &u)| {
                let q = u16::try_from(r.index).unwrap_or(u16::MAX);
                inflight.pending(q, u).map_or_else(
                    |e| {
                        log::warn!("vhost-user-blk: inflight region of queue {q}: {e}");
                        0
                    },
                    u64::from,
                )
            })
            .sum()
    }

    /// After a reconnect: the whole memory table, the features, every ring.
    fn replay(&self) -> Result<(), String> {
        // An open transaction keeps the map still while it is replayed.
        let tx = self.memory.begin();
        let mut table = MemTable::default();
        table.begin();
        for r in self.space.view().ranges() {
            if let Some(s) = section(r) {
                table.add(s);
            }
        }
        // With the transaction open no commit can reach the sinks while the
        // connection is marked up but not yet replayed.
        self.conn.set_connected(true);
        let res = apply(&mut self.conn.sink(), &[], &table.regions())
            .map_err(|e| format!("memory table: {e}"))
            .and_then(|()| {
                let mut rings = self.lock();
                if rings.started.is_empty() {
                    return Ok(());
                }
                self.conn
                    .set_features(rings.features)
                    .map_err(|e| e.to_string())?;
                let ram = self.dma.snapshot();
                let mut used = Vec::with_capacity(rings.started.len());
                for ring in &rings.started {
                    let u: u16 = ram
                        .read_obj(GuestAddress(ring.gpa[2] + 2))
                        .map_err(|e| format!("used index of queue {}: {e}", ring.index))?;
                    used.push(u);
                }
                let started = rings.started.clone();
                if let Some(inflight) = self.hand_inflight(&mut rings)? {
                    let pending = self.pending(inflight, &started, &used);
                    self.inflight_replays.fetch_add(1, Ordering::Relaxed);
                    self.resubmitted.fetch_add(pending, Ordering::Relaxed);
                    log::warn!(
                        "vhost-user-blk {}: SET_INFLIGHT_FD on replay; {pending} requests were in flight",
                        self.conn.path().display()
                    );
                }
                for (ring, u) in started.iter().zip(used) {
                    self.start(ring, u)?;
                }
                // The driver's last kick may have gone to the backend that
                // died: kick every ring once so the new one looks at what
                // is already queued (a spurious kick is harmless).
                for ring in &started {
                    if let Err(e) = ring.kick.write(1) {
                        log::warn!("vhost-user-blk: kicking queue {}: {e}", ring.index);
                    }
                }
                Ok(())
            });
        if res.is_err() {
            self.conn.set_connected(false);
        }
        let _ = tx.commit();
        res
    }
}

/// Whether the peer hung up on `fd` (waits up to `ms`).
fn hung_up(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn watch(s: &Shared) {
    while !s.stop.load(Ordering::Acquire) {
        if !hung_up(s.conn.raw_fd(), 100) {
            continue;
        }
        s.conn.set_connected(false);
        let path = s.conn.path().display().to_string();
        log::warn!(
            "vhost-user-blk {path}: the backend went away; waiting {:?}",
            s.reconnect
        );
        let deadline = Instant::now() + s.reconnect;
        let mut last = String::new();
        let back = loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            match s
                .conn
                .reconnect(left)
                .map_err(|e| e.to_string())
                .and_then(|()| s.replay())
            {
                Ok(()) => break true,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if back {
            s.reconnects.fetch_add(1, Ordering::Relaxed);
            log::warn!("vhost-user-blk {path}: the backend is back; rings resumed");
            continue;
        }
        let broken = s.lock().broken.clone();
        let why = format!("vhost-user-blk {path}: the backend did not come back: {last}");
        match broken {
            Some(b) => b.report(&why),
            None => log::error!("{why}"),
        }
        return;
    }
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let f = self.shared.conn.negotiated.device_features & PASSED;
        if self.queues > 1 {
            f
        } else {
            f & !VIRTIO_BLK_F_MQ
        }
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.queue_size; usize::from(self.queues)]
    }

    fn config_size(&self) -> u64 {
        u64::from(CONFIG_SIZE)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.config.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), String> {
        self.stop_rings();
        let connected = self.shared.conn.is_connected();
        if connected {
            self.shared
                .conn
                .set_features(a.features)
                .map_err(|e| e.to_string())?;
            self.shared.hand_inflight(&mut self.shared.lock())?;
        }
        let mut rings = Vec::new();
        for q in &a.queues {
            let ring = Ring {
                index: usize::from(q.index),
                size: q.queue.size(),
                gpa: [
                    q.queue.desc_table(),
                    q.queue.avail_ring(),
                    q.queue.used_ring(),
                ],
                kick: q.kick.clone(),
                call: q.call.fd.clone().unwrap_or_else(|| self.no_vector.clone()),
            };
            // A backend that is away gets the rings when it is back.
            if connected {
                self.shared.start(&ring, 0)?;
            }
            rings.push(ring);
        }
        let mut r = self.shared.lock();
        r.features = a.features;
        r.started = rings;
        r.broken = Some(a.broken);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_rings();
        // A new driver starts with a clean region (a fresh GET_INFLIGHT_FD).
        self.shared.lock().inflight.clear();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.stop_rings();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        self.shared.conn.disconnect();
    }

    fn stats(&self) -> String {
        format!(
            "backend={} queues={} started={} reconnects={} inflight={} inflight_replays={} resubmitted={}",
            self.socket().display(),
            self.queues,
            self.shared.lock().started.len(),
            self.reconnects(),
            if self.shared.conn.tracks_inflight() {
                "on"
            } else {
                "off"
            },
            self.shared.inflight_replays.load(Ordering::Relaxed),
            self.shared.resubmitted.load(Ordering::Relaxed),
        )
    }
}

impl Drop for VhostUserBlk {
    fn drop(&mut self) {
        self.shutdown();
    }
}
