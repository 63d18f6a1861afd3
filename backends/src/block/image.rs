//! A raw disk image file: positioned I/O, flush, discard and zeroing.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Size of a virtio-blk sector in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer (virtio spec: 20 bytes, zero padded).
pub const ID_BYTES: usize = 20;
/// Alignment of buffers, offsets and lengths for O_DIRECT.
const DIRECT_ALIGN: usize = 4096;
/// Size of the zero buffer used when the file system cannot zero a range.
const ZERO_CHUNK: usize = 1 << 20;

/// Errors of disk image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Cannot open disk image {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot query disk image size")]
    Metadata(#[source] io::Error),
    #[error("Disk image size {0} is not a multiple of 512 bytes")]
    UnalignedSize(u64),
    #[error("Access of {len} bytes at offset {offset} is outside the image")]
    OutOfRange { offset: u64, len: u64 },
    #[error("Disk image is read-only")]
    ReadOnly,
    #[error("Read failed")]
    Read(#[source] io::Error),
    #[error("Write failed")]
    Write(#[source] io::Error),
    #[error("Flush failed")]
    Flush(#[source] io::Error),
    #[error("Discard failed")]
    Discard(#[source] io::Error),
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// Refuse writes, discards and zeroing.
    pub read_only: bool,
    /// Open with O_DIRECT (bypass the host page cache).
    pub direct: bool,
    /// Serial returned by GET_ID; truncated to 20 bytes.
    pub serial: String,
}

/// A raw disk image. Every method takes `&self`, so one image can be shared
/// by several queue threads (positioned I/O has no shared cursor).
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    sectors: u64,
    read_only: bool,
    direct: bool,
    id: [u8; ID_BYTES],
}

impl DiskImage {
    /// Opens the raw image at `path`.
    pub fn open(path: &Path, options: &ImageOptions) -> Result<Self, ImageError> {
        let mut open = OpenOptions::new();
        open.read(true).write(!options.read_only);
        if options.direct {
            open.custom_flags(libc::O_DIRECT);
        }
        let file = open.open(path).map_err(|source| ImageError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file(file, options)
    }

    /// Wraps an already open file (`options.direct` must match how it was opened).
    pub fn from_file(file: File, options: &ImageOptions) -> Result<Self, ImageError> {
        let size = file.metadata().map_err(ImageError::Metadata)?.len();
        if size % SECTOR_SIZE != 0 {
            return Err(ImageError::UnalignedSize(size));
        }
        let mut id = [0u8; ID_BYTES];
        let serial = options.serial.as_bytes();
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        Ok(DiskImage {
            file,
            sectors: size / SECTOR_SIZE,
            read_only: options.read_only,
            direct: options.direct,
            id,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The GET_ID answer: the serial, zero padded to 20 bytes.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.sectors * SECTOR_SIZE => Ok(()),
            _ => Err(ImageError::OutOfRange { offset, len }),
        }
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.check_range(offset, buf.len() as u64)?;
        if !self.direct {
            return self
                .file
                .read_exact_at(buf, offset)
                .map_err(ImageError::Read);
        }
        let (start, len) = aligned_span(offset, buf.len());
        let mut bounce = AlignedBuf::new(len);
        self.file
            .read_exact_at(bounce.as_mut(), start)
            .map_err(ImageError::Read)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_mut()[skip..skip + buf.len()]);
        Ok(())
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        self.check_range(offset, buf.len() as u64)?;
        if !self.direct {
            return self
                .file
                .write_all_at(buf, offset)
                .map_err(ImageError::Write);
        }
        let (start, len) = aligned_span(offset, buf.len());
        let mut bounce = AlignedBuf::new(len);
        let skip = (offset - start) as usize;
        if skip != 0 || len != buf.len() {
            // Read-modify-write of the partial blocks at either end.
            self.file
                .read_exact_at(bounce.as_mut(), start)
                .map_err(ImageError::Read)?;
        }
        bounce.as_mut()[skip..skip + buf.len()].copy_from_slice(buf);
        self.file
            .write_all_at(bounce.as_mut(), start)
            .map_err(ImageError::Write)
    }

    /// Makes written data durable (FLUSH).
    pub fn flush(&self) -> Result<(), ImageError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(ImageError::Flush)
    }

    /// Deallocates a byte range; it reads back as zeroes afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        self.check_range(offset, len)?;
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .map_err(ImageError::Discard)
    }

    /// Zeroes a byte range. With `unmap` the range may be deallocated.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        self.check_range(offset, len)?;
        if unmap && self.discard(offset, len).is_ok() {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(mode, offset, len).is_ok() {
            return Ok(());
        }
        // The file system zeroes nothing for us: write zeroes.
        let mut zero = AlignedBuf::new(ZERO_CHUNK.min(len as usize));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.write_at(&zero.as_mut()[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate only acts on the file descriptor we own; it takes
        // no pointers and cannot touch our memory.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The O_DIRECT-aligned byte span that covers `len` bytes at `offset`.
fn aligned_span(offset: u64, len: usize) -> (u64, usize) {
    let align = DIRECT_ALIGN as u64;
    let start = offset - offset % align;
    let end = (offset + len as u64).div_ceil(align) * align;
    (start, (end - start) as usize)
}

/// A zeroed byte buffer whose start is aligned for O_DIRECT.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}
