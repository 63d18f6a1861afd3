//! The virtio-blk device a vhost-user frontend sees: features, protocol
//! features and config space, through vhost-user-backend's
//! `VhostUserBackend` trait. The daemon's own request handler (`handler`)
//! asks it these and runs the queues on its own workers (`worker`), so the
//! trait's serving hooks are not used: `handle_event` refuses and
//! `update_memory` is never called.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;

use crate::block::{BlockConfig, BlockEngine};

type Memory = GuestMemoryAtomic<GuestMemoryMmap<BitmapMmapRegion>>;

/// Errors of serving a queue (the daemon's workers).
#[derive(Debug, thiserror::Error)]
pub enum BlkBackendError {
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

/// Per-connection device state; the engine is shared across connections.
pub struct BlkBackend {
    engine: Arc<BlockEngine>,
    config: BlockConfig,
    num_queues: usize,
    queue_size: usize,
    event_idx: AtomicBool,
    index: usize,
    /// Regions the memory table may hold.
    max_regions: usize,
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
            index,
            max_regions: 509,
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

    fn update_memory(&self, _mem: Memory) -> io::Result<()> {
        Err(io::Error::other(
            "the daemon's handler keeps the memory table (check_table)",
        ))
    }

    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        _vrings: &[VringRwLock<Memory>],
        _thread_id: usize,
    ) -> io::Result<()> {
        Err(io::Error::other(
            "queues are served by the daemon's workers",
        ))
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
