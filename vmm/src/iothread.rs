//! IoThreads: named threads (`iothread-<id>`) each running an epoll loop.
//! Devices attach a handler to a file descriptor (a queue's ioeventfd, a
//! backend completion fd); the handler runs on the iothread whenever the fd
//! is readable, so queue processing never touches a vCPU or the main
//! thread. Several devices may share one iothread; a multi-queue device may
//! spread its queues over several.
//!
//! Handlers must not block for long: they hold up every other fd of the
//! same iothread.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use epoll::{ControlOptions, Event, Events};
use vmm_sys_util::eventfd::EventFd;

/// Called with the fd's readiness; usually reads the eventfd and works.
pub type Handler = Box<dyn FnMut() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    #[error("cannot create the epoll instance for iothread {0:?}")]
    Epoll(String, #[source] std::io::Error),
    #[error("cannot watch fd {fd} on iothread {name:?}")]
    Watch {
        name: String,
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start iothread {0:?}")]
    Spawn(String, #[source] std::io::Error),
}

/// Token of an attached handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(u64);

const STOP: u64 = 0;

struct Shared {
    name: String,
    epoll: OwnedFd,
    handlers: Mutex<HashMap<u64, (RawFd, Handler)>>,
    next: AtomicU64,
    stop: EventFd,
    stopping: AtomicBool,
    /// Handler runs, for tests and statistics.
    runs: AtomicU64,
}

pub struct IoThread {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl IoThread {
    pub fn new(id: &str) -> Result<Arc<IoThread>, IoThreadError> {
        let name = format!("iothread-{id}");
        let epfd = epoll::create(true).map_err(|e| IoThreadError::Epoll(name.clone(), e))?;
        // SAFETY: epoll::create returned a new descriptor we now own.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| IoThreadError::Epoll(name.clone(), e))?;
        epoll::ctl(
            epoll.as_raw_fd(),
            ControlOptions::EPOLL_CTL_ADD,
            stop.as_raw_fd(),
            Event::new(Events::EPOLLIN, STOP),
        )
        .map_err(|source| IoThreadError::Watch {
            name: name.clone(),
            fd: stop.as_raw_fd(),
            source,
        })?;
        let shared = Arc::new(Shared {
            name: name.clone(),
            epoll,
            handlers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            stop,
            stopping: AtomicBool::new(false),
            runs: AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(&s2))
            .map_err(|e| IoThreadError::Spawn(name, e))?;
        Ok(Arc::new(IoThread {
            shared,
            handle: Mutex::new(Some(handle)),
        }))
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many times handlers ran.
    pub fn runs(&self) -> u64 {
        self.shared.runs.load(Ordering::Relaxed)
    }

    fn handlers(&self) -> MutexGuard<'_, HashMap<u64, (RawFd, Handler)>> {
        self.shared
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `handler` on this thread whenever `fd` is readable. The fd must
    /// stay open until the handler is removed.
    pub fn attach(&self, fd: RawFd, handler: Handler) -> Result<Token, IoThreadError> {
        let token = self.shared.next.fetch_add(1, Ordering::Relaxed);
        self.handlers().insert(token, (fd, handler));
        let r = epoll::ctl(
            self.shared.epoll.as_raw_fd(),
            ControlOptions::EPOLL_CTL_ADD,
            fd,
            Event::new(Events::EPOLLIN, token),
        );
        if let Err(source) = r {
            self.handlers().remove(&token);
            return Err(IoThreadError::Watch {
                name: self.shared.name.clone(),
                fd,
                source,
            });
        }
        Ok(Token(token))
    }

    /// Stops watching; when this returns the handler is not running and
    /// will not run again.
    pub fn detach(&self, t: Token) {
        // Taking the handler map waits out a handler that is running.
        let removed = self.handlers().remove(&t.0);
        if let Some((fd, _)) = removed {
            let _ = epoll::ctl(
                self.shared.epoll.as_raw_fd(),
                ControlOptions::EPOLL_CTL_DEL,
                fd,
                Event::new(Events::empty(), 0),
            );
        }
    }

    /// Ends the loop and joins the thread.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.shared.stop.write(1);
        let h = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = h {
            if h.join().is_err() {
                log::error!("{} panicked", self.shared.name);
            }
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(s: &Shared) {
    let mut events = vec![Event::new(Events::empty(), 0); 32];
    while !s.stopping.load(Ordering::SeqCst) {
        let n = match epoll::wait(s.epoll.as_raw_fd(), -1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{}: epoll_wait: {e}", s.name);
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data;
            if token == STOP {
                continue;
            }
            let mut handlers = s.handlers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, h)) = handlers.get_mut(&token) {
                h();
                s.runs.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn handlers_run_on_the_named_thread_and_stop_after_detach() {
        let t = IoThread::new("io0").unwrap();
        let (tx, rx) = mpsc::channel();
        let a = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let b = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut tokens = Vec::new();
        for (name, fd) in [("a", a.clone()), ("b", b.clone())] {
            let tx = tx.clone();
            let fd2 = fd.clone();
            tokens.push(
                t.attach(
                    fd.as_raw_fd(),
                    Box::new(move || {
                        let n = fd2.read().unwrap_or(0);
                        let thread = std::thread::current().name().unwrap_or("").to_string();
                        tx.send((name, n, thread)).unwrap();
                    }),
                )
                .unwrap(),
            );
        }
        a.write(3).unwrap();
        let (name, n, thread) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((name, n, thread.as_str()), ("a", 3, "iothread-io0"));
        b.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().0, "b");
        t.detach(tokens[0]);
        a.write(1).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "detached"
        );
        assert_eq!(t.runs(), 2);
        t.stop();
    }
}
