//! One worker thread per queue (`blk0-q{n}`): it waits on the queue's
//! kick fd (registered while the ring is started and enabled), a wake
//! event the handler uses when a ring starts, and an exit event; then it
//! serves the ring: requests a killed daemon left in flight first, then
//! the avail ring, marking each head in the inflight region while it is
//! in flight.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::BlkBackendError;
use super::chain;
use super::dirty::DirtyLog;
use super::inflight::QueueInflight;
use crate::block::ratelimit::LogLimiter;
use crate::block::BlockEngine;

static LOG: LogLimiter = LogLimiter::new();

pub type LogMemory = GuestMemoryAtomic<GuestMemoryMmap<DirtyLog>>;
pub type Vring = VringRwLock<LogMemory>;

const EXIT: u64 = 0;
const WAKE: u64 = 1;
const KICK: u64 = 2;

/// A queue's inflight tracking while it runs.
#[derive(Default)]
pub struct Track {
    pub inflight: Option<QueueInflight>,
    /// Heads a killed daemon left in flight, to submit before new ones.
    pub pending: Vec<u16>,
}

/// What the handler and a queue's worker share.
pub struct Queue {
    pub vring: Vring,
    engine: Arc<BlockEngine>,
    memory: LogMemory,
    pub event_idx: AtomicBool,
    /// Test aid: complete each batch last first, this long apart.
    late: Option<Duration>,
    /// Held while the worker serves the ring: the handler takes it to
    /// start or stop the ring between batches.
    track: Mutex<Track>,
}

impl Queue {
    pub fn new(
        vring: Vring,
        engine: Arc<BlockEngine>,
        memory: LogMemory,
        late: Option<Duration>,
    ) -> Queue {
        Queue {
            vring,
            engine,
            memory,
            event_idx: AtomicBool::new(false),
            late,
            track: Mutex::new(Track::default()),
        }
    }

    pub fn track(&self) -> MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves what the ring holds, if it is started and enabled.
    fn serve(&self) -> Result<(), BlkBackendError> {
        let mut track = self.track();
        {
            let state = self.vring.get_ref();
            if !state.get_queue().ready() || !state.is_enabled() {
                return Ok(());
            }
        }
        if !track.pending.is_empty() {
            self.resubmit(&mut track)?;
        }
        if self.event_idx.load(Ordering::Acquire) {
            loop {
                self.vring
                    .disable_notification()
                    .map_err(BlkBackendError::Queue)?;
                self.process(&mut track)?;
                if !self
                    .vring
                    .enable_notification()
                    .map_err(BlkBackendError::Queue)?
                {
                    break;
                }
            }
        } else {
            self.process(&mut track)?;
        }
        Ok(())
    }

    /// Submits again the heads a killed daemon left in flight, oldest
    /// first. A head whose chain is broken completes with no status.
    fn resubmit(&self, track: &mut Track) -> Result<(), BlkBackendError> {
        let mem = self.memory.memory();
        let (table, size) = {
            let state = self.vring.get_ref();
            let q = state.get_queue();
            (GuestAddress(q.desc_table()), q.size())
        };
        for head in std::mem::take(&mut track.pending) {
            let len = match chain::descriptors(&*mem, table, size, head) {
                Some(descs) => self.engine.process_descriptors(&*mem, &descs),
                None => Err(crate::block::RequestError::EmptyChain),
            };
            let len = len.unwrap_or_else(|e| {
                if LOG.allow() {
                    warn!("Completing a resubmitted request without status: {e}");
                }
                0
            });
            self.complete(track, head, len)?;
        }
        self.signal()
    }

    fn process(&self, track: &mut Track) -> Result<(), BlkBackendError> {
        let mem = self.memory.memory();
        let mut chains: Vec<_> = self
            .vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(BlkBackendError::Queue)?
            .collect();
        if chains.is_empty() {
            return Ok(());
        }
        if let Some(inflight) = track.inflight.as_mut() {
            for c in &chains {
                inflight.take(c.head_index());
            }
        }
        if self.late.is_some() {
            chains.reverse();
        }
        for chain in chains {
            let head = chain.head_index();
            let len = self.engine.process(chain).unwrap_or_else(|e| {
                if LOG.allow() {
                    warn!("Completing a virtio-blk request without status: {e}");
                }
                0
            });
            if let Some(late) = self.late {
                std::thread::sleep(late);
            }
            self.complete(track, head, len)?;
        }
        self.signal()
    }

    /// Puts `head` on the used ring, bracketed by the inflight bookkeeping.
    fn complete(&self, track: &Track, head: u16, len: u32) -> Result<(), BlkBackendError> {
        if let Some(inflight) = &track.inflight {
            inflight.completing(head);
        }
        self.vring
            .add_used(head, len)
            .map_err(BlkBackendError::Queue)?;
        if let Some(inflight) = &track.inflight {
            let used = self.vring.get_ref().get_queue().next_used();
            inflight.completed(head, used);
        }
        Ok(())
    }

    fn signal(&self) -> Result<(), BlkBackendError> {
        if self
            .vring
            .needs_notification()
            .map_err(BlkBackendError::Queue)?
        {
            self.vring
                .signal_used_queue()
                .map_err(BlkBackendError::Signal)?;
        }
        Ok(())
    }
}

/// A queue's worker thread, stopped and joined on drop.
pub struct Worker {
    epoll: Arc<Epoll>,
    exit: EventFd,
    wake: EventFd,
    kick: Option<RawFd>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(name: String, queue: Arc<Queue>) -> io::Result<Worker> {
        let epoll = Arc::new(Epoll::new()?);
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            exit.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXIT),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        let (e, w) = (epoll.clone(), wake.try_clone()?);
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(&name, &e, &w, &queue))?;
        Ok(Worker {
            epoll,
            exit,
            wake,
            kick: None,
            thread: Some(thread),
        })
    }

    /// Watches `kick` (None: stops watching).
    pub fn watch(&mut self, kick: Option<RawFd>) -> io::Result<()> {
        if self.kick == kick {
            return Ok(());
        }
        if let Some(old) = self.kick.take() {
            // The fd may already be closed (a new kick fd replaced it),
            // which removed it from the epoll set.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, old, EpollEvent::default());
        }
        if let Some(fd) = kick {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, KICK),
            )?;
            self.kick = Some(fd);
        }
        Ok(())
    }

    /// Makes the worker look at its ring.
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            error!("Cannot wake a queue worker: {e}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.exit.write(1) {
            error!("Cannot stop a queue worker: {e}");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(name: &str, epoll: &Epoll, wake: &EventFd, queue: &Queue) {
    let mut events = [EpollEvent::default(); 4];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("{name}: epoll failed, worker stops: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                EXIT => return,
                WAKE => {
                    let _ = wake.read();
                }
                _ => {
                    if let Err(e) = queue.vring.read_kick() {
                        if LOG.allow() {
                            warn!("{name}: reading the kick: {e}");
                        }
                    }
                }
            }
        }
        // A broken ring is the guest's doing: log it and keep serving.
        if let Err(e) = queue.serve() {
            if LOG.allow() {
                error!("{name}: {e}");
            }
        }
    }
}
