//! The vhost-user dirty log: a shared memfd the backend marks (one bit per
//! 4 KiB page of guest-physical address space) for the guest memory it
//! writes, which the frontend collects. Collection clears only the bits it
//! takes, each word with one atomic operation: a bit the backend sets in
//! between is either taken now or left for the next time, never lost.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub const PAGE: u64 = 4096;

pub struct DirtyLog {
    file: File,
    map: NonNull<AtomicU64>,
    words: u64,
    size: u64,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it
// lives as long as the object.
unsafe impl Send for DirtyLog {}
// SAFETY: as for Send: every access is an atomic operation on the mapping.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// A clean log for guest-physical addresses below `gpa_end`.
    pub fn new(gpa_end: u64) -> io::Result<DirtyLog> {
        let words = gpa_end.div_ceil(PAGE).div_ceil(64).max(1);
        let size = (words * 8).next_multiple_of(PAGE);
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"vhost-log".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        // SAFETY: a fresh shared mapping of `size` bytes of our file; the
        // result is checked and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(DirtyLog {
            file,
            map,
            words,
            size,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Bytes of the mapping (what SET_LOG_BASE announces).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The guest-physical end the log covers.
    pub fn covers(&self) -> u64 {
        self.words * 64 * PAGE
    }

    fn word(&self, i: u64) -> &AtomicU64 {
        // SAFETY: callers pass i < self.words, inside the mapping, which is
        // 8-byte aligned (page aligned) and lives as long as `self`.
        unsafe { &*self.map.as_ptr().add(i as usize) }
    }

    /// Takes the bits of pages `[first, first + count)` (clearing just
    /// those); bit i of the result is page `first + i`.
    pub fn take(&self, first: u64, count: u64) -> Vec<u64> {
        let mut out = vec![0u64; count.div_ceil(64) as usize];
        let end = (first + count).min(self.words * 64);
        let mut page = first;
        while page < end {
            let w = page / 64;
            let lo = page % 64;
            let hi = (end - w * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let got = self.word(w).fetch_and(!mask, Ordering::AcqRel) & mask;
            let mut bits = got >> lo;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                let i = page - first + b;
                out[(i / 64) as usize] |= 1 << (i % 64);
                bits &= bits - 1;
            }
            page = w * 64 + hi;
        }
        out
    }

    /// Moves every set bit into `other` (a bigger log replacing this one).
    pub fn move_into(&self, other: &DirtyLog) {
        for i in 0..self.words.min(other.words) {
            let v = self.word(i).swap(0, Ordering::AcqRel);
            if v != 0 {
                other.word(i).fetch_or(v, Ordering::AcqRel);
            }
        }
    }

    /// Marks a page, as a backend would (for tests).
    pub fn mark(&self, page: u64) {
        if page < self.words * 64 {
            self.word(page / 64)
                .fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_a_range_clears_only_its_bits() {
        let log = DirtyLog::new(1 << 30).unwrap();
        for p in [3, 63, 64, 70, 200] {
            log.mark(p);
        }
        assert_eq!(log.take(60, 10), vec![1 << 3 | 1 << 4], "pages 63 and 64");
        // Pages 63, 64 were taken; 3, 70 and 200 are still there.
        let rest = log.take(0, 256);
        let pages: Vec<u64> = (0..256u64)
            .filter(|p| rest[(p / 64) as usize] >> (p % 64) & 1 == 1)
            .collect();
        assert_eq!(pages, vec![3, 70, 200]);
        assert!(log.take(0, 256).iter().all(|&w| w == 0));
        let big = DirtyLog::new(2 << 30).unwrap();
        log.mark(5);
        log.move_into(&big);
        assert_eq!(big.take(0, 64), vec![1 << 5]);
    }

    #[test]
    fn a_bit_set_while_the_frontend_takes_is_never_lost() {
        let pages = 1u64 << 20;
        let log = std::sync::Arc::new(DirtyLog::new(pages * PAGE).unwrap());
        let marker = {
            let log = log.clone();
            std::thread::spawn(move || {
                for p in 0..pages {
                    log.mark(p);
                }
            })
        };
        let mut seen = vec![false; pages as usize];
        let mut rounds = 0;
        let mut collect = |first: u64, bits: Vec<u64>| {
            for (i, mut w) in bits.into_iter().enumerate() {
                while w != 0 {
                    let p = first + 64 * i as u64 + u64::from(w.trailing_zeros());
                    assert!(!seen[p as usize], "page {p} reported twice");
                    seen[p as usize] = true;
                    w &= w - 1;
                }
            }
        };
        // Two takes that split a word, while the backend marks.
        let split = 300_001;
        while !marker.is_finished() {
            collect(0, log.take(0, split));
            collect(split, log.take(split, pages - split));
            rounds += 1;
        }
        marker.join().unwrap();
        collect(0, log.take(0, pages));
        assert!(rounds > 0, "the takes ran while marking");
        assert!(seen.iter().all(|&s| s), "every page reported exactly once");
    }
}
