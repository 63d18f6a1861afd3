//! virtio-blk in process: the device's features and config, its queues
//! served on iothreads by `vmm-backends`' block engine.
//!
//! At DRIVER_OK each queue's kick eventfd is attached to an iothread (queue
//! `q` to `iothreads[q % n]`, QEMU's iothread-vq-mapping in its simplest
//! form); the handler owns the queue, so serving it takes no lock shared
//! with vCPU threads. Reset detaches them, which waits for a running pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_backends::block::queue::serve;
use vmm_backends::block::{BlockConfig, BlockEngine, CONFIG_SPACE_SIZE};

use super::device::{Activation, VirtioDevice};
use crate::iothread::{IoThread, Token};

/// The virtio device type of block devices.
pub const TYPE_BLOCK: u16 = 2;

pub struct Blk {
    engine: Arc<BlockEngine>,
    config: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: Vec<u16>,
    iothreads: Vec<Arc<IoThread>>,
    attached: Vec<(Arc<IoThread>, Token)>,
    requests: Arc<AtomicU64>,
    interrupts: Arc<AtomicU64>,
}

impl Blk {
    /// `num_queues` queues of `queue_size` entries over `engine`, served on
    /// `iothreads` (at least one).
    pub fn new(
        engine: Arc<BlockEngine>,
        num_queues: u16,
        queue_size: u16,
        iothreads: Vec<Arc<IoThread>>,
    ) -> Self {
        assert!(
            !iothreads.is_empty(),
            "a virtio-blk device needs an iothread"
        );
        let config = BlockConfig::new(engine.image(), engine.limits(), num_queues).to_bytes();
        Blk {
            engine,
            config,
            queue_sizes: vec![queue_size; usize::from(num_queues.max(1))],
            iothreads,
            attached: Vec::new(),
            requests: Arc::default(),
            interrupts: Arc::default(),
        }
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if self.queue_sizes.len() > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.engine.image().read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        self.queue_sizes.clone()
    }

    fn config_size(&self) -> u64 {
        CONFIG_SPACE_SIZE as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.config.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), String> {
        self.reset();
        for aq in a.queues {
            let thread = self.iothreads[usize::from(aq.index) % self.iothreads.len()].clone();
            let engine = self.engine.clone();
            let mem = a.mem.clone();
            let broken = a.broken.clone();
            let requests = self.requests.clone();
            let interrupts = self.interrupts.clone();
            let (kick, call, index) = (aq.kick.clone(), aq.call, aq.index);
            let mut queue = aq.queue;
            let handler = Box::new(move || {
                // Drain the counter first: a kick after this is a new event.
                let _ = kick.read();
                if broken.is_set() {
                    return;
                }
                let ram = mem.snapshot();
                match serve(&engine, &mut queue, &**ram) {
                    Ok(s) => {
                        requests.fetch_add(s.requests, Ordering::Relaxed);
                        if s.notify {
                            interrupts.fetch_add(1, Ordering::Relaxed);
                            call.raise();
                        }
                    }
                    Err(e) => broken.report(&format!("virtio-blk queue {index}: {e}")),
                }
            });
            match thread.attach(std::os::fd::AsRawFd::as_raw_fd(&*aq.kick), handler) {
                Ok(t) => self.attached.push((thread, t)),
                Err(e) => {
                    self.reset();
                    return Err(e.to_string());
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        for (thread, token) in self.attached.drain(..) {
            thread.detach(token);
        }
    }

    fn stats(&self) -> String {
        let threads: Vec<&str> = self.iothreads.iter().map(|t| t.name()).collect();
        format!(
            "requests={} interrupts={} iothreads={}",
            self.requests.load(Ordering::Relaxed),
            self.interrupts.load(Ordering::Relaxed),
            threads.join(",")
        )
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        self.reset();
    }
}
