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
const PAGE: u64 = 4096;

/// Where the highest region of a table ends.
fn gpa_end(t: &[MemRegion]) -> u64 {
    t.iter().map(|r| r.gpa + r.size).max().unwrap_or(0)
}

pub struct VhostListener<S: MemTableSink> {
    name: String,
    sink: S,
    round: MemTable,
    /// What the backend holds.
    sent: Vec<MemRegion>,
    /// Messages sent (rounds that changed the table), for statistics.
    pub updates: u64,
    /// Global dirty logging is on: the backend's log follows the table.
    logging: bool,
    /// Whether this backend's log is used at all (tests turn it off to
    /// show that backend writes are found through it).
    pub use_log: bool,
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
            logging: false,
            use_log: true,
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
    fn log_global_start(&mut self) -> HookResult {
        if !self.use_log {
            return Ok(());
        }
        self.sink.start_log(gpa_end(&self.sent))?;
        self.logging = true;
        Ok(())
    }
    fn log_global_stop(&mut self) {
        if self.logging {
            self.sink.stop_log();
            self.logging = false;
        }
    }
    /// Moves the backend's log bits of `r` into its RAM block's bitmap.
    fn log_sync(&mut self, r: &FlatRange) {
        if !self.logging || section(r).is_none() {
            return;
        }
        let Some(block) = r.region.ram_block() else {
            return;
        };
        let (first, count) = (r.addr / PAGE, r.size / PAGE);
        if let Some(bits) = self.sink.take_log(first, count) {
            block.dirty.merge(r.offset_in_region / PAGE, &bits);
        }
    }
    fn commit(&mut self) -> HookResult {
        let new = self.round.regions();
        if new == self.sent {
            return Ok(());
        }
        // Grow the log before the backend may write the new memory.
        if self.logging && gpa_end(&new) > gpa_end(&self.sent) {
            self.sink.start_log(gpa_end(&new))?;
        }
        apply(&mut self.sink, &self.sent, &new)?;
        // Shrink the log once the backend no longer has the memory.
        if self.logging && gpa_end(&new) < gpa_end(&self.sent) {
            if let Err(e) = self.sink.start_log(gpa_end(&new)) {
                log::warn!("{}: shrinking the dirty log: {e}", self.name);
            }
        }
        log::debug!("{}: memory table now {} regions", self.name, new.len());
        self.sent = new;
        self.updates += 1;
        Ok(())
    }
}
