//! `VhostUserBackend` for virtio-blk: features, config space, and one
//! worker thread per queue running requests through `BlockEngine`.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{error, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueOwnedT;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::block::ratelimit::LogLimiter;
use crate::block::{BlockConfig, BlockEngine};

static LOG: LogLimiter = LogLimiter::new();

/// Guest memory whose writes mark the frontend's dirty log once it sent
/// one (SET_LOG_BASE): data buffers and used rings alike.
type Mmap = GuestMemoryMmap<BitmapMmapRegion>;
type Memory = GuestMemoryAtomic<Mmap>;

/// Errors of the vhost-user-blk backend, reported to the library as io errors.
#[derive(Debug, thiserror::Error)]
pub enum BlkBackendError {
    #[error("Unexpected event set {0:?}")]
    UnexpectedEvent(u32),
    #[error("Event for unknown queue {0}")]
    UnknownQueue(u16),
    #[error("Guest memory table was never set")]
    NoMemory,
    #[error("Virtqueue error: {0}")]
    Queue(virtio_queue::Error),
    #[error("Cannot signal the used queue")]
    Signal(#[source] io::Error),
}

impl From<BlkBackendError> for io::Error {
    fn from(e: BlkBackendError) -> Self {
        io::Error::other(e)
    }
}

/// The per-connection device state; the engine is shared across connections.
pub struct BlkBackend {
    engine: Arc<BlockEngine>,
    config: BlockConfig,
    num_queues: usize,
    queue_size: usize,
    event_idx: AtomicBool,
    memory: Mutex<Option<Memory>>,
    exits: Mutex<Vec<EventNotifier>>,
    /// The exit-event consumers handed to the library, closed on drop: see
    /// `exit_event`.
    exit_consumers: Mutex<Vec<RawFd>>,
    index: usize,
    /// Regions the memory table may hold.
    max_regions: usize,
    /// The table last accepted, to restore when one is refused.
    accepted: Mutex<Mmap>,
}

thread_local! {
    static NAMED: Cell<bool> = const { Cell::new(false) };
}

impl BlkBackend {
    /// `index` numbers the device in thread names (`blk{index}-q{queue}`).
    pub fn new(engine: Arc<BlockEngine>, num_queues: u16, queue_size: u16, index: usize) -> Self {
        let config = BlockConfig::new(engine.image(), engine.limits(), num_queues);
        BlkBackend {
            engine,
            config,
            num_queues: usize::from(num_queues),
            queue_size: usize::from(queue_size),
            event_idx: AtomicBool::new(false),
            memory: Mutex::new(None),
            exits: Mutex::new(Vec::new()),
            exit_consumers: Mutex::new(Vec::new()),
            index,
            max_regions: 509,
            accepted: Mutex::new(Mmap::new()),
        }
    }

    /// Refuses memory tables of more than `n` regions.
    pub fn with_max_regions(mut self, n: usize) -> Self {
        self.max_regions = n;
        self
    }

    pub(crate) fn engine(&self) -> &Arc<BlockEngine> {
        &self.engine
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn max_regions(&self) -> usize {
        self.max_regions
    }

    /// Tells every worker thread to exit.
    pub fn stop_workers(&self) {
        let exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        for notifier in exits.iter() {
            if let Err(e) = notifier.notify() {
                error!("Cannot stop a queue worker: {e}");
            }
        }
    }

    /// The library names its workers `vring_worker`; rename on first use.
    fn name_thread(&self, thread_id: usize) {
        if NAMED.with(|n| n.replace(true)) {
            return;
        }
        let Ok(name) = CString::new(format!("blk{}-q{}", self.index, thread_id)) else {
            return;
        };
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes from a pointer that stays valid for the call.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }

    fn process_queue(&self, vring: &VringRwLock<Memory>) -> Result<(), BlkBackendError> {
        let memory = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(BlkBackendError::NoMemory)?;
        let mem = memory.memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(BlkBackendError::Queue)?
            .collect();
        if chains.is_empty() {
            return Ok(());
        }
        for chain in chains {
            let head = chain.head_index();
            let len = self.engine.process(chain).unwrap_or_else(|e| {
                if LOG.allow() {
                    warn!("Completing a virtio-blk request without status: {e}");
                }
                0
            });
            vring.add_used(head, len).map_err(BlkBackendError::Queue)?;
        }
        if vring.needs_notification().map_err(BlkBackendError::Queue)? {
            vring.signal_used_queue().map_err(BlkBackendError::Signal)?;
        }
        Ok(())
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        let consumers = self
            .exit_consumers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for fd in consumers.drain(..) {
            // SAFETY: `fd` is an exit-event consumer this backend created
            // and the library took with `into_raw_fd` without ever closing
            // it. Every `VringEpollHandler` holds a clone of the backend
            // (`Arc`), so when the backend drops, the handlers and their
            // epoll are gone and their worker threads joined: nothing uses
            // `fd` any more and nothing else owns it.
            unsafe { libc::close(fd) };
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits();
        if self.engine.image().read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut data = vec![0u8; size.min(4096) as usize];
        self.config.read(offset as usize, &mut data);
        data
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        if let Err(problem) = check_table(&mem.memory(), self.max_regions) {
            return self.refuse_memory(&mem, problem);
        }
        *self.accepted.lock().unwrap_or_else(|e| e.into_inner()) = (*mem.memory()).clone();
        // One line per change, for tests and operators: what guest memory
        // this backend can reach by DMA.
        info!(
            "blk{} memory table: [{}]",
            self.index,
            describe_table(&mem.memory())
        );
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        let keep = notifier.try_clone().ok()?;
        self.exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(keep);
        // vhost-user-backend 0.24 turns the consumer into a raw fd for its
        // epoll (`VringEpollHandler::new`) and never closes it: one leaked
        // fd per worker per connection, until accept fails with EMFILE.
        // Ours to close once nothing uses it (`Drop`).
        self.exit_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock<Memory>],
        thread_id: usize,
    ) -> io::Result<()> {
        self.name_thread(thread_id);
        if evset != EventSet::IN {
            return Err(BlkBackendError::UnexpectedEvent(evset.bits()).into());
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or(BlkBackendError::UnknownQueue(device_event))?;
        // A broken ring is the guest's doing: log it and keep the worker
        // alive, since an error here would end the worker thread.
        if let Err(e) = self.serve_queue(vring) {
            if LOG.allow() {
                error!("Queue {device_event} of blk{}: {e}", self.index);
            }
        }
        Ok(())
    }
}

/// Why a memory table of at most `max` regions cannot be taken, if so.
pub(crate) fn check_table<B: vm_memory::bitmap::Bitmap>(
    mem: &GuestMemoryMmap<B>,
    max: usize,
) -> Result<(), String> {
    let regions = mem.num_regions();
    if regions > max {
        return Err(format!(
            "no free memory slot: {regions} regions, at most {max}"
        ));
    }
    past_eof(mem).map_or(Ok(()), Err)
}

/// A table as one line: `gpa+size` per region.
pub(crate) fn describe_table<B: vm_memory::bitmap::Bitmap>(mem: &GuestMemoryMmap<B>) -> String {
    let table: Vec<String> = mem
        .iter()
        .map(|r| format!("{:#x}+{:#x}", r.start_addr().0, r.len()))
        .collect();
    table.join(" ")
}

/// The first region mapped past the end of its regular file, described:
/// touching such a page raises SIGBUS, which would end the daemon.
fn past_eof<B: vm_memory::bitmap::Bitmap>(mem: &GuestMemoryMmap<B>) -> Option<String> {
    mem.iter().find_map(|r| {
        let fo = r.file_offset()?;
        let meta = fo.file().metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let end = fo.start().checked_add(r.len());
        if end.is_some_and(|end| end <= meta.len()) {
            return None;
        }
        Some(format!(
            "memory region {:#x}+{:#x} maps file offset {:#x} past the end of its {:#x}-byte file",
            r.start_addr().0,
            r.len(),
            fo.start(),
            meta.len()
        ))
    })
}

impl BlkBackend {
    /// Puts the accepted memory table back and reports why the new one was
    /// refused. The library has already put the new table in place (`mem`
    /// is its own); restoring the accepted one unmaps the refused regions
    /// here so that nothing of them remains.
    fn refuse_memory(&self, mem: &Memory, problem: String) -> io::Result<()> {
        let accepted = self
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        mem.lock()
            .map_err(|_| io::Error::other("memory table lock poisoned"))?
            .replace(accepted);
        warn!("blk{}: refusing a memory table: {problem}", self.index);
        Err(io::Error::other(problem))
    }

    fn serve_queue(&self, vring: &VringRwLock<Memory>) -> Result<(), BlkBackendError> {
        if self.event_idx.load(Ordering::Acquire) {
            loop {
                vring
                    .disable_notification()
                    .map_err(BlkBackendError::Queue)?;
                self.process_queue(vring)?;
                if !vring
                    .enable_notification()
                    .map_err(BlkBackendError::Queue)?
                {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}
