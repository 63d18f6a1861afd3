//! The frontend's dirty log (LOG_SHMFD, SET_LOG_BASE) as a `vm-memory`
//! bitmap: every write the daemon makes into guest memory (data buffers,
//! status bytes, used rings) sets the bit of each 4 KiB guest page it
//! touched in the frontend's shared log, one bit per page, page `n` in bit
//! `n % 8` of byte `n / 8`.
//!
//! vhost-user-backend has such a bitmap, but its log mapping cannot be
//! built outside that crate, so the daemon's own request handler carries
//! this one.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use vm_memory::bitmap::{Bitmap, NewBitmap, WithBitmapSlice};

const PAGE: u64 = 4096;

/// The frontend's log, mapped shared.
#[derive(Debug)]
pub struct LogMap {
    addr: *const AtomicU8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone and only ever accessed
// through atomic byte operations, so it may move between threads.
unsafe impl Send for LogMap {}
// SAFETY: as above: shared access is atomic operations only.
unsafe impl Sync for LogMap {}

impl LogMap {
    /// Maps `len` bytes of `file` at `offset`, checking that the file is
    /// that long so no access can fault past its end.
    pub fn new(file: &File, offset: u64, len: u64) -> io::Result<LogMap> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let file_len = file.metadata()?.len();
        let end = offset.checked_add(len).ok_or_else(invalid)?;
        if len == 0 || end > file_len && file.metadata()?.is_file() {
            return Err(invalid());
        }
        let size = usize::try_from(len).map_err(|_| invalid())?;
        let off = libc::off_t::try_from(offset).map_err(|_| invalid())?;
        // SAFETY: a fresh shared mapping of the frontend's file, at an
        // address the kernel picks; nothing else in this process refers to
        // it. The result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(LogMap {
            addr: addr.cast(),
            len: size,
        })
    }

    fn set(&self, page: u64) {
        let Ok(byte) = usize::try_from(page / 8) else {
            return;
        };
        if byte < self.len {
            // SAFETY: `byte` is inside the mapping, which lives as long as
            // `self`; AtomicU8 has the layout of u8.
            let b = unsafe { &*self.addr.add(byte) };
            b.fetch_or(1 << (page % 8), Ordering::Relaxed);
        }
    }

    fn get(&self, page: u64) -> bool {
        let Ok(byte) = usize::try_from(page / 8) else {
            return false;
        };
        // SAFETY: as in `set`.
        byte < self.len
            && unsafe { &*self.addr.add(byte) }.load(Ordering::Relaxed) & (1 << (page % 8)) != 0
    }
}

impl Drop for LogMap {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Where a region's writes go in the log: the log and the guest address
/// of the region's first byte.
#[derive(Debug)]
struct RegionLog {
    map: Arc<LogMap>,
    gpa: u64,
    len: u64,
}

/// A region's bitmap (and its slices, at `offset` into the region): empty
/// until the frontend sends a log, then marking it.
#[derive(Clone, Debug, Default)]
pub struct DirtyLog {
    inner: Arc<RwLock<Option<RegionLog>>>,
    offset: usize,
}

impl DirtyLog {
    /// From now on, writes to this region (`gpa`, `len` bytes) set bits of
    /// `map`.
    pub fn attach(&self, map: Arc<LogMap>, gpa: u64, len: u64) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Some(RegionLog { map, gpa, len });
    }
}

impl NewBitmap for DirtyLog {
    fn with_len(_len: usize) -> Self {
        DirtyLog::default()
    }
}

impl WithBitmapSlice<'_> for DirtyLog {
    type S = Self;
}

impl vm_memory::bitmap::BitmapSlice for DirtyLog {}

impl Bitmap for DirtyLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(log) = inner.as_ref() else {
            return;
        };
        if len == 0 {
            return;
        }
        let start = self.offset.saturating_add(offset) as u64;
        let end = start.saturating_add(len as u64).min(log.len);
        if start >= end {
            return;
        }
        // Guest pages, from the guest addresses of the first and last byte.
        let first = log.gpa.saturating_add(start) / PAGE;
        let last = log.gpa.saturating_add(end - 1) / PAGE;
        for page in first..=last {
            log.map.set(page);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.as_ref().is_some_and(|log| {
            let at = self.offset.saturating_add(offset) as u64;
            at < log.len && log.map.get(log.gpa.saturating_add(at) / PAGE)
        })
    }

    fn slice_at(&self, offset: usize) -> Self {
        DirtyLog {
            inner: self.inner.clone(),
            offset: self.offset.saturating_add(offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

    #[test]
    fn writes_set_the_bits_of_the_pages_they_touch() {
        let mem: GuestMemoryMmap<DirtyLog> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x10_0000)]).unwrap();
        let mut file = tempfile();
        file.set_len(4096).unwrap();
        let map = Arc::new(LogMap::new(&file, 0, 4096).unwrap());
        // Before the log: nothing is marked.
        mem.write_obj(1u8, GuestAddress(0x10_0000)).unwrap();
        for r in mem.iter() {
            r.bitmap().attach(map.clone(), r.start_addr().0, r.len());
        }
        // Straddles pages 0x101 and 0x102 (guest frame numbers).
        mem.write_slice(&[7u8; 16], GuestAddress(0x10_1ff8))
            .unwrap();
        let mut log = Vec::new();
        file.read_to_end(&mut log).unwrap();
        let set: Vec<usize> = (0..log.len() * 8)
            .filter(|&p| log[p / 8] & (1 << (p % 8)) != 0)
            .collect();
        assert_eq!(set, vec![0x101, 0x102]);
    }

    #[test]
    fn pages_are_guest_pages_in_a_region_not_page_aligned() {
        let mem: GuestMemoryMmap<DirtyLog> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x800), 0x4000)]).unwrap();
        let file = tempfile();
        file.set_len(64).unwrap();
        let map = Arc::new(LogMap::new(&file, 0, 64).unwrap());
        for r in mem.iter() {
            r.bitmap().attach(map.clone(), r.start_addr().0, r.len());
        }
        // Guest 0x1100..0x1110: page 1 only, though it is in the region's
        // first 4 KiB.
        mem.write_slice(&[7u8; 16], GuestAddress(0x1100)).unwrap();
        let mut log = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut log, 0).unwrap();
        assert_eq!(log[0], 0b10);
    }

    fn tempfile() -> File {
        let name = c"dirty-test";
        // SAFETY: a valid NUL-terminated name; the fd is checked and owned.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh fd nothing else owns.
        unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }
}
