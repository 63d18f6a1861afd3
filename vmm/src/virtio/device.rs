//! What a virtio device implements, and what the transport hands it when
//! the driver sets DRIVER_OK.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::common::QueueConfig;
use crate::memory::dma::DmaView;
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// ISR bits (virtio 1.x, 4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// A device behind a virtio transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block).
    fn device_type(&self) -> u16;
    /// Offered features (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Bytes of device-specific configuration.
    fn config_size(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues. An error leaves the device stopped; the
    /// transport then sets DEVICE_NEEDS_RESET.
    fn activate(&mut self, a: Activation) -> Result<(), String>;
    /// Stops serving; when this returns no queue is touched any more.
    fn reset(&mut self);
    /// The machine is going away: stop for good and let go of outside
    /// resources (connections, threads) even if something still holds the
    /// device.
    fn shutdown(&mut self) {
        self.reset();
    }
    /// One line of device statistics for exit reports.
    fn stats(&self) -> String {
        String::new()
    }
}

/// Raises one MSI-X vector (the ISR bit is for drivers that read it).
#[derive(Clone)]
pub struct Signal {
    pub fd: Option<Arc<EventFd>>,
    pub isr: Arc<AtomicU8>,
    pub bit: u8,
}

impl Signal {
    pub fn raise(&self) {
        self.isr.fetch_or(self.bit, Ordering::AcqRel);
        if let Some(fd) = &self.fd {
            // A full counter (2^64 - 2 pending) cannot happen with a guest
            // that takes interrupts; nothing is lost if it does.
            let _ = fd.write(1);
        }
    }
}

/// How a device reports that the driver broke the rules at run time
/// (DEVICE_NEEDS_RESET and a configuration interrupt).
pub struct Broken {
    set: AtomicBool,
    why: Mutex<String>,
    pub(crate) config: Mutex<Option<Signal>>,
    limit: RateLimit,
}

impl Default for Broken {
    fn default() -> Self {
        Broken {
            set: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            config: Mutex::new(None),
            limit: RateLimit::new(5),
        }
    }
}

impl Broken {
    pub fn report(&self, why: &str) {
        if self.set.swap(true, Ordering::AcqRel) {
            return;
        }
        warn_limited!(self.limit, "virtio device needs reset: {why}");
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.to_owned();
        let config = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(s) = config {
            s.raise();
        }
    }
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
    pub fn reason(&self) -> String {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn clear(&self) {
        self.set.store(false, Ordering::Release);
    }
}

/// One enabled queue as the driver set it up.
pub struct ActiveQueue {
    pub index: u16,
    pub queue: Queue,
    /// Written by the guest's notify (through an ioeventfd).
    pub kick: Arc<EventFd>,
    /// Raises the queue's vector.
    pub call: Signal,
}

/// What a device gets at DRIVER_OK.
pub struct Activation {
    pub features: u64,
    pub mem: DmaView,
    pub queues: Vec<ActiveQueue>,
    pub broken: Arc<Broken>,
}

/// A virtio-queue `Queue` from the driver's setup.
pub fn make_queue(cfg: &QueueConfig, event_idx: bool) -> Result<Queue, String> {
    let bad = |e: virtio_queue::Error| format!("{e}");
    let mut q = Queue::new(cfg.max_size).map_err(bad)?;
    q.try_set_size(cfg.size).map_err(bad)?;
    q.try_set_desc_table_address(GuestAddress(cfg.desc))
        .map_err(bad)?;
    q.try_set_avail_ring_address(GuestAddress(cfg.driver))
        .map_err(bad)?;
    q.try_set_used_ring_address(GuestAddress(cfg.device))
        .map_err(bad)?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Ok(q)
}
