//! The QMP socket: a unix socket (mode 0600 from its creation on) served
//! by a `qmp` thread, one client at a time; the next one is accepted when
//! the first leaves. Each client gets a writer thread that sends replies
//! and events in order, so emitting an event never waits for a client.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::dispatch::{After, Session};
use super::events::{Events, Out};
use super::splitter::Splitter;
use super::{query, Control};

#[derive(Debug, thiserror::Error)]
pub enum QmpServerError {
    #[error("--qmp {0}: exists and is not a socket")]
    NotSocket(PathBuf),
    #[error("--qmp {0}: path longer than 107 bytes")]
    PathTooLong(PathBuf),
    #[error("--qmp {0}: cannot {1}")]
    Socket(PathBuf, &'static str, #[source] std::io::Error),
    #[error("cannot start the qmp thread")]
    Spawn(#[source] std::io::Error),
}

type Current = Arc<Mutex<Option<SyncSender<Out>>>>;

/// Replies and events queued for one client: when the client stops
/// reading, the reader stops reading its commands (as QEMU does).
const QUEUE: usize = 256;

/// A running QMP server; dropping it removes the socket file.
pub struct QmpServer {
    path: PathBuf,
    current: Current,
}

impl QmpServer {
    /// Listens on `path` (replacing a stale socket there) and serves
    /// clients on a thread of its own.
    pub fn start(
        path: &Path,
        control: Arc<dyn Control>,
        events: Events,
    ) -> Result<QmpServer, QmpServerError> {
        let listener = listen(path)?;
        let current: Current = Arc::default();
        let cur = current.clone();
        thread::Builder::new()
            .name("qmp".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(s) => serve(s, control.as_ref(), &events, &cur),
                        Err(e) => {
                            log::warn!("qmp: accept failed: {e}");
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(QmpServerError::Spawn)?;
        log::info!("qmp: listening on {}", path.display());
        Ok(QmpServer {
            path: path.to_path_buf(),
            current,
        })
    }

    /// Waits (up to `timeout`) until the client has been sent everything
    /// queued for it so far: the last events before the process exits.
    pub fn finish(&self, timeout: Duration) {
        let tx = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(tx) = tx {
            let (ack, done) = mpsc::sync_channel(1);
            if tx.try_send(Out::Flush(ack)).is_ok() {
                let _ = done.recv_timeout(timeout);
            }
        }
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn flush(tx: &SyncSender<Out>, timeout: Duration) {
    let (ack, done) = mpsc::sync_channel(1);
    if tx.send(Out::Flush(ack)).is_ok() {
        let _ = done.recv_timeout(timeout);
    }
}

fn listen(path: &Path) -> Result<UnixListener, QmpServerError> {
    let err = |what, e| QmpServerError::Socket(path.to_path_buf(), what, e);
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| err("remove the stale socket", e))?
        }
        Ok(_) => return Err(QmpServerError::NotSocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("look at the path", e)),
    }
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(QmpServerError::PathTooLong(path.to_path_buf()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("create a socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The mode of an unbound socket's inode becomes the file's mode at
    // bind (less the umask): 0600 from the start, whatever other threads
    // do with the process umask.
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } < 0 {
        return Err(err("chmod the socket", std::io::Error::last_os_error()));
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un of `len` bytes.
    let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) };
    if r < 0 {
        return Err(err("bind", std::io::Error::last_os_error()));
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 4) } < 0 {
        return Err(err("listen", std::io::Error::last_os_error()));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("chmod the socket file", e))?;
    Ok(UnixListener::from(fd))
}

/// Writes lines to the client until every sender is gone; after a write
/// error it only answers flushes.
fn writer(mut stream: UnixStream, rx: mpsc::Receiver<Out>) {
    let mut ok = true;
    for out in rx {
        match out {
            Out::Line(l) if ok => {
                let r = stream
                    .write_all(l.as_bytes())
                    .and_then(|()| stream.write_all(b"\r\n"));
                if let Err(e) = r {
                    log::info!("qmp: client write failed: {e}");
                    ok = false;
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
            Out::Line(_) => {}
            Out::Flush(ack) => {
                let _ = ack.try_send(());
            }
        }
    }
}

fn serve(mut stream: UnixStream, ctl: &dyn Control, events: &Events, current: &Current) {
    log::info!("qmp: client connected");
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let w = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("qmp: cannot clone the client socket: {e}");
            return;
        }
    };
    let _ = w.set_write_timeout(Some(Duration::from_secs(10)));
    let writer = match thread::Builder::new()
        .name("qmp-writer".into())
        .spawn(move || writer(w, rx))
    {
        Ok(h) => h,
        Err(e) => {
            log::warn!("qmp: cannot start the writer thread: {e}");
            return;
        }
    };
    *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
    let greeting = serde_json::json!({"QMP": {"version": query::version(), "capabilities": []}});
    let _ = tx.send(Out::Line(greeting.to_string()));
    let mut session = Session::new();
    let mut splitter = Splitter::new();
    let mut subscription = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::info!("qmp: client read failed: {e}");
                break;
            }
        };
        for item in splitter.feed(&buf[..n]) {
            let (reply, after) = session.handle_item(ctl, item);
            let _ = tx.send(Out::Line(reply.to_string()));
            match after {
                After::Nothing => {}
                After::Negotiated => subscription = Some(events.subscribe(tx.clone())),
                After::Quit => {
                    flush(&tx, Duration::from_secs(2));
                    ctl.quit();
                }
            }
        }
    }
    if let Some(id) = subscription {
        events.unsubscribe(id);
    }
    *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    drop(tx);
    let _ = writer.join();
    log::info!("qmp: client left");
}
