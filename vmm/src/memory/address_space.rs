//! Address spaces: a root region, its current flat view and its listeners,
//! and the access path vCPU exits take.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::fanout::Registered;
use super::flatview::{FlatRange, FlatView};
use super::region::{MemoryRegion, RegionKind};

/// What an access found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every byte was served by a region.
    Done,
    /// Some bytes were served from RAM (or ROM, for reads) by copying: for a
    /// vCPU exit this means no memslot covered them.
    Ram,
    /// Some bytes hit no region: they read as all ones, writes were dropped.
    Unassigned,
}

impl Access {
    fn worst(self, other: Access) -> Access {
        match (self, other) {
            (Access::Unassigned, _) | (_, Access::Unassigned) => Access::Unassigned,
            (Access::Ram, _) | (_, Access::Ram) => Access::Ram,
            _ => Access::Done,
        }
    }
}

/// A root region rendered into a flat view that readers load without a lock.
pub struct AddressSpace {
    name: String,
    root: MemoryRegion,
    view: ArcSwap<FlatView>,
    pub(crate) listeners: Mutex<Vec<Registered>>,
}

impl AddressSpace {
    pub(crate) fn new(name: &str, root: MemoryRegion, view: FlatView) -> Self {
        AddressSpace {
            name: name.into(),
            root,
            view: ArcSwap::from_pointee(view),
            listeners: Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn root(&self) -> &MemoryRegion {
        &self.root
    }

    /// The current view; it stays valid (if stale) however long it is held.
    pub fn view(&self) -> Arc<FlatView> {
        self.view.load_full()
    }

    pub(crate) fn set_view(&self, v: Arc<FlatView>) {
        self.view.store(v);
    }

    pub(crate) fn lock_listeners(&self) -> MutexGuard<'_, Vec<Registered>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names and priorities of the registered listeners, in call order for
    /// adds.
    pub fn listener_list(&self) -> Vec<(String, i32)> {
        self.lock_listeners()
            .iter()
            .map(|r| (r.listener.name().to_string(), r.listener.priority()))
            .collect()
    }

    /// Looks up `addr` in the current view without taking a lock.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<(FlatRange, u64)> {
        let v = self.view.load();
        v.lookup(addr).map(|(r, off)| (r.clone(), off))
    }

    /// Reads `data.len()` bytes at `addr` as a vCPU would.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Access {
        self.walk(addr, data.len(), |hit, at| {
            let buf = &mut data[at];
            let Some((r, off)) = hit else {
                buf.fill(0xff);
                return Access::Unassigned;
            };
            match r.region.kind() {
                RegionKind::Io(ops) => ops.read(off, buf),
                RegionKind::RamDevice(b) => {
                    b.read_device(off, buf);
                    return Access::Ram;
                }
                _ => match r.region.ram_block() {
                    Some(b) => {
                        b.read(off, buf);
                        return Access::Ram;
                    }
                    None => buf.fill(0xff),
                },
            }
            Access::Done
        })
    }

    /// Writes `data` at `addr` as a vCPU would; writes to read-only ranges
    /// are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        self.walk(addr, data.len(), |hit, at| {
            let Some((r, off)) = hit else {
                return Access::Unassigned;
            };
            let buf = &data[at];
            match r.region.kind() {
                RegionKind::Io(ops) => ops.write(off, buf),
                _ if r.readonly => {}
                RegionKind::RamDevice(b) => {
                    b.write_device(off, buf);
                    return Access::Ram;
                }
                _ => {
                    if let Some(b) = r.region.ram_block() {
                        b.write(off, buf);
                        return Access::Ram;
                    }
                }
            }
            Access::Done
        })
    }

    /// Splits `len` bytes at `addr` into the pieces the current view maps
    /// to one range each (or, unmapped, one byte each) and hands each piece
    /// to `piece`, with its range and offset and its place in the access;
    /// returns the worst of what the pieces report.
    #[inline]
    fn walk(
        &self,
        addr: u64,
        len: usize,
        mut piece: impl FnMut(Option<(&FlatRange, u64)>, Range<usize>) -> Access,
    ) -> Access {
        let view = self.view.load();
        let mut result = Access::Done;
        let mut done = 0;
        while done < len {
            let a = addr.wrapping_add(done as u64);
            let hit = view.lookup(a);
            let n = hit.map_or(1, |(r, _)| chunk(r, a, len - done));
            result = result.worst(piece(hit, done..done + n));
            done += n;
        }
        result
    }
}

/// How many of `want` bytes at `addr` fall in `r`.
fn chunk(r: &FlatRange, addr: u64, want: usize) -> usize {
    ((r.end() - addr) as usize).min(want).max(1)
}
