//! The vhost listener with a recording backend.

use std::sync::{Arc, Mutex};

use vmm_vhost::memtable::MemRegion;
use vmm_vhost::{MemTableSink, SinkError};

use super::VhostListener;
use crate::machine::pam::PamMode;
use crate::machine::PcMemory;
use crate::memory::{Memory, MemoryError, MemoryRegion};

#[derive(Default)]
struct Backend {
    calls: Vec<String>,
    table: Vec<MemRegion>,
    refuse_add: bool,
}

#[derive(Clone)]
struct Sink {
    b: Arc<Mutex<Backend>>,
    slots: bool,
    max: u64,
}

impl MemTableSink for Sink {
    fn mem_slots(&self) -> bool {
        self.slots
    }
    fn max_regions(&self) -> u64 {
        self.max
    }
    fn set_mem_table(&mut self, regions: &[MemRegion]) -> Result<(), SinkError> {
        let mut b = self.b.lock().unwrap();
        b.calls.push(format!("SET_MEM_TABLE {}", regions.len()));
        b.table = regions.to_vec();
        Ok(())
    }
    fn add_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError> {
        let mut b = self.b.lock().unwrap();
        if b.refuse_add {
            return Err(SinkError::Refused {
                what: "ADD_MEM_REG".into(),
                source: "backend gone".into(),
            });
        }
        b.calls.push(format!("ADD {:#x}+{:#x}", r.gpa, r.size));
        b.table.push(*r);
        Ok(())
    }
    fn remove_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError> {
        let mut b = self.b.lock().unwrap();
        b.calls.push(format!("REM {:#x}+{:#x}", r.gpa, r.size));
        b.table.retain(|x| x != r);
        Ok(())
    }
}

fn rig(slots: bool, max: u64) -> (Memory, PcMemory, Arc<Mutex<Backend>>) {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let b = Arc::new(Mutex::new(Backend::default()));
    let sink = Sink {
        b: b.clone(),
        slots,
        max,
    };
    mem.register_listener(
        &pc.memory,
        Box::new(VhostListener::new("vhost:disk0", sink)),
    )
    .unwrap();
    (mem, pc, b)
}

/// The guest RAM of the view as (gpa, size), merged as the backend sees it.
fn ram(pc: &PcMemory) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in pc.memory.view().ranges() {
        if !r.is_ram() || r.readonly {
            continue;
        }
        match out.last_mut() {
            Some(l) if l.0 + l.1 == r.addr && r.host_addr().is_some() => l.1 += r.size,
            _ => out.push((r.addr, r.size)),
        }
    }
    out
}

fn table(b: &Arc<Mutex<Backend>>) -> Vec<(u64, u64)> {
    let mut t: Vec<(u64, u64)> = b
        .lock()
        .unwrap()
        .table
        .iter()
        .map(|r| (r.gpa, r.size))
        .collect();
    t.sort();
    t
}

#[test]
fn the_backend_gets_guest_ram_merged_and_nothing_when_unchanged() {
    let (mem, pc, b) = rig(true, 32);
    // RAM below 0xc0000 and above 1 MiB: the legacy window is ROM/PCI.
    assert_eq!(table(&b), vec![(0, 0xc0000), (0x100000, 0x1ff00000)]);
    b.lock().unwrap().calls.clear();
    // A change elsewhere (an I/O region) sends nothing.
    let dev = MemoryRegion::io("dev", 0x1000, Arc::new(crate::memory::testing::NopOps));
    let tx = mem.begin();
    tx.add_subregion(&pc.pci, 0xfe00_0000, &dev).unwrap();
    tx.commit().unwrap();
    assert!(b.lock().unwrap().calls.is_empty());
    // Opening the whole legacy window to RAM joins everything into one.
    let tx = mem.begin();
    for idx in 0..13 {
        pc.pam().set_mode(&tx, idx, PamMode::ReadWrite);
    }
    tx.commit().unwrap();
    let tx = mem.begin();
    tx.set_enabled(
        &pc.system
            .subregions()
            .into_iter()
            .find(|s| s.name() == "smram-region")
            .unwrap(),
        false,
    );
    tx.commit().unwrap();
    assert_eq!(table(&b), vec![(0, 0x2000_0000)]);
    assert_eq!(table(&b), ram(&pc));
    let calls = b.lock().unwrap().calls.clone();
    let first_add = calls.iter().position(|c| c.starts_with("ADD")).unwrap();
    assert!(
        calls[..first_add].iter().all(|c| c.starts_with("REM")),
        "{calls:?}"
    );
}

#[test]
fn a_hot_added_dimm_is_one_add_and_its_removal_one_remove() {
    let (mem, pc, b) = rig(true, 32);
    b.lock().unwrap().calls.clear();
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
    tx.commit().unwrap();
    let tx = mem.begin();
    tx.del_subregion(&pc.system, &dimm).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        b.lock().unwrap().calls,
        ["ADD 0x100000000+0x8000000", "REM 0x100000000+0x8000000"]
    );
}

#[test]
fn a_backend_without_mem_slots_gets_whole_tables() {
    let (mem, pc, b) = rig(false, 8);
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        b.lock().unwrap().calls,
        ["SET_MEM_TABLE 2", "SET_MEM_TABLE 3"]
    );
}

#[test]
fn too_few_backend_slots_refuse_the_hot_add_and_keep_the_table() {
    let (mem, pc, b) = rig(true, 2);
    let before = table(&b);
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
    let err = tx.commit().unwrap_err();
    match &err {
        MemoryError::Listener {
            listener,
            hook,
            source,
            ..
        } => {
            assert_eq!((listener.as_str(), *hook), ("vhost:disk0", "commit"));
            assert!(source.to_string().contains("2 memory slots"), "{source}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(table(&b), before);
    assert!(!dimm.is_mapped());
}

#[test]
fn a_backend_refusing_an_add_is_rolled_back_and_can_retry() {
    let (mem, pc, b) = rig(true, 32);
    b.lock().unwrap().refuse_add = true;
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
    assert!(tx.commit().is_err());
    assert_eq!(table(&b), vec![(0, 0xc0000), (0x100000, 0x1ff00000)]);
    b.lock().unwrap().refuse_add = false;
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
    tx.commit().unwrap();
    assert_eq!(table(&b).len(), 3);
}

/// A backend whose dirty log is a real shared log the test marks.
struct LogSink {
    log: Arc<Mutex<Option<Arc<vmm_vhost::log::DirtyLog>>>>,
}

impl MemTableSink for LogSink {
    fn mem_slots(&self) -> bool {
        true
    }
    fn max_regions(&self) -> u64 {
        509
    }
    fn set_mem_table(&mut self, _: &[MemRegion]) -> Result<(), SinkError> {
        Ok(())
    }
    fn add_mem_region(&mut self, _: &MemRegion) -> Result<(), SinkError> {
        Ok(())
    }
    fn remove_mem_region(&mut self, _: &MemRegion) -> Result<(), SinkError> {
        Ok(())
    }
    fn start_log(&mut self, gpa_end: u64) -> Result<(), SinkError> {
        let mut l = self.log.lock().unwrap();
        let fits = |l: &Arc<vmm_vhost::log::DirtyLog>| {
            l.covers() >= gpa_end && l.covers() / 2 < gpa_end.max(1 << 30)
        };
        if !l.as_ref().is_some_and(fits) {
            let new = Arc::new(vmm_vhost::log::DirtyLog::new(gpa_end).unwrap());
            if let Some(old) = l.as_ref() {
                old.move_into(&new);
            }
            *l = Some(new);
        }
        Ok(())
    }
    fn stop_log(&mut self) {
        *self.log.lock().unwrap() = None;
    }
    fn take_log(&mut self, first: u64, count: u64) -> Option<Vec<u64>> {
        self.log
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.take(first, count))
    }
}

#[test]
fn backend_bits_outside_ram_are_ignored_and_none_is_lost_across_table_changes() {
    let memory = Arc::new(Memory::new());
    let pc = PcMemory::new(&memory, 64 << 20).unwrap();
    let log = Arc::new(Mutex::new(None));
    let sink = LogSink { log: log.clone() };
    memory
        .register_listener(&pc.memory, Box::new(VhostListener::new("vhost", sink)))
        .unwrap();
    memory.log_global_start().unwrap();
    let ram = pc.ram.ram_block().unwrap().clone();
    let current = || log.lock().unwrap().clone().expect("logging");
    // A page of RAM, a bit the backend set on the option ROM (in the log,
    // not a section it may write) and one past the log's end: no crash,
    // nothing invented.
    let l = current();
    l.mark(0x200);
    l.mark(0xc5);
    l.mark(l.covers() / 4096 + 10);
    memory.log_sync(&pc.memory);
    assert_eq!(ram.dirty.take(), vec![0x200]);

    // Hot-add and remove DIMMs (the log grows) while the backend marks
    // RAM pages: every page marked is reported, once.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let (memory, system, stop) = (memory.clone(), pc.system.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let dimm = MemoryRegion::ram("dimm", 2 << 20).unwrap();
                let at = (1u64 << 32) + (n % 8) * (64 << 20);
                let tx = memory.begin();
                tx.add_subregion(&system, at, &dimm).unwrap();
                tx.commit().unwrap();
                let tx = memory.begin();
                tx.del_subregion(&system, &dimm).unwrap();
                tx.commit().unwrap();
                n += 1;
            }
            n
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    for page in 0x300..0x300 + 2000u64 {
        // Let table changes happen between marks.
        if page % 100 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        current().mark(page);
        if page % 50 == 0 {
            memory.log_sync(&pc.memory);
            for p in ram.dirty.take() {
                assert!(seen.insert(p), "page {p:#x} reported twice");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = mover.join().unwrap();
    assert!(rounds > 0, "the table changed while the backend marked");
    assert!(
        current().covers() < 1 << 32,
        "the log shrank back once the DIMMs were gone ({:#x})",
        current().covers()
    );
    memory.log_sync(&pc.memory);
    for p in ram.dirty.take() {
        assert!(seen.insert(p), "page {p:#x} reported twice");
    }
    let want: std::collections::BTreeSet<u64> = (0x300..0x300 + 2000).collect();
    assert_eq!(
        seen, want,
        "every page the backend marked, after {rounds} table changes"
    );
    memory.log_global_stop().unwrap();
}
