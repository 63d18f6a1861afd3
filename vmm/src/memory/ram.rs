//! Host memory behind RAM, ROM and RAM-device regions.
//!
//! A [`RamBlock`] is one host mapping with a file behind it, so that other
//! processes (vhost-user backends, vfio-user servers) can map the same pages:
//! guest RAM is a shared memfd; a RAM device is an mmap of a device region
//! (a VFIO BAR) whose file and offset the creator hands over.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::ptr::NonNull;

/// Errors creating host memory.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    #[error("RAM block {name:?} has size zero")]
    ZeroSize { name: String },
    #[error("RAM block name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("memfd_create for RAM block {name:?} failed")]
    Memfd {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot size RAM block {name:?} to {size:#x} bytes")]
    Truncate {
        name: String,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map RAM block {name:?} ({size:#x} bytes)")]
    Mmap {
        name: String,
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One host mapping that backs guest-visible memory.
#[derive(Debug)]
pub struct RamBlock {
    name: String,
    host: NonNull<u8>,
    size: u64,
    file: File,
    file_offset: u64,
    /// Pages written since the dirty log was last taken.
    pub dirty: super::dirty_log::DirtyBitmap,
}

// SAFETY: the block is a plain host mapping; the pointer is only an address
// that is valid for the block's life, and all access through it goes through
// raw-pointer copies whose callers bound them to `size`.
unsafe impl Send for RamBlock {}
// SAFETY: as for Send; the block has no interior state besides the mapping.
unsafe impl Sync for RamBlock {}

impl RamBlock {
    /// Creates `size` bytes of zeroed RAM on a new sealed-size shared memfd.
    pub fn new_memfd(name: &str, size: u64) -> Result<Self, RamError> {
        if size == 0 {
            return Err(RamError::ZeroSize { name: name.into() });
        }
        let cname = CString::new(name).map_err(|_| RamError::BadName(name.into()))?;
        // SAFETY: memfd_create reads a NUL-terminated string we own and
        // returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(RamError::Memfd {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(|source| RamError::Truncate {
            name: name.into(),
            size,
            source,
        })?;
        Self::map_file(name, file, 0, size)
    }

    /// Maps `size` bytes of `file` at `file_offset` (guest RAM's memfd, or
    /// a device region's mmap-able area) shared and read-write; the block
    /// owns the mapping.
    pub fn map_file(name: &str, file: File, file_offset: u64, size: u64) -> Result<Self, RamError> {
        if size == 0 {
            return Err(RamError::ZeroSize { name: name.into() });
        }
        let host = map_shared(&file, file_offset, size).map_err(|source| RamError::Mmap {
            name: name.into(),
            size,
            source,
        })?;
        Ok(RamBlock {
            name: name.into(),
            host,
            size,
            file,
            file_offset,
            dirty: super::dirty_log::DirtyBitmap::new(size),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host virtual address of the first byte.
    pub fn host_addr(&self) -> u64 {
        self.host.as_ptr() as u64
    }

    /// The file behind the mapping, for handing to another process.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Offset of the first byte in [`RamBlock::fd`].
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }

    /// Copies out of the block; bytes past its end are left untouched.
    /// Returns how many bytes were copied.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> usize {
        let n = self.clamp(offset, data.len());
        if n > 0 {
            // SAFETY: clamp bounds [offset, offset + n) inside the mapping,
            // which lives as long as self; `data` is a distinct buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.host.as_ptr().add(offset as usize),
                    data.as_mut_ptr(),
                    n,
                )
            };
        }
        n
    }

    /// Copies into the block; bytes past its end are dropped. Returns how
    /// many bytes were copied.
    pub fn write(&self, offset: u64, data: &[u8]) -> usize {
        let n = self.clamp(offset, data.len());
        if n > 0 {
            // SAFETY: as in read; the mapping is writable (PROT_WRITE).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.host.as_ptr().add(offset as usize),
                    n,
                )
            };
        }
        n
    }

    /// Reads device memory as a device wants it: an aligned access of 1,
    /// 2, 4 or 8 bytes as one load of that width, anything else byte by
    /// byte; bytes past the end read as all ones.
    pub fn read_device(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let n = self.clamp(offset, data.len());
        if n == 0 {
            return;
        }
        let p = self.host.as_ptr().wrapping_add(offset as usize);
        let whole = n == data.len() && offset % n as u64 == 0;
        match (n, whole) {
            (2 | 4 | 8, true) => {
                let mut v = [0u8; 8];
                // SAFETY: clamp bounds [offset, offset + n) inside the
                // mapping, alive as long as self; `p` is aligned to `n`.
                unsafe {
                    match n {
                        2 => v[..2].copy_from_slice(&p.cast::<u16>().read_volatile().to_le_bytes()),
                        4 => v[..4].copy_from_slice(&p.cast::<u32>().read_volatile().to_le_bytes()),
                        _ => v = p.cast::<u64>().read_volatile().to_le_bytes(),
                    }
                }
                data.copy_from_slice(&v[..n]);
            }
            _ => {
                for (i, b) in data[..n].iter_mut().enumerate() {
                    // SAFETY: i < n, inside the mapping as above.
                    *b = unsafe { p.add(i).read_volatile() };
                }
            }
        }
    }

    /// Writes device memory, the counterpart of [`RamBlock::read_device`];
    /// bytes past the end are dropped.
    pub fn write_device(&self, offset: u64, data: &[u8]) {
        let n = self.clamp(offset, data.len());
        if n == 0 {
            return;
        }
        let p = self.host.as_ptr().wrapping_add(offset as usize);
        let whole = n == data.len() && offset % n as u64 == 0;
        match (n, whole) {
            (2 | 4 | 8, true) => {
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(data);
                let q = u64::from_le_bytes(v);
                // SAFETY: as in read_device; the mapping is writable.
                unsafe {
                    match n {
                        2 => p.cast::<u16>().write_volatile(q as u16),
                        4 => p.cast::<u32>().write_volatile(q as u32),
                        _ => p.cast::<u64>().write_volatile(q),
                    }
                }
            }
            _ => {
                for (i, &b) in data[..n].iter().enumerate() {
                    // SAFETY: i < n, inside the writable mapping.
                    unsafe { p.add(i).write_volatile(b) }
                }
            }
        }
    }

    fn clamp(&self, offset: u64, len: usize) -> usize {
        if offset >= self.size {
            return 0;
        }
        (self.size - offset).min(len as u64) as usize
    }
}

impl Drop for RamBlock {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by map_shared with this size and
        // nothing refers to it once the block is dropped.
        unsafe { libc::munmap(self.host.as_ptr().cast(), self.size as usize) };
    }
}

fn map_shared(file: &File, offset: u64, size: u64) -> std::io::Result<NonNull<u8>> {
    let len = usize::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a fresh shared mapping of a file we hold open; the kernel
    // picks the address, so no existing mapping is replaced.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFAULT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn memfd_is_shared_with_the_file() {
        let b = RamBlock::new_memfd("t", 0x2000).unwrap();
        assert_eq!(b.write(0x1ff8, &[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
        let mut buf = [0u8; 4];
        b.file().read_exact_at(&mut buf, 0x1ff8).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        b.file().write_all_at(&[0xaa], 0x10).unwrap();
        let mut one = [0u8];
        assert_eq!(b.read(0x10, &mut one), 1);
        assert_eq!(one, [0xaa]);
        assert_eq!(b.read(0x2000, &mut one), 0);
    }

    #[test]
    fn device_accesses_keep_their_width_and_stop_at_the_end() {
        let b = RamBlock::new_memfd("d", 0x1000).unwrap();
        b.write_device(0x10, &0x1122_3344u32.to_le_bytes());
        b.write_device(0x18, &0x5566_7788_99aa_bbccu64.to_le_bytes());
        b.write_device(0x21, &[1, 2, 3]);
        let mut w = [0u8; 4];
        b.read_device(0x10, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x1122_3344);
        let mut q = [0u8; 8];
        b.read_device(0x18, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x5566_7788_99aa_bbcc);
        let mut odd = [0u8; 3];
        b.read_device(0x21, &mut odd);
        assert_eq!(odd, [1, 2, 3]);
        b.read_device(0xffe, &mut w);
        assert_eq!(w, [0, 0, 0xff, 0xff], "past the end reads all ones");
    }

    #[test]
    fn zero_size_is_refused() {
        assert!(matches!(
            RamBlock::new_memfd("z", 0),
            Err(RamError::ZeroSize { .. })
        ));
    }
}
