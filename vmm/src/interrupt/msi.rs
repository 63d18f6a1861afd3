//! MSI (the capability without a table): up to 32 vectors sharing one
//! address, vector `v` sending the message data with its low bits replaced
//! by `v`. Each vector is an MSI route with an irqfd, as for MSI-X: a
//! device raises vector `v` by writing `vector_fd(v)`, and while the vector
//! is disabled or masked its irqfd is unbound, so the write waits in the
//! eventfd's counter until the vector is live again.

use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::routes::{GsiRouter, MsiMessage, RouteError, Routing};
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// The capability's limit on vectors.
pub const MAX_VECTORS: u16 = 32;

/// What the guest programmed in the capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiConfig {
    pub enabled: bool,
    /// Vectors enabled (Multiple Message Enable), a power of two.
    pub vectors: u16,
    pub msg: MsiMessage,
    /// Per-vector mask bits (0 without per-vector masking).
    pub mask: u32,
}

impl MsiConfig {
    /// Whether vector `v` may be delivered.
    pub fn live(&self, v: u16) -> bool {
        self.enabled && v < self.vectors && self.mask & (1 << v) == 0
    }

    /// The message vector `v` sends.
    pub fn message(&self, v: u16) -> MsiMessage {
        let n = u32::from(self.vectors.clamp(1, MAX_VECTORS));
        MsiMessage {
            addr: self.msg.addr,
            data: (self.msg.data & !(n - 1)) | u32::from(v),
        }
    }
}

struct Vector {
    gsi: u32,
    fd: Arc<EventFd>,
}

pub struct MsiVectors<R: Routing> {
    vectors: Vec<Vector>,
    config: Mutex<MsiConfig>,
    router: GsiRouter<R>,
    limit: RateLimit,
}

impl<R: Routing + 'static> MsiVectors<R> {
    /// `count` vectors (1 to 32), each with its route, none live.
    pub fn new(router: GsiRouter<R>, count: u16) -> Result<Arc<Self>, RouteError> {
        let n = count.clamp(1, MAX_VECTORS);
        let mut vectors: Vec<Vector> = Vec::with_capacity(n.into());
        for _ in 0..n {
            match router.add(MsiMessage::default(), false) {
                Ok((gsi, fd)) => vectors.push(Vector { gsi, fd }),
                Err(e) => {
                    for v in &vectors {
                        router.remove(v.gsi);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(MsiVectors {
            vectors,
            config: Mutex::new(MsiConfig::default()),
            router,
            limit: RateLimit::new(5),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, MsiConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self) -> u16 {
        self.vectors.len() as u16
    }

    /// The eventfd a device writes to raise vector `v`.
    pub fn vector_fd(&self, v: u16) -> Option<Arc<EventFd>> {
        self.vectors.get(usize::from(v)).map(|x| x.fd.clone())
    }

    /// The GSI behind vector `v`.
    pub fn gsi(&self, v: u16) -> Option<u32> {
        self.vectors.get(usize::from(v)).map(|x| x.gsi)
    }

    pub fn config(&self) -> MsiConfig {
        *self.lock()
    }

    /// New capability contents from the guest: routes reprogrammed, irqfds
    /// bound for live vectors and unbound for the others.
    pub fn set_config(&self, mut c: MsiConfig) {
        c.vectors = c.vectors.clamp(1, self.count());
        let mut cur = self.lock();
        if *cur == c {
            return;
        }
        *cur = c;
        for (v, x) in self.vectors.iter().enumerate() {
            let v = v as u16;
            let res = if c.live(v) {
                self.router
                    .update(x.gsi, c.message(v))
                    .and_then(|()| self.router.set_bound(x.gsi, true))
            } else {
                self.router.set_bound(x.gsi, false)
            };
            if let Err(e) = res {
                warn_limited!(self.limit, "MSI vector {v}: {e}");
            }
        }
    }

    /// Function reset: disabled, nothing pending.
    pub fn reset(&self) {
        self.set_config(MsiConfig::default());
        for x in &self.vectors {
            let _ = x.fd.read();
        }
    }
}

impl<R: Routing> Drop for MsiVectors<R> {
    fn drop(&mut self) {
        for x in &self.vectors {
            self.router.remove(x.gsi);
        }
    }
}
