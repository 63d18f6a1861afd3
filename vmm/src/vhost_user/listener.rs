//! The `vhost` listener (priority 5): each round rebuilds the backend's
//! memory table from the RAM sections it is given (added or unchanged);
//! commit sends only the difference, REM_MEM_REG before ADD_MEM_REG, or one
//! SET_MEM_TABLE for a backend without CONFIGURE_MEM_SLOTS, and nothing at
//! all when the table did not change. A backend that refuses (no free slot,
//! gone) refuses the transaction.

use vmm_vhost::memtable::MemRegion;
use vmm_vhost::{apply, MemTable, MemTableSink};

use crate::memory::{FlatRange, HookResult, MemoryListener};

pub const PRIORITY: i32 = 5;

pub struct VhostListener<S: MemTableSink> {
    name: String,
    sink: S,
    round: MemTable,
    /// What the backend holds.
    sent: Vec<MemRegion>,
    /// Messages sent (rounds that changed the table), for statistics.
    pub updates: u64,
}

impl<S: MemTableSink> VhostListener<S> {
    /// `name` tells backends apart in errors and `info mtree` (e.g.
    /// "vhost:disk0").
    pub fn new(name: &str, sink: S) -> Self {
        VhostListener {
            name: name.into(),
            sink,
            round: MemTable::default(),
            sent: Vec::new(),
            updates: 0,
        }
    }

    /// The table the backend holds.
    pub fn table(&self) -> &[MemRegion] {
        &self.sent
    }
}

/// Guest RAM the backend can map: RAM with a file behind it. ROM and device
/// BARs are not DMA targets for a vhost-user device.
pub(crate) fn section(r: &FlatRange) -> Option<MemRegion> {
    if !r.is_ram() || r.readonly {
        return None;
    }
    let host = r.host_addr()?;
    let (fd, fd_offset) = r.fd_offset()?;
    Some(MemRegion {
        gpa: r.addr,
        size: r.size,
        host,
        fd,
        fd_offset,
    })
}

impl<S: MemTableSink> MemoryListener for VhostListener<S> {
    fn name(&self) -> &str {
        &self.name
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn begin(&mut self) {
        self.round.begin();
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        if let Some(s) = section(r) {
            self.round.add(s);
        }
        Ok(())
    }
    fn region_nop(&mut self, r: &FlatRange) {
        if let Some(s) = section(r) {
            self.round.add(s);
        }
    }
    fn region_del(&mut self, r: &FlatRange) {
        // Only a rollback takes back a section given in this round.
        if let Some(s) = section(r) {
            self.round.del(&s);
        }
    }
    fn commit(&mut self) -> HookResult {
        let new = self.round.regions();
        if new == self.sent {
            return Ok(());
        }
        apply(&mut self.sink, &self.sent, &new)?;
        log::debug!("{}: memory table now {} regions", self.name, new.len());
        self.sent = new;
        self.updates += 1;
        Ok(())
    }
}
