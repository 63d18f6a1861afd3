//! A raw disk image file: positioned reads and writes, flush, discard
//! (punching holes) and zeroing.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::SECTOR;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open the disk image {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the disk image {path} is {size} bytes, not a multiple of 512")]
    Size { path: String, size: u64 },
}

pub struct DiskImage {
    file: File,
    sectors: u64,
    readonly: bool,
    /// VIRTIO_BLK_T_GET_ID: 20 bytes, zero padded.
    serial: [u8; 20],
}

impl DiskImage {
    /// Opens `path` (buffered I/O: O_DIRECT needs sector-aligned buffers
    /// gathered across descriptors, which `process` does not do yet).
    pub fn open(path: &Path, readonly: bool, serial: &str) -> Result<Self, DiskError> {
        let mut o = OpenOptions::new();
        o.read(true).write(!readonly).custom_flags(libc::O_CLOEXEC);
        let file = o.open(path).map_err(|source| DiskError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let size = file
            .metadata()
            .map_err(|source| DiskError::Open {
                path: path.display().to_string(),
                source,
            })?
            .len();
        if size % SECTOR != 0 {
            return Err(DiskError::Size {
                path: path.display().to_string(),
                size,
            });
        }
        let mut id = [0u8; 20];
        let n = serial.len().min(20);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(DiskImage {
            file,
            sectors: size / SECTOR,
            readonly,
            serial: id,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }
    pub fn readonly(&self) -> bool {
        self.readonly
    }
    pub fn serial(&self) -> &[u8; 20] {
        &self.serial
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Frees the range (a hole); the data reads back as zeros.
    pub fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes the range, by the filesystem if it can, else by writing.
    pub fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self
            .fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .is_ok()
        {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 16];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on a file we own with checked arguments.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}
