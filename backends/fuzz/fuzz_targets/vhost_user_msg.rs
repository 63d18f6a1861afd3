//! Arbitrary bytes as a vhost-user frontend's messages to the daemon.
//!
//! The daemon's own accept loop (`vhost_user_blk::serve`: a fresh
//! `BlkBackend` and request handler per connection, one shared engine)
//! runs once per process on a socket in a temp dir. Each input is one
//! connection: its bytes are sent, the write side is shut and the daemon
//! must hang up within `DEADLINE` (an error is fine). Then a fresh,
//! well-behaved connection must still get an answer to GET_FEATURES, with
//! no more fds open than after the first input.
//!
//! Run with `-detect_leaks=0`: the daemon tears connections down on its own
//! threads, after the input returns, and LeakSanitizer then reports the
//! spawn allocations of workers that are still exiting (not reproducible
//! when run again). Leaks per connection show up as fds instead.
//!
//! Input: byte 0 bit 0 clear sends the rest raw. Set, the rest is a list of
//! framed messages, each:
//! - byte: request code (below 0xc0: modulo 48, else a u32 follows);
//! - byte: bit 3 NEED_REPLY, bits 4-5 how many fds go along (memfds of
//!   `MEMFD_SIZE` for the codes that map memory, eventfds otherwise),
//!   bit 6 a u32 header size follows (else the payload length),
//!   bit 7 u32 header flags follow (else version 1);
//! - byte: payload length, then the payload.

#![no_main]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;
use vmm_backends::block::ImageOptions;
use vmm_backends::vhost_user_blk::{open_engine, serve, ServerOptions};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// How long the daemon may take to hang up or to answer.
const DEADLINE: Duration = Duration::from_secs(5);
const IMAGE_SIZE: u64 = 64 * 1024;
const MEMFD_SIZE: u64 = 64 * 1024;
/// Requests whose fds are mapped: SET_MEM_TABLE, SET_LOG_BASE,
/// SET_INFLIGHT_FD, ADD_MEM_REG, SET_DEVICE_STATE_FD.
const MEMFD_CODES: [u32; 5] = [5, 6, 32, 37, 42];
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Open fds while a fresh connection is being answered (first input).
static FDS: OnceLock<usize> = OnceLock::new();

struct Daemon {
    socket: PathBuf,
    /// The image the engine serves (already unlinked), to check its size.
    image: File,
}

fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        // SAFETY: ignoring SIGPIPE changes no memory; writes to a socket
        // the daemon closed then fail with EPIPE instead of killing the
        // process (libFuzzer's C main does not do what Rust's main does).
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!("vhost-user-msg-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzz temp dir");
        let image_path = dir.join("disk.img");
        let pattern: Vec<u8> = (0..IMAGE_SIZE).map(|i| (i % 251) as u8).collect();
        std::fs::write(&image_path, pattern).expect("writing the fuzz image");
        let options = ServerOptions {
            socket: dir.join("blk.sock"),
            image: image_path.clone(),
            image_options: ImageOptions {
                read_only: false,
                direct: false,
                serial: "fuzz".into(),
            },
            num_queues: 2,
            queue_size: 16,
            max_mem_slots: 8,
        };
        let _ = std::fs::remove_file(&options.socket);
        let engine = open_engine(&options).expect("opening the fuzz image");
        let image = File::open(&image_path).expect("reopening the fuzz image");
        let _ = std::fs::remove_file(&image_path);
        let socket = options.socket.clone();
        std::thread::spawn(move || {
            let result = serve(&options, engine);
            panic!("the daemon's accept loop ended: {result:?}");
        });
        // The socket file exists a moment before the daemon listens on it.
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(start.elapsed() < DEADLINE, "the daemon never listened");
            std::thread::sleep(Duration::from_millis(1));
        }
        Daemon { socket, image }
    })
}

/// Open fds but pipes: libFuzzer's symbolizer (for NEW_FUNC lines) talks
/// to its helper process over two pipes it opens on first use; the daemon
/// makes no pipes.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|t| !t.to_string_lossy().starts_with("pipe:"))
                .unwrap_or(false)
        })
        .count()
}

/// What each open fd is, for a failure message.
fn fd_list() -> String {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        out.push(format!(
            "{}->{}",
            entry.file_name().to_string_lossy(),
            target.display()
        ));
    }
    out.sort();
    out.join(" ")
}

fn memfd() -> OwnedFd {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create takes
    // no other pointers.
    let fd = unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEMFD_SIZE).expect("sizing the guest memfd");
    file.into()
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends the input as framed messages; stops at the first refused send
/// (the daemon may hang up on a bad message).
fn send_framed(stream: &UnixStream, u: &mut Unstructured) {
    while !u.is_empty() {
        let b0: u8 = u.arbitrary().unwrap_or(0);
        let code = if b0 < 0xc0 {
            u32::from(b0 % 48)
        } else {
            u.arbitrary().unwrap_or(0)
        };
        let b1: u8 = u.arbitrary().unwrap_or(0);
        let flags = if b1 & 0x80 != 0 {
            u.arbitrary().unwrap_or(0)
        } else {
            0x1 | u32::from(b1 & 0x8)
        };
        let size_field: Option<u32> = if b1 & 0x40 != 0 {
            Some(u.arbitrary().unwrap_or(0))
        } else {
            None
        };
        let len = usize::from(u.arbitrary::<u8>().unwrap_or(0)).min(u.len());
        let payload = u.bytes(len).unwrap_or(&[]);
        let size = size_field.unwrap_or(payload.len() as u32);
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(payload);
        let fds: Vec<OwnedFd> = (0..(b1 >> 4) & 3)
            .map(|_| {
                if MEMFD_CODES.contains(&code) {
                    memfd()
                } else {
                    eventfd()
                }
            })
            .collect();
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if stream.send_with_fds(&[&msg[..]], &raw).is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let d = daemon();
    let mut stream = UnixStream::connect(&d.socket).expect("connecting to the daemon");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut u = Unstructured::new(data);
    let mode: u8 = u.arbitrary().unwrap_or(0);
    if mode & 1 == 0 {
        let _ = stream.write_all(u.take_rest());
    } else {
        send_framed(&stream, &mut u);
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Drain the replies until the daemon hangs up.
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the daemon neither hung up nor answered within {DEADLINE:?}")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(stream);

    // The next, well-behaved frontend is still served.
    let fresh = UnixStream::connect(&d.socket).expect("connecting again after the fuzz input");
    fresh.set_read_timeout(Some(DEADLINE)).unwrap();
    fresh.set_write_timeout(Some(DEADLINE)).unwrap();
    let frontend = Frontend::from_stream(fresh, 2);
    let features = frontend
        .get_features()
        .expect("GET_FEATURES on a fresh connection after the fuzz input");
    assert!(
        features & VIRTIO_F_VERSION_1 != 0,
        "features {features:#x} lack VERSION_1"
    );
    // The daemon serves one frontend at a time and tears a connection
    // down before accepting the next, so while this one is being answered
    // the process holds the same fds every time: more means a leak (fds
    // passed by the input, or the daemon's own per connection).
    let fds = open_fds();
    let first = FDS.get_or_init(|| fds);
    assert!(
        fds == *first,
        "open fds grew from {first} to {fds}: {}",
        fd_list()
    );
    drop(frontend);

    let size = d.image.metadata().expect("fstat of the image").len();
    assert_eq!(size, IMAGE_SIZE, "the image changed size");
});
