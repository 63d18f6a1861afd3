//! What the monitor may do to the machine: the [`Control`] trait, which the
//! machine implements with a cloneable handle (`Machine::control()`), and
//! the plain records it answers queries with.

use std::sync::Arc;

use crate::memory::Memory;

/// A control operation that failed; the text becomes the QMP error's
/// `desc`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("memory hotplug is not available yet")]
    HotplugUnavailable,
    #[error("{0}")]
    Failed(String),
}

/// The run state, as `query-status` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Paused,
    Shutdown,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Shutdown => "shutdown",
        }
    }
}

/// One vCPU for `query-cpus-fast`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub index: usize,
    /// The Linux thread id of the vCPU's thread.
    pub thread_id: i32,
}

/// One disk for `query-block`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The device's name (`virtio-blk0`, `vhost-user-blk0`).
    pub device: String,
    /// The image file, or the vhost-user socket.
    pub file: String,
    pub read_only: bool,
    /// `raw` for an image, `vhost-user` for a backend's socket.
    pub driver: &'static str,
}

/// One plugged memory device for `query-memory-devices` (QEMU's
/// PCDIMMDeviceInfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryDeviceInfo {
    pub id: Option<String>,
    pub addr: u64,
    pub size: u64,
    pub slot: u32,
    pub node: u32,
    /// The backend's id (`object-add` id); shown as `/objects/<id>`.
    pub memdev: String,
    pub hotplugged: bool,
    pub hotpluggable: bool,
}

/// The machine as the monitor sees it. Every method is called from the
/// monitor's thread, never from a vCPU; none may block for long.
pub trait Control: Send + Sync {
    fn status(&self) -> RunStatus;
    /// Pauses every vCPU (and keeps them paused across resets until
    /// `cont`); a no-op when already paused. Emits STOP when it stopped.
    fn stop(&self) -> Result<(), ControlError>;
    /// Lets the vCPUs run again; a no-op unless `stop`ped. Emits RESUME.
    fn cont(&self) -> Result<(), ControlError>;
    /// Resets the machine as the guest's own reset does.
    fn system_reset(&self) -> Result<(), ControlError>;
    /// Presses the ACPI power button; emits POWERDOWN.
    fn system_powerdown(&self) -> Result<(), ControlError>;
    /// Ends the machine's run with status 0.
    fn quit(&self);
    fn cpus(&self) -> Vec<CpuInfo>;
    fn block_devices(&self) -> Vec<BlockInfo>;
    /// The memory model, for `info mtree` and friends.
    fn memory(&self) -> Arc<Memory>;

    /// `object-add qom-type=memory-backend-memfd`.
    fn object_add_memfd(&self, id: &str, size: u64, share: bool) -> Result<(), ControlError>;
    /// `object-del`.
    fn object_del(&self, id: &str) -> Result<(), ControlError>;
    /// `device_add driver=pc-dimm`.
    fn device_add_dimm(
        &self,
        id: &str,
        memdev: &str,
        node: Option<u32>,
    ) -> Result<(), ControlError>;
    /// `device_del`: starts the unplug; DEVICE_DELETED follows when the
    /// guest has let go (see `Events::device_deleted`).
    fn device_del(&self, id: &str) -> Result<(), ControlError>;
    fn memory_devices(&self) -> Vec<MemoryDeviceInfo>;

    /// `calc-dirty-rate` (dirty-bitmap mode) over `ms` milliseconds.
    fn calc_dirty_rate(&self, _ms: u64) -> Result<(), ControlError> {
        Err(ControlError::Failed(
            "dirty rate measurement is not available".into(),
        ))
    }
    /// `query-dirty-rate`.
    fn query_dirty_rate(&self) -> crate::memory::dirty_rate::DirtyRate {
        Default::default()
    }
}
