//! Parsing and executing virtio-blk requests from a descriptor chain.

use std::ops::Deref;

use log::warn;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::config::BlockLimits;
use super::image::{DiskImage, ImageError, SECTOR_SIZE};
use super::layout::{split, Layout, Segment};
use super::ratelimit::LogLimiter;

/// Size of `struct virtio_blk_outhdr`: type, reserved, sector.
const HEADER_SIZE: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_SIZE: u32 = 16;
/// Largest bounce buffer for data; a chain may describe up to 4 GiB.
const CHUNK: usize = 1 << 20;

static LOG: LogLimiter = LogLimiter::new();

/// Errors that leave no status for the driver: the caller logs them and
/// still returns the chain to the used ring with length 0.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("Descriptor chain is empty")]
    EmptyChain,
    #[error("Status descriptor is not device-writable")]
    StatusNotWritable,
    #[error("Cannot write the status byte at {0:#x}")]
    StatusWrite(u64),
}

/// A virtio-blk status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = VIRTIO_BLK_S_OK as u8,
    IoErr = VIRTIO_BLK_S_IOERR as u8,
    Unsupp = VIRTIO_BLK_S_UNSUPP as u8,
}

/// Why a request failed; turned into a status byte and a rate-limited log line.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("Invalid request: {0}")]
    Invalid(&'static str),
    #[error("Unsupported request type {0}")]
    Unsupported(u32),
    #[error("Disk image error: {0}")]
    Image(ImageError),
    #[error("Bad guest address {:#x}", .0.0)]
    GuestMemory(GuestAddress),
}

impl Failure {
    fn status(&self) -> Status {
        match self {
            Failure::Unsupported(_) => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

/// Executes requests from descriptor chains against one image.
/// Shareable across queue threads (`&self` only).
#[derive(Debug)]
pub struct BlockEngine {
    image: DiskImage,
    limits: BlockLimits,
}

impl BlockEngine {
    pub fn new(image: DiskImage, limits: BlockLimits) -> Self {
        BlockEngine { image, limits }
    }

    pub fn image(&self) -> &DiskImage {
        &self.image
    }

    pub fn limits(&self) -> &BlockLimits {
        &self.limits
    }

    /// Executes the request in `chain`, writes its status byte and returns
    /// the number of bytes written into guest memory (the used ring `len`).
    /// Errs only when no status byte could be written.
    pub fn process<M>(&self, mut chain: DescriptorChain<M>) -> Result<u32, RequestError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let descs: Vec<Descriptor> = chain.by_ref().collect();
        self.process_descriptors(chain.memory(), &descs)
    }

    /// `process` for a chain already walked: its descriptors in order
    /// (those of an indirect table in its place).
    pub fn process_descriptors<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        descs: &[Descriptor],
    ) -> Result<u32, RequestError> {
        if descs.is_empty() {
            return Err(RequestError::EmptyChain);
        }
        let (layout, status_addr) = split(descs).ok_or(RequestError::StatusNotWritable)?;
        let (status, written) = match self.execute(mem, layout) {
            Ok(written) => (Status::Ok, written),
            Err(failure) => {
                if LOG.allow() {
                    warn!("virtio-blk request failed: {failure}");
                }
                (failure.status(), 0)
            }
        };
        mem.write_obj(status as u8, status_addr)
            .map_err(|_| RequestError::StatusWrite(status_addr.0))?;
        Ok(written + 1)
    }

    fn execute<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        mut layout: Layout,
    ) -> Result<u32, Failure> {
        if layout.misordered {
            return Err(Failure::Invalid(
                "device-readable buffer after a writable one",
            ));
        }
        let raw = layout
            .take_header::<{ HEADER_SIZE as usize }, G>(mem)
            .ok_or(Failure::Invalid("short or unreadable header"))?;
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let (data, other_way) = match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => (&layout.writable, &layout.readable),
            _ => (&layout.readable, &layout.writable),
        };
        if data.len() > self.limits.seg_max as usize {
            return Err(Failure::Invalid("too many data descriptors"));
        }
        if kind != VIRTIO_BLK_T_FLUSH && !other_way.is_empty() {
            return Err(Failure::Invalid("data buffer has the wrong direction"));
        }
        match kind {
            VIRTIO_BLK_T_IN => self.read(mem, sector, data),
            VIRTIO_BLK_T_OUT => self.write(mem, sector, data).map(|()| 0),
            VIRTIO_BLK_T_FLUSH => self.image.flush().map(|()| 0).map_err(Failure::Image),
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, data),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.discard_or_zero(mem, kind, data).map(|()| 0)
            }
            other => Err(Failure::Unsupported(other)),
        }
    }

    /// Checks 512-byte granularity and the sector range;
    /// returns the byte offset and total length.
    fn data_range(&self, sector: u64, data: &[Segment]) -> Result<(u64, u64), Failure> {
        let len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
        if len % SECTOR_SIZE != 0 {
            return Err(Failure::Invalid("data length is not a multiple of 512"));
        }
        let end = sector.checked_add(len / SECTOR_SIZE);
        if !end.is_some_and(|end| end <= self.image.sectors()) {
            return Err(Failure::Invalid("sector range past the end of the image"));
        }
        Ok((sector * SECTOR_SIZE, len))
    }

    fn read<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        sector: u64,
        data: &[Segment],
    ) -> Result<u32, Failure> {
        let (offset, len) = self.data_range(sector, data)?;
        check_guest(mem, data, Permissions::Write)?;
        by_chunks(data, offset, len, |buf, addr, offset| {
            self.image.read_at(buf, offset).map_err(Failure::Image)?;
            mem.write_slice(buf, addr)
                .map_err(|_| Failure::GuestMemory(addr))
        })?;
        u32::try_from(len).map_err(|_| Failure::Invalid("data longer than 4 GiB"))
    }

    fn write<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        sector: u64,
        data: &[Segment],
    ) -> Result<(), Failure> {
        if self.image.read_only() {
            return Err(Failure::Image(ImageError::ReadOnly));
        }
        let (offset, len) = self.data_range(sector, data)?;
        // Check every buffer first so a bad guest address leaves the image untouched.
        check_guest(mem, data, Permissions::Read)?;
        by_chunks(data, offset, len, |buf, addr, offset| {
            mem.read_slice(buf, addr)
                .map_err(|_| Failure::GuestMemory(addr))?;
            self.image.write_at(buf, offset).map_err(Failure::Image)
        })
    }

    fn get_id<G: GuestMemory + ?Sized>(&self, mem: &G, data: &[Segment]) -> Result<u32, Failure> {
        let id = self.image.id();
        let mut at = 0usize;
        for d in data {
            let n = (d.len as usize).min(id.len() - at);
            mem.write_slice(&id[at..at + n], d.addr)
                .map_err(|_| Failure::GuestMemory(d.addr))?;
            at += n;
            if at == id.len() {
                break;
            }
        }
        Ok(at as u32)
    }

    fn discard_or_zero<G: GuestMemory + ?Sized>(
        &self,
        mem: &G,
        kind: u32,
        data: &[Segment],
    ) -> Result<(), Failure> {
        if self.image.read_only() {
            return Err(Failure::Image(ImageError::ReadOnly));
        }
        let discard = kind == VIRTIO_BLK_T_DISCARD;
        let (max_sectors, max_seg) = if discard {
            (self.limits.max_discard_sectors, self.limits.max_discard_seg)
        } else {
            let l = &self.limits;
            (l.max_write_zeroes_sectors, l.max_write_zeroes_seg)
        };
        let len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
        if len == 0 || len % u64::from(SEGMENT_SIZE) != 0 {
            return Err(Failure::Invalid(
                "segment list length is not a multiple of 16",
            ));
        }
        if len / u64::from(SEGMENT_SIZE) > u64::from(max_seg) {
            return Err(Failure::Invalid("too many segments"));
        }
        let mut raw = vec![0u8; len as usize];
        let mut at = 0usize;
        for d in data {
            let n = d.len as usize;
            mem.read_slice(&mut raw[at..at + n], d.addr)
                .map_err(|_| Failure::GuestMemory(d.addr))?;
            at += n;
        }
        // Validate every segment before touching the image.
        let mut segments = Vec::with_capacity(raw.len() / SEGMENT_SIZE as usize);
        for seg in raw.chunks_exact(SEGMENT_SIZE as usize) {
            let mut b8 = [0u8; 8];
            b8.copy_from_slice(&seg[0..8]);
            let sector = u64::from_le_bytes(b8);
            let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            if (discard && flags != 0) || flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                return Err(Failure::Unsupported(kind));
            }
            if sectors > max_sectors {
                return Err(Failure::Invalid("segment exceeds the sector limit"));
            }
            let end = sector.checked_add(u64::from(sectors));
            if !end.is_some_and(|end| end <= self.image.sectors()) {
                return Err(Failure::Invalid("segment past the end of the image"));
            }
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            segments.push((
                sector * SECTOR_SIZE,
                u64::from(sectors) * SECTOR_SIZE,
                unmap,
            ));
        }
        for (offset, len, unmap) in segments {
            let result = if discard {
                self.image.discard(offset, len)
            } else {
                self.image.write_zeroes(offset, len, unmap)
            };
            result.map_err(Failure::Image)?;
        }
        Ok(())
    }
}

/// Checks that every data buffer lies in guest memory with `access`.
fn check_guest<G: GuestMemory + ?Sized>(
    mem: &G,
    data: &[Segment],
    access: Permissions,
) -> Result<(), Failure> {
    for d in data {
        if !mem.check_range(d.addr, d.len as usize, access) {
            return Err(Failure::GuestMemory(d.addr));
        }
    }
    Ok(())
}

/// Walks `data` in pieces of at most `CHUNK` bytes through one bounce
/// buffer, calling `copy` with the piece, its guest address and the image
/// offset it pairs with; the image offset starts at `offset`.
fn by_chunks(
    data: &[Segment],
    mut offset: u64,
    len: u64,
    mut copy: impl FnMut(&mut [u8], GuestAddress, u64) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    for d in data {
        let mut done = 0usize;
        while done < d.len as usize {
            let n = (d.len as usize - done).min(CHUNK);
            copy(&mut buf[..n], guest_offset(d.addr, done)?, offset)?;
            offset += n as u64;
            done += n;
        }
    }
    Ok(())
}

fn guest_offset(addr: GuestAddress, offset: usize) -> Result<GuestAddress, Failure> {
    addr.checked_add(offset as u64)
        .ok_or(Failure::GuestMemory(addr))
}
