//! MSI-X: the vector table and pending-bit array a device exposes in a BAR,
//! each vector an MSI route with an irqfd.
//!
//! A device raises vector `v` by writing `vector_fd(v)`. While the vector
//! is masked (its own mask bit, the function mask, or MSI-X disabled) its
//! irqfd is unbound, so the write stays in the eventfd's counter: that is
//! the pending bit the PBA shows, and KVM injects it when the irqfd is bound
//! again on unmask. The device never needs to know about masking.

use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::routes::{GsiRouter, MsiMessage, RouteError, Routing};
use crate::memory::RegionOps;
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control: the mask bit.
const MASKED: u32 = 1;
/// The spec's limit on vectors per function.
pub const MAX_VECTORS: u16 = 2048;

#[derive(Clone)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
    gsi: u32,
    fd: Arc<EventFd>,
}

impl Entry {
    fn msg(&self) -> MsiMessage {
        MsiMessage {
            addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

struct State {
    entries: Vec<Entry>,
    enabled: bool,
    function_mask: bool,
}

/// The MSI-X capability's control bits, as the PCI code passes them on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixConfig {
    pub enabled: bool,
    pub function_mask: bool,
}

pub struct MsixTable<R: Routing> {
    state: Mutex<State>,
    router: GsiRouter<R>,
    limit: RateLimit,
}

impl<R: Routing + 'static> MsixTable<R> {
    /// A table of `vectors` entries, all masked, each with its route.
    pub fn new(router: GsiRouter<R>, vectors: u16) -> Result<Arc<Self>, RouteError> {
        let n = vectors.clamp(1, MAX_VECTORS);
        let mut entries = Vec::with_capacity(n.into());
        for _ in 0..n {
            let (gsi, fd) = match router.add(MsiMessage::default(), false) {
                Ok(r) => r,
                Err(e) => {
                    for e2 in &entries {
                        let e2: &Entry = e2;
                        router.remove(e2.gsi);
                    }
                    return Err(e);
                }
            };
            entries.push(Entry {
                addr_lo: 0,
                addr_hi: 0,
                data: 0,
                control: MASKED,
                gsi,
                fd,
            });
        }
        Ok(Arc::new(MsixTable {
            state: Mutex::new(State {
                entries,
                enabled: false,
                function_mask: false,
            }),
            router,
            limit: RateLimit::new(5),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn vectors(&self) -> u16 {
        self.lock().entries.len() as u16
    }

    /// Size of the table in bytes, and of the PBA.
    pub fn sizes(&self) -> (u64, u64) {
        let n = u64::from(self.vectors());
        (n * ENTRY_SIZE, n.div_ceil(64) * 8)
    }

    /// The eventfd a device writes to raise vector `v`.
    pub fn vector_fd(&self, v: u16) -> Option<Arc<EventFd>> {
        self.lock()
            .entries
            .get(usize::from(v))
            .map(|e| e.fd.clone())
    }

    /// The GSI behind vector `v` (for tests and `info` output).
    pub fn gsi(&self, v: u16) -> Option<u32> {
        self.lock().entries.get(usize::from(v)).map(|e| e.gsi)
    }

    /// New capability control bits from the guest.
    pub fn set_config(&self, c: MsixConfig) {
        let mut st = self.lock();
        if st.enabled == c.enabled && st.function_mask == c.function_mask {
            return;
        }
        st.enabled = c.enabled;
        st.function_mask = c.function_mask;
        for v in 0..st.entries.len() {
            self.sync(&st, v);
        }
    }

    /// Function reset: MSI-X disabled, every entry zero and masked, nothing
    /// pending.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.enabled = false;
        st.function_mask = false;
        for e in st.entries.iter_mut() {
            (e.addr_lo, e.addr_hi, e.data, e.control) = (0, 0, 0, MASKED);
            // Drop a pending count so it is not injected on a later unmask.
            let _ = e.fd.read();
        }
        for v in 0..st.entries.len() {
            self.sync(&st, v);
        }
    }

    /// Brings vector `v`'s route and irqfd in line with the table.
    fn sync(&self, st: &State, v: usize) {
        let e = &st.entries[v];
        let live = st.enabled && !st.function_mask && e.control & MASKED == 0;
        let res = if live {
            self.router
                .update(e.gsi, e.msg())
                .and_then(|()| self.router.set_bound(e.gsi, true))
        } else {
            self.router.set_bound(e.gsi, false)
        };
        if let Err(err) = res {
            warn_limited!(self.limit, "MSI-X vector {v}: {err}");
        }
    }

    fn pending(&self, st: &State, v: usize) -> bool {
        let e = &st.entries[v];
        let live = st.enabled && !st.function_mask && e.control & MASKED == 0;
        !live && readable(&e.fd)
    }

    fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let st = self.lock();
        let (v, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = st.entries.get(v) else { return };
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        match (data.len(), field) {
            (4, 0 | 4 | 8 | 12) => {
                data.copy_from_slice(&words[(field / 4) as usize].to_le_bytes());
            }
            (8, 0 | 8) => {
                let i = (field / 4) as usize;
                let q = u64::from(words[i]) | u64::from(words[i + 1]) << 32;
                data.copy_from_slice(&q.to_le_bytes());
            }
            _ => warn_limited!(
                self.limit,
                "MSI-X table read of {} bytes at {offset:#x} ignored",
                data.len()
            ),
        }
    }

    fn table_write(&self, offset: u64, data: &[u8]) {
        let mut st = self.lock();
        let (v, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        if v >= st.entries.len() {
            return;
        }
        let mut words = {
            let e = &st.entries[v];
            [e.addr_lo, e.addr_hi, e.data, e.control]
        };
        match (data.len(), field) {
            (4, 0 | 4 | 8 | 12) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                words[(field / 4) as usize] = u32::from_le_bytes(b);
            }
            (8, 0 | 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                let q = u64::from_le_bytes(b);
                let i = (field / 4) as usize;
                words[i] = q as u32;
                words[i + 1] = (q >> 32) as u32;
            }
            _ => {
                warn_limited!(
                    self.limit,
                    "MSI-X table write of {} bytes at {offset:#x} ignored",
                    data.len()
                );
                return;
            }
        }
        let e = &mut st.entries[v];
        e.addr_lo = words[0];
        e.addr_hi = words[1];
        e.data = words[2];
        // Only the mask bit of vector control is writable.
        e.control = words[3] & MASKED;
        self.sync(&st, v);
    }

    fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || offset % data.len() as u64 != 0 {
            return;
        }
        let st = self.lock();
        let first = (offset * 8) as usize;
        let mut bits = 0u64;
        for i in 0..data.len() * 8 {
            if first + i < st.entries.len() && self.pending(&st, first + i) {
                bits |= 1 << i;
            }
        }
        let b = bits.to_le_bytes();
        data.copy_from_slice(&b[..data.len()]);
    }

    /// Handlers for the table and the PBA, to map as I/O regions in a BAR.
    pub fn regions(self: &Arc<Self>) -> (Arc<dyn RegionOps>, Arc<dyn RegionOps>) {
        (
            Arc::new(TableOps(self.clone())),
            Arc::new(PbaOps(self.clone())),
        )
    }
}

impl<R: Routing> Drop for MsixTable<R> {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for e in &st.entries {
            self.router.remove(e.gsi);
        }
    }
}

/// Whether the eventfd has a count, without consuming it.
fn readable(fd: &EventFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

struct TableOps<R: Routing>(Arc<MsixTable<R>>);
struct PbaOps<R: Routing>(Arc<MsixTable<R>>);

impl<R: Routing + 'static> RegionOps for TableOps<R> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.table_read(offset, data);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.0.table_write(offset, data);
    }
}

impl<R: Routing + 'static> RegionOps for PbaOps<R> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.pba_read(offset, data);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}
