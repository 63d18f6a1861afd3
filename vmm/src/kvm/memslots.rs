//! The `kvm-memory` listener: KVM memslots for RAM, ROM and RAM-device
//! ranges.
//!
//! Adds and deletes are queued during a round and applied at `commit`,
//! deletes first. Where a deleted range overlaps an added one (a split, a
//! resize, a PAM switch) a vCPU could fault on memory that exists both
//! before and after the update, so the vCPUs are paused around the window,
//! as QEMU's atomic memslot update (commit f39b7d2b) does. Pure additions and
//! pure removals need no pause.
//!
//! Slot numbers are recycled lowest-first. Ranges are shrunk inward to host
//! page boundaries; the unaligned edges stay MMIO and are served by the
//! address space's RAM copy path.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::{Cap, VmFd};

use crate::memory::{FlatRange, HookResult, MemoryListener};

pub const PRIORITY: i32 = 10;
const PAGE: u64 = 4096;

/// The memslot calls, behind a trait so the listener is tested without KVM.
pub trait Memslots: Send {
    /// How many slots the VM has.
    fn max_slots(&self) -> u32;
    /// Installs (or, with `memory_size` 0, deletes) one slot.
    ///
    /// # Safety
    ///
    /// `userspace_addr .. + memory_size` must stay mapped in this process
    /// until the slot is deleted or replaced.
    unsafe fn set(&mut self, region: kvm_userspace_memory_region) -> io::Result<()>;
    /// KVM_GET_DIRTY_LOG of a slot with KVM_MEM_LOG_DIRTY_PAGES: one bit
    /// per page written since the last call (which re-arms tracking).
    fn dirty_log(&mut self, _slot: u32, _size: u64) -> io::Result<Vec<u64>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Memslots of a real VM.
pub struct KvmSlots {
    vm: Arc<VmFd>,
    max: u32,
}

impl KvmSlots {
    pub fn new(vm: Arc<VmFd>) -> Self {
        let max = vm.check_extension_int(Cap::NrMemslots).max(0) as u32;
        KvmSlots { vm, max }
    }
}

impl Memslots for KvmSlots {
    fn max_slots(&self) -> u32 {
        self.max
    }
    unsafe fn set(&mut self, region: kvm_userspace_memory_region) -> io::Result<()> {
        // SAFETY: the caller keeps the host range mapped while the slot
        // exists (this function's contract).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(io::Error::from)
    }
    fn dirty_log(&mut self, slot: u32, size: u64) -> io::Result<Vec<u64>> {
        self.vm
            .get_dirty_log(slot, size as usize)
            .map_err(io::Error::from)
    }
}

/// Stops the vCPUs from entering the guest while memslots are swapped.
pub trait VcpuPause: Send + Sync {
    /// Returns when no vCPU is inside KVM_RUN (and none will enter).
    fn pause(&self);
    fn resume(&self);
}

/// A slot as installed.
#[derive(Clone, Debug)]
struct Slot {
    number: u32,
    gpa: u64,
    size: u64,
    host: u64,
    flags: u32,
    /// Keeps the host memory alive for as long as KVM maps it.
    range: FlatRange,
}

impl Slot {
    fn region(&self, delete: bool) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: self.number,
            flags: self.flags,
            guest_phys_addr: self.gpa,
            memory_size: if delete { 0 } else { self.size },
            userspace_addr: self.host,
        }
    }
}

/// Errors of the memslot listener.
#[derive(Debug, thiserror::Error)]
pub enum MemslotError {
    #[error("no free KVM memslot for {gpa:#x}+{size:#x} ({max} in use)")]
    NoSlot { gpa: u64, size: u64, max: u32 },
    #[error("KVM refused memslot {slot} at {gpa:#x}+{size:#x}")]
    Set {
        slot: u32,
        gpa: u64,
        size: u64,
        #[source]
        source: io::Error,
    },
}

/// The slot a range asks for: page-aligned inward, or `None` when it is
/// not memory KVM can map (I/O) or holds no whole page.
fn wanted(r: &FlatRange) -> Option<(u64, u64, u64, u32)> {
    let host = r.host_addr()?;
    let start = r.addr.checked_add(PAGE - 1)? & !(PAGE - 1);
    let end = r.end() & !(PAGE - 1);
    if end <= start {
        return None;
    }
    let shift = start - r.addr;
    if (host + shift) % PAGE != 0 {
        log::warn!(
            "{} at {:#x}: host address not page aligned, left to MMIO",
            r.region.name(),
            r.addr
        );
        return None;
    }
    let mut flags = 0;
    if r.readonly || r.is_rom() {
        flags |= KVM_MEM_READONLY;
    }
    if r.dirty_log_mask != 0 {
        flags |= KVM_MEM_LOG_DIRTY_PAGES;
    }
    Some((start, end - start, host + shift, flags))
}

pub struct KvmMemoryListener<M: Memslots> {
    kvm: M,
    pause: Option<Box<dyn VcpuPause>>,
    /// Installed slots by guest address.
    slots: BTreeMap<u64, Slot>,
    free: Vec<u32>,
    next: u32,
    adds: Vec<FlatRange>,
    dels: Vec<FlatRange>,
    /// Logging changes of kept ranges: (range, new mask).
    relog: Vec<FlatRange>,
    /// How many commits paused the vCPUs (for tests and statistics).
    pub paused_commits: u64,
    /// Hold vCPUs across overlapping updates. Turning this off reproduces
    /// the bug the hold prevents; only tests do that.
    atomic: bool,
}

impl<M: Memslots> KvmMemoryListener<M> {
    pub fn new(kvm: M, pause: Option<Box<dyn VcpuPause>>) -> Self {
        KvmMemoryListener {
            kvm,
            pause,
            slots: BTreeMap::new(),
            free: Vec::new(),
            next: 0,
            adds: Vec::new(),
            dels: Vec::new(),
            relog: Vec::new(),
            paused_commits: 0,
            atomic: true,
        }
    }

    /// Whether overlapping updates hold the vCPUs (default on).
    pub fn set_atomic(&mut self, atomic: bool) {
        self.atomic = atomic;
    }

    /// Installed slots as (slot, gpa, size, flags), by address.
    pub fn slots(&self) -> Vec<(u32, u64, u64, u32)> {
        self.slots
            .values()
            .map(|s| (s.number, s.gpa, s.size, s.flags))
            .collect()
    }

    fn take_number(&mut self) -> Option<u32> {
        if let Some(n) = self.free.pop() {
            return Some(n);
        }
        (self.next < self.kvm.max_slots()).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn give_number(&mut self, n: u32) {
        self.free.push(n);
        // Lowest first: keep the free list sorted descending.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    fn set(&mut self, s: &Slot, delete: bool) -> Result<(), MemslotError> {
        log::debug!(
            "kvm-memory: {} slot {} at {:#x}+{:#x} flags {:#x}",
            if delete { "delete" } else { "set" },
            s.number,
            s.gpa,
            s.size,
            s.flags
        );
        // SAFETY: a slot is only installed from a `Slot`, which holds its
        // range and so the region's host memory; it is deleted (or KVM
        // refused it) before the `Slot` is dropped.
        unsafe { self.kvm.set(s.region(delete)) }.map_err(|source| MemslotError::Set {
            slot: s.number,
            gpa: s.gpa,
            size: s.size,
            source,
        })
    }

    /// Applies the queue. On failure every step taken is reverted and the
    /// queue is kept, so the refusal has no effect.
    fn apply(&mut self) -> Result<(), MemslotError> {
        let dels: Vec<Slot> = self
            .dels
            .iter()
            .filter_map(|r| wanted(r).and_then(|(gpa, ..)| self.slots.get(&gpa).cloned()))
            .collect();
        let mut adds: Vec<Slot> = Vec::new();
        let mut numbers_taken = Vec::new();
        for r in self.adds.clone() {
            let Some((gpa, size, host, flags)) = wanted(&r) else {
                continue;
            };
            let number = match self.take_number() {
                Some(n) => n,
                None => {
                    for n in numbers_taken {
                        self.give_number(n);
                    }
                    return Err(MemslotError::NoSlot {
                        gpa,
                        size,
                        max: self.kvm.max_slots(),
                    });
                }
            };
            numbers_taken.push(number);
            adds.push(Slot {
                number,
                gpa,
                size,
                host,
                flags,
                range: r,
            });
        }
        let overlap = self.atomic
            && dels.iter().any(|d| {
                adds.iter()
                    .any(|a| a.gpa < d.gpa + d.size && d.gpa < a.gpa + a.size)
            });
        if overlap {
            if let Some(p) = &self.pause {
                p.pause();
            }
            self.paused_commits += 1;
        }
        let res = self.swap(&dels, &adds);
        if overlap {
            if let Some(p) = &self.pause {
                p.resume();
            }
        }
        if let Err(e) = res {
            for n in numbers_taken {
                self.give_number(n);
            }
            return Err(e);
        }
        for d in &dels {
            self.slots.remove(&d.gpa);
            self.give_number(d.number);
        }
        for a in adds {
            self.slots.insert(a.gpa, a);
        }
        Ok(())
    }

    /// Deletes `dels` then installs `adds`; on a refusal, undoes what it did.
    fn swap(&mut self, dels: &[Slot], adds: &[Slot]) -> Result<(), MemslotError> {
        for (i, d) in dels.iter().enumerate() {
            if let Err(e) = self.set(d, true) {
                self.restore(&dels[..i], &[]);
                return Err(e);
            }
        }
        for (i, a) in adds.iter().enumerate() {
            if let Err(e) = self.set(a, false) {
                self.restore(dels, &adds[..i]);
                return Err(e);
            }
        }
        Ok(())
    }

    fn restore(&mut self, deleted: &[Slot], added: &[Slot]) {
        for a in added {
            if let Err(e) = self.set(a, true) {
                log::error!("kvm-memory: cannot undo slot {}: {e}", a.number);
            }
        }
        for d in deleted {
            if let Err(e) = self.set(d, false) {
                log::error!("kvm-memory: cannot restore slot {}: {e}", d.number);
            }
        }
    }

    /// Re-registers kept slots whose logging changed (KVM allows flipping
    /// KVM_MEM_LOG_DIRTY_PAGES on a live slot). A refusal here is logged,
    /// not returned: the slots themselves are already right.
    fn apply_relog(&mut self) {
        for r in std::mem::take(&mut self.relog) {
            let Some((gpa, _, _, flags)) = wanted(&r) else {
                continue;
            };
            let Some(mut s) = self.slots.get(&gpa).cloned() else {
                continue;
            };
            if !s.range.same_mapping(&r) || s.flags == flags {
                continue;
            }
            s.flags = flags;
            match self.set(&s, false) {
                Ok(()) => {
                    s.range = r;
                    self.slots.insert(gpa, s);
                }
                Err(e) => log::error!("kvm-memory: dirty logging change: {e}"),
            }
        }
    }
}

fn same(a: &FlatRange, b: &FlatRange) -> bool {
    a.same_mapping(b)
}

impl<M: Memslots> MemoryListener for KvmMemoryListener<M> {
    fn name(&self) -> &str {
        "kvm-memory"
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        // Re-adding what this round deleted cancels the delete (rollback).
        if let Some(i) = self.dels.iter().position(|d| same(d, r)) {
            self.dels.remove(i);
        } else {
            self.adds.push(r.clone());
        }
        Ok(())
    }
    fn region_del(&mut self, r: &FlatRange) {
        if let Some(i) = self.adds.iter().position(|a| same(a, r)) {
            self.adds.remove(i);
        } else {
            self.dels.push(r.clone());
        }
    }
    fn log_start(&mut self, r: &FlatRange, _old: u8, _new: u8) -> HookResult {
        self.relog.push(r.clone());
        Ok(())
    }
    fn log_stop(&mut self, r: &FlatRange, _old: u8, _new: u8) {
        self.relog.push(r.clone());
    }
    /// Collects KVM's dirty bits of the slots inside `r` into their RAM
    /// blocks' bitmaps (which re-arms KVM's tracking: the get clears).
    fn log_sync(&mut self, r: &FlatRange) {
        let inside: Vec<Slot> = self
            .slots
            .range(r.addr..r.end())
            .map(|(_, s)| s.clone())
            .filter(|s| s.flags & KVM_MEM_LOG_DIRTY_PAGES != 0)
            .collect();
        for s in inside {
            let Some(block) = s.range.region.ram_block() else {
                continue;
            };
            match self.kvm.dirty_log(s.number, s.size) {
                Ok(bits) => {
                    let first = (s.host - block.host_addr()) / PAGE;
                    block.dirty.merge(first, &bits);
                }
                Err(e) => log::warn!("kvm-memory: dirty log of slot {}: {e}", s.number),
            }
        }
    }
    fn commit(&mut self) -> HookResult {
        self.apply()?;
        self.adds.clear();
        self.dels.clear();
        self.apply_relog();
        Ok(())
    }
}
