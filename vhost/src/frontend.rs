//! The vhost-user frontend: connecting to a backend, negotiating features,
//! and handing it the rings, kick and call fds of each queue.
//!
//! Ring addresses in vhost-user are addresses in the frontend's own process
//! (the backend translates them through the memory table), so callers pass
//! host virtual addresses. Every message that changes the backend's state
//! asks for an acknowledgement (NEED_REPLY, with REPLY_ACK negotiated), so
//! a kick can never overtake a memory-table update.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use crate::inflight::{Inflight, InflightError};
use crate::sink::FrontendSink;

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u64 = 1 << 29;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("no vhost-user socket at {path} after {waited:?}")]
    NoSocket { path: String, waited: Duration },
    #[error("cannot connect to the vhost-user backend at {path}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("the backend refused {what}")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the backend lacks {0}")]
    Lacks(&'static str),
    #[error("bad GET_INFLIGHT_FD reply")]
    Inflight(#[source] InflightError),
    #[error("queue {0} started before SET_INFLIGHT_FD (the backend tracks inflight I/O)")]
    NoInflight(usize),
}

fn refused(what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Backend { what, source }
}

/// What was negotiated with a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio features the backend offers (without the vhost-user bit).
    pub device_features: u64,
    pub protocol: VhostUserProtocolFeatures,
    /// Every protocol feature the backend offered, used or not.
    pub offered: VhostUserProtocolFeatures,
    pub queues: u64,
    pub max_mem_slots: u64,
}

/// One queue as the driver set it up, in frontend addresses.
pub struct VringSetup<'a> {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Where the backend starts in the avail ring (0 on a fresh device).
    pub base: u16,
    pub kick: &'a EventFd,
    pub call: &'a EventFd,
}

pub struct BackendConn {
    conn: Arc<Mutex<Frontend>>,
    pub negotiated: Negotiated,
    /// False while the backend is gone: sinks then accept memory-table
    /// changes without sending them (the table is replayed on reconnect).
    connected: Arc<AtomicBool>,
    /// What the driver accepted (SET_FEATURES), for the log's resends.
    acked: Arc<AtomicU64>,
    path: PathBuf,
    max_queues: u64,
    /// Whether this connection got SET_INFLIGHT_FD (a backend that tracks
    /// inflight I/O must have its region before any ring starts).
    inflight_sent: AtomicBool,
}

/// The protocol features this frontend uses when the backend has them.
pub fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// Waits up to `timeout` for a socket file at `path` (Frontend::connect only
/// retries on connection refused).
pub fn wait_for_socket(path: &Path, timeout: Duration) -> Result<(), FrontendError> {
    let start = Instant::now();
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(FrontendError::NoSocket {
                path: path.display().to_string(),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn handshake(
    path: &Path,
    max_queues: u64,
    timeout: Duration,
) -> Result<(Frontend, Negotiated), FrontendError> {
    wait_for_socket(path, timeout)?;
    let mut f = Frontend::connect(path, max_queues).map_err(|source| FrontendError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    f.set_owner().map_err(refused("SET_OWNER"))?;
    let features = f.get_features().map_err(refused("GET_FEATURES"))?;
    let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if features & proto_bit == 0 {
        return Err(FrontendError::Lacks("VHOST_USER_F_PROTOCOL_FEATURES"));
    }
    let theirs = f
        .get_protocol_features()
        .map_err(refused("GET_PROTOCOL_FEATURES"))?;
    let protocol = theirs & wanted_protocol();
    f.set_protocol_features(protocol)
        .map_err(refused("SET_PROTOCOL_FEATURES"))?;
    let queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
        f.get_queue_num().map_err(refused("GET_QUEUE_NUM"))?
    } else {
        1
    };
    let max_mem_slots = if protocol.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
        f.get_max_mem_slots()
            .map_err(refused("GET_MAX_MEM_SLOTS"))?
    } else {
        8
    };
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    let negotiated = Negotiated {
        device_features: features & !proto_bit,
        protocol,
        offered: theirs,
        queues,
        max_mem_slots,
    };
    Ok((f, negotiated))
}

impl BackendConn {
    /// Connects, takes ownership, and negotiates protocol features.
    pub fn connect(path: &Path, max_queues: u64, timeout: Duration) -> Result<Self, FrontendError> {
        let (f, negotiated) = handshake(path, max_queues, timeout)?;
        Ok(BackendConn {
            conn: Arc::new(Mutex::new(f)),
            negotiated,
            connected: Arc::new(AtomicBool::new(true)),
            acked: Arc::default(),
            path: path.into(),
            max_queues,
            inflight_sent: AtomicBool::new(false),
        })
    }

    /// Connects again to a restarted backend at the same path, with the
    /// same negotiation; the connection object (and every sink) now talks
    /// to it. The backend must offer what the first one did. The caller
    /// replays the memory table and the rings, then marks it connected.
    pub fn reconnect(&self, timeout: Duration) -> Result<(), FrontendError> {
        let (f, n) = handshake(&self.path, self.max_queues, timeout)?;
        let theirs = n.device_features;
        if theirs & self.negotiated.device_features != self.negotiated.device_features
            || !n.protocol.contains(self.negotiated.protocol)
            || n.queues < self.negotiated.queues
        {
            return Err(FrontendError::Lacks("what the first backend offered"));
        }
        *self.lock() = f;
        self.inflight_sent.store(false, Ordering::Release);
        Ok(())
    }

    /// The socket of the current connection (to watch for hangup).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.lock().as_raw_fd()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the connection for good (the device is going away): the
    /// backend sees the hangup and may serve its next frontend, even while
    /// something still holds this object.
    pub fn disconnect(&self) {
        self.set_connected(false);
        // SAFETY: shutdown(2) on the socket this frontend owns; it stays
        // open (and owned) until the frontend is dropped.
        unsafe { libc::shutdown(self.raw_fd(), libc::SHUT_RDWR) };
    }

    fn lock(&self) -> MutexGuard<'_, Frontend> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the backend which virtio features the driver accepted.
    pub fn set_features(&self, driver_features: u64) -> Result<(), FrontendError> {
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.acked.store(driver_features, Ordering::Release);
        self.lock()
            .set_features(driver_features | proto_bit)
            .map_err(refused("SET_FEATURES"))
    }

    /// Reads `len` bytes of the device's configuration space.
    pub fn config(&self, offset: u32, len: u32) -> Result<Vec<u8>, FrontendError> {
        if !self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(FrontendError::Lacks("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        let buf = vec![0u8; len as usize];
        let (_, payload) = self
            .lock()
            .get_config(offset, len, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(refused("GET_CONFIG"))?;
        Ok(payload.to_vec())
    }

    /// The memory-table sink for the `vhost` memory listener.
    pub fn sink(&self) -> FrontendSink {
        let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
        FrontendSink {
            frontend: self.conn.clone(),
            connected: self.connected.clone(),
            acked: self.acked.clone(),
            can_log: self
                .negotiated
                .protocol
                .contains(VhostUserProtocolFeatures::LOG_SHMFD)
                && self.negotiated.device_features & log_all != 0,
            log: None,
            mem_slots: self
                .negotiated
                .protocol
                .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS),
            max_regions: self.negotiated.max_mem_slots,
        }
    }

    /// Whether the backend tracks inflight I/O (INFLIGHT_SHMFD negotiated):
    /// then every connection needs SET_INFLIGHT_FD before its rings start.
    pub fn tracks_inflight(&self) -> bool {
        self.negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Asks the backend for a fresh inflight region for `queues` queues of
    /// `queue_size` (GET_INFLIGHT_FD); checks what it gives.
    pub fn get_inflight(&self, queues: u16, queue_size: u16) -> Result<Inflight, FrontendError> {
        if !self.tracks_inflight() {
            return Err(FrontendError::Lacks("VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD"));
        }
        let ask = VhostUserInflight::new(0, 0, queues, queue_size);
        let (reply, file) = self
            .lock()
            .get_inflight_fd(&ask)
            .map_err(refused("GET_INFLIGHT_FD"))?;
        Inflight::from_reply(&reply, file, queues, queue_size).map_err(FrontendError::Inflight)
    }

    /// Hands the backend the region to track inflight I/O in
    /// (SET_INFLIGHT_FD); a restarted backend finds there what its
    /// predecessor left in flight.
    pub fn set_inflight(&self, inflight: &Inflight) -> Result<(), FrontendError> {
        self.lock()
            .set_inflight_fd(&inflight.message(), inflight.fd())
            .map_err(refused("SET_INFLIGHT_FD"))?;
        self.inflight_sent.store(true, Ordering::Release);
        Ok(())
    }

    /// Hands a queue to the backend and enables it.
    pub fn start_vring(&self, v: &VringSetup<'_>) -> Result<(), FrontendError> {
        // libvhost-user gives up on the device (vu_panic) when a kick fd
        // arrives before the inflight region.
        if self.tracks_inflight() && !self.inflight_sent.load(Ordering::Acquire) {
            return Err(FrontendError::NoInflight(v.index));
        }
        let mut f = self.lock();
        f.set_vring_num(v.index, v.size)
            .map_err(refused("SET_VRING_NUM"))?;
        let addr = VringConfigData {
            queue_max_size: v.size,
            queue_size: v.size,
            flags: 0,
            desc_table_addr: v.desc,
            used_ring_addr: v.used,
            avail_ring_addr: v.avail,
            log_addr: None,
        };
        f.set_vring_addr(v.index, &addr)
            .map_err(refused("SET_VRING_ADDR"))?;
        f.set_vring_base(v.index, v.base)
            .map_err(refused("SET_VRING_BASE"))?;
        f.set_vring_call(v.index, v.call)
            .map_err(refused("SET_VRING_CALL"))?;
        f.set_vring_kick(v.index, v.kick)
            .map_err(refused("SET_VRING_KICK"))?;
        f.set_vring_enable(v.index, true)
            .map_err(refused("SET_VRING_ENABLE"))?;
        Ok(())
    }

    /// Stops a queue: disables it and takes its state back
    /// (GET_VRING_BASE); returns where the backend stopped in the avail ring.
    pub fn stop_vring(&self, index: usize) -> Result<u16, FrontendError> {
        let mut f = self.lock();
        f.set_vring_enable(index, false)
            .map_err(refused("SET_VRING_ENABLE"))?;
        let base = f.get_vring_base(index).map_err(refused("GET_VRING_BASE"))?;
        Ok(base as u16)
    }
}
