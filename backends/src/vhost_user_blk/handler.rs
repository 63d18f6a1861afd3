//! The daemon's vhost-user request handler, one per frontend connection,
//! on the `vhost` crate's message loop (`BackendReqHandler`).
//!
//! vhost-user-backend's own handler refuses GET/SET_INFLIGHT_FD and its
//! worker loop is private to it, so the daemon has its own: `BlkBackend`
//! (the `VhostUserBackend` impl) still answers features and config and
//! judges memory tables; the rings are `vhost-user-backend`'s `VringRwLock`;
//! each queue is served by a `Worker`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

use super::backend::{check_table, describe_table, BlkBackend};
use super::dirty::LogMap;
use super::inflight::{InflightRegion, QueueInflight};
use super::worker::{LogMemory, Queue, Vring, Worker};

/// Memory slots the daemon reports (the kernel vhost limit); tables
/// beyond `--max-mem-slots` are refused when they arrive.
const MAX_MEM_SLOTS: u64 = 509;

type Mmap = GuestMemoryMmap<super::dirty::DirtyLog>;

/// Where a region sits in the frontend's address space, to translate
/// the ring addresses of SET_VRING_ADDR.
struct Mapping {
    user_addr: u64,
    size: u64,
    gpa: u64,
}

pub struct Handler {
    backend: Arc<BlkBackend>,
    memory: LogMemory,
    mappings: Vec<Mapping>,
    queues: Vec<Arc<Queue>>,
    workers: Vec<Worker>,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
    inflight: Option<Arc<InflightRegion>>,
    /// The frontend's dirty log, once it sent one: regions added later
    /// log into it from their first write.
    log: Option<Arc<LogMap>>,
    /// The request being handled expects a reply (a value, not an ack),
    /// which a refusal leaves unsent.
    replying: bool,
}

fn req(e: impl std::fmt::Display) -> Error {
    Error::ReqHandlerError(io::Error::other(e.to_string()))
}

impl Handler {
    /// The guest memory the handler maps from the frontend's table,
    /// replaced at every table change (for tests that read guest RAM
    /// through the daemon's own mappings).
    pub fn memory(&self) -> LogMemory {
        self.memory.clone()
    }

    /// `late`: the test aid of `--complete-late`.
    pub fn new(backend: Arc<BlkBackend>, late: Option<Duration>) -> io::Result<Handler> {
        let memory: LogMemory = GuestMemoryAtomic::new(Mmap::new());
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for q in 0..backend.num_queues() {
            let vring = Vring::new(memory.clone(), backend.max_queue_size() as u16)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let queue = Arc::new(Queue::new(
                vring,
                backend.engine().clone(),
                memory.clone(),
                late,
            ));
            workers.push(Worker::spawn(
                format!("blk{}-q{q}", backend.index()),
                queue.clone(),
            )?);
            queues.push(queue);
        }
        Ok(Handler {
            backend,
            memory,
            mappings: Vec::new(),
            queues,
            workers,
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
            inflight: None,
            log: None,
            replying: false,
        })
    }

    /// Whether the request last handled expected a reply; clears it. A
    /// refused one left the frontend waiting: the connection must end.
    pub fn take_replying(&mut self) -> bool {
        std::mem::take(&mut self.replying)
    }

    fn queue(&self, index: u32) -> Result<&Arc<Queue>> {
        self.queues.get(index as usize).ok_or(Error::InvalidParam)
    }

    fn vring(&self, index: u32) -> Result<&Vring> {
        Ok(&self.queue(index)?.vring)
    }

    /// Starts ring `index` once it has a kick fd: recovers what a killed
    /// daemon left in the inflight region, then lets the worker serve.
    fn start_if_ready(&mut self, index: u32) -> Result<()> {
        let queue = self.queue(index)?.clone();
        let ready = {
            let s = queue.vring.get_ref();
            s.get_queue().ready() || s.get_kick().is_none()
        };
        if ready {
            return Ok(());
        }
        {
            let mut track = queue.track();
            track.pending.clear();
            track.inflight = None;
            if let Some(region) = &self.inflight {
                if let Some(mut qi) = QueueInflight::new(region.clone(), index as u16) {
                    let used = queue.vring.queue_used_idx().map_err(req)?;
                    let mut pending = qi.start(used, self.acked_features);
                    // A head beyond the ring is the region's garbage.
                    let size = queue.vring.get_ref().get_queue().size();
                    pending.retain(|&h| h < size);
                    if !pending.is_empty() {
                        info!(
                            "blk{} queue {index}: submitting again {} requests left in flight \
                             ({} of them lost to a resume at the used index)",
                            self.backend.index(),
                            pending.len(),
                            self.lost_at_used_index(&queue.vring, used, &pending)
                        );
                    }
                    // Every head taken is done (on the used ring) or in
                    // flight: the ring goes on after both.
                    queue.vring.set_queue_next_used(used);
                    queue
                        .vring
                        .set_queue_next_avail(used.wrapping_add(pending.len() as u16));
                    track.pending = pending;
                    track.inflight = Some(qi);
                }
            }
            queue.vring.set_queue_ready(true);
        }
        self.update_watch(index)?;
        self.workers[index as usize].wake();
        Ok(())
    }

    /// How many of `pending` a daemon without the region would never see:
    /// resuming at the used index it takes the heads at avail positions
    /// `used..used + pending.len()`, whatever was done or not. Only for
    /// the log (and the tests that read it).
    fn lost_at_used_index(&self, vring: &Vring, used: u16, pending: &[u16]) -> usize {
        let (avail, size) = {
            let s = vring.get_ref();
            (s.get_queue().avail_ring(), s.get_queue().size())
        };
        let mem = self.memory.memory();
        let window: Vec<u16> = (0..pending.len() as u16)
            .filter_map(|i| {
                let slot = u64::from(used.wrapping_add(i) % size.max(1));
                let at = avail.checked_add(4 + 2 * slot)?;
                mem.read_obj::<u16>(GuestAddress(at)).ok()
            })
            .collect();
        pending.iter().filter(|h| !window.contains(h)).count()
    }

    /// The worker watches the kick fd while the ring is started and enabled.
    fn update_watch(&mut self, index: u32) -> Result<()> {
        let queue = self.queue(index)?.clone();
        let fd = {
            let s = queue.vring.get_ref();
            let on = s.get_queue().ready() && s.is_enabled();
            s.get_kick().as_ref().filter(|_| on).map(|k| k.as_raw_fd())
        };
        self.workers[index as usize]
            .watch(fd)
            .map_err(Error::ReqHandlerError)?;
        if fd.is_some() {
            self.workers[index as usize].wake();
        }
        Ok(())
    }

    /// Publishes `mem` if the backend accepts it; on refusal the table in
    /// place stays.
    fn publish(&mut self, mem: Mmap) -> Result<()> {
        if let Err(problem) = check_table(&mem, self.backend.max_regions()) {
            warn!(
                "blk{}: refusing a memory table: {problem}",
                self.backend.index()
            );
            return Err(req(problem));
        }
        if let Some(log) = &self.log {
            for r in mem.iter() {
                r.bitmap().attach(log.clone(), r.start_addr().0, r.len());
            }
        }
        info!(
            "blk{} memory table: [{}]",
            self.backend.index(),
            describe_table(&mem)
        );
        self.memory
            .lock()
            .map_err(|_| req("memory table lock poisoned"))?
            .replace(mem);
        Ok(())
    }

    fn translate(&self, user_addr: u64) -> Result<u64> {
        self.mappings
            .iter()
            .find(|m| user_addr >= m.user_addr && user_addr - m.user_addr < m.size)
            .and_then(|m| m.gpa.checked_add(user_addr - m.user_addr))
            .ok_or(Error::InvalidParam)
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> Result<()> {
        if self.owned {
            return Err(Error::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        Err(Error::InvalidOperation("RESET_DEVICE is not offered"))
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.backend.features() != 0 {
            return Err(Error::InvalidParam);
        }
        self.acked_features = features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &self.queues {
            q.vring.set_queue_event_idx(event_idx);
            q.event_idx.store(event_idx, Ordering::Release);
        }
        self.backend.set_event_idx(event_idx);
        // Without PROTOCOL_FEATURES the rings are enabled from the start.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for i in 0..self.queues.len() as u32 {
                self.queues[i as usize].vring.set_enabled(true);
                self.update_watch(i)?;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy.is_some() {
            return Err(Error::InvalidOperation("postcopy is not offered"));
        }
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in ctx.iter().zip(files) {
            let r = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(Error::InvalidParam)?;
            regions.push(r);
            mappings.push(Mapping {
                user_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
        }
        let mem = Mmap::from_regions(regions).map_err(req)?;
        self.publish(mem)?;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let max = self.backend.max_queue_size() as u32;
        if num == 0 || num > max {
            return Err(Error::InvalidParam);
        }
        self.vring(index)?.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let (desc, avail, used) = (
            self.translate(descriptor)?,
            self.translate(available)?,
            self.translate(used)?,
        );
        let vring = self.vring(index)?;
        vring
            .set_queue_info(desc, avail, used)
            .map_err(|_| Error::InvalidParam)?;
        // The used index is the guest's (0 after a driver restart).
        let idx = vring.queue_used_idx().map_err(req)?;
        vring.set_queue_next_used(idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.vring(index)?.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.replying = true;
        let queue = self.queue(index)?.clone();
        {
            // Waits for the worker's batch in progress.
            let mut track = queue.track();
            queue.vring.set_queue_ready(false);
            track.inflight = None;
            track.pending.clear();
        }
        self.update_watch(index)?;
        let next = queue.vring.queue_next_avail();
        queue.vring.set_kick(None);
        queue.vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = u32::from(index);
        self.queue(i)?;
        // Off the epoll set before the old fd closes.
        self.workers[usize::from(index)]
            .watch(None)
            .map_err(Error::ReqHandlerError)?;
        self.vring(i)?.set_kick(fd);
        self.start_if_ready(i)?;
        self.update_watch(i)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let i = u32::from(index);
        self.vring(i)?.set_call(fd);
        self.start_if_ready(i)
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features() | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.queues.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(Error::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_watch(index)
    }

    fn get_config(&mut self, offset: u32, size: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        self.backend
            .set_config(offset, buf)
            .map_err(Error::ReqHandlerError)
    }

    fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<()> {
        Err(Error::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File> {
        Err(Error::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        self.replying = true;
        let (queues, size) = (msg.num_queues, msg.queue_size);
        if usize::from(queues) > self.queues.len()
            || usize::from(size) > self.backend.max_queue_size()
        {
            return Err(Error::InvalidParam);
        }
        let (region, file) =
            InflightRegion::create(queues, size).map_err(Error::ReqHandlerError)?;
        let reply = VhostUserInflight::new(region.size(), 0, queues, size);
        // This daemon tracks in it too, until the frontend says otherwise.
        self.inflight = Some(Arc::new(region));
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> Result<()> {
        if usize::from(msg.num_queues) > self.queues.len()
            || usize::from(msg.queue_size) > self.backend.max_queue_size()
        {
            return Err(Error::InvalidParam);
        }
        let region = InflightRegion::open(
            file,
            msg.mmap_offset,
            msg.mmap_size,
            msg.num_queues,
            msg.queue_size,
        )
        .map_err(Error::ReqHandlerError)?;
        self.inflight = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        postcopy: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        if postcopy.is_some() {
            return Err(Error::InvalidOperation("postcopy is not offered"));
        }
        let r = GuestRegionMmap::new(
            region.mmap_region(fd)?,
            GuestAddress(region.guest_phys_addr),
        )
        .ok_or(Error::InvalidParam)?;
        let mem = self
            .memory
            .memory()
            .insert_region(Arc::new(r))
            .map_err(req)?;
        self.publish(mem)?;
        self.mappings.push(Mapping {
            user_addr: region.user_addr,
            size: region.memory_size,
            gpa: region.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        let (mem, _) = self
            .memory
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(req)?;
        self.publish(mem)?;
        self.mappings.retain(|m| m.gpa != region.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> Result<Option<File>> {
        Err(Error::InvalidOperation("DEVICE_STATE is not offered"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(Error::InvalidOperation("DEVICE_STATE is not offered"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(Error::InvalidOperation("SHMEM is not offered"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> Result<()> {
        self.replying = true;
        let map = Arc::new(
            LogMap::new(&file, log.mmap_offset, log.mmap_size).map_err(Error::ReqHandlerError)?,
        );
        for r in self.memory.memory().iter() {
            r.bitmap().attach(map.clone(), r.start_addr().0, r.len());
        }
        self.log = Some(map);
        Ok(())
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        // Workers first (they hold the rings), joined one by one.
        self.workers.clear();
    }
}
