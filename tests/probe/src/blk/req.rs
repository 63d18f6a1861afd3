//! virtio-blk requests (5.2.6): a header, data buffers and a status byte,
//! one descriptor each; queued, notified and awaited.

use super::dev::Dev;
use super::mmio::{rd, wr};
use super::timer::Deadline;
use super::virtq::{Buf, MAX_SIZE};

// Request types and statuses.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// What a status byte holds until the device writes it.
pub const S_NONE: u8 = 0xff;
/// Statuses of requests that could not be queued or did not complete.
pub const S_NOT_QUEUED: u8 = 0xfe;
pub const S_TIMEOUT: u8 = 0xfd;

/// Per-queue request slots: header (16 bytes) and status byte, indexed by
/// the head descriptor.
pub const SLOT: u64 = 32;

/// One request: type, sector, data buffers (at most 4).
#[derive(Clone, Copy)]
pub struct Io {
    pub queue: usize,
    pub kind: u32,
    pub sector: u64,
    pub data: [Buf; 4],
    pub n: usize,
}

impl Io {
    pub fn new(queue: usize, kind: u32, sector: u64) -> Io {
        let none = Buf { addr: 0, len: 0, device_writes: false };
        Io { queue, kind, sector, data: [none; 4], n: 0 }
    }

    /// Adds a data buffer; the device writes it for IN and GET_ID.
    pub fn buf(mut self, addr: u64, len: u32) -> Io {
        let device_writes = self.kind == T_IN || self.kind == T_GET_ID;
        self.data[self.n] = Buf { addr, len, device_writes };
        self.n += 1;
        self
    }
}

impl Dev {
    /// Queues `io` (without notifying); returns its head descriptor.
    pub fn submit(&mut self, io: &Io) -> Option<u16> {
        let (_, slots) = self.rings[io.queue];
        let vq = &mut self.queues[io.queue];
        let head = vq.next_head()?;
        if usize::from(vq.free_descriptors()) < io.n + 2 {
            return None;
        }
        let hdr = slots + u64::from(head) * SLOT;
        wr::<u32>(hdr, io.kind);
        wr::<u32>(hdr + 4, 0);
        wr::<u64>(hdr + 8, io.sector);
        wr::<u8>(hdr + 16, S_NONE);
        let mut bufs = [Buf { addr: hdr, len: 16, device_writes: false }; 6];
        bufs[1..=io.n].copy_from_slice(&io.data[..io.n]);
        bufs[io.n + 1] = Buf { addr: hdr + 16, len: 1, device_writes: true };
        vq.add(&bufs[..io.n + 2])
    }

    /// Takes one completion from queue `q`: (head, status byte).
    pub fn complete(&mut self, q: usize) -> Option<(u16, u8)> {
        let (head, _) = self.queues[q].poll()?;
        let status = if head < MAX_SIZE {
            rd::<u8>(self.rings[q].1 + u64::from(head) * SLOT + 16)
        } else {
            S_NONE
        };
        Some((head, status))
    }

    /// Runs up to 32 requests at once: all queued, each queue notified once,
    /// then every completion awaited (5 s). Fills `statuses` per request.
    pub fn batch(&mut self, ios: &[Io], statuses: &mut [u8]) {
        let mut heads = [(usize::MAX, 0u16); 32];
        let mut pending = 0;
        for (i, io) in ios.iter().enumerate().take(32) {
            statuses[i] = S_NOT_QUEUED;
            if let Some(h) = self.submit(io) {
                heads[i] = (io.queue, h);
                statuses[i] = S_TIMEOUT;
                pending += 1;
            }
        }
        for q in 0..self.nq {
            self.queues[q].kick();
        }
        let mut deadline = Deadline::after_ms(5000);
        while pending > 0 && !deadline.expired() {
            for q in 0..self.nq {
                while let Some((head, status)) = self.complete(q) {
                    if let Some(i) = heads.iter().position(|&h| h == (q, head)) {
                        heads[i] = (usize::MAX, 0);
                        statuses[i] = status;
                        pending -= 1;
                    } else {
                        self.strays += 1;
                    }
                }
            }
        }
    }

    /// One request, waited for; its status.
    pub fn request(&mut self, io: Io) -> u8 {
        let mut status = [S_NOT_QUEUED];
        self.batch(&[io], &mut status);
        status[0]
    }

    /// Notifications sent and skipped, over all queues.
    pub fn notify_counts(&self) -> (u32, u32) {
        self.queues[..self.nq]
            .iter()
            .fold((0, 0), |(n, s), q| (n + q.notifies, s + q.skipped))
    }
}
