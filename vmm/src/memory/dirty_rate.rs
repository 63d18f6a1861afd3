//! `calc-dirty-rate` in QEMU's dirty-bitmap mode: global dirty logging for
//! a while, then the pages written in that time over all RAM blocks, as
//! MB/s; and `info dirty-log`, the dirty pages per RAM block since the
//! last sync.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dirty_log::PAGE;
use super::mtree::ram_blocks;
use super::Memory;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Unstarted,
    Measuring,
    Measured,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Unstarted => "unstarted",
            Status::Measuring => "measuring",
            Status::Measured => "measured",
        }
    }
}

/// What `query-dirty-rate` reports.
#[derive(Clone, Debug, Default)]
pub struct DirtyRate {
    pub status: Status,
    /// MB/s (MiB), once measured.
    pub rate: Option<u64>,
    /// Seconds since the epoch when the measurement started.
    pub start_time: u64,
    pub calc_time_ms: u64,
    pub pages: u64,
}

/// One measurement at a time, shared by the monitor and its thread.
#[derive(Clone, Default)]
pub struct DirtyRateMeter(Arc<Mutex<DirtyRate>>);

impl DirtyRateMeter {
    fn lock(&self) -> MutexGuard<'_, DirtyRate> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn query(&self) -> DirtyRate {
        self.lock().clone()
    }

    /// Starts measuring for `ms` milliseconds in a thread; refuses while a
    /// measurement runs or when global logging cannot start.
    pub fn start(&self, memory: Arc<Memory>, ms: u64) -> Result<(), String> {
        {
            let mut st = self.lock();
            if st.status == Status::Measuring {
                return Err("a dirty rate measurement is already running".into());
            }
            *st = DirtyRate {
                status: Status::Measuring,
                start_time: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                calc_time_ms: ms,
                ..DirtyRate::default()
            };
        }
        if let Err(e) = memory.log_global_start() {
            *self.lock() = DirtyRate::default();
            return Err(format!("cannot start dirty logging: {e}"));
        }
        sync_all(&memory);
        for (b, _) in ram_blocks(&memory) {
            b.dirty.take();
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("dirty-rate".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                sync_all(&memory);
                let pages: u64 = ram_blocks(&memory)
                    .iter()
                    .map(|(b, _)| b.dirty.take().len() as u64)
                    .sum();
                if let Err(e) = memory.log_global_stop() {
                    log::warn!("dirty rate: stopping dirty logging: {e}");
                }
                let mut st = me.lock();
                st.pages = pages;
                st.rate = Some(pages * PAGE * 1000 / ms.max(1) / (1 << 20));
                st.status = Status::Measured;
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the measuring thread: {e}"))
    }
}

fn sync_all(memory: &Memory) {
    for space in memory.address_spaces() {
        memory.log_sync(&space);
    }
}

/// `info dirty-log`: per RAM block, the pages dirty since the last time
/// they were taken (after collecting what the listeners hold).
pub fn info_dirty_log(memory: &Memory) -> String {
    sync_all(memory);
    let mut out = format!(
        "global dirty logging: {}\r\n",
        if memory.global_log() { "on" } else { "off" }
    );
    for (b, _) in ram_blocks(memory) {
        out.push_str(&format!(
            "{:24} {:>10} pages {:>10} dirty\r\n",
            b.name(),
            b.dirty.pages(),
            b.dirty.count()
        ));
    }
    out
}
