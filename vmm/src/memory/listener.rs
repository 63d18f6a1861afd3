//! The interface through which KVM, VFIO and vhost-user follow the memory
//! map.
//!
//! A listener is registered on one address space with a priority. Each
//! commit is one round: `begin`; `region_del` for ranges that vanished
//! (listeners in descending priority); `region_add` for new ranges and
//! `region_nop` for unchanged ones (ascending), with `log_start`/`log_stop`
//! where a range's dirty mask changed; `eventfd_del` then `eventfd_add`;
//! `commit`. Adds in ascending and deletes in descending priority keep what
//! devices can reach by DMA (low priorities) a superset of what the guest can
//! reach (KVM, priority 10).
//!
//! A range added with a non-zero dirty mask is followed by
//! `log_start(0 -> mask)`, and one removed is preceded by
//! `log_stop(mask -> 0)`, so `region_add` itself never means "logging on".
//!
//! Failure contract: a hook that returns an error must have had no effect.
//! The memory model then undoes the transaction for every listener, in the
//! same order rules: listeners that committed get a new round taking them
//! back to the old view; listeners still inside the round get the inverse of
//! what they were told (and `region_nop` for the old ranges they were not
//! told about yet), then `commit`. Listeners must not start a memory
//! transaction from inside a hook.

use std::error::Error;

use super::flatview::FlatRange;
use super::region::Ioeventfd;

/// What a failing hook returns; the memory model wraps it with the
/// listener's name and the hook.
pub type HookError = Box<dyn Error + Send + Sync>;
pub type HookResult = Result<(), HookError>;

/// Follows the flat view of one address space. Every hook has a do-nothing
/// default.
#[allow(unused_variables)]
pub trait MemoryListener: Send {
    /// Shown in `info mtree` listener lists and in errors.
    fn name(&self) -> &str;
    /// Lower runs first for adds and last for deletes.
    fn priority(&self) -> i32;

    fn begin(&mut self) {}
    fn commit(&mut self) -> HookResult {
        Ok(())
    }
    fn region_add(&mut self, range: &FlatRange) -> HookResult {
        Ok(())
    }
    fn region_del(&mut self, range: &FlatRange) {}
    fn region_nop(&mut self, range: &FlatRange) {}

    /// Logging for `range` goes from the clients in `old` to those in `new`
    /// (bits of [`dirty`](super::region::dirty)).
    fn log_start(&mut self, range: &FlatRange, old: u8, new: u8) -> HookResult {
        Ok(())
    }
    fn log_stop(&mut self, range: &FlatRange, old: u8, new: u8) {}
    /// Collect the dirty bits the listener holds for `range`.
    fn log_sync(&mut self, range: &FlatRange) {}
    /// Re-arm tracking for `range` after its bits were read.
    fn log_clear(&mut self, range: &FlatRange) {}
    fn log_global_start(&mut self) -> HookResult {
        Ok(())
    }
    fn log_global_stop(&mut self) {}

    /// `ioeventfd.addr` is an address in the listener's address space.
    fn eventfd_add(&mut self, ioeventfd: &Ioeventfd) -> HookResult {
        Ok(())
    }
    fn eventfd_del(&mut self, ioeventfd: &Ioeventfd) {}
    fn coalesced_io_add(&mut self, range: &FlatRange, addr: u64, size: u64) {}
    fn coalesced_io_del(&mut self, range: &FlatRange, addr: u64, size: u64) {}
}

/// Handle returned by registration, for unregistering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) u64);
