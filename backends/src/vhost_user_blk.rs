//! The vhost-user-blk backend: the block engine behind `vhost-user-backend`,
//! one worker thread per queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::block::{process, BlkConfig, DiskImage, Limits};

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

pub struct BlkBackend {
    disk: Arc<DiskImage>,
    config: BlkConfig,
    queue_size: usize,
    event_idx: AtomicBool,
    mem: std::sync::Mutex<Option<Memory>>,
    exits: Vec<(EventConsumer, EventNotifier)>,
}

impl BlkBackend {
    pub fn new(disk: Arc<DiskImage>, queues: u16, queue_size: u16) -> std::io::Result<Self> {
        let config = BlkConfig {
            capacity: disk.sectors(),
            seg_max: u32::from(queue_size).saturating_sub(2).max(1),
            blk_size: 512,
            num_queues: queues,
            limits: Limits::default(),
        };
        let mut exits = Vec::new();
        for _ in 0..queues {
            exits.push(new_event_consumer_and_notifier(EventFlag::NONBLOCK)?);
        }
        Ok(BlkBackend {
            disk,
            config,
            queue_size: usize::from(queue_size),
            event_idx: AtomicBool::new(false),
            mem: std::sync::Mutex::new(None),
            exits,
        })
    }

    /// Wakes every worker so it exits (after the frontend left).
    pub fn stop_workers(&self) {
        for (_, n) in &self.exits {
            let _ = n.notify();
        }
    }

    fn serve_queue(&self, vring: &VringRwLock) -> std::io::Result<()> {
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                let _ = vring.disable_notification();
            }
            let guard = mem.memory();
            let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(guard.clone()) {
                Ok(it) => it.collect(),
                Err(e) => {
                    log::warn!("vhost-user-blk: bad queue state: {e}");
                    return Ok(());
                }
            };
            for chain in chains {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.clone().collect();
                let len = match process(&self.disk, &self.config.limits, &*guard, &descs) {
                    Ok(c) => c.used_len,
                    Err(e) => {
                        log::warn!("vhost-user-blk: request {head} dropped: {e}");
                        0
                    }
                };
                if let Err(e) = vring.add_used(head, len) {
                    log::warn!("vhost-user-blk: cannot complete request {head}: {e}");
                }
            }
            let again = event_idx && vring.enable_notification().unwrap_or(false);
            if vring.needs_notification().unwrap_or(true) {
                vring.signal_used_queue()?;
            }
            if !again {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.config.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | self.config.features(self.disk.readonly())
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let all = self.config.bytes();
        let start = (offset as usize).min(all.len());
        let end = start.saturating_add(size as usize).min(all.len());
        let mut v = all[start..end].to_vec();
        v.resize(size as usize, 0);
        v
    }

    fn update_memory(&self, mem: Memory) -> std::io::Result<()> {
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.config.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exits.get(thread)?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        match vrings.get(usize::from(device_event)) {
            Some(v) => self.serve_queue(v),
            None => Ok(()),
        }
    }
}
