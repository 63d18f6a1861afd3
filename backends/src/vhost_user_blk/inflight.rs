//! Inflight I/O tracking (INFLIGHT_SHMFD), backend side, in the split-ring
//! layout of the vhost-user specification.
//!
//! The region is shared memory the daemon allocates (GET_INFLIGHT_FD) and
//! the frontend keeps and hands to every daemon that serves the device
//! (SET_INFLIGHT_FD). Per queue, at equal strides: a 16-byte header
//! (features u64, version u16, desc_num u16, last_batch_head u16, used_idx
//! u16), then per descriptor head 16 bytes (inflight u8, 5 bytes padding,
//! next u16, counter u64).
//!
//! A head is marked in flight with a fresh counter when it is taken off
//! the avail ring. Completing it: its `next` gets `last_batch_head` and
//! `last_batch_head` the head, the used ring is written, then the flag is
//! cleared and `used_idx` set to the ring's new used index. A daemon killed
//! between the used-ring write and the clearing leaves `used_idx` behind
//! the ring's: the next daemon clears the last batch (the heads from
//! `last_batch_head` along `next`, as many as the indexes differ) and
//! submits the rest of the flagged heads again, oldest counter first.
//! The daemon completes one head per batch.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

const HEADER: usize = 16;
const DESC: usize = 16;
const ALIGN: usize = 64;
/// The layout version this daemon writes.
const VERSION: u16 = 1;

const VERSION_AT: usize = 8;
const DESC_NUM_AT: usize = 10;
const LAST_BATCH_AT: usize = 12;
const USED_AT: usize = 14;
const FLAG_AT: usize = 0;
const NEXT_AT: usize = 6;
const COUNTER_AT: usize = 8;

/// Bytes one queue of `queue_size` takes in the region.
pub fn stride(queue_size: u16) -> usize {
    (HEADER + DESC * usize::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// A mapped inflight region.
#[derive(Debug)]
pub struct InflightRegion {
    map: MmapRegion<()>,
    queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// A fresh, zeroed region for `queues` queues of `queue_size` in a new
    /// memfd, and the file to send the frontend.
    pub fn create(queues: u16, queue_size: u16) -> io::Result<(InflightRegion, File)> {
        let size = stride(queue_size) * usize::from(queues);
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let fd =
            unsafe { libc::memfd_create(c"vhost-user-blk-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        let region = Self::map(file.try_clone()?, 0, size, queues, queue_size)?;
        Ok((region, file))
    }

    /// Maps the region a frontend handed over: `size` bytes at `offset` of
    /// `file` for `queues` queues of `queue_size`.
    pub fn open(
        file: File,
        offset: u64,
        size: u64,
        queues: u16,
        queue_size: u16,
    ) -> io::Result<InflightRegion> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if queues == 0 || queue_size == 0 {
            return Err(bad("no queues"));
        }
        let need = stride(queue_size) * usize::from(queues);
        if size < need as u64 {
            return Err(bad("inflight region too small for its queues"));
        }
        let end = offset
            .checked_add(need as u64)
            .ok_or_else(|| bad("offset overflows"))?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() < end {
            // Touching a page past the end of the file would raise SIGBUS.
            return Err(bad("inflight file shorter than its region"));
        }
        Self::map(file, offset, need, queues, queue_size)
    }

    fn map(
        file: File,
        offset: u64,
        size: usize,
        queues: u16,
        queue_size: u16,
    ) -> io::Result<InflightRegion> {
        let map = MmapRegion::from_file(FileOffset::new(file, offset), size)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(InflightRegion {
            map,
            queues,
            queue_size,
        })
    }

    pub fn queues(&self) -> u16 {
        self.queues
    }

    pub fn size(&self) -> u64 {
        (stride(self.queue_size) * usize::from(self.queues)) as u64
    }
}

/// One queue's part of a region, and the counter for the next head taken.
#[derive(Debug)]
pub struct QueueInflight {
    region: Arc<InflightRegion>,
    base: usize,
    capacity: u16,
    counter: u64,
}

impl QueueInflight {
    /// Queue `q` of `region`, if the region has it.
    pub fn new(region: Arc<InflightRegion>, q: u16) -> Option<QueueInflight> {
        if q >= region.queues {
            return None;
        }
        Some(QueueInflight {
            base: stride(region.queue_size) * usize::from(q),
            capacity: region.queue_size,
            region,
            counter: 1,
        })
    }

    fn read<T: vm_memory::ByteValued + Default>(&self, at: usize) -> T {
        self.region
            .map
            .as_volatile_slice()
            .read_obj(self.base + at)
            .unwrap_or_default()
    }

    fn write<T: vm_memory::ByteValued>(&self, at: usize, v: T) {
        // In bounds by construction (`stride` covers every head below
        // `capacity`); a failure cannot happen and would only lose tracking.
        let _ = self
            .region
            .map
            .as_volatile_slice()
            .write_obj(v, self.base + at);
    }

    fn desc(head: u16) -> usize {
        HEADER + DESC * usize::from(head)
    }

    /// Called when the queue starts with the ring's used index: a fresh
    /// region is initialised; one a killed daemon left is repaired and its
    /// in-flight heads returned, oldest first, to be submitted again.
    pub fn start(&mut self, ring_used: u16, features: u64) -> Vec<u16> {
        if self.read::<u16>(VERSION_AT) == 0 {
            self.write(0, features);
            self.write(DESC_NUM_AT, self.capacity);
            self.write(LAST_BATCH_AT, 0u16);
            self.write(USED_AT, ring_used);
            fence(Ordering::SeqCst);
            self.write(VERSION_AT, VERSION);
            self.counter = 1;
            return Vec::new();
        }
        let used: u16 = self.read(USED_AT);
        if used != ring_used {
            // Killed after writing the used ring, before clearing the
            // flags: the last batch is done.
            let batch = ring_used.wrapping_sub(used).min(self.capacity);
            let mut head: u16 = self.read(LAST_BATCH_AT);
            for _ in 0..batch {
                if head >= self.capacity {
                    break;
                }
                self.write(Self::desc(head) + FLAG_AT, 0u8);
                head = self.read(Self::desc(head) + NEXT_AT);
            }
            self.write(USED_AT, ring_used);
        }
        let n = self.read::<u16>(DESC_NUM_AT).min(self.capacity);
        let mut heads: Vec<(u64, u16)> = (0..n)
            .filter(|&h| self.read::<u8>(Self::desc(h) + FLAG_AT) == 1)
            .map(|h| (self.read::<u64>(Self::desc(h) + COUNTER_AT), h))
            .collect();
        heads.sort_unstable();
        self.counter = heads.last().map_or(1, |&(c, _)| c.wrapping_add(1));
        fence(Ordering::SeqCst);
        heads.into_iter().map(|(_, h)| h).collect()
    }

    /// `head` was taken off the avail ring (or is being submitted again).
    pub fn take(&mut self, head: u16) {
        if head >= self.capacity {
            return;
        }
        self.write(Self::desc(head) + COUNTER_AT, self.counter);
        self.counter = self.counter.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.write(Self::desc(head) + FLAG_AT, 1u8);
        fence(Ordering::SeqCst);
    }

    /// Before `head` goes on the used ring: it is the whole next batch.
    pub fn completing(&self, head: u16) {
        if head >= self.capacity {
            return;
        }
        let last: u16 = self.read(LAST_BATCH_AT);
        self.write(Self::desc(head) + NEXT_AT, last);
        self.write(LAST_BATCH_AT, head);
        fence(Ordering::SeqCst);
    }

    /// After `head` went on the used ring, which now has index `used`.
    pub fn completed(&self, head: u16, used: u16) {
        fence(Ordering::SeqCst);
        if head < self.capacity {
            self.write(Self::desc(head) + FLAG_AT, 0u8);
        }
        self.write(USED_AT, used);
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(queues: u16, size: u16, q: u16) -> (QueueInflight, File) {
        let (region, file) = InflightRegion::create(queues, size).unwrap();
        (QueueInflight::new(Arc::new(region), q).unwrap(), file)
    }

    /// The same region as the next daemon sees it.
    fn reopen(file: &File, queues: u16, size: u16, q: u16) -> QueueInflight {
        let len = file.metadata().unwrap().len();
        let region = InflightRegion::open(file.try_clone().unwrap(), 0, len, queues, size).unwrap();
        QueueInflight::new(Arc::new(region), q).unwrap()
    }

    /// Takes and completes `head` the way the worker does, with the used
    /// index moving from `used` to `used + 1`.
    fn complete(q: &QueueInflight, head: u16, used: &mut u16) {
        q.completing(head);
        *used = used.wrapping_add(1);
        q.completed(head, *used);
    }

    #[test]
    fn the_layout_is_the_specifications() {
        assert_eq!(stride(256), 4160);
        let (mut q, file) = queue(2, 8, 1);
        assert!(q.start(5, 0xabc).is_empty());
        q.take(3);
        let mut raw = vec![0u8; 2 * stride(8)];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut raw, 0).unwrap();
        let b = stride(8);
        assert!(raw[..b].iter().all(|&x| x == 0), "queue 0 untouched");
        let h = &raw[b..];
        assert_eq!(u64::from_le_bytes(h[0..8].try_into().unwrap()), 0xabc);
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), 1, "version");
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 8, "desc_num");
        assert_eq!(u16::from_le_bytes([h[14], h[15]]), 5, "used_idx");
        let d = &h[16 + 3 * 16..16 + 4 * 16];
        assert_eq!(d[0], 1, "inflight flag of head 3");
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 1);
    }

    #[test]
    fn a_clean_stop_leaves_nothing_to_resubmit() {
        let (mut q, file) = queue(1, 16, 0);
        q.start(0, 0);
        let mut used = 0;
        for head in [4, 9, 2] {
            q.take(head);
            complete(&q, head, &mut used);
        }
        assert!(reopen(&file, 1, 16, 0).start(used, 0).is_empty());
    }

    #[test]
    fn heads_taken_and_not_completed_come_back_oldest_first() {
        let (mut q, file) = queue(1, 16, 0);
        q.start(0, 0);
        let mut used = 0;
        // Taken in the order 7, 2, 11, 5; completed out of order: 11, then
        // 7. The used index (2) says nothing about which two are done: a
        // daemon resuming from it would lose 2 and 5.
        for head in [7, 2, 11, 5] {
            q.take(head);
        }
        complete(&q, 11, &mut used);
        complete(&q, 7, &mut used);
        let mut next = reopen(&file, 1, 16, 0);
        assert_eq!(next.start(used, 0), vec![2, 5]);
        // The next daemon's counters follow the old ones: a head it takes
        // now comes after those it resubmits.
        next.take(9);
        assert_eq!(reopen(&file, 1, 16, 0).start(used, 0), vec![2, 5, 9]);
    }

    #[test]
    fn killed_between_the_used_ring_and_clearing_the_flag() {
        let (mut q, file) = queue(1, 16, 0);
        q.start(10, 0);
        let mut used = 10;
        for head in [1, 3, 6] {
            q.take(head);
        }
        complete(&q, 3, &mut used);
        // Head 6: on the used ring (index 12) but killed before its flag
        // and the region's used index were updated.
        q.completing(6);
        let ring_used = used + 1;
        let mut next = reopen(&file, 1, 16, 0);
        assert_eq!(next.start(ring_used, 0), vec![1], "6 is done, 1 is not");
        // The repair is written back: the region agrees with the ring now.
        assert_eq!(reopen(&file, 1, 16, 0).start(ring_used, 0), vec![1]);
    }

    #[test]
    fn killed_before_the_used_ring_write_resubmits_the_head() {
        let (mut q, file) = queue(1, 16, 0);
        q.start(0, 0);
        q.take(4);
        q.completing(4);
        // The used ring still shows 0.
        assert_eq!(reopen(&file, 1, 16, 0).start(0, 0), vec![4]);
    }

    #[test]
    fn garbage_in_a_frontends_region_does_not_panic() {
        let (region, file) = InflightRegion::create(1, 8).unwrap();
        drop(region);
        let junk: Vec<u8> = (0..stride(8)).map(|i| (i * 37 + 11) as u8 | 1).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &junk, 0).unwrap();
        let mut q = reopen(&file, 1, 8, 0);
        let heads = q.start(3, 0);
        assert!(heads.iter().all(|&h| h < 8));
        // A region too small for its queues is refused.
        let small = InflightRegion::open(file.try_clone().unwrap(), 0, 64, 1, 8);
        assert!(small.is_err());
        let short = InflightRegion::open(file, 0, 1 << 20, 64, 256);
        assert!(short.is_err());
    }
}
