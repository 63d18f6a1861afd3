//! vCPU exits into the address spaces: port I/O into `I/O`, MMIO into
//! `memory`, each through the current flat view without a lock. Accesses
//! that hit no region read as all ones and are logged, rate-limited. Exits
//! are counted by kind so tests can show which path the data took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::kvm::{ExitAction, ExitHandler};
use crate::memory::{Access, AddressSpace};
use crate::ratelimit::RateLimit;
use crate::warn_limited;

use super::requests::{Request, Requests};

/// Exit counts by kind.
#[derive(Default, Debug)]
pub struct ExitStats {
    pub pio_read: AtomicU64,
    pub pio_write: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub unassigned: AtomicU64,
    /// MMIO exits served from RAM: no memslot covered guest memory.
    pub mmio_on_ram: AtomicU64,
}

impl ExitStats {
    /// (pio reads, pio writes, mmio reads, mmio writes, unassigned,
    /// mmio on RAM).
    pub fn snapshot(&self) -> [u64; 6] {
        [
            self.pio_read.load(Ordering::Relaxed),
            self.pio_write.load(Ordering::Relaxed),
            self.mmio_read.load(Ordering::Relaxed),
            self.mmio_write.load(Ordering::Relaxed),
            self.unassigned.load(Ordering::Relaxed),
            self.mmio_on_ram.load(Ordering::Relaxed),
        ]
    }
}

pub struct Dispatch {
    pub memory: Arc<AddressSpace>,
    pub io: Arc<AddressSpace>,
    pub requests: Requests,
    pub stats: Arc<ExitStats>,
    limit: RateLimit,
}

impl Dispatch {
    pub fn new(
        memory: Arc<AddressSpace>,
        io: Arc<AddressSpace>,
        requests: Requests,
        stats: Arc<ExitStats>,
    ) -> Self {
        Dispatch {
            memory,
            io,
            requests,
            stats,
            limit: RateLimit::new(10),
        }
    }

    fn unassigned(&self, what: &str, addr: u64, len: usize) {
        self.stats.unassigned.fetch_add(1, Ordering::Relaxed);
        warn_limited!(
            self.limit,
            "guest {what} of {len} bytes at {addr:#x} hits nothing"
        );
    }

    fn mmio(&self, what: &str, addr: u64, len: usize, access: Access) {
        match access {
            Access::Done => {}
            Access::Unassigned => self.unassigned(what, addr, len),
            Access::Ram => {
                self.stats.mmio_on_ram.fetch_add(1, Ordering::Relaxed);
                warn_limited!(
                    self.limit,
                    "guest {what} at {addr:#x} exited to the VMM although it is RAM: no memslot covered it"
                );
            }
        }
    }

    /// After a write: stop this vCPU at once if the guest asked to stop or
    /// reset, so it runs no further guest code.
    fn action(&self) -> ExitAction {
        match self.requests.pending() {
            Some(Request::Stop(_)) => ExitAction::Poweroff,
            Some(Request::Reset) => ExitAction::Reset,
            None => ExitAction::Continue,
        }
    }
}

impl ExitHandler for Dispatch {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.stats.pio_read.fetch_add(1, Ordering::Relaxed);
        if self.io.read(u64::from(port), data) == Access::Unassigned {
            self.unassigned("port read", u64::from(port), data.len());
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> ExitAction {
        self.stats.pio_write.fetch_add(1, Ordering::Relaxed);
        if self.io.write(u64::from(port), data) == Access::Unassigned {
            self.unassigned("port write", u64::from(port), data.len());
        }
        self.action()
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.stats.mmio_read.fetch_add(1, Ordering::Relaxed);
        let access = self.memory.read(addr, data);
        self.mmio("MMIO read", addr, data.len(), access);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> ExitAction {
        self.stats.mmio_write.fetch_add(1, Ordering::Relaxed);
        let access = self.memory.write(addr, data);
        self.mmio("MMIO write", addr, data.len(), access);
        self.action()
    }
}
