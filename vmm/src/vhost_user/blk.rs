//! vhost-user-blk as a PCI device: the VMM keeps the virtio-pci transport
//! and the configuration space; the backend process gets guest RAM (through
//! the `vhost` listener), the rings, the queues' ioeventfds as kick fds and
//! the vectors' irqfds as call fds, so the data path never enters the VMM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_vhost::frontend::VringSetup;
use vmm_vhost::{BackendConn, FrontendError};

use crate::virtio::blk::TYPE_BLOCK;
use crate::virtio::device::{Activation, VirtioDevice};

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
}

pub struct VhostUserBlk {
    socket: PathBuf,
    conn: BackendConn,
    config: Vec<u8>,
    queues: u16,
    queue_size: u16,
    started: Vec<usize>,
    /// Call fd for a queue the driver gave no vector.
    no_vector: EventFd,
}

impl VhostUserBlk {
    /// Connects to the backend at `socket` (waiting up to `timeout` for it)
    /// and reads its configuration.
    pub fn connect(
        socket: &Path,
        num_queues: u16,
        queue_size: u16,
        timeout: Duration,
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
        let no_vector = EventFd::new(libc::EFD_NONBLOCK).map_err(VhostBlkError::EventFd)?;
        Ok(VhostUserBlk {
            socket: socket.into(),
            conn,
            config,
            queues,
            queue_size,
            started: Vec::new(),
            no_vector,
        })
    }

    /// The connection, for the `vhost` memory listener's sink.
    pub fn conn(&self) -> &BackendConn {
        &self.conn
    }

    fn stop(&mut self) {
        for q in std::mem::take(&mut self.started) {
            if let Err(e) = self.conn.stop_vring(q) {
                log::warn!(
                    "vhost-user-blk {}: stopping queue {q}: {e}",
                    self.socket.display()
                );
            }
        }
    }
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let f = self.conn.negotiated.device_features & PASSED;
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
        self.stop();
        self.conn
            .set_features(a.features)
            .map_err(|e| e.to_string())?;
        let ram = a.mem.snapshot();
        let host = |gpa: u64| {
            ram.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| format!("ring address {gpa:#x} is not in guest RAM"))
        };
        for q in &a.queues {
            let call = q.call.fd.as_deref().unwrap_or(&self.no_vector);
            let setup = VringSetup {
                index: usize::from(q.index),
                size: q.queue.size(),
                desc: host(q.queue.desc_table())?,
                avail: host(q.queue.avail_ring())?,
                used: host(q.queue.used_ring())?,
                base: 0,
                kick: &q.kick,
                call,
            };
            self.conn
                .start_vring(&setup)
                .map_err(|e| format!("backend {}: {e}", self.socket.display()))?;
            self.started.push(usize::from(q.index));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn stats(&self) -> String {
        format!(
            "backend={} queues={} started={}",
            self.socket.display(),
            self.queues,
            self.started.len()
        )
    }
}

impl Drop for VhostUserBlk {
    fn drop(&mut self) {
        self.stop();
    }
}
