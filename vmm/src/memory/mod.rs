//! The memory model, after QEMU's memory API (system/memory.c).
//!
//! A tree of [`MemoryRegion`]s is rendered per [`AddressSpace`] into a
//! [`FlatView`] of non-overlapping [`FlatRange`]s. Changes are made in a
//! [`Transaction`]; the outermost commit renders every address space and fans
//! the difference out to the [`MemoryListener`]s in priority order (see
//! [`listener`]). If a listener refuses, the whole transaction is undone: the
//! tree, every listener and the views are as before, and the caller gets the
//! error.

mod address_space;
pub mod dirty_log;
pub mod dirty_rate;
pub mod dma;
mod fanout;
mod flatview;
pub mod listener;
pub mod mtree;
mod ram;
mod region;
pub mod timed;
mod transaction;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use address_space::{Access, AddressSpace};
pub use flatview::{FlatRange, FlatView};
pub use listener::{HookError, HookResult, ListenerId, MemoryListener};
pub use ram::{RamBlock, RamError};
pub use region::{dirty, Ioeventfd, MemoryRegion, RegionKind, RegionOps};
pub use transaction::{Memory, Transaction};

/// Errors of the memory model.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("region {child:?} is already mapped in {parent:?}")]
    AlreadyMapped { child: String, parent: String },
    #[error("mapping {child:?} into {parent:?} would make the tree a cycle")]
    Cycle { child: String, parent: String },
    #[error("region {child:?} is not mapped in {parent:?}")]
    NotASubregion { child: String, parent: String },
    #[error("region {0:?} is not an alias")]
    NotAnAlias(String),
    #[error("region {region:?} already has this ioeventfd at offset {addr:#x}")]
    DuplicateIoeventfd { region: String, addr: u64 },
    #[error("region {region:?} has no such ioeventfd at offset {addr:#x}")]
    NoSuchIoeventfd { region: String, addr: u64 },
    #[error("listener {listener:?} of address space {address_space:?} refused {hook} of {what}")]
    Listener {
        address_space: String,
        listener: String,
        hook: &'static str,
        what: String,
        #[source]
        source: HookError,
    },
    #[error("global dirty logging cannot change inside an open transaction")]
    LogInTransaction,
    #[error(transparent)]
    Ram(#[from] RamError),
}
