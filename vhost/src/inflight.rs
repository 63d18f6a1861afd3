//! Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): a shared
//! memfd the backend allocates (GET_INFLIGHT_FD) and marks each request in,
//! from the moment it takes the request off the avail ring until it puts it
//! on the used ring. The frontend only keeps the file and hands it to every
//! backend that serves the device (SET_INFLIGHT_FD), so a backend restarted
//! after a crash finds the requests its predecessor never completed and
//! submits them again.
//!
//! The frontend never writes the region. It reads it (with pread, no
//! mapping) to say how many requests a restarted backend will take again,
//! using the split-ring layout the vhost-user specification gives: per
//! queue a 16-byte header (features u64, version u16, desc_num u16,
//! last_batch_head u16, used_idx u16) then `desc_num` 16-byte descriptor
//! states (inflight u8, 5 bytes padding, next u16, counter u64), queues one
//! after another at equal strides.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::VhostUserInflight;

use crate::frontend::{BackendConn, FrontendError};

/// Bytes of a queue's header in the region.
const HEADER: u64 = 16;
/// Bytes of one descriptor's state (split rings).
const DESC_STATE: u64 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflightError {
    #[error("the backend gave an inflight region of 0 bytes")]
    Empty,
    #[error("the backend gave an inflight region of {size} bytes; {queues} queues of {queue_size} need at most {max}")]
    TooLarge {
        size: u64,
        max: u64,
        queues: u16,
        queue_size: u16,
    },
    #[error("the backend's inflight file has {len} bytes; the region ends at {end}")]
    Short { len: u64, end: u64 },
    #[error("cannot read the inflight file: {0}")]
    Io(String),
}

/// The largest region a backend may ask the frontend to keep for `queues`
/// queues of `queue_size`: room for packed-ring states (32 bytes each,
/// twice the split ones) and a page of slack per queue.
pub fn max_size(queues: u16, queue_size: u16) -> u64 {
    u64::from(queues) * (u64::from(queue_size) * 2 * DESC_STATE + 4096)
}

/// A backend's inflight region, kept for the device's lifetime.
#[derive(Debug)]
pub struct Inflight {
    file: File,
    size: u64,
    offset: u64,
    queues: u16,
    queue_size: u16,
}

impl Inflight {
    /// Checks a GET_INFLIGHT_FD reply for `queues` queues of `queue_size`.
    pub fn from_reply(
        reply: &VhostUserInflight,
        file: File,
        queues: u16,
        queue_size: u16,
    ) -> Result<Inflight, InflightError> {
        let (size, offset) = (reply.mmap_size, reply.mmap_offset);
        if size == 0 {
            return Err(InflightError::Empty);
        }
        let max = max_size(queues, queue_size);
        if size > max {
            return Err(InflightError::TooLarge {
                size,
                max,
                queues,
                queue_size,
            });
        }
        let len = file
            .metadata()
            .map_err(|e| InflightError::Io(e.to_string()))?
            .len();
        let end = offset.saturating_add(size);
        if len < end {
            return Err(InflightError::Short { len, end });
        }
        Ok(Inflight {
            file,
            size,
            offset,
            queues,
            queue_size,
        })
    }

    /// What SET_INFLIGHT_FD carries (with `fd()`).
    pub fn message(&self) -> VhostUserInflight {
        VhostUserInflight::new(self.size, self.offset, self.queues, self.queue_size)
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many requests of queue `q` the region holds in flight, given
    /// the used index the guest's used ring shows now: those a backend
    /// given this region will submit again. A request the backend put on
    /// the used ring just before it died (the region's used index lags the
    /// ring's) is not counted, as the backend will not submit it again.
    pub fn pending(&self, q: u16, ring_used: u16) -> Result<u32, InflightError> {
        if q >= self.queues {
            return Ok(0);
        }
        let stride = self.size / u64::from(self.queues);
        let base = self.offset + u64::from(q) * stride;
        let mut head = [0u8; HEADER as usize];
        self.read(base, &mut head)?;
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version == 0 {
            // The backend never started this queue with the region.
            return Ok(0);
        }
        let desc_num = u16::from_le_bytes([head[10], head[11]]);
        let last_batch_head = u16::from_le_bytes([head[12], head[13]]);
        let region_used = u16::from_le_bytes([head[14], head[15]]);
        let fits = stride.saturating_sub(HEADER) / DESC_STATE;
        let n = u64::from(desc_num.min(self.queue_size)).min(fits);
        let mut states = vec![0u8; (n * DESC_STATE) as usize];
        self.read(base + HEADER, &mut states)?;
        let inflight = |i: usize| states.get(i * DESC_STATE as usize) == Some(&1);
        let mut count = (0..n as usize).filter(|&i| inflight(i)).count() as u32;
        if region_used != ring_used && inflight(usize::from(last_batch_head)) {
            count = count.saturating_sub(1);
        }
        Ok(count)
    }

    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), InflightError> {
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| InflightError::Io(e.to_string()))
    }
}

/// A device's inflight region across its backends: asked for on the
/// driver's first start, handed to every backend that serves the device
/// before its rings start, dropped on a device reset so the next driver
/// starts clean.
#[derive(Debug)]
pub struct InflightSlot {
    region: Option<Inflight>,
    queues: u16,
    queue_size: u16,
}

impl InflightSlot {
    /// For a device of `queues` queues of at most `queue_size`.
    pub fn new(queues: u16, queue_size: u16) -> Self {
        InflightSlot {
            region: None,
            queues,
            queue_size,
        }
    }

    /// Before the rings start on `conn`: GET_INFLIGHT_FD if the device has
    /// no region yet, then SET_INFLIGHT_FD. Nothing (None) for a backend
    /// that does not track inflight I/O.
    pub fn hand_over(&mut self, conn: &BackendConn) -> Result<Option<&Inflight>, FrontendError> {
        if !conn.tracks_inflight() {
            return Ok(None);
        }
        let region = match &mut self.region {
            Some(r) => r,
            empty => {
                let r = conn.get_inflight(self.queues, self.queue_size)?;
                log::debug!(
                    "vhost-user {}: inflight region of {} bytes",
                    conn.path().display(),
                    r.size()
                );
                empty.insert(r)
            }
        };
        conn.set_inflight(region)?;
        Ok(Some(region))
    }

    /// The device was reset: the next start gets a fresh region.
    pub fn clear(&mut self) {
        self.region = None;
    }

    pub fn region(&self) -> Option<&Inflight> {
        self.region.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd of `len` bytes.
    fn memfd(len: u64) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"inflight-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor owned by nothing else.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    /// libvhost-user's size for a queue of `qs`: the states and a u16,
    /// aligned to 64 bytes.
    fn lvu_queue(qs: u16) -> u64 {
        (u64::from(qs) * DESC_STATE + 2).next_multiple_of(64)
    }

    fn reply(size: u64, offset: u64) -> VhostUserInflight {
        VhostUserInflight::new(size, offset, 2, 128)
    }

    /// Writes queue `q`'s header and marks `heads` in flight, as a backend
    /// would.
    fn mark(f: &File, q: u64, used_idx: u16, last_batch_head: u16, heads: &[u16]) {
        let base = q * lvu_queue(128);
        let mut h = [0u8; 16];
        h[8..10].copy_from_slice(&1u16.to_le_bytes());
        h[10..12].copy_from_slice(&128u16.to_le_bytes());
        h[12..14].copy_from_slice(&last_batch_head.to_le_bytes());
        h[14..16].copy_from_slice(&used_idx.to_le_bytes());
        f.write_all_at(&h, base).unwrap();
        for &d in heads {
            f.write_all_at(&[1], base + HEADER + u64::from(d) * DESC_STATE)
                .unwrap();
        }
    }

    #[test]
    fn a_fresh_region_has_nothing_in_flight() {
        let size = 2 * lvu_queue(128);
        let i = Inflight::from_reply(&reply(size, 0), memfd(size), 2, 128).unwrap();
        assert_eq!(i.pending(0, 0), Ok(0));
        assert_eq!(i.pending(1, 7), Ok(0));
        let m = i.message();
        assert_eq!(
            (m.mmap_size, m.mmap_offset, m.num_queues, m.queue_size),
            (size, 0, 2, 128)
        );
    }

    #[test]
    fn requests_marked_in_flight_are_counted_per_queue() {
        let size = 2 * lvu_queue(128);
        let f = memfd(size);
        mark(&f, 0, 40, 0, &[3, 9, 127]);
        mark(&f, 1, 12, 0, &[0]);
        let i = Inflight::from_reply(&reply(size, 0), f, 2, 128).unwrap();
        assert_eq!(i.pending(0, 40), Ok(3));
        assert_eq!(i.pending(1, 12), Ok(1));
        assert_eq!(i.pending(2, 0), Ok(0), "no such queue");
    }

    #[test]
    fn a_request_already_on_the_used_ring_is_not_counted() {
        let size = 2 * lvu_queue(128);
        let f = memfd(size);
        // The backend put head 9 on the used ring (index 41) and died
        // before it cleared its mark.
        mark(&f, 0, 40, 9, &[3, 9]);
        let i = Inflight::from_reply(&reply(size, 0), f, 2, 128).unwrap();
        assert_eq!(i.pending(0, 41), Ok(1));
        assert_eq!(i.pending(0, 40), Ok(2));
    }

    #[test]
    fn the_region_may_start_at_an_offset() {
        let size = 2 * lvu_queue(128);
        let f = memfd(4096 + size);
        let base = 4096 + lvu_queue(128);
        let mut h = [0u8; 16];
        h[8..10].copy_from_slice(&1u16.to_le_bytes());
        h[10..12].copy_from_slice(&128u16.to_le_bytes());
        f.write_all_at(&h, base).unwrap();
        f.write_all_at(&[1], base + HEADER + 5 * DESC_STATE)
            .unwrap();
        let i = Inflight::from_reply(&reply(size, 4096), f, 2, 128).unwrap();
        assert_eq!(i.pending(1, 0), Ok(1));
        assert_eq!(i.pending(0, 0), Ok(0));
    }

    #[test]
    fn bad_replies_are_errors() {
        let f = || memfd(8192);
        assert_eq!(
            Inflight::from_reply(&reply(0, 0), f(), 2, 128).unwrap_err(),
            InflightError::Empty
        );
        let too = max_size(2, 128) + 1;
        assert!(matches!(
            Inflight::from_reply(&reply(too, 0), memfd(too), 2, 128),
            Err(InflightError::TooLarge { .. })
        ));
        assert_eq!(
            Inflight::from_reply(&reply(8192, 4096), f(), 2, 128).unwrap_err(),
            InflightError::Short {
                len: 8192,
                end: 12288
            }
        );
        assert!(matches!(
            Inflight::from_reply(&reply(4096, u64::MAX), f(), 2, 128),
            Err(InflightError::Short { .. })
        ));
    }

    #[test]
    fn a_wild_header_cannot_read_past_the_region() {
        // Every byte 1: desc_num (257) claims more states than the queue
        // has; only the queue's 8 are read.
        let size = 2 * lvu_queue(8);
        let f = memfd(size);
        f.write_all_at(&vec![1u8; size as usize], 0).unwrap();
        let i = Inflight::from_reply(&VhostUserInflight::new(size, 0, 2, 8), f, 2, 8).unwrap();
        assert_eq!(i.pending(0, 0), Ok(8));
        assert_eq!(i.pending(1, 0), Ok(8));
    }
}
