//! Where a memory table goes: a vhost-user backend over its socket, or a
//! test double.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo};

use crate::log::DirtyLog;
use crate::memtable::{diff, MemRegion, Update};

const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the backend has {max} memory slots; the table needs {need}")]
    NoSlots { need: usize, max: u64 },
    #[error("the backend refused {what}")]
    Refused {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The memory-table messages of a vhost-user frontend.
pub trait MemTableSink: Send {
    /// Whether the backend negotiated CONFIGURE_MEM_SLOTS.
    fn mem_slots(&self) -> bool;
    /// How many regions the backend can hold.
    fn max_regions(&self) -> u64;
    fn set_mem_table(&mut self, regions: &[MemRegion]) -> Result<(), SinkError>;
    fn add_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError>;
    fn remove_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError>;

    /// Starts the backend's dirty log for guest-physical addresses below
    /// `gpa_end` (SET_LOG_BASE, then the LOG_ALL feature); again with a
    /// larger end to grow it, keeping the bits so far.
    fn start_log(&mut self, _gpa_end: u64) -> Result<(), SinkError> {
        Ok(())
    }
    /// Stops it (the features again without LOG_ALL).
    fn stop_log(&mut self) {}
    /// Takes the log's bits of pages `[first, first + count)`.
    fn take_log(&mut self, _first: u64, _count: u64) -> Option<Vec<u64>> {
        None
    }
}

fn info(r: &MemRegion) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.gpa,
        memory_size: r.size,
        userspace_addr: r.host,
        mmap_offset: r.fd_offset,
        mmap_handle: r.fd,
    }
}

fn refused(what: String, e: vhost::Error) -> SinkError {
    SinkError::Refused {
        what,
        source: Box::new(e),
    }
}

/// A connected vhost-user backend.
pub struct FrontendSink {
    pub frontend: Arc<Mutex<Frontend>>,
    /// Virtio features the driver accepted (SET_FEATURES), to resend with
    /// and without LOG_ALL.
    pub acked: Arc<AtomicU64>,
    /// Whether the backend does LOG_SHMFD and LOG_ALL.
    pub can_log: bool,
    pub log: Option<DirtyLog>,
    /// While false the backend is gone: changes are accepted and not sent
    /// (whoever reconnects replays the whole table).
    pub connected: Arc<AtomicBool>,
    pub mem_slots: bool,
    pub max_regions: u64,
}

impl FrontendSink {
    fn gone(&self) -> bool {
        !self.connected.load(Ordering::Acquire)
    }
}

impl MemTableSink for FrontendSink {
    fn mem_slots(&self) -> bool {
        self.mem_slots
    }
    fn max_regions(&self) -> u64 {
        self.max_regions
    }
    fn set_mem_table(&mut self, regions: &[MemRegion]) -> Result<(), SinkError> {
        if self.gone() {
            return Ok(());
        }
        let infos: Vec<_> = regions.iter().map(info).collect();
        let f = self.frontend.lock().unwrap_or_else(|e| e.into_inner());
        f.set_mem_table(&infos)
            .map(|_| ())
            .map_err(|e| refused(format!("SET_MEM_TABLE of {} regions", regions.len()), e))
    }
    fn add_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError> {
        if self.gone() {
            return Ok(());
        }
        let mut f = self.frontend.lock().unwrap_or_else(|e| e.into_inner());
        f.add_mem_region(&info(r))
            .map(|_| ())
            .map_err(|e| refused(format!("ADD_MEM_REG {:#x}+{:#x}", r.gpa, r.size), e))
    }
    fn start_log(&mut self, gpa_end: u64) -> Result<(), SinkError> {
        if !self.can_log {
            return Err(SinkError::Refused {
                what: "dirty logging (no LOG_SHMFD or LOG_ALL)".into(),
                source: "the backend did not offer them".into(),
            });
        }
        // Keep the log unless it must grow, or could shrink to half.
        let fits = |l: &DirtyLog| l.covers() >= gpa_end && l.covers() / 2 < gpa_end.max(1 << 30);
        if self.log.as_ref().is_some_and(fits) {
            return Ok(());
        }
        let log = DirtyLog::new(gpa_end).map_err(|e| SinkError::Refused {
            what: "a dirty log memfd".into(),
            source: Box::new(e),
        })?;
        if let Some(old) = &self.log {
            old.move_into(&log);
        }
        if !self.gone() {
            let f = self.frontend.lock().unwrap_or_else(|e| e.into_inner());
            let region = VhostUserDirtyLogRegion {
                mmap_size: log.size(),
                mmap_offset: 0,
                mmap_handle: log.fd(),
            };
            f.set_log_base(0, Some(region))
                .map_err(|e| refused("SET_LOG_BASE".into(), e))?;
            let acked = self.acked.load(Ordering::Acquire);
            f.set_features(acked | LOG_ALL | PROTOCOL_FEATURES)
                .map_err(|e| refused("SET_FEATURES with LOG_ALL".into(), e))?;
        }
        self.log = Some(log);
        Ok(())
    }
    fn stop_log(&mut self) {
        if self.log.take().is_some() && !self.gone() {
            let f = self.frontend.lock().unwrap_or_else(|e| e.into_inner());
            let acked = self.acked.load(Ordering::Acquire);
            if let Err(e) = f.set_features(acked | PROTOCOL_FEATURES) {
                log::warn!("vhost-user: SET_FEATURES without LOG_ALL: {e}");
            }
        }
    }
    fn take_log(&mut self, first: u64, count: u64) -> Option<Vec<u64>> {
        self.log.as_ref().map(|l| l.take(first, count))
    }
    fn remove_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError> {
        if self.gone() {
            return Ok(());
        }
        let mut f = self.frontend.lock().unwrap_or_else(|e| e.into_inner());
        f.remove_mem_region(&info(r))
            .map_err(|e| refused(format!("REM_MEM_REG {:#x}+{:#x}", r.gpa, r.size), e))
    }
}

/// Brings `sink` from `old` to `new`. On a refusal the backend is taken
/// back to `old` (as far as it lets itself) and the refusal returned.
pub fn apply(
    sink: &mut dyn MemTableSink,
    old: &[MemRegion],
    new: &[MemRegion],
) -> Result<(), SinkError> {
    if new.len() as u64 > sink.max_regions() {
        return Err(SinkError::NoSlots {
            need: new.len(),
            max: sink.max_regions(),
        });
    }
    match diff(old, new, sink.mem_slots()) {
        Update::None => Ok(()),
        Update::Whole(t) => sink.set_mem_table(&t),
        Update::Regions { remove, add } => {
            for (i, r) in remove.iter().enumerate() {
                if let Err(e) = sink.remove_mem_region(r) {
                    undo(sink, &remove[..i], &[]);
                    return Err(e);
                }
            }
            for (i, r) in add.iter().enumerate() {
                if let Err(e) = sink.add_mem_region(r) {
                    undo(sink, &remove, &add[..i]);
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}

fn undo(sink: &mut dyn MemTableSink, removed: &[MemRegion], added: &[MemRegion]) {
    for r in added {
        if let Err(e) = sink.remove_mem_region(r) {
            log::error!("vhost: cannot undo region {:#x}: {e}", r.gpa);
        }
    }
    for r in removed {
        if let Err(e) = sink.add_mem_region(r) {
            log::error!("vhost: cannot restore region {:#x}: {e}", r.gpa);
        }
    }
}
