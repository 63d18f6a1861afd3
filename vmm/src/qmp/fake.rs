//! A fake machine for the monitor's tests: records calls, and `status`
//! follows stop/cont.

use std::sync::{Arc, Mutex};

use super::control::*;
use crate::memory::Memory;

/// Records calls; `status` follows stop/cont.
#[derive(Default)]
pub struct Fake {
    calls: Mutex<Vec<String>>,
    paused: Mutex<bool>,
    pub memory: Arc<Memory>,
}

impl Fake {
    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    pub fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Control for Fake {
    fn status(&self) -> RunStatus {
        if *self.paused.lock().unwrap() {
            RunStatus::Paused
        } else {
            RunStatus::Running
        }
    }
    fn stop(&self) -> Result<(), ControlError> {
        *self.paused.lock().unwrap() = true;
        Ok(())
    }
    fn cont(&self) -> Result<(), ControlError> {
        *self.paused.lock().unwrap() = false;
        Ok(())
    }
    fn system_reset(&self) -> Result<(), ControlError> {
        self.call("reset".into());
        Ok(())
    }
    fn system_powerdown(&self) -> Result<(), ControlError> {
        self.call("powerdown".into());
        Ok(())
    }
    fn quit(&self) {
        self.call("quit".into());
    }
    fn cpus(&self) -> Vec<CpuInfo> {
        vec![CpuInfo {
            index: 0,
            thread_id: 42,
        }]
    }
    fn block_devices(&self) -> Vec<BlockInfo> {
        vec![BlockInfo {
            device: "virtio-blk0".into(),
            file: "/d.img".into(),
            read_only: true,
            driver: "raw",
        }]
    }
    fn memory(&self) -> Arc<Memory> {
        self.memory.clone()
    }
    fn object_add_memfd(&self, id: &str, size: u64, share: bool) -> Result<(), ControlError> {
        self.call(format!("object_add {id} {size} {share}"));
        Ok(())
    }
    fn object_del(&self, id: &str) -> Result<(), ControlError> {
        self.call(format!("object_del {id}"));
        Err(ControlError::HotplugUnavailable)
    }
    fn device_add_dimm(&self, id: &str, mem: &str, node: Option<u32>) -> Result<(), ControlError> {
        self.call(format!("device_add {id} {mem} {node:?}"));
        Ok(())
    }
    fn device_del(&self, id: &str) -> Result<(), ControlError> {
        self.call(format!("device_del {id}"));
        Ok(())
    }
    fn memory_devices(&self) -> Vec<MemoryDeviceInfo> {
        Vec::new()
    }
}
