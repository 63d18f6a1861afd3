//! A scripted vhost-user backend over a real unix socket, for what a real
//! backend does not do on demand: inflight replies a test chooses
//! (INFLIGHT_SHMFD, good or bad; our daemon offers the feature, QEMU 6.0's
//! qemu-storage-daemon stopped offering it) and bad replies. It answers the
//! handshake, records every request in order with the file it carried, and
//! gives GET_INFLIGHT_FD the reply the test chose. It serves every
//! connection on its own thread, and can hang up on them all, as a backend
//! that dies.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const GET_FEATURES: u32 = 1;
pub const SET_VRING_NUM: u32 = 8;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const GET_QUEUE_NUM: u32 = 17;
pub const GET_CONFIG: u32 = 24;
pub const GET_INFLIGHT_FD: u32 = 31;
pub const SET_INFLIGHT_FD: u32 = 32;

const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// The most files one vhost-user message carries.
const MAX_FILES: usize = 8;
/// VIRTIO_F_VERSION_1 and VHOST_USER_F_PROTOCOL_FEATURES.
const FEATURES: u64 = 1 << 32 | 1 << 30;
/// MQ, REPLY_ACK, CONFIG and INFLIGHT_SHMFD.
const PROTOCOL: u64 = 1 << 0 | 1 << 3 | 1 << 9 | 1 << 12;

/// What the backend answers GET_INFLIGHT_FD with.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// A zeroed memfd of this many bytes.
    Region(u64),
    /// This size with a memfd of 4 KiB.
    Claims(u64),
    /// This size and no file.
    NoFile(u64),
}

/// One request as the backend saw it.
#[derive(Debug)]
pub struct Seen {
    /// Which connection (0 for the first).
    pub conn: usize,
    pub code: u32,
    pub body: Vec<u8>,
    pub files: Vec<File>,
}

impl Seen {
    /// For SET_INFLIGHT_FD: (mmap_size, mmap_offset, num_queues, queue_size).
    pub fn inflight(&self) -> Option<(u64, u64, u16, u16)> {
        if self.code != SET_INFLIGHT_FD || self.body.len() < 20 {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(self.body[i..i + 8].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes([self.body[i], self.body[i + 1]]);
        Some((u64_at(0), u64_at(8), u16_at(16), u16_at(18)))
    }
}

#[derive(Default)]
pub struct Log {
    pub seen: Vec<Seen>,
    /// The inflight files the backend gave out, in order.
    pub given: Vec<File>,
    live: Vec<UnixStream>,
    conns: usize,
}

impl Log {
    pub fn codes(&self) -> Vec<u32> {
        self.seen.iter().map(|s| s.code).collect()
    }

    /// The SET_INFLIGHT_FD requests, in order.
    pub fn sets(&self) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.code == SET_INFLIGHT_FD)
            .collect()
    }
}

pub struct ScriptedBackend {
    pub sock: PathBuf,
    log: Arc<Mutex<Log>>,
}

/// A zeroed memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"scripted-inflight".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("memfd size");
    f
}

/// The inode of `f`, to tell files apart across processes and messages.
pub fn inode(f: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    f.metadata().map(|m| m.ino()).unwrap_or(0)
}

impl ScriptedBackend {
    /// Listens at a fresh socket named after `name`.
    pub fn start(name: &str, reply: Reply) -> ScriptedBackend {
        let dir = std::env::temp_dir().join(format!("vmm-script-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let sock = dir.join("s.sock");
        let listener = UnixListener::bind(&sock).expect("bind the scripted backend");
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let conn = {
                    let mut g = l.lock().unwrap_or_else(|e| e.into_inner());
                    if let Ok(c) = s.try_clone() {
                        g.live.push(c);
                    }
                    g.conns += 1;
                    g.conns - 1
                };
                let l = l.clone();
                std::thread::spawn(move || serve(s, conn, reply, &l));
            }
        });
        ScriptedBackend { sock, log }
    }

    pub fn path(&self) -> &Path {
        &self.sock
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hangs up on every connection, as a backend that died.
    pub fn hang_up(&self) {
        for s in self.log().live.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits up to 10 s until `done` holds for the log.
    pub fn wait_for(&self, done: impl Fn(&Log) -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if done(&self.log()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

fn send(s: &UnixStream, code: u32, body: &[u8], file: Option<&File>) -> bool {
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(&code.to_le_bytes());
    msg.extend_from_slice(&(1 | REPLY).to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    let fds: Vec<RawFd> = file.iter().map(|f| f.as_raw_fd()).collect();
    send_with_fds(s, &msg, &fds)
}

/// sendmsg with SCM_RIGHTS.
fn send_with_fds(s: &UnixStream, data: &[u8], fds: &[RawFd]) -> bool {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes we own, room for one
        // header and `fds`; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    // SAFETY: msg points at live buffers for the call's duration.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    n == data.len() as isize
}

/// recvmsg of exactly a 12-byte header, with the files it carries.
fn recv_header(s: &UnixStream) -> Option<([u8; 12], Vec<File>)> {
    let mut hdr = [0u8; 12];
    let mut iov = libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FILES * 4) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers for the call's duration.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_WAITALL) };
    if n != 12 {
        return None;
    }
    let mut files = Vec::new();
    // SAFETY: the kernel filled msg_control (msg_controllen bytes); the
    // CMSG macros walk only inside it, and each SCM_RIGHTS descriptor is
    // new and ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    files.push(File::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((hdr, files))
}

/// Serves one connection until the frontend hangs up (or the test does).
fn serve(s: UnixStream, conn: usize, reply: Reply, log: &Mutex<Log>) {
    let lock = || log.lock().unwrap_or_else(|e| e.into_inner());
    while let Some((hdr, files)) = recv_header(&s) {
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8));
        let mut body = vec![0u8; size as usize];
        if (&s).read_exact(&mut body).is_err() {
            return;
        }
        // Recorded before the answer: a frontend that has its answer finds
        // the request in the log.
        lock().seen.push(Seen {
            conn,
            code,
            body: body.clone(),
            files,
        });
        let sent = match code {
            GET_FEATURES => send(&s, code, &FEATURES.to_le_bytes(), None),
            GET_PROTOCOL_FEATURES => send(&s, code, &PROTOCOL.to_le_bytes(), None),
            GET_QUEUE_NUM => send(&s, code, &2u64.to_le_bytes(), None),
            // The config space: zeroes, as asked.
            GET_CONFIG => send(&s, code, &body, None),
            // Stopped where it started.
            GET_VRING_BASE => {
                let mut b = body.clone();
                b.resize(8, 0);
                b[4..8].copy_from_slice(&0u32.to_le_bytes());
                send(&s, code, &b, None)
            }
            GET_INFLIGHT_FD if body.len() >= 16 => {
                let (size, file) = match reply {
                    Reply::Region(n) => (n, Some(memfd(n))),
                    Reply::Claims(n) => (n, Some(memfd(4096))),
                    Reply::NoFile(n) => (n, None),
                };
                let mut b = body.clone();
                b[0..8].copy_from_slice(&size.to_le_bytes());
                b[8..16].copy_from_slice(&0u64.to_le_bytes());
                let ok = send(&s, code, &b, file.as_ref());
                lock().given.extend(file);
                ok
            }
            _ if flags & NEED_REPLY != 0 => send(&s, code, &0u64.to_le_bytes(), None),
            _ => true,
        };
        if !sent {
            return;
        }
    }
}
