//! A tiny virtio-blk driver for tests that play the guest against a
//! vhost-user backend: memfd "guest RAM", one split virtqueue laid out by
//! hand, requests of header + data + status, completion by polling the used
//! ring. Addresses are guest-physical from 0.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub const MEM: usize = 4 << 20;
pub const QSIZE: u16 = 16;
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

pub struct GuestRam {
    fd: OwnedFd,
    ptr: *mut u8,
}

// SAFETY: the mapping is plain shared memory owned by this struct; tests
// use it from one thread at a time.
unsafe impl Send for GuestRam {}

impl GuestRam {
    pub fn new() -> GuestRam {
        // SAFETY: memfd_create/ftruncate/mmap with checked results; the
        // mapping lives until drop.
        unsafe {
            let fd = libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, MEM as i64), 0);
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED);
            GuestRam {
                fd: OwnedFd::from_raw_fd(fd),
                ptr: ptr.cast(),
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Host address of guest address `gpa`.
    pub fn host(&self, gpa: u64) -> u64 {
        self.ptr as u64 + gpa
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM);
        // SAFETY: bounds checked; the backend touches only what it is given.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(gpa as usize), data.len())
        }
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa as usize + len <= MEM);
        let mut v = vec![0u8; len];
        // SAFETY: as in write.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(gpa as usize), v.as_mut_ptr(), len) }
        v
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(DESC + u64::from(i) * 16, &d);
    }
}

impl Default for GuestRam {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, no longer used.
        unsafe { libc::munmap(self.ptr.cast(), MEM) };
    }
}

/// One virtio-blk request: avail slot, head descriptor, type (0 IN, 1 OUT,
/// 8 GET_ID...), sector, and the data buffer.
pub struct Req {
    pub slot: u16,
    pub head: u16,
    pub kind: u32,
    pub sector: u64,
    pub data: u64,
    pub len: u32,
}

/// Submits `r` (header, data, status descriptors), writes `kick`, and waits
/// up to `timeout` for the used ring to reach `slot + 1`. Returns the
/// status byte, or None on timeout.
pub fn request(m: &GuestRam, kick: RawFd, r: Req, timeout: Duration) -> Option<u8> {
    let hdr = 0x10000 + u64::from(r.head) * 0x100;
    let status = hdr + 0x80;
    let mut h = Vec::new();
    h.extend_from_slice(&r.kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&r.sector.to_le_bytes());
    m.write(hdr, &h);
    m.write(status, &[0xff]);
    let data_flags = if r.kind == 0 || r.kind == 8 { WRITE } else { 0 };
    m.desc(r.head, hdr, 16, NEXT, r.head + 1);
    m.desc(r.head + 1, r.data, r.len, data_flags | NEXT, r.head + 2);
    m.desc(r.head + 2, status, 1, WRITE, 0);
    m.write(
        AVAIL + 4 + u64::from(r.slot % QSIZE) * 2,
        &r.head.to_le_bytes(),
    );
    m.write(AVAIL + 2, &(r.slot.wrapping_add(1)).to_le_bytes());
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes to an eventfd we were given.
    unsafe { libc::write(kick, one.as_ptr().cast(), 8) };
    let deadline = Instant::now() + timeout;
    loop {
        let used = u16::from_le_bytes(m.read(USED + 2, 2).try_into().ok()?);
        if used == r.slot.wrapping_add(1) {
            return Some(m.read(status, 1)[0]);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
