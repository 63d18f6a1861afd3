//! A recording listener for tests and benchmarks: it writes every call it
//! gets into a log shared with other recorders (so the global order across
//! listeners is visible), keeps the set of ranges it holds, and can be told
//! to refuse a hook.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::listener::{HookResult, MemoryListener};
use super::{FlatRange, FlatView, Ioeventfd};

/// The shared call log.
pub type CallLog = Arc<Mutex<Vec<String>>>;

/// What a recorder refuses.
#[derive(Clone, Debug, Default)]
pub struct Refuse {
    /// Hook name: "region_add", "log_start", "eventfd_add", "commit" or
    /// "log_global_start".
    pub hook: &'static str,
    /// Only for ranges of the region with this name (None: any).
    pub region: Option<String>,
    /// Only for ioeventfds at this address (None: any).
    pub addr: Option<u64>,
    /// Never refuse ranges listed here (what was held before, so a
    /// rollback can restore it).
    pub keep: Option<BTreeMap<u64, Held>>,
}

/// One range as a recorder holds it: (size, region name, offset in region).
pub type Held = (u64, String, u64);
/// Ioeventfds a recorder holds: (address, datamatch).
pub type HeldEventfds = Arc<Mutex<Vec<(u64, Option<u64>)>>>;

pub struct Recorder {
    name: String,
    priority: i32,
    log: CallLog,
    /// When false nothing is written to the log, only the held set is kept
    /// (benchmarks).
    pub verbose: bool,
    pub refuse: Arc<Mutex<Option<Refuse>>>,
    pub held: Arc<Mutex<BTreeMap<u64, Held>>>,
    pub eventfds: HeldEventfds,
    pub logging: Arc<Mutex<BTreeMap<u64, u8>>>,
}

impl Recorder {
    pub fn new(name: &str, priority: i32, log: &CallLog) -> Self {
        Recorder {
            name: name.into(),
            priority,
            log: log.clone(),
            verbose: true,
            refuse: Arc::default(),
            held: Arc::default(),
            eventfds: Arc::default(),
            logging: Arc::default(),
        }
    }

    fn note(&self, what: impl FnOnce() -> String) {
        if !self.verbose {
            return;
        }
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}", self.name, what()));
    }

    fn refused(&self, hook: &str, r: Option<&FlatRange>) -> HookResult {
        let refuse = self.refuse.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = refuse.as_ref() {
            let region_ok = match (&f.region, r) {
                (Some(name), Some(r)) => r.region.name() == name,
                (Some(_), None) => false,
                (None, _) => true,
            };
            let kept = match (&f.keep, r) {
                (Some(keep), Some(r)) => {
                    keep.get(&r.addr)
                        == Some(&(r.size, r.region.name().to_string(), r.offset_in_region))
                }
                _ => false,
            };
            if f.hook == hook && region_ok && !kept {
                return Err(format!("{} refuses {hook}", self.name).into());
            }
        }
        Ok(())
    }
}

/// `name addr+size` with `@offset` when the range starts inside its region.
pub fn describe(r: &FlatRange) -> String {
    let mut s = format!("{} {:#x}+{:#x}", r.region.name(), r.addr, r.size);
    if r.offset_in_region != 0 {
        s.push_str(&format!("@{:#x}", r.offset_in_region));
    }
    s
}

/// What a view holds, in the shape a recorder keeps.
pub fn held_of(view: &FlatView) -> BTreeMap<u64, Held> {
    view.ranges()
        .iter()
        .map(|r| {
            (
                r.addr,
                (r.size, r.region.name().to_string(), r.offset_in_region),
            )
        })
        .collect()
}

impl MemoryListener for Recorder {
    fn name(&self) -> &str {
        &self.name
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn begin(&mut self) {
        if self.verbose {
            self.note(|| "begin".into());
        }
    }
    fn commit(&mut self) -> HookResult {
        self.refused("commit", None)?;
        if self.verbose {
            self.note(|| "commit".into());
        }
        Ok(())
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        self.refused("region_add", Some(r))?;
        self.note(|| format!("add {}", describe(r)));
        let prev = self.held.lock().unwrap().insert(
            r.addr,
            (r.size, r.region.name().to_string(), r.offset_in_region),
        );
        assert!(prev.is_none(), "{} got an add over a held range", self.name);
        Ok(())
    }
    fn region_del(&mut self, r: &FlatRange) {
        self.note(|| format!("del {}", describe(r)));
        let gone = self.held.lock().unwrap().remove(&r.addr);
        assert!(
            gone.is_some(),
            "{} got a del of a range it lacks",
            self.name
        );
    }
    fn region_nop(&mut self, r: &FlatRange) {
        if self.verbose {
            self.note(|| format!("nop {}", describe(r)));
        }
    }
    fn log_start(&mut self, r: &FlatRange, old: u8, new: u8) -> HookResult {
        self.refused("log_start", Some(r))?;
        self.note(|| format!("log_start {} {old:#x}->{new:#x}", describe(r)));
        self.logging.lock().unwrap().insert(r.addr, new);
        Ok(())
    }
    fn log_stop(&mut self, r: &FlatRange, old: u8, new: u8) {
        self.note(|| format!("log_stop {} {old:#x}->{new:#x}", describe(r)));
        let mut l = self.logging.lock().unwrap();
        if new == 0 {
            l.remove(&r.addr);
        } else {
            l.insert(r.addr, new);
        }
    }
    fn log_sync(&mut self, r: &FlatRange) {
        self.note(|| format!("log_sync {}", describe(r)));
    }
    fn log_clear(&mut self, r: &FlatRange) {
        self.note(|| format!("log_clear {}", describe(r)));
    }
    fn log_global_start(&mut self) -> HookResult {
        self.refused("log_global_start", None)?;
        self.note(|| "log_global_start".into());
        Ok(())
    }
    fn log_global_stop(&mut self) {
        self.note(|| "log_global_stop".into());
    }
    fn eventfd_add(&mut self, e: &Ioeventfd) -> HookResult {
        let at = self.refuse.lock().unwrap().as_ref().and_then(|f| f.addr);
        if at.is_none() || at == Some(e.addr) {
            self.refused("eventfd_add", None)?;
        }
        self.note(|| format!("eventfd_add {:#x} {:?}", e.addr, e.datamatch));
        self.eventfds.lock().unwrap().push((e.addr, e.datamatch));
        Ok(())
    }
    fn eventfd_del(&mut self, e: &Ioeventfd) {
        self.note(|| format!("eventfd_del {:#x} {:?}", e.addr, e.datamatch));
        self.eventfds
            .lock()
            .unwrap()
            .retain(|x| *x != (e.addr, e.datamatch));
    }
    fn coalesced_io_add(&mut self, _r: &FlatRange, addr: u64, size: u64) {
        self.note(|| format!("coalesced_add {addr:#x}+{size:#x}"));
    }
    fn coalesced_io_del(&mut self, _r: &FlatRange, addr: u64, size: u64) {
        self.note(|| format!("coalesced_del {addr:#x}+{size:#x}"));
    }
}

/// An I/O region handler that reads zeros and drops writes.
pub struct NopOps;

impl super::RegionOps for NopOps {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}
