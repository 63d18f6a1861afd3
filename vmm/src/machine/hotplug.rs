//! Memory hotplug: a device-memory area above RAM (QEMU's layout: from
//! 4 GiB + high RAM rounded up to 1 GiB), memfd backends (QMP's
//! `memory-backend-memfd` objects) and pc-dimm devices in it.
//!
//! Adding a DIMM is one memory-model transaction: its commit reaches every
//! listener (`dma`, `vfio`, `vhost` backends, `kvm-memory`) in priority
//! order, and if any refuses the whole transaction is undone, so no
//! memslot, DMA mapping or backend region of the DIMM remains anywhere.
//! Only after the commit does the guest hear of the DIMM (the slot's
//! insert event and GPE0.3). Removal asks the guest to eject; the eject
//! write takes the DIMM out of the map in one transaction and
//! `DEVICE_DELETED` follows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::error_chain as err_chain;
use crate::devices::gpe::{Gpe0, MEMORY_HOTPLUG};
use crate::devices::mem_hotplug::{HotplugEvents, MemHotplug};
use crate::memory::{Memory, MemoryRegion};

/// DIMMs start and end on this alignment.
pub const DIMM_ALIGN: u64 = 2 << 20;

/// What the hotplug side tells the monitor (QMP events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotplugEvent {
    DeviceDeleted {
        id: String,
    },
    AcpiOst {
        /// The DIMM in the slot, if any.
        device: Option<String>,
        slot: usize,
        event: u32,
        status: u32,
    },
}

pub type EventSink = Arc<dyn Fn(HotplugEvent) + Send + Sync>;

/// One DIMM as `query-memory-devices` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimmInfo {
    pub id: String,
    pub memdev: String,
    pub addr: u64,
    pub size: u64,
    pub slot: usize,
    pub node: u32,
    /// The guest was asked to eject it and has not yet.
    pub removing: bool,
}

struct Backend {
    region: MemoryRegion,
    used_by: Option<String>,
}

#[derive(Default)]
struct State {
    backends: BTreeMap<String, Backend>,
    dimms: BTreeMap<String, DimmInfo>,
}

pub struct Hotplug {
    memory: Arc<Memory>,
    area: MemoryRegion,
    pub base: u64,
    pub size: u64,
    pub dev: Arc<MemHotplug>,
    gpe: Arc<Gpe0>,
    state: Mutex<State>,
    sink: Mutex<Option<EventSink>>,
}

/// The guest's side of the protocol, back to the machine.
struct Events(Weak<Hotplug>);

impl HotplugEvents for Events {
    fn eject(&self, slot: usize) {
        if let Some(h) = self.0.upgrade() {
            h.ejected(slot);
        }
    }
    fn ost(&self, slot: usize, event: u32, status: u32) {
        if let Some(h) = self.0.upgrade() {
            let device = h
                .lock()
                .dimms
                .values()
                .find(|d| d.slot == slot)
                .map(|d| d.id.clone());
            h.emit(HotplugEvent::AcpiOst {
                device,
                slot,
                event,
                status,
            });
        }
    }
}

impl Hotplug {
    /// `area` is the (empty, already mapped) device-memory container at
    /// `base`.
    pub fn new(
        memory: Arc<Memory>,
        area: MemoryRegion,
        base: u64,
        slots: usize,
        gpe: Arc<Gpe0>,
    ) -> Arc<Hotplug> {
        Arc::new_cyclic(|weak: &Weak<Hotplug>| Hotplug {
            memory,
            size: area.size(),
            area,
            base,
            dev: Arc::new(MemHotplug::new(slots, Arc::new(Events(weak.clone())))),
            gpe,
            state: Mutex::default(),
            sink: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where events go (QMP); replaces the previous sink.
    pub fn set_sink(&self, sink: EventSink) {
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    fn emit(&self, ev: HotplugEvent) {
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(s) = sink {
            s(ev);
        }
    }

    /// `object-add memory-backend-memfd,id=ID,size=SIZE`.
    pub fn object_add_memfd(&self, id: &str, size: u64) -> Result<(), String> {
        if id.is_empty() {
            return Err("memory backend id is empty".into());
        }
        if size == 0 || size % DIMM_ALIGN != 0 {
            return Err(format!(
                "memory backend {id}: size {size} is not a non-zero multiple of 2 MiB"
            ));
        }
        if size > self.size {
            return Err(format!(
                "memory backend {id}: size {size} exceeds the device-memory area ({})",
                self.size
            ));
        }
        let mut st = self.lock();
        if st.backends.contains_key(id) {
            return Err(format!("attempt to add duplicate property '{id}'"));
        }
        let region =
            MemoryRegion::ram(id, size).map_err(|e| format!("memory backend {id}: {e}"))?;
        st.backends.insert(
            id.to_owned(),
            Backend {
                region,
                used_by: None,
            },
        );
        Ok(())
    }

    /// `object-del`: only a backend no DIMM uses.
    pub fn object_del(&self, id: &str) -> Result<(), String> {
        let mut st = self.lock();
        match st.backends.get(id) {
            None => Err(format!("object '{id}' not found")),
            Some(b) if b.used_by.is_some() => Err(format!(
                "object '{id}' is in use by {}",
                b.used_by.as_deref().unwrap_or_default()
            )),
            Some(_) => {
                st.backends.remove(id);
                Ok(())
            }
        }
    }

    /// First-fit free address for `size` bytes in the area.
    fn free_addr(st: &State, base: u64, area: u64, size: u64) -> Option<u64> {
        let mut used: Vec<(u64, u64)> = st.dimms.values().map(|d| (d.addr, d.size)).collect();
        used.sort_unstable();
        let mut at = base;
        for (a, s) in used {
            if at + size <= a {
                break;
            }
            at = at.max(a + s);
        }
        (at + size <= base + area).then_some(at)
    }

    /// `device_add pc-dimm,id=ID,memdev=MEMDEV[,node=N]`: one transaction
    /// maps it for every listener; then the guest is told.
    pub fn device_add_dimm(
        &self,
        id: &str,
        memdev: &str,
        node: Option<u32>,
    ) -> Result<DimmInfo, String> {
        let mut st = self.lock();
        if id.is_empty() || st.dimms.contains_key(id) {
            return Err(format!("device id '{id}' is empty or already in use"));
        }
        let backend = st
            .backends
            .get(memdev)
            .ok_or_else(|| format!("memory backend '{memdev}' not found"))?;
        if let Some(user) = &backend.used_by {
            return Err(format!(
                "memory backend '{memdev}' is already used by {user}"
            ));
        }
        let region = backend.region.clone();
        let size = region.size();
        let slot = self
            .dev
            .free_slot()
            .ok_or("no free memory slot (raise slots= of --memory)")?;
        let addr = Self::free_addr(&st, self.base, self.size, size)
            .ok_or_else(|| format!("no room for {size} bytes in the device-memory area"))?;
        let tx = self.memory.begin();
        tx.add_subregion(&self.area, addr - self.base, &region)
            .map_err(|e| err_chain(&e))?;
        tx.commit()
            .map_err(|e| format!("device_add {id}: {}", err_chain(&e)))?;
        let info = DimmInfo {
            id: id.to_owned(),
            memdev: memdev.to_owned(),
            addr,
            size,
            slot,
            node: node.unwrap_or(0),
            removing: false,
        };
        if let Some(b) = st.backends.get_mut(memdev) {
            b.used_by = Some(id.to_owned());
        }
        st.dimms.insert(id.to_owned(), info.clone());
        drop(st);
        self.dev.plug(slot, addr, size, info.node);
        self.gpe.raise(MEMORY_HOTPLUG);
        Ok(info)
    }

    /// `device_del ID`: asks the guest to eject; DEVICE_DELETED follows the
    /// eject.
    pub fn device_del(&self, id: &str) -> Result<(), String> {
        let slot = {
            let mut st = self.lock();
            let d = st
                .dimms
                .get_mut(id)
                .ok_or_else(|| format!("Device '{id}' not found"))?;
            d.removing = true;
            d.slot
        };
        if !self.dev.request_removal(slot) {
            return Err(format!("Device '{id}' is not plugged"));
        }
        self.gpe.raise(MEMORY_HOTPLUG);
        Ok(())
    }

    /// The guest ejected `slot`: take the DIMM out of the map.
    fn ejected(&self, slot: usize) {
        let mut st = self.lock();
        let Some(id) = st
            .dimms
            .values()
            .find(|d| d.slot == slot)
            .map(|d| d.id.clone())
        else {
            return;
        };
        let Some(d) = st.dimms.get(&id).cloned() else {
            return;
        };
        let Some(region) = st.backends.get(&d.memdev).map(|b| b.region.clone()) else {
            return;
        };
        let tx = self.memory.begin();
        let res = tx
            .del_subregion(&self.area, &region)
            .map_err(|e| err_chain(&e))
            .and_then(|()| tx.commit().map_err(|e| err_chain(&e)));
        if let Err(e) = res {
            log::error!("ejecting {id}: the memory map kept it: {e}");
            return;
        }
        st.dimms.remove(&id);
        if let Some(b) = st.backends.get_mut(&d.memdev) {
            b.used_by = None;
        }
        drop(st);
        self.dev.unplug(slot);
        self.emit(HotplugEvent::DeviceDeleted { id });
    }

    /// The RAM block of memory backend `id` (its dirty bitmap, its bytes).
    pub fn backend_block(&self, id: &str) -> Option<Arc<crate::memory::RamBlock>> {
        self.lock()
            .backends
            .get(id)
            .and_then(|b| b.region.ram_block().cloned())
    }

    pub fn dimms(&self) -> Vec<DimmInfo> {
        self.lock().dimms.values().cloned().collect()
    }
}
