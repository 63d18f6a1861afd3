//! A listener wrapper that measures the time spent in its hooks, for
//! benchmarks that split a commit's cost by listener.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::flatview::FlatRange;
use super::listener::{HookResult, MemoryListener};
use super::region::Ioeventfd;

/// Nanoseconds spent in the wrapped listener's hooks, shared with whoever
/// reads them.
#[derive(Clone, Default)]
pub struct Clock(Arc<AtomicU64>);

impl Clock {
    /// Nanoseconds so far, and back to zero.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

pub struct Timed<L: MemoryListener> {
    inner: L,
    clock: Clock,
}

impl<L: MemoryListener> Timed<L> {
    pub fn new(inner: L) -> (Self, Clock) {
        let clock = Clock::default();
        (
            Timed {
                inner,
                clock: clock.clone(),
            },
            clock,
        )
    }

    fn time<R>(&mut self, f: impl FnOnce(&mut L) -> R) -> R {
        let start = Instant::now();
        let r = f(&mut self.inner);
        self.clock
            .0
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

impl<L: MemoryListener> MemoryListener for Timed<L> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn priority(&self) -> i32 {
        self.inner.priority()
    }
    fn begin(&mut self) {
        self.time(|l| l.begin())
    }
    fn commit(&mut self) -> HookResult {
        self.time(|l| l.commit())
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        self.time(|l| l.region_add(r))
    }
    fn region_del(&mut self, r: &FlatRange) {
        self.time(|l| l.region_del(r))
    }
    fn region_nop(&mut self, r: &FlatRange) {
        self.time(|l| l.region_nop(r))
    }
    fn log_start(&mut self, r: &FlatRange, old: u8, new: u8) -> HookResult {
        self.time(|l| l.log_start(r, old, new))
    }
    fn log_stop(&mut self, r: &FlatRange, old: u8, new: u8) {
        self.time(|l| l.log_stop(r, old, new))
    }
    fn log_sync(&mut self, r: &FlatRange) {
        self.time(|l| l.log_sync(r))
    }
    fn log_clear(&mut self, r: &FlatRange) {
        self.time(|l| l.log_clear(r))
    }
    fn log_global_start(&mut self) -> HookResult {
        self.time(|l| l.log_global_start())
    }
    fn log_global_stop(&mut self) {
        self.time(|l| l.log_global_stop())
    }
    fn eventfd_add(&mut self, e: &Ioeventfd) -> HookResult {
        self.time(|l| l.eventfd_add(e))
    }
    fn eventfd_del(&mut self, e: &Ioeventfd) {
        self.time(|l| l.eventfd_del(e))
    }
    fn coalesced_io_add(&mut self, r: &FlatRange, addr: u64, size: u64) {
        self.time(|l| l.coalesced_io_add(r, addr, size))
    }
    fn coalesced_io_del(&mut self, r: &FlatRange, addr: u64, size: u64) {
        self.time(|l| l.coalesced_io_del(r, addr, size))
    }
}

/// A boxed listener is a listener (so `Timed` can wrap any of them).
impl MemoryListener for Box<dyn MemoryListener> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn priority(&self) -> i32 {
        (**self).priority()
    }
    fn begin(&mut self) {
        (**self).begin()
    }
    fn commit(&mut self) -> HookResult {
        (**self).commit()
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        (**self).region_add(r)
    }
    fn region_del(&mut self, r: &FlatRange) {
        (**self).region_del(r)
    }
    fn region_nop(&mut self, r: &FlatRange) {
        (**self).region_nop(r)
    }
    fn log_start(&mut self, r: &FlatRange, old: u8, new: u8) -> HookResult {
        (**self).log_start(r, old, new)
    }
    fn log_stop(&mut self, r: &FlatRange, old: u8, new: u8) {
        (**self).log_stop(r, old, new)
    }
    fn log_sync(&mut self, r: &FlatRange) {
        (**self).log_sync(r)
    }
    fn log_clear(&mut self, r: &FlatRange) {
        (**self).log_clear(r)
    }
    fn log_global_start(&mut self) -> HookResult {
        (**self).log_global_start()
    }
    fn log_global_stop(&mut self) {
        (**self).log_global_stop()
    }
    fn eventfd_add(&mut self, e: &Ioeventfd) -> HookResult {
        (**self).eventfd_add(e)
    }
    fn eventfd_del(&mut self, e: &Ioeventfd) {
        (**self).eventfd_del(e)
    }
    fn coalesced_io_add(&mut self, r: &FlatRange, addr: u64, size: u64) {
        (**self).coalesced_io_add(r, addr, size)
    }
    fn coalesced_io_del(&mut self, r: &FlatRange, addr: u64, size: u64) {
        (**self).coalesced_io_del(r, addr, size)
    }
}
