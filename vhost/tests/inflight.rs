//! Inflight tracking (INFLIGHT_SHMFD) on the wire. Mostly against
//! testkit's scripted backend over a real socket: it answers the
//! handshake, records every request in order, and gives GET_INFLIGHT_FD
//! the reply a test chooses, good or bad. Our daemon offers the feature
//! (its region is checked at the end); qemu-storage-daemon 7.2 stopped
//! offering it and stands for a backend without it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use testkit::vhost_script::{
    inode, Reply, ScriptedBackend, GET_INFLIGHT_FD, SET_INFLIGHT_FD, SET_VRING_KICK, SET_VRING_NUM,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_vhost::frontend::{VringSetup, F_VERSION_1};
use vmm_vhost::{BackendConn, FrontendError, InflightError, InflightSlot};

const T: Duration = Duration::from_secs(10);

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
    let b = ScriptedBackend::start("order", Reply::Region(region));
    let conn = connect(b.path());
    let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());

    // Without the region no ring starts, and nothing reaches the backend.
    let before = b.log().seen.len();
    assert!(matches!(
        start(&conn, &kick, &call),
        Err(FrontendError::NoInflight(0))
    ));
    let inflight = conn.get_inflight(2, 128).expect("GET_INFLIGHT_FD");
    assert_eq!(inflight.size(), region);
    conn.set_inflight(&inflight).expect("SET_INFLIGHT_FD");
    start(&conn, &kick, &call).expect("the ring starts after SET_INFLIGHT_FD");
    let seen = b.log().codes();
    assert_eq!(
        seen[before..before + 3],
        [GET_INFLIGHT_FD, SET_INFLIGHT_FD, SET_VRING_NUM],
        "nothing between the failed start and GET_INFLIGHT_FD: {seen:?}"
    );
    assert!(seen[before + 3..].contains(&SET_VRING_KICK), "{seen:?}");

    // The backend got the file it gave, with what GET asked for.
    {
        let l = b.log();
        let set = l.sets()[0];
        assert_eq!(set.inflight(), Some((region, 0, 2, 128)));
        assert_eq!(
            inode(&set.files[0]),
            inode(&l.given[0]),
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
    let l = b.log();
    let sets = l.sets();
    assert_eq!(sets.len(), 2, "one SET_INFLIGHT_FD per connection");
    assert_eq!((sets[0].conn, sets[1].conn), (0, 1));
    assert_eq!(inode(&sets[1].files[0]), inode(&l.given[0]));
    assert_eq!(l.given.len(), 1, "GET_INFLIGHT_FD once for the device");
    let mut mark = [0u8];
    sets[1].files[0]
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
        let b = ScriptedBackend::start(name, reply);
        let conn = connect(b.path());
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
    let b = ScriptedBackend::start("slot", Reply::Region(4224));
    let conn = connect(b.path());
    let mut slot = InflightSlot::new(2, 128);

    // The driver starts the device: GET, then SET of that region.
    assert!(slot.hand_over(&conn).unwrap().is_some());
    // The backend restarts: the same region again, no new GET.
    conn.reconnect(T).expect("reconnect");
    assert!(slot.hand_over(&conn).unwrap().is_some());
    {
        let l = b.log();
        assert_eq!(l.given.len(), 1, "one GET_INFLIGHT_FD: {:?}", l.codes());
        let sets = l.sets();
        assert_eq!(sets.len(), 2);
        assert!(sets
            .iter()
            .all(|s| inode(&s.files[0]) == inode(&l.given[0])));
    }

    // A reset: the next start asks for a fresh region and hands that one.
    slot.clear();
    assert!(slot.region().is_none());
    assert!(slot.hand_over(&conn).unwrap().is_some());
    let l = b.log();
    assert_eq!(l.given.len(), 2, "a fresh GET_INFLIGHT_FD after the reset");
    let last = l.sets().last().map(|s| inode(&s.files[0]));
    assert_eq!(last, Some(inode(&l.given[1])));
    assert_ne!(inode(&l.given[0]), inode(&l.given[1]));
}

/// A spawned daemon, killed when the test ends (or fails).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch(name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("vmm-inflight-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (image, sock) = (dir.join("disk.raw"), dir.join("s.sock"));
    File::create(&image).unwrap().set_len(1 << 20).unwrap();
    (dir, image, sock)
}

fn wait_socket(sock: &Path) {
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < T, "no socket at {}", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_backend_without_inflight_tracking_gets_no_region() {
    let (dir, image, sock) = scratch("qsd");
    let _daemon = Daemon(
        std::process::Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=f,filename={}", image.display()))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues=2",
                sock.display()
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (.ci/run installs it)"),
    );
    wait_socket(&sock);
    let conn = BackendConn::connect(&sock, 2, T).expect("qemu-storage-daemon answers");
    assert!(!conn.tracks_inflight());
    let mut slot = InflightSlot::new(2, 128);
    assert!(slot.hand_over(&conn).unwrap().is_none());
    assert!(slot.region().is_none());
    assert!(matches!(
        conn.get_inflight(2, 128),
        Err(FrontendError::Lacks(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// Our daemon offers INFLIGHT_SHMFD: the slot asks it for a region (two
/// queues of 128: a 16-byte header and 16 bytes a descriptor each, 64-byte
/// aligned), hands it back, and the region shows nothing in flight.
#[test]
fn our_daemon_gives_a_region_and_takes_it_back() {
    let (dir, image, sock) = scratch("ours");
    let _daemon = Daemon(
        std::process::Command::new(testkit::process::binary("vhost-user-blk"))
            .args(["--socket", sock.to_str().unwrap()])
            .args(["--image", image.to_str().unwrap()])
            .args(["--num-queues", "2"])
            .spawn()
            .expect("the vhost-user-blk binary"),
    );
    wait_socket(&sock);
    let conn = BackendConn::connect(&sock, 2, T).expect("our daemon answers");
    assert!(conn.tracks_inflight());
    let mut slot = InflightSlot::new(2, 128);
    let region = slot
        .hand_over(&conn)
        .expect("GET_INFLIGHT_FD and SET_INFLIGHT_FD")
        .expect("a region");
    assert_eq!(region.size(), 2 * 2112);
    assert_eq!(region.pending(0, 0), Ok(0));
    assert_eq!(region.pending(1, 0), Ok(0));
    let _ = std::fs::remove_dir_all(dir);
}
