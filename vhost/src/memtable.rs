//! The memory table a vhost-user backend holds, rebuilt every round.
//!
//! The listener feeds every RAM section it sees (added or unchanged) into a
//! fresh table; neighbours contiguous in guest address, host address and
//! file offset of the same file are merged, so a RAM block split by the
//! memory map into pieces that stay together for the backend is one region.
//! At commit the new table is compared with what the backend has: nothing
//! is sent when they are equal; otherwise the removed regions go first,
//! then the added ones (CONFIGURE_MEM_SLOTS), or the whole table at once.

use std::os::fd::RawFd;

/// One guest memory region as the backend maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    pub gpa: u64,
    pub size: u64,
    /// Where the region is mapped in this process.
    pub host: u64,
    /// The file the backend maps, and the offset of `gpa` in it.
    pub fd: RawFd,
    pub fd_offset: u64,
}

impl MemRegion {
    fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    /// Whether `next` continues this region for the backend.
    fn joins(&self, next: &MemRegion) -> bool {
        self.end() == next.gpa
            && self.host.checked_add(self.size) == Some(next.host)
            && self.fd == next.fd
            && self.fd_offset.checked_add(self.size) == Some(next.fd_offset)
    }
}

/// What to send to bring a backend from one table to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The tables are equal: send nothing.
    None,
    /// REM_MEM_REG for each of `remove`, then ADD_MEM_REG for each of `add`.
    Regions {
        remove: Vec<MemRegion>,
        add: Vec<MemRegion>,
    },
    /// One SET_MEM_TABLE with the whole new table.
    Whole(Vec<MemRegion>),
}

/// The sections of one round.
#[derive(Default, Debug)]
pub struct MemTable {
    sections: Vec<MemRegion>,
}

impl MemTable {
    /// Starts a round.
    pub fn begin(&mut self) {
        self.sections.clear();
    }

    /// A section that is in the view (added or unchanged).
    pub fn add(&mut self, r: MemRegion) {
        self.sections.push(r);
    }

    /// Takes back a section given in this round (a rollback).
    pub fn del(&mut self, r: &MemRegion) {
        if let Some(i) = self.sections.iter().position(|s| s == r) {
            self.sections.remove(i);
        }
    }

    /// The merged table of this round, by guest address.
    pub fn regions(&self) -> Vec<MemRegion> {
        let mut s = self.sections.clone();
        s.sort_by_key(|r| r.gpa);
        let mut out: Vec<MemRegion> = Vec::with_capacity(s.len());
        for r in s {
            match out.last_mut() {
                Some(last) if last.joins(&r) => last.size += r.size,
                _ => out.push(r),
            }
        }
        out
    }
}

/// What to send to go from `old` to `new` (both merged and sorted).
pub fn diff(old: &[MemRegion], new: &[MemRegion], mem_slots: bool) -> Update {
    if old == new {
        return Update::None;
    }
    if !mem_slots {
        return Update::Whole(new.to_vec());
    }
    Update::Regions {
        remove: old.iter().filter(|r| !new.contains(r)).copied().collect(),
        add: new.iter().filter(|r| !old.contains(r)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(gpa: u64, size: u64, host: u64, fd: RawFd, off: u64) -> MemRegion {
        MemRegion {
            gpa,
            size,
            host,
            fd,
            fd_offset: off,
        }
    }

    #[test]
    fn neighbours_of_one_file_merge_and_others_do_not() {
        let mut t = MemTable::default();
        t.begin();
        // Given out of order, as a round may.
        t.add(r(0x100000, 0x1000, 0x7000_0010_0000, 3, 0x100000));
        t.add(r(0, 0xc0000, 0x7000_0000_0000, 3, 0));
        t.add(r(0xc0000, 0x40000, 0x7000_000c_0000, 3, 0xc0000));
        // Contiguous in guest address but another file: separate.
        t.add(r(0x101000, 0x1000, 0x7100_0000_0000, 4, 0));
        // Same file, contiguous in gpa but not in host address: separate.
        t.add(r(0x200000, 0x1000, 0x7000_0030_0000, 3, 0x200000));
        assert_eq!(
            t.regions(),
            vec![
                r(0, 0x101000, 0x7000_0000_0000, 3, 0),
                r(0x101000, 0x1000, 0x7100_0000_0000, 4, 0),
                r(0x200000, 0x1000, 0x7000_0030_0000, 3, 0x200000),
            ]
        );
        t.del(&r(0x101000, 0x1000, 0x7100_0000_0000, 4, 0));
        assert_eq!(t.regions().len(), 2);
    }

    #[test]
    fn equal_tables_send_nothing_and_changes_remove_before_adding() {
        let a = r(0, 0x1000_0000, 0x7000_0000_0000, 3, 0);
        let dimm = r(1 << 32, 0x800_0000, 0x7200_0000_0000, 5, 0);
        assert_eq!(diff(&[a], &[a], true), Update::None);
        assert_eq!(
            diff(&[a], &[a, dimm], true),
            Update::Regions {
                remove: vec![],
                add: vec![dimm]
            }
        );
        let shrunk = r(0, 0x800_0000, 0x7000_0000_0000, 3, 0);
        assert_eq!(
            diff(&[a, dimm], &[shrunk], true),
            Update::Regions {
                remove: vec![a, dimm],
                add: vec![shrunk]
            }
        );
        assert_eq!(diff(&[a], &[a, dimm], false), Update::Whole(vec![a, dimm]));
    }
}
