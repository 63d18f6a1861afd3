//! Inflight tracking (INFLIGHT_SHMFD) on the wire. No backend installed
//! here offers it (qemu-storage-daemon 7.2 stopped offering it, ours is
//! built on vhost-user-backend, which refuses it), so the backend is a
//! scripted one over a real socket: it answers the handshake, records
//! every request in order, and gives GET_INFLIGHT_FD the reply a test
//! chooses, good or bad.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vmm_vhost::frontend::{VringSetup, F_VERSION_1};
use vmm_vhost::{BackendConn, FrontendError, InflightError, InflightSlot};

const T: Duration = Duration::from_secs(10);

const GET_FEATURES: u32 = 1;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_KICK: u32 = 12;
const GET_PROTOCOL_FEATURES: u32 = 15;
const GET_QUEUE_NUM: u32 = 17;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;

const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// MQ, REPLY_ACK and INFLIGHT_SHMFD.
const PROTOCOL: u64 = 1 << 0 | 1 << 3 | 1 << 12;
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// What the scripted backend answers GET_INFLIGHT_FD with.
#[derive(Clone, Copy)]
enum Reply {
    /// A memfd of this many bytes, zeroed.
    Region(u64),
    /// This size with a memfd of 4 KiB.
    Claims(u64),
    /// This size and no file.
    NoFile(u64),
}

/// A request as the backend saw it: its code, and for SET_INFLIGHT_FD the
/// message and the file.
struct Seen {
    code: u32,
    inflight: Option<([u64; 2], [u16; 2], File)>,
}

#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    /// The files the backend gave out.
    given: Vec<File>,
}

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"scripted-inflight".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

fn send(s: &UnixStream, code: u32, body: &[u8], fd: Option<&File>) {
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(&code.to_le_bytes());
    msg.extend_from_slice(&(1 | REPLY).to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
    s.send_with_fds(&[&msg[..]], &fds).unwrap();
}

/// Serves one connection until the frontend hangs up.
fn serve(s: UnixStream, reply: Reply, log: Arc<Mutex<Log>>) {
    loop {
        let mut hdr = [0u8; 12];
        let (n, file) = match s.recv_with_fd(&mut hdr) {
            Ok((n, f)) if n == 12 => (n, f),
            _ => return,
        };
        assert_eq!(n, 12);
        let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
        let (code, flags, size) = (word(0), word(1), word(2));
        let mut body = vec![0u8; size as usize];
        if (&s).read_exact(&mut body).is_err() {
            return;
        }
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(body[i..i + 2].try_into().unwrap());
        // Recorded before the answer, so a frontend that has its answer
        // finds the request in the log.
        let inflight = (code == SET_INFLIGHT_FD).then(|| {
            let f = file.expect("SET_INFLIGHT_FD carries a file");
            ([u64_at(0), u64_at(8)], [u16_at(16), u16_at(18)], f)
        });
        log.lock().unwrap().seen.push(Seen { code, inflight });
        let answered = match code {
            GET_FEATURES => {
                send(
                    &s,
                    code,
                    &(F_VERSION_1 | PROTOCOL_FEATURES).to_le_bytes(),
                    None,
                );
                true
            }
            GET_PROTOCOL_FEATURES => {
                send(&s, code, &PROTOCOL.to_le_bytes(), None);
                true
            }
            GET_QUEUE_NUM => {
                send(&s, code, &2u64.to_le_bytes(), None);
                true
            }
            GET_INFLIGHT_FD => {
                let (size, file) = match reply {
                    Reply::Region(n) => (n, Some(memfd(n))),
                    Reply::Claims(n) => (n, Some(memfd(4096))),
                    Reply::NoFile(n) => (n, None),
                };
                let mut b = body.clone();
                b[0..8].copy_from_slice(&size.to_le_bytes());
                b[8..16].copy_from_slice(&0u64.to_le_bytes());
                send(&s, code, &b, file.as_ref());
                log.lock().unwrap().given.extend(file);
                true
            }
            _ => false,
        };
        if !answered && flags & NEED_REPLY != 0 {
            send(&s, code, &0u64.to_le_bytes(), None);
        }
    }
}

/// A scripted backend listening at a fresh socket; each connection served
/// on its own thread.
fn backend(name: &str, reply: Reply) -> (PathBuf, Arc<Mutex<Log>>) {
    let dir = std::env::temp_dir().join(format!("vmm-inflight-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let l = log.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let l = l.clone();
            std::thread::spawn(move || serve(s, reply, l));
        }
    });
    (sock, log)
}

fn codes(log: &Mutex<Log>) -> Vec<u32> {
    log.lock().unwrap().seen.iter().map(|s| s.code).collect()
}

fn start(conn: &BackendConn, kick: &EventFd, call: &EventFd) -> Result<(), FrontendError> {
    conn.start_vring(&VringSetup {
        index: 0,
        size: 128,
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
        base: 0,
        kick,
        call,
    })
}

/// Waits for the backend to record `n` requests (replies can come before
/// the record).
fn settle(log: &Mutex<Log>, n: usize) {
    let until = std::time::Instant::now() + T;
    while log.lock().unwrap().seen.len() < n && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connect(sock: &Path) -> BackendConn {
    let conn = BackendConn::connect(sock, 2, T).expect("the scripted backend answers");
    assert!(
        conn.tracks_inflight(),
        "INFLIGHT_SHMFD is negotiated when offered"
    );
    conn.set_features(F_VERSION_1).expect("SET_FEATURES");
    conn
}

#[test]
fn the_region_reaches_the_backend_before_any_ring_and_again_after_a_reconnect() {
    let region = 2 * 2112; // libvhost-user's size for 2 queues of 128
    let (sock, log) = backend("order", Reply::Region(region));
    let conn = connect(&sock);
    let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());

    // Without the region no ring starts, and nothing reaches the backend.
    let before = codes(&log).len();
    assert!(matches!(
        start(&conn, &kick, &call),
        Err(FrontendError::NoInflight(0))
    ));
    let inflight = conn.get_inflight(2, 128).expect("GET_INFLIGHT_FD");
    assert_eq!(inflight.size(), region);
    conn.set_inflight(&inflight).expect("SET_INFLIGHT_FD");
    start(&conn, &kick, &call).expect("the ring starts after SET_INFLIGHT_FD");
    settle(&log, before + 8);
    let seen = codes(&log);
    assert_eq!(
        seen[before..before + 3],
        [GET_INFLIGHT_FD, SET_INFLIGHT_FD, SET_VRING_NUM],
        "nothing between the failed start and GET_INFLIGHT_FD: {seen:?}"
    );
    let kick_at = seen.iter().position(|&c| c == SET_VRING_KICK).unwrap();
    assert!(kick_at > before + 1, "{seen:?}");

    // The backend got the file it gave, with what GET asked for.
    {
        let l = log.lock().unwrap();
        let set = l.seen.iter().find_map(|s| s.inflight.as_ref()).unwrap();
        assert_eq!(set.0, [region, 0]);
        assert_eq!(set.1, [2, 128]);
        assert_eq!(
            set.2.metadata().unwrap().ino(),
            l.given[0].metadata().unwrap().ino(),
            "SET_INFLIGHT_FD hands back GET_INFLIGHT_FD's memfd"
        );
        // The backend marks a request of queue 1 in flight (version 1,
        // 128 descriptors, head 7) and dies.
        let q1 = region / 2;
        l.given[0]
            .write_all_at(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 128, 0], q1)
            .unwrap();
        l.given[0].write_all_at(&[1], q1 + 16 + 7 * 16).unwrap();
    }
    assert_eq!(inflight.pending(1, 0), Ok(1));

    // A new connection (the restarted backend) needs the region again
    // before its rings, and gets the same one, marks and all.
    conn.reconnect(T).expect("reconnect");
    conn.set_features(F_VERSION_1).expect("SET_FEATURES");
    assert!(matches!(
        start(&conn, &kick, &call),
        Err(FrontendError::NoInflight(0))
    ));
    conn.set_inflight(&inflight).expect("SET_INFLIGHT_FD again");
    start(&conn, &kick, &call).expect("the ring starts");
    let l = log.lock().unwrap();
    let sets: Vec<_> = l.seen.iter().filter_map(|s| s.inflight.as_ref()).collect();
    assert_eq!(sets.len(), 2, "one SET_INFLIGHT_FD per connection");
    assert_eq!(
        sets[1].2.metadata().unwrap().ino(),
        l.given[0].metadata().unwrap().ino()
    );
    assert_eq!(l.given.len(), 1, "GET_INFLIGHT_FD once for the device");
    let mut mark = [0u8];
    sets[1]
        .2
        .read_exact_at(&mut mark, region / 2 + 16 + 7 * 16)
        .unwrap();
    assert_eq!(
        mark,
        [1],
        "the restarted backend sees the request in flight"
    );
}

#[test]
fn bad_inflight_replies_are_errors() {
    let cases = [
        ("empty", Reply::Region(0)),
        ("short", Reply::Claims(8192)),
        ("huge", Reply::Claims(1 << 40)),
        ("nofile", Reply::NoFile(4224)),
        ("nothing", Reply::NoFile(0)),
    ];
    for (name, reply) in cases {
        let (sock, _log) = backend(name, reply);
        let conn = connect(&sock);
        let e = conn.get_inflight(2, 128).unwrap_err();
        let want = match name {
            "empty" => matches!(e, FrontendError::Inflight(InflightError::Empty)),
            "short" => matches!(e, FrontendError::Inflight(InflightError::Short { .. })),
            "huge" => matches!(e, FrontendError::Inflight(InflightError::TooLarge { .. })),
            _ => matches!(
                e,
                FrontendError::Backend {
                    what: "GET_INFLIGHT_FD",
                    ..
                }
            ),
        };
        assert!(want, "{name}: {e:?}");
    }
}

#[test]
fn a_device_keeps_one_region_until_it_is_reset() {
    let (sock, log) = backend("slot", Reply::Region(4224));
    let conn = connect(&sock);
    let mut slot = InflightSlot::new(2, 128);
    let ino = |f: &File| f.metadata().unwrap().ino();

    // The driver starts the device: GET, then SET of that region.
    assert!(slot.hand_over(&conn).unwrap().is_some());
    // The backend restarts: the same region again, no new GET.
    conn.reconnect(T).expect("reconnect");
    assert!(slot.hand_over(&conn).unwrap().is_some());
    {
        let l = log.lock().unwrap();
        assert_eq!(l.given.len(), 1, "one GET_INFLIGHT_FD: {:?}", codes(&log));
        let sets: Vec<_> = l.seen.iter().filter_map(|s| s.inflight.as_ref()).collect();
        assert_eq!(sets.len(), 2);
        assert!(sets.iter().all(|s| ino(&s.2) == ino(&l.given[0])));
    }

    // A reset: the next start asks for a fresh region and hands that one.
    slot.clear();
    assert!(slot.region().is_none());
    assert!(slot.hand_over(&conn).unwrap().is_some());
    let l = log.lock().unwrap();
    assert_eq!(l.given.len(), 2, "a fresh GET_INFLIGHT_FD after the reset");
    let last = l
        .seen
        .iter()
        .rev()
        .find_map(|s| s.inflight.as_ref())
        .unwrap();
    assert_eq!(ino(&last.2), ino(&l.given[1]));
    assert_ne!(ino(&l.given[0]), ino(&l.given[1]));
}

#[test]
fn a_backend_without_inflight_tracking_gets_no_region() {
    let dir = std::env::temp_dir().join(format!("vmm-inflight-ours-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (image, sock) = (dir.join("disk.raw"), dir.join("s.sock"));
    File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let mut daemon = std::process::Command::new(testkit::process::binary("vhost-user-blk"))
        .args(["--socket", sock.to_str().unwrap()])
        .args(["--image", image.to_str().unwrap()])
        .spawn()
        .expect("the vhost-user-blk binary");
    let conn = BackendConn::connect(&sock, 2, T).expect("our daemon answers");
    assert!(!conn.tracks_inflight());
    let mut slot = InflightSlot::new(2, 128);
    assert!(slot.hand_over(&conn).unwrap().is_none());
    assert!(slot.region().is_none());
    assert!(matches!(
        conn.get_inflight(2, 128),
        Err(FrontendError::Lacks(_))
    ));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(dir);
}
