//! The memory system: its address spaces, the transaction lock, and the
//! undo log that makes a refused commit leave the tree untouched.
//!
//! Lock order: the transaction (held by one thread at a time, re-entrant for
//! that thread) before an address space's listener list, before a region's
//! state. Readers of flat views take none of them.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use super::address_space::AddressSpace;
use super::fanout::{self, Registered, SpaceRound};
use super::flatview::{FlatView, MAX_DEPTH};
use super::listener::{ListenerId, MemoryListener};
use super::region::{Ioeventfd, MemoryRegion};
use super::MemoryError;

type Undo = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct TxState {
    owner: Option<ThreadId>,
    depth: u32,
    undo: Vec<Undo>,
}

/// All address spaces of a machine and the one transaction lock over them.
#[derive(Default)]
pub struct Memory {
    spaces: Mutex<Vec<Arc<AddressSpace>>>,
    tx: Mutex<TxState>,
    cv: Condvar,
    global_log: AtomicBool,
    next_listener: AtomicU64,
}

impl Memory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates an address space over `root` and renders it.
    pub fn add_address_space(&self, name: &str, root: MemoryRegion) -> Arc<AddressSpace> {
        let _t = self.begin();
        let view = FlatView::render(&root, self.global_log.load(Ordering::Relaxed));
        let space = Arc::new(AddressSpace::new(name, root, view));
        self.lock_spaces().push(space.clone());
        space
    }

    pub fn address_spaces(&self) -> Vec<Arc<AddressSpace>> {
        self.lock_spaces().clone()
    }

    pub fn address_space(&self, name: &str) -> Option<Arc<AddressSpace>> {
        self.lock_spaces()
            .iter()
            .find(|s| s.name() == name)
            .cloned()
    }

    /// Opens a transaction, or a nested level of the one this thread holds.
    /// Other threads wait until the outermost level ends.
    pub fn begin(&self) -> Transaction<'_> {
        let me = thread::current().id();
        let mut st = self.lock_tx();
        loop {
            match st.owner {
                Some(o) if o == me => break,
                None => {
                    st.owner = Some(me);
                    break;
                }
                Some(_) => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
        st.depth += 1;
        Transaction {
            mem: self,
            mark: st.undo.len(),
            done: false,
            _not_send: PhantomData,
        }
    }

    /// Registers `listener` on `space` and replays the current view to it.
    /// If the replay is refused, the listener is taken back to empty and not
    /// registered.
    pub fn register_listener(
        &self,
        space: &AddressSpace,
        mut listener: Box<dyn MemoryListener>,
    ) -> Result<ListenerId, MemoryError> {
        let _t = self.begin();
        let global = self.global_log.load(Ordering::Relaxed);
        if global {
            listener
                .log_global_start()
                .map_err(|source| MemoryError::Listener {
                    address_space: space.name().into(),
                    listener: listener.name().into(),
                    hook: "log_global_start",
                    what: "registration".into(),
                    source,
                })?;
        }
        let id = ListenerId(self.next_listener.fetch_add(1, Ordering::Relaxed));
        let mut one = [Registered { id, listener }];
        let (empty, view) = (FlatView::default(), space.view());
        let res = fanout::run(&mut [SpaceRound {
            name: space.name(),
            old: &empty,
            new: &view,
            listeners: &mut one,
        }]);
        let [reg] = one;
        if let Err(e) = res {
            if global {
                let mut l = reg.listener;
                l.log_global_stop();
            }
            return Err(e);
        }
        log::debug!(
            "listener {} (prio {}) registered on {}",
            reg.listener.name(),
            reg.listener.priority(),
            space.name()
        );
        let mut ls = space.lock_listeners();
        let prio = reg.listener.priority();
        let at = ls.partition_point(|r| r.listener.priority() <= prio);
        ls.insert(at, reg);
        Ok(id)
    }

    /// Removes a listener, replaying the removal of everything it holds.
    pub fn unregister_listener(
        &self,
        space: &AddressSpace,
        id: ListenerId,
    ) -> Option<Box<dyn MemoryListener>> {
        let _t = self.begin();
        let reg = {
            let mut ls = space.lock_listeners();
            let at = ls.iter().position(|r| r.id == id)?;
            ls.remove(at)
        };
        let mut one = [reg];
        let (empty, view) = (FlatView::default(), space.view());
        if let Err(e) = fanout::run(&mut [SpaceRound {
            name: space.name(),
            old: &view,
            new: &empty,
            listeners: &mut one,
        }]) {
            log::error!("unregistering from {}: {e}", space.name());
        }
        let [reg] = one;
        let mut l = reg.listener;
        if self.global_log.load(Ordering::Relaxed) {
            l.log_global_stop();
        }
        Some(l)
    }

    /// Starts dirty logging of all RAM for migration: every listener's
    /// `log_global_start` (undone in reverse if one refuses), then a commit
    /// that gives every RAM range the migration bit.
    pub fn log_global_start(&self) -> Result<(), MemoryError> {
        let t = self.begin();
        if self.lock_tx().depth > 1 {
            return Err(MemoryError::LogInTransaction);
        }
        let spaces = self.address_spaces();
        let mut started: Vec<(usize, usize)> = Vec::new();
        for (s, space) in spaces.iter().enumerate() {
            let mut ls = space.lock_listeners();
            for (k, r) in ls.iter_mut().enumerate() {
                if let Err(source) = r.listener.log_global_start() {
                    let err = MemoryError::Listener {
                        address_space: space.name().into(),
                        listener: r.listener.name().into(),
                        hook: "log_global_start",
                        what: "global dirty logging".into(),
                        source,
                    };
                    drop(ls);
                    self.stop_global(&spaces, &started);
                    return Err(err);
                }
                started.push((s, k));
            }
        }
        self.global_log.store(true, Ordering::Relaxed);
        if let Err(e) = t.commit() {
            self.global_log.store(false, Ordering::Relaxed);
            let _t = self.begin();
            self.stop_global(&spaces, &started);
            return Err(e);
        }
        Ok(())
    }

    /// Stops global dirty logging.
    pub fn log_global_stop(&self) -> Result<(), MemoryError> {
        let t = self.begin();
        if !self.global_log.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        t.commit()?;
        let _t = self.begin();
        let spaces = self.address_spaces();
        let all: Vec<(usize, usize)> = spaces
            .iter()
            .enumerate()
            .flat_map(|(s, sp)| (0..sp.lock_listeners().len()).map(move |k| (s, k)))
            .collect();
        self.stop_global(&spaces, &all);
        Ok(())
    }

    pub fn global_log(&self) -> bool {
        self.global_log.load(Ordering::Relaxed)
    }

    /// Asks every listener of `space` to collect dirty bits for every
    /// logged range.
    pub fn log_sync(&self, space: &AddressSpace) {
        self.each_logged(space, |l, r| l.log_sync(r));
    }

    /// Asks every listener of `space` to re-arm dirty tracking.
    pub fn log_clear(&self, space: &AddressSpace) {
        self.each_logged(space, |l, r| l.log_clear(r));
    }

    fn each_logged(
        &self,
        space: &AddressSpace,
        f: impl Fn(&mut dyn MemoryListener, &super::FlatRange),
    ) {
        let _t = self.begin();
        let view = space.view();
        let mut ls = space.lock_listeners();
        for r in view.ranges().iter().filter(|r| r.dirty_log_mask != 0) {
            for reg in ls.iter_mut() {
                f(reg.listener.as_mut(), r);
            }
        }
    }

    /// Stops `started` listeners in reverse order.
    fn stop_global(&self, spaces: &[Arc<AddressSpace>], started: &[(usize, usize)]) {
        for &(s, k) in started.iter().rev() {
            if let Some(r) = spaces[s].lock_listeners().get_mut(k) {
                r.listener.log_global_stop();
            }
        }
    }

    fn lock_tx(&self) -> MutexGuard<'_, TxState> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_spaces(&self) -> MutexGuard<'_, Vec<Arc<AddressSpace>>> {
        self.spaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_undo(&self, u: Undo) {
        self.lock_tx().undo.push(u);
    }

    /// Ends one level. The outermost commit renders every address space and
    /// runs the round; a refused round, or an abandoned level, replays the
    /// undo log down to where that level began.
    fn finish(&self, commit: bool, mark: usize) -> Result<(), MemoryError> {
        let mut st = self.lock_tx();
        st.depth -= 1;
        let outermost = st.depth == 0;
        if outermost || !commit {
            let undo = st.undo.split_off(mark);
            drop(st);
            let res = if commit && outermost {
                self.render_and_notify()
            } else {
                Ok(())
            };
            if res.is_err() || !commit {
                for u in undo.into_iter().rev() {
                    u();
                }
            }
            if outermost {
                let mut st = self.lock_tx();
                st.owner = None;
                drop(st);
                self.cv.notify_all();
            }
            return res;
        }
        Ok(())
    }

    fn render_and_notify(&self) -> Result<(), MemoryError> {
        let spaces = self.address_spaces();
        let global = self.global_log.load(Ordering::Relaxed);
        let news: Vec<Arc<FlatView>> = spaces
            .iter()
            .map(|s| Arc::new(FlatView::render(s.root(), global)))
            .collect();
        let olds: Vec<Arc<FlatView>> = spaces.iter().map(|s| s.view()).collect();
        let mut guards: Vec<_> = spaces.iter().map(|s| s.lock_listeners()).collect();
        let mut rounds: Vec<SpaceRound<'_>> = guards
            .iter_mut()
            .enumerate()
            .map(|(i, g)| SpaceRound {
                name: spaces[i].name(),
                old: &olds[i],
                new: &news[i],
                listeners: g.as_mut_slice(),
            })
            .collect();
        fanout::run(&mut rounds)?;
        drop(rounds);
        drop(guards);
        for (s, v) in spaces.iter().zip(news) {
            s.set_view(v);
        }
        Ok(())
    }
}

/// A level of the memory transaction. Changes made through it become
/// visible to readers and listeners when the outermost level commits;
/// dropping a level without committing undoes the changes made in it.
#[must_use = "a transaction is undone when dropped without commit()"]
pub struct Transaction<'m> {
    mem: &'m Memory,
    mark: usize,
    done: bool,
    /// The transaction belongs to the thread that opened it.
    _not_send: PhantomData<*const ()>,
}

impl Transaction<'_> {
    /// Ends this level. The outermost level renders and notifies listeners;
    /// if one refuses, every change of the transaction is undone and the
    /// refusal returned.
    pub fn commit(mut self) -> Result<(), MemoryError> {
        self.done = true;
        self.mem.finish(true, self.mark)
    }

    /// Maps `child` at `offset` in `parent` with priority 0.
    pub fn add_subregion(
        &self,
        parent: &MemoryRegion,
        offset: u64,
        child: &MemoryRegion,
    ) -> Result<(), MemoryError> {
        self.add_subregion_overlap(parent, offset, child, 0)
    }

    /// Maps `child` at `offset` in `parent` with `priority`.
    pub fn add_subregion_overlap(
        &self,
        parent: &MemoryRegion,
        offset: u64,
        child: &MemoryRegion,
        priority: i32,
    ) -> Result<(), MemoryError> {
        if let Some(p) = child.parent() {
            return Err(MemoryError::AlreadyMapped {
                child: child.name().into(),
                parent: p.name().into(),
            });
        }
        if child.reaches(parent, MAX_DEPTH) {
            return Err(MemoryError::Cycle {
                child: child.name().into(),
                parent: parent.name().into(),
            });
        }
        {
            let mut st = child.lock();
            st.addr = offset;
            st.priority = priority;
            st.container = Some(parent.weak());
        }
        parent.insert_sorted(child);
        log::debug!(
            "map {} at {offset:#x} in {} (prio {priority})",
            child.name(),
            parent.name()
        );
        let (p, c) = (parent.clone(), child.clone());
        self.mem.push_undo(Box::new(move || {
            p.lock().subregions.retain(|s| !s.same(&c));
            c.lock().container = None;
        }));
        Ok(())
    }

    /// Unmaps `child` from `parent`.
    pub fn del_subregion(
        &self,
        parent: &MemoryRegion,
        child: &MemoryRegion,
    ) -> Result<(), MemoryError> {
        let idx = {
            let mut st = parent.lock();
            let idx = st
                .subregions
                .iter()
                .position(|s| s.same(child))
                .ok_or_else(|| MemoryError::NotASubregion {
                    child: child.name().into(),
                    parent: parent.name().into(),
                })?;
            st.subregions.remove(idx);
            idx
        };
        child.lock().container = None;
        let (p, c) = (parent.clone(), child.clone());
        self.mem.push_undo(Box::new(move || {
            c.lock().container = Some(p.weak());
            p.lock().subregions.insert(idx, c);
        }));
        Ok(())
    }

    pub fn set_enabled(&self, r: &MemoryRegion, enabled: bool) {
        let old = std::mem::replace(&mut r.lock().enabled, enabled);
        let r = r.clone();
        self.mem.push_undo(Box::new(move || r.lock().enabled = old));
    }

    pub fn set_readonly(&self, r: &MemoryRegion, readonly: bool) {
        let old = std::mem::replace(&mut r.lock().readonly, readonly);
        let r = r.clone();
        self.mem
            .push_undo(Box::new(move || r.lock().readonly = old));
    }

    pub fn set_size(&self, r: &MemoryRegion, size: u64) {
        let old = std::mem::replace(&mut r.lock().size, size);
        let r = r.clone();
        self.mem.push_undo(Box::new(move || r.lock().size = old));
    }

    /// Moves `r` within its container (or sets where it will be mapped).
    /// Like a fresh mapping, it then wins ties with equal priorities.
    pub fn set_address(&self, r: &MemoryRegion, addr: u64) {
        let parent = r.parent();
        let old_idx = parent.as_ref().and_then(|p| {
            let mut st = p.lock();
            let i = st.subregions.iter().position(|s| s.same(r))?;
            st.subregions.remove(i);
            Some(i)
        });
        let old = std::mem::replace(&mut r.lock().addr, addr);
        if let Some(p) = &parent {
            p.insert_sorted(r);
        }
        let r = r.clone();
        self.mem.push_undo(Box::new(move || {
            if let (Some(p), Some(i)) = (&parent, old_idx) {
                let mut st = p.lock();
                st.subregions.retain(|s| !s.same(&r));
                st.subregions.insert(i, r.clone());
            }
            r.lock().addr = old;
        }));
    }

    pub fn set_alias_offset(&self, r: &MemoryRegion, offset: u64) -> Result<(), MemoryError> {
        if r.alias_target().is_none() {
            return Err(MemoryError::NotAnAlias(r.name().into()));
        }
        let old = std::mem::replace(&mut r.lock().alias_offset, offset);
        let r = r.clone();
        self.mem
            .push_undo(Box::new(move || r.lock().alias_offset = old));
        Ok(())
    }

    /// Turns dirty logging for the clients in `clients` on or off.
    pub fn set_dirty_log(&self, r: &MemoryRegion, clients: u8, on: bool) {
        let old = {
            let mut st = r.lock();
            let old = st.dirty_log_mask;
            st.dirty_log_mask = if on { old | clients } else { old & !clients };
            old
        };
        let r = r.clone();
        self.mem
            .push_undo(Box::new(move || r.lock().dirty_log_mask = old));
    }

    /// Adds an ioeventfd; `e.addr` is an offset in `r`.
    pub fn add_eventfd(&self, r: &MemoryRegion, e: Ioeventfd) -> Result<(), MemoryError> {
        {
            let mut st = r.lock();
            if st.ioeventfds.contains(&e) {
                return Err(MemoryError::DuplicateIoeventfd {
                    region: r.name().into(),
                    addr: e.addr,
                });
            }
            st.ioeventfds.push(e.clone());
        }
        let r = r.clone();
        self.mem
            .push_undo(Box::new(move || r.lock().ioeventfds.retain(|x| *x != e)));
        Ok(())
    }

    pub fn del_eventfd(&self, r: &MemoryRegion, e: &Ioeventfd) -> Result<(), MemoryError> {
        let (idx, old) = {
            let mut st = r.lock();
            let idx = st.ioeventfds.iter().position(|x| x == e).ok_or_else(|| {
                MemoryError::NoSuchIoeventfd {
                    region: r.name().into(),
                    addr: e.addr,
                }
            })?;
            (idx, st.ioeventfds.remove(idx))
        };
        let r = r.clone();
        self.mem
            .push_undo(Box::new(move || r.lock().ioeventfds.insert(idx, old)));
        Ok(())
    }

    /// Marks `[offset, offset + size)` of an I/O region as coalesced MMIO.
    pub fn add_coalescing(&self, r: &MemoryRegion, offset: u64, size: u64) {
        let mut v = r.lock().coalesced.to_vec();
        v.push((offset, size));
        self.replace_coalesced(r, v);
    }

    pub fn clear_coalescing(&self, r: &MemoryRegion) {
        self.replace_coalesced(r, Vec::new());
    }

    fn replace_coalesced(&self, r: &MemoryRegion, v: Vec<(u64, u64)>) {
        let old = std::mem::replace(&mut r.lock().coalesced, Arc::new(v));
        let r = r.clone();
        self.mem
            .push_undo(Box::new(move || r.lock().coalesced = old));
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Abandoning a level only undoes; it cannot be refused.
            let _ = self.mem.finish(false, self.mark);
        }
    }
}
