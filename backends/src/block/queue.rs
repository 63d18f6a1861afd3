//! Serving one virtqueue with the block engine, for transports that own a
//! `virtio_queue::Queue` (the in-process virtio-blk device).

use log::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::ratelimit::LogLimiter;
use super::request::BlockEngine;

static LOG: LogLimiter = LogLimiter::new();

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub requests: u64,
    /// Whether the driver asked to be interrupted (EVENT_IDX or flags).
    pub notify: bool,
}

/// Runs every available request of `queue` through `engine` and puts it on
/// the used ring. With EVENT_IDX, notifications stay off while working and
/// the queue is checked again after turning them on, so a request made
/// available in between is not missed. An error means the driver broke the
/// ring (e.g. an available index too far ahead): the device needs a reset.
pub fn serve<G: GuestMemory>(
    engine: &BlockEngine,
    queue: &mut Queue,
    mem: &G,
) -> Result<Served, virtio_queue::Error> {
    let mut served = Served::default();
    loop {
        if queue.event_idx_enabled() {
            queue.disable_notification(mem)?;
        }
        let chains: Vec<_> = queue.iter(mem)?.collect();
        for chain in chains {
            let head = chain.head_index();
            let len = engine.process(chain).unwrap_or_else(|e| {
                if LOG.allow() {
                    warn!("Completing a virtio-blk request without status: {e}");
                }
                0
            });
            queue.add_used(mem, head, len)?;
            served.requests += 1;
        }
        if !queue.event_idx_enabled() || !queue.enable_notification(mem)? {
            break;
        }
    }
    if served.requests > 0 {
        served.notify = queue.needs_notification(mem)?;
    }
    Ok(served)
}
