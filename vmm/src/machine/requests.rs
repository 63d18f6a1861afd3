//! How devices ask the machine to reset or stop: a device holds a
//! [`Requests`] handle and raises a request; the main loop waits on its
//! eventfd and acts. The first stop request wins; a reset after a stop is
//! ignored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// What the guest (or a device on its behalf) asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Reset the machine and boot again (0xcf9, i8042, triple fault).
    Reset,
    /// Stop with this exit status (ACPI S5 gives 0, the debug-exit port the
    /// value written).
    Stop(u32),
}

const NONE: u64 = 0;
const RESET: u64 = 1;
const STOP: u64 = 2;

struct Inner {
    /// NONE, RESET, or STOP | status << 8.
    pending: AtomicU64,
    fd: EventFd,
}

fn decode(w: u64) -> Option<Request> {
    match w & 0xff {
        RESET => Some(Request::Reset),
        STOP => Some(Request::Stop((w >> 8) as u32)),
        _ => None,
    }
}

/// A cloneable handle for raising requests.
#[derive(Clone)]
pub struct Requests(Arc<Inner>);

impl Requests {
    pub fn new() -> std::io::Result<Self> {
        Ok(Requests(Arc::new(Inner {
            pending: AtomicU64::new(NONE),
            fd: EventFd::new(libc::EFD_NONBLOCK)?,
        })))
    }

    pub fn raise(&self, r: Request) {
        let word = match r {
            Request::Reset => RESET,
            Request::Stop(status) => STOP | (u64::from(status) << 8),
        };
        let p = &self.0.pending;
        let mut cur = p.load(Ordering::Acquire);
        loop {
            if cur & 0xff == STOP {
                return; // a stop is final
            }
            if r == Request::Reset && cur == RESET {
                return;
            }
            match p.compare_exchange(cur, word, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        log::debug!("machine request: {r:?}");
        if let Err(e) = self.0.fd.write(1) {
            log::error!("cannot signal machine request {r:?}: {e}");
        }
    }

    /// Takes the pending request, if any.
    pub fn take(&self) -> Option<Request> {
        decode(self.0.pending.swap(NONE, Ordering::AcqRel))
    }

    /// The pending request, left pending.
    pub fn pending(&self) -> Option<Request> {
        decode(self.0.pending.load(Ordering::Acquire))
    }

    /// Readable when a request was raised (for epoll in the main loop).
    pub fn eventfd(&self) -> &EventFd {
        &self.0.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wins_over_reset_and_carries_its_status() {
        let r = Requests::new().unwrap();
        assert_eq!(r.take(), None);
        r.raise(Request::Reset);
        r.raise(Request::Stop(3));
        r.raise(Request::Reset);
        assert_eq!(r.take(), Some(Request::Stop(3)));
        assert_eq!(r.take(), None);
        r.raise(Request::Reset);
        assert_eq!(r.take(), Some(Request::Reset));
        assert!(r.eventfd().read().unwrap() >= 1);
    }
}
