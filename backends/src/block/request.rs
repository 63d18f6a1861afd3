//! One virtio-blk request: a header the device reads, data descriptors, and
//! a status byte the device writes last.
//!
//! Everything here comes from the guest. A malformed request gets IOERR (or
//! UNSUPP for an unknown type) in its status byte and the device goes on;
//! only a request without a writable status byte cannot be answered, and
//! that is returned as an error for the caller to log and complete with
//! nothing written.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError};

use super::disk::DiskImage;
use super::SECTOR;

/// Bytes of the request header (type, reserved, sector).
const HEADER: u32 = 16;
/// Bytes of one discard / write-zeroes segment.
const SEGMENT: u32 = 16;
/// WRITE_ZEROES flag: the device may deallocate.
const UNMAP: u32 = 1;
/// Largest transfer one request may ask for; beyond is IOERR.
const MAX_TRANSFER: u64 = 64 << 20;
/// Bounce buffer for copies between guest memory and the image.
const CHUNK: usize = 1 << 20;

/// What the device advertises for discard and write-zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_discard_sectors: 1 << 22,
            max_discard_seg: 1,
            max_write_zeroes_sectors: 1 << 22,
            max_write_zeroes_seg: 1,
        }
    }
}

/// How a request ended: the status written and the bytes the device wrote
/// into guest memory (the used ring's `len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub status: u8,
    pub used_len: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request has no device-writable status byte at its end")]
    NoStatus,
    #[error("cannot write the status byte")]
    Status(#[source] GuestMemoryError),
}

/// Why a request failed, for the status byte and a debug line.
enum Fail {
    IoErr(String),
    Unsupported(u32),
}

fn ioerr<T>(why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::IoErr(why.into()))
}

/// Runs the request made of `descs` against `disk`.
pub fn process<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    disk: &DiskImage,
    limits: &Limits,
    mem: &M,
    descs: &[Descriptor],
) -> Result<Completion, RequestError> {
    let status = match descs.last() {
        Some(d) if d.is_write_only() && d.len() >= 1 && descs.len() >= 2 => *d,
        _ => return Err(RequestError::NoStatus),
    };
    let data = &descs[1..descs.len() - 1];
    let (code, written) = match run(disk, limits, mem, &descs[0], data) {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
        Err(Fail::IoErr(why)) => {
            log::debug!("virtio-blk request failed: {why}");
            (VIRTIO_BLK_S_IOERR as u8, 0)
        }
        Err(Fail::Unsupported(t)) => {
            log::debug!("virtio-blk request type {t} is not supported");
            (VIRTIO_BLK_S_UNSUPP as u8, 0)
        }
    };
    mem.write_obj(code, status.addr())
        .map_err(RequestError::Status)?;
    Ok(Completion {
        status: code,
        used_len: written.saturating_add(1),
    })
}

fn run<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    disk: &DiskImage,
    limits: &Limits,
    mem: &M,
    header: &Descriptor,
    data: &[Descriptor],
) -> Result<u32, Fail> {
    if header.is_write_only() || header.len() < HEADER {
        return ioerr("the header is device-writable or short");
    }
    let kind: u32 = mem
        .read_obj(header.addr())
        .or_else(|_| ioerr("cannot read the header"))?;
    let sector: u64 = mem
        .read_obj(offset(header.addr(), 8)?)
        .or_else(|_| ioerr("cannot read the header"))?;
    match kind {
        VIRTIO_BLK_T_IN => transfer(disk, mem, sector, data, true),
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() {
                return ioerr("write to a read-only image");
            }
            transfer(disk, mem, sector, data, false).map(|_| 0)
        }
        VIRTIO_BLK_T_FLUSH => disk
            .flush()
            .map(|()| 0)
            .or_else(|e| ioerr(format!("flush: {e}"))),
        VIRTIO_BLK_T_GET_ID => {
            let [d] = data else {
                return ioerr("GET_ID wants one buffer");
            };
            if !d.is_write_only() {
                return ioerr("GET_ID buffer is device-readable");
            }
            let n = (d.len() as usize).min(20);
            mem.write_slice(&disk.serial()[..n], d.addr())
                .or_else(|_| ioerr("cannot write the ID"))?;
            Ok(n as u32)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if disk.readonly() {
                return ioerr("discard or write-zeroes on a read-only image");
            }
            segments(disk, limits, mem, kind, data).map(|()| 0)
        }
        t => Err(Fail::Unsupported(t)),
    }
}

/// `addr + off`, refusing guest addresses that wrap.
fn offset(addr: GuestAddress, off: u64) -> Result<GuestAddress, Fail> {
    addr.checked_add(off)
        .ok_or_else(|| Fail::IoErr(format!("buffer at {:#x} wraps", addr.0)))
}

/// The sectors `[sector, sector + len / 512)` must be on the disk.
fn check_range(disk: &DiskImage, sector: u64, len: u64) -> Result<(), Fail> {
    if len % SECTOR != 0 {
        return ioerr(format!("{len} bytes is not whole sectors"));
    }
    let end = sector.checked_add(len / SECTOR);
    match end {
        Some(e) if e <= disk.sectors() => Ok(()),
        _ => ioerr(format!(
            "sectors {sector}+{} past the end ({})",
            len / SECTOR,
            disk.sectors()
        )),
    }
}

/// Reads (IN) or writes (OUT) the data descriptors at `sector`; returns the
/// bytes written into guest memory.
fn transfer<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    disk: &DiskImage,
    mem: &M,
    sector: u64,
    data: &[Descriptor],
    read: bool,
) -> Result<u32, Fail> {
    let mut total = 0u64;
    for d in data {
        if d.is_write_only() != read {
            return ioerr("a data buffer has the wrong direction");
        }
        total += u64::from(d.len());
    }
    if total > MAX_TRANSFER {
        return ioerr(format!("{total} bytes in one request"));
    }
    check_range(disk, sector, total)?;
    let mut pos = sector * SECTOR;
    let mut buf = vec![0u8; CHUNK.min(total as usize)];
    for d in data {
        let mut done = 0u64;
        while done < u64::from(d.len()) {
            let n = (u64::from(d.len()) - done).min(CHUNK as u64) as usize;
            let at = offset(d.addr(), done)?;
            if read {
                disk.read_at(&mut buf[..n], pos)
                    .or_else(|e| ioerr(format!("read: {e}")))?;
                mem.write_slice(&buf[..n], at)
                    .or_else(|_| ioerr("buffer outside guest memory"))?;
            } else {
                mem.read_slice(&mut buf[..n], at)
                    .or_else(|_| ioerr("buffer outside guest memory"))?;
                disk.write_at(&buf[..n], pos)
                    .or_else(|e| ioerr(format!("write: {e}")))?;
            }
            done += n as u64;
            pos += n as u64;
        }
    }
    Ok(if read { total as u32 } else { 0 })
}

/// DISCARD and WRITE_ZEROES: segments of (sector, sectors, flags).
fn segments<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    disk: &DiskImage,
    limits: &Limits,
    mem: &M,
    kind: u32,
    data: &[Descriptor],
) -> Result<(), Fail> {
    let discard = kind == VIRTIO_BLK_T_DISCARD;
    let (max_seg, max_sectors) = if discard {
        (limits.max_discard_seg, limits.max_discard_sectors)
    } else {
        (limits.max_write_zeroes_seg, limits.max_write_zeroes_sectors)
    };
    let mut segs = Vec::new();
    for d in data {
        if d.is_write_only() || d.len() % SEGMENT != 0 {
            return ioerr("bad segment buffer");
        }
        for i in 0..d.len() / SEGMENT {
            let at = offset(d.addr(), u64::from(i * SEGMENT))?;
            let sector: u64 = mem.read_obj(at).or_else(|_| ioerr("segment unreadable"))?;
            let count: u32 = mem
                .read_obj(offset(at, 8)?)
                .or_else(|_| ioerr("segment unreadable"))?;
            let flags: u32 = mem
                .read_obj(offset(at, 12)?)
                .or_else(|_| ioerr("segment unreadable"))?;
            segs.push((sector, count, flags));
        }
    }
    if segs.is_empty() || segs.len() as u64 > u64::from(max_seg) {
        return ioerr(format!("{} segments (at most {max_seg})", segs.len()));
    }
    for &(sector, count, flags) in &segs {
        let allowed = if discard { 0 } else { UNMAP };
        if flags & !allowed != 0 {
            return Err(Fail::Unsupported(kind));
        }
        if count > max_sectors {
            return ioerr(format!(
                "{count} sectors in a segment (at most {max_sectors})"
            ));
        }
        check_range(disk, sector, u64::from(count) * SECTOR)?;
    }
    for &(sector, count, flags) in &segs {
        let (off, len) = (sector * SECTOR, u64::from(count) * SECTOR);
        let r = if discard || flags & UNMAP != 0 {
            // Both read back as zeros after a punched hole; if the file
            // system cannot punch, zero the range instead.
            disk.punch(off, len).or_else(|_| disk.zero(off, len))
        } else {
            disk.zero(off, len)
        };
        r.or_else(|e| ioerr(format!("zeroing: {e}")))?;
    }
    Ok(())
}
