//! The socket server with a fake machine: socket mode, stale files,
//! garbage and oversize input, one client after another.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::fake::Fake;
use super::{Events, QmpServer, QmpServerError};

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-qmp-{}-{name}", std::process::id()))
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &std::path::Path) -> Client {
        let w = UnixStream::connect(path).expect("connect");
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut c = Client { w, r };
        assert!(c.read()["QMP"]["version"]["qemu"].is_object());
        c
    }
    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
    fn ask(&mut self, msg: &[u8]) -> Value {
        self.w.write_all(msg).unwrap();
        self.read()
    }
}

#[test]
fn the_server_survives_garbage_and_serves_the_next_client() {
    let path = temp("srv.sock");
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let fake = Arc::new(Fake::default());
    let events = Events::new();
    let server = QmpServer::start(&path, fake.clone(), events.clone()).expect("server");
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut c = Client::connect(&path);
    let r = c.ask(br#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(r, serde_json::json!({"return": {}}));
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(100 << 10));
    let r = c.ask(big.as_bytes());
    assert!(r["error"]["desc"].as_str().unwrap().contains("longer than"));
    let r = c.ask(br#"{"execute":"query-status","id":1}"#);
    assert_eq!(r["return"]["status"], "running");
    events.stop();
    assert_eq!(c.read()["event"], "STOP");
    // Pseudo-random bytes, then hang up: the next client is served.
    let mut x = 0x1234_5678_u32;
    let junk: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let _ = c.w.write_all(&junk);
    drop(c);
    let mut c = Client::connect(&path);
    let r = c.ask(br#"{"execute":"query-status"}"#);
    assert_eq!(r["error"]["class"], "CommandNotFound", "a new session");
    c.ask(br#"{"execute":"qmp_capabilities"}"#);
    let r = c.ask(br#"{"execute":"quit","id":"q"}"#);
    assert_eq!(r["id"], "q");
    // The reply is sent first, then the machine is told.
    let mut calls = Vec::new();
    for _ in 0..500 {
        calls = fake.calls();
        if !calls.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(calls, ["quit"], "quit reaches the machine after its reply");
    drop(c);
    drop(server);
    assert!(!path.exists(), "the socket file goes with the server");
}

#[test]
fn a_path_that_is_not_a_socket_is_left_alone() {
    let path = temp("file");
    std::fs::write(&path, b"keep me").unwrap();
    let e = QmpServer::start(&path, Arc::new(Fake::default()), Events::new());
    assert!(matches!(e, Err(QmpServerError::NotSocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    std::fs::remove_file(&path).unwrap();
}
