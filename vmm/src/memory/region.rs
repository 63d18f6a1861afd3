//! Memory regions: the nodes of the tree that address spaces render.
//!
//! A region is a cheap handle (`Clone` shares it). Reading its attributes is
//! free for anyone; changing them goes through a
//! [`Transaction`](super::Transaction), which records how to undo every
//! change so a refused commit leaves the tree as it was.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vmm_sys_util::eventfd::EventFd;

use super::ram::{RamBlock, RamError};

/// Dirty-log clients, as bits of a region's dirty-log mask (QEMU's numbering).
pub mod dirty {
    pub const VGA: u8 = 1 << 0;
    pub const CODE: u8 = 1 << 1;
    pub const MIGRATION: u8 = 1 << 2;
}

/// Reads and writes of an I/O region. `offset` is relative to the region;
/// `data.len()` is the access size (1, 2, 4 or 8 from a vCPU).
pub trait RegionOps: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// What a region is.
#[derive(Clone)]
pub enum RegionKind {
    /// Only holds subregions; holes read as unassigned.
    Container,
    /// Guest RAM.
    Ram(Arc<RamBlock>),
    /// RAM the guest can read but not write.
    Rom(Arc<RamBlock>),
    /// A device's memory mapped into the host (a VFIO BAR).
    RamDevice(Arc<RamBlock>),
    /// Accesses trap to a handler.
    Io(Arc<dyn RegionOps>),
    /// A window onto another region, starting at the alias offset.
    Alias(MemoryRegion),
}

impl fmt::Debug for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionKind::Container => write!(f, "Container"),
            RegionKind::Ram(b) => write!(f, "Ram({})", b.name()),
            RegionKind::Rom(b) => write!(f, "Rom({})", b.name()),
            RegionKind::RamDevice(b) => write!(f, "RamDevice({})", b.name()),
            RegionKind::Io(_) => write!(f, "Io"),
            RegionKind::Alias(t) => write!(f, "Alias({})", t.name()),
        }
    }
}

/// An eventfd signalled by a guest write, instead of an exit to the VMM.
/// Inside a region `addr` is an offset in the region; handed to a listener
/// it is an address in the listener's address space.
#[derive(Clone, Debug)]
pub struct Ioeventfd {
    pub addr: u64,
    /// Access size to match; 0 matches any size.
    pub size: u64,
    /// Only writes of this value signal; `None` signals on any value.
    pub datamatch: Option<u64>,
    pub fd: Arc<EventFd>,
}

impl PartialEq for Ioeventfd {
    fn eq(&self, o: &Self) -> bool {
        self.addr == o.addr
            && self.size == o.size
            && self.datamatch == o.datamatch
            && Arc::ptr_eq(&self.fd, &o.fd)
    }
}
impl Eq for Ioeventfd {}

impl Ioeventfd {
    pub(crate) fn sort_key(&self) -> (u64, u64, Option<u64>, usize) {
        (
            self.addr,
            self.size,
            self.datamatch,
            Arc::as_ptr(&self.fd) as usize,
        )
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A node of the memory tree.
#[derive(Clone)]
pub struct MemoryRegion(Arc<Inner>);

pub(crate) struct Inner {
    id: u64,
    name: String,
    kind: RegionKind,
    state: Mutex<State>,
}

#[derive(Clone)]
pub(crate) struct State {
    pub size: u64,
    pub priority: i32,
    /// Offset in the container.
    pub addr: u64,
    pub container: Option<Weak<Inner>>,
    pub enabled: bool,
    pub readonly: bool,
    pub alias_offset: u64,
    /// Highest priority first; equal priorities, the later-added first.
    pub subregions: Vec<MemoryRegion>,
    pub ioeventfds: Vec<Ioeventfd>,
    /// (offset, size) ranges whose MMIO writes may be batched.
    /// Replaced whole on change, so flat ranges can hold a snapshot.
    pub coalesced: Arc<Vec<(u64, u64)>>,
    pub dirty_log_mask: u8,
}

impl MemoryRegion {
    fn with_kind(name: &str, size: u64, kind: RegionKind) -> Self {
        let readonly = matches!(kind, RegionKind::Rom(_));
        MemoryRegion(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            kind,
            state: Mutex::new(State {
                size,
                priority: 0,
                addr: 0,
                container: None,
                enabled: true,
                readonly,
                alias_offset: 0,
                subregions: Vec::new(),
                ioeventfds: Vec::new(),
                coalesced: Arc::new(Vec::new()),
                dirty_log_mask: 0,
            }),
        }))
    }

    pub fn container(name: &str, size: u64) -> Self {
        Self::with_kind(name, size, RegionKind::Container)
    }

    /// New RAM on its own shared memfd.
    pub fn ram(name: &str, size: u64) -> Result<Self, RamError> {
        let block = RamBlock::new_memfd(name, size)?;
        Ok(Self::ram_from_block(name, Arc::new(block)))
    }

    pub fn ram_from_block(name: &str, block: Arc<RamBlock>) -> Self {
        let size = block.size();
        Self::with_kind(name, size, RegionKind::Ram(block))
    }

    /// New ROM on its own shared memfd; the VMM fills it through
    /// [`MemoryRegion::ram_block`].
    pub fn rom(name: &str, size: u64) -> Result<Self, RamError> {
        let block = Arc::new(RamBlock::new_memfd(name, size)?);
        Ok(Self::with_kind(name, size, RegionKind::Rom(block)))
    }

    pub fn ram_device(name: &str, block: Arc<RamBlock>) -> Self {
        let size = block.size();
        Self::with_kind(name, size, RegionKind::RamDevice(block))
    }

    pub fn io(name: &str, size: u64, ops: Arc<dyn RegionOps>) -> Self {
        Self::with_kind(name, size, RegionKind::Io(ops))
    }

    /// A window of `size` bytes onto `target` starting at `offset` in it.
    pub fn alias(name: &str, target: &MemoryRegion, offset: u64, size: u64) -> Self {
        let r = Self::with_kind(name, size, RegionKind::Alias(target.clone()));
        r.lock().alias_offset = offset;
        r
    }

    /// A number unique to this region for the life of the process.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn kind(&self) -> &RegionKind {
        &self.0.kind
    }

    /// The host memory behind a RAM, ROM or RAM-device region.
    pub fn ram_block(&self) -> Option<&Arc<RamBlock>> {
        match &self.0.kind {
            RegionKind::Ram(b) | RegionKind::Rom(b) | RegionKind::RamDevice(b) => Some(b),
            _ => None,
        }
    }

    pub fn alias_target(&self) -> Option<&MemoryRegion> {
        match &self.0.kind {
            RegionKind::Alias(t) => Some(t),
            _ => None,
        }
    }

    pub fn size(&self) -> u64 {
        self.lock().size
    }
    pub fn priority(&self) -> i32 {
        self.lock().priority
    }
    /// Offset in the container it is mapped into.
    pub fn addr(&self) -> u64 {
        self.lock().addr
    }
    pub fn is_enabled(&self) -> bool {
        self.lock().enabled
    }
    pub fn is_readonly(&self) -> bool {
        self.lock().readonly
    }
    pub fn alias_offset(&self) -> u64 {
        self.lock().alias_offset
    }
    pub fn dirty_log_mask(&self) -> u8 {
        self.lock().dirty_log_mask
    }
    pub fn is_mapped(&self) -> bool {
        self.lock().container.is_some()
    }
    pub fn subregions(&self) -> Vec<MemoryRegion> {
        self.lock().subregions.clone()
    }
    pub fn ioeventfds(&self) -> Vec<Ioeventfd> {
        self.lock().ioeventfds.clone()
    }
    pub fn coalesced(&self) -> Vec<(u64, u64)> {
        self.lock().coalesced.to_vec()
    }

    /// The container this region is mapped into.
    pub fn parent(&self) -> Option<MemoryRegion> {
        self.lock()
            .container
            .as_ref()
            .and_then(Weak::upgrade)
            .map(MemoryRegion)
    }

    pub fn same(&self, other: &MemoryRegion) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether rendering treats this region as RAM-like (a memslot candidate).
    pub fn is_ram_like(&self) -> bool {
        self.ram_block().is_some()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // state itself is plain data and stays usable.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn weak(&self) -> Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    /// Inserts `child` by priority (later-added first among equals) and
    /// returns its index.
    pub(crate) fn insert_sorted(&self, child: &MemoryRegion) -> usize {
        let prio = child.priority();
        let mut st = self.lock();
        let idx = st
            .subregions
            .iter()
            .position(|o| prio >= o.priority())
            .unwrap_or(st.subregions.len());
        st.subregions.insert(idx, child.clone());
        idx
    }

    /// Whether `self` is `other` or contains it somewhere below, through
    /// subregions or alias targets.
    pub(crate) fn reaches(&self, other: &MemoryRegion, depth: u32) -> bool {
        if self.same(other) {
            return true;
        }
        if depth == 0 {
            return true; // too deep: treat as a cycle, refuse
        }
        if let Some(t) = self.alias_target() {
            if t.reaches(other, depth - 1) {
                return true;
            }
        }
        self.subregions()
            .iter()
            .any(|s| s.reaches(other, depth - 1))
    }
}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryRegion({:?} #{})", self.0.name, self.0.id)
    }
}

impl PartialEq for MemoryRegion {
    fn eq(&self, o: &Self) -> bool {
        self.same(o)
    }
}
impl Eq for MemoryRegion {}
