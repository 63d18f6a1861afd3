//! The machine's side of the monitor: [`MachineControl`], a cloneable
//! handle that implements [`qmp::Control`] with Arcs to what it needs
//! (never `&mut Machine`), and the run-loop hooks that emit RESET and
//! SHUTDOWN and keep a monitor's `stop` in force across reboots.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwapOption;

use super::hotplug::Hotplug;
use super::pc::Machine;
use super::requests::{Request, Requests};
use crate::devices::legacy::Pm1;
use crate::kvm::VcpuSet;
use crate::memory::dirty_rate::DirtyRateMeter;
use crate::memory::Memory;
use crate::qmp::{self, BlockInfo, ControlError, CpuInfo, Events, MemoryDeviceInfo, RunStatus};

/// A monitor's `stop`: whether it is in force and which vCPU set it
/// paused (each set is paused once, however often the machine reboots).
#[derive(Default)]
struct UserPause {
    stopped: bool,
    applied: Weak<VcpuSet>,
}

#[derive(Default)]
struct RunState {
    user: Mutex<UserPause>,
    shutdown: AtomicBool,
    /// The next reset was asked for by the monitor.
    host_reset: AtomicBool,
    /// Why the host stopped the machine (`host-qmp-quit`, ...).
    quit_reason: Mutex<Option<&'static str>>,
}

/// What the machine keeps for its monitor.
#[derive(Clone)]
pub struct MonitorState {
    events: Events,
    run: Arc<RunState>,
    pm1: Arc<Pm1>,
    blocks: Arc<Mutex<Vec<BlockInfo>>>,
    dirty_rate: DirtyRateMeter,
}

impl MonitorState {
    pub(super) fn new(pm1: Arc<Pm1>) -> Self {
        MonitorState {
            events: Events::new(),
            run: Arc::default(),
            pm1,
            blocks: Arc::default(),
            dirty_rate: DirtyRateMeter::default(),
        }
    }

    /// Lists a disk for `query-block`.
    pub(super) fn add_block(&self, b: BlockInfo) {
        lock(&self.blocks).push(b);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pauses the current vCPU set if a monitor's stop is in force and this
/// set was not paused for it yet.
fn apply_stop(u: &mut UserPause, slot: &ArcSwapOption<VcpuSet>) {
    if !u.stopped {
        return;
    }
    if let Some(v) = slot.load_full() {
        if !u.applied.upgrade().is_some_and(|a| Arc::ptr_eq(&a, &v)) {
            v.pause();
            u.applied = Arc::downgrade(&v);
        }
    }
}

/// The monitor's handle on the machine.
#[derive(Clone)]
pub struct MachineControl {
    requests: Requests,
    vcpus: Arc<ArcSwapOption<VcpuSet>>,
    memory: Arc<Memory>,
    m: MonitorState,
    /// Memory hotplug, if the machine has it (`--memory ...,slots=`).
    hotplug: Option<Arc<Hotplug>>,
}

impl MachineControl {
    fn hotplug(&self) -> Result<&Arc<Hotplug>, ControlError> {
        self.hotplug
            .as_ref()
            .ok_or(ControlError::HotplugUnavailable)
    }

    /// Stops the machine with status 0; SHUTDOWN says `reason` (QEMU's
    /// ShutdownCause: `host-qmp-quit`, `host-signal`).
    pub fn quit_with(&self, reason: &'static str) {
        *lock(&self.m.run.quit_reason) = Some(reason);
        self.requests.raise(Request::Stop(0));
    }

    pub fn events(&self) -> &Events {
        &self.m.events
    }
}

impl qmp::Control for MachineControl {
    fn status(&self) -> RunStatus {
        if self.m.run.shutdown.load(Ordering::Acquire) {
            RunStatus::Shutdown
        } else if lock(&self.m.run.user).stopped {
            RunStatus::Paused
        } else {
            RunStatus::Running
        }
    }

    fn stop(&self) -> Result<(), ControlError> {
        let mut u = lock(&self.m.run.user);
        if u.stopped {
            return Ok(());
        }
        u.stopped = true;
        apply_stop(&mut u, &self.vcpus);
        drop(u);
        self.m.events.stop();
        Ok(())
    }

    fn cont(&self) -> Result<(), ControlError> {
        let mut u = lock(&self.m.run.user);
        if !u.stopped {
            return Ok(());
        }
        u.stopped = false;
        if let Some(v) = std::mem::take(&mut u.applied).upgrade() {
            v.resume();
        }
        drop(u);
        self.m.events.resume();
        Ok(())
    }

    fn system_reset(&self) -> Result<(), ControlError> {
        self.m.run.host_reset.store(true, Ordering::Release);
        self.requests.raise(Request::Reset);
        Ok(())
    }

    fn system_powerdown(&self) -> Result<(), ControlError> {
        self.m.pm1.press_power_button();
        self.m.events.powerdown();
        Ok(())
    }

    fn quit(&self) {
        self.quit_with("host-qmp-quit");
    }

    fn cpus(&self) -> Vec<CpuInfo> {
        let Some(v) = self.vcpus.load_full() else {
            return Vec::new();
        };
        let ids = v.thread_ids().into_iter().enumerate();
        ids.map(|(index, thread_id)| CpuInfo { index, thread_id })
            .collect()
    }

    fn block_devices(&self) -> Vec<BlockInfo> {
        lock(&self.m.blocks).clone()
    }

    fn memory(&self) -> Arc<Memory> {
        self.memory.clone()
    }

    fn object_add_memfd(&self, id: &str, size: u64, share: bool) -> Result<(), ControlError> {
        let hp = self.hotplug()?;
        if !share {
            return Err(ControlError::Failed(format!(
                "memory backend {id}: share=off is not supported (vhost-user and vfio-user \
                 backends map DIMMs through the shared memfd)"
            )));
        }
        hp.object_add_memfd(id, size).map_err(ControlError::Failed)
    }

    fn object_del(&self, id: &str) -> Result<(), ControlError> {
        self.hotplug()?.object_del(id).map_err(ControlError::Failed)
    }

    fn device_add_dimm(
        &self,
        id: &str,
        memdev: &str,
        node: Option<u32>,
    ) -> Result<(), ControlError> {
        self.hotplug()?
            .device_add_dimm(id, memdev, node)
            .map(|_| ())
            .map_err(ControlError::Failed)
    }

    fn device_del(&self, id: &str) -> Result<(), ControlError> {
        self.hotplug()?.device_del(id).map_err(ControlError::Failed)
    }

    fn calc_dirty_rate(&self, ms: u64) -> Result<(), ControlError> {
        self.m
            .dirty_rate
            .start(self.memory.clone(), ms)
            .map_err(ControlError::Failed)
    }

    fn query_dirty_rate(&self) -> crate::memory::dirty_rate::DirtyRate {
        self.m.dirty_rate.query()
    }

    fn memory_devices(&self) -> Vec<MemoryDeviceInfo> {
        let Some(hp) = &self.hotplug else {
            return Vec::new();
        };
        hp.dimms()
            .into_iter()
            .map(|d| MemoryDeviceInfo {
                id: Some(d.id),
                addr: d.addr,
                size: d.size,
                slot: d.slot as u32,
                node: d.node,
                memdev: d.memdev,
                hotplugged: true,
                hotpluggable: true,
            })
            .collect()
    }
}

impl Machine {
    /// A handle for the monitor; clones share everything.
    pub fn control(&self) -> MachineControl {
        MachineControl {
            requests: self.requests.clone(),
            vcpus: self.vcpu_slot.clone(),
            memory: self.memory.clone(),
            m: self.monitor.clone(),
            hotplug: self.hotplug.clone(),
        }
    }

    /// The event sink (for the QMP server and for hotplug's
    /// DEVICE_DELETED and ACPI_DEVICE_OST).
    pub fn events(&self) -> Events {
        self.monitor.events.clone()
    }

    /// After the vCPUs started: a monitor's stop holds them too.
    pub(super) fn monitor_started(&self) {
        apply_stop(&mut lock(&self.monitor.run.user), &self.vcpu_slot);
    }

    /// On every reset, before the guest starts again: RESET.
    pub(super) fn monitor_reset(&self) {
        let host = self.monitor.run.host_reset.swap(false, Ordering::AcqRel);
        let reason = if host {
            "host-qmp-system-reset"
        } else {
            "guest-reset"
        };
        self.monitor.events.reset(!host, reason);
    }

    /// When the machine stopped for good: SHUTDOWN.
    pub(super) fn monitor_stopped(&self) {
        self.monitor.run.shutdown.store(true, Ordering::Release);
        match lock(&self.monitor.run.quit_reason).take() {
            Some(reason) => self.monitor.events.shutdown(false, reason),
            None => self.monitor.events.shutdown(true, "guest-shutdown"),
        }
    }
}
