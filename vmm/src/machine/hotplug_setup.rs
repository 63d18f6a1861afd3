//! Turning memory hotplug on for a machine: the device-memory area, the
//! hotplug register block at 0xa00 and GPE0 at 0xafe0.

use std::sync::Arc;

use super::hotplug::{Hotplug, HotplugEvent};
use super::layout::FOUR_GIB;
use super::pc::{Machine, MachineError, Reset};
use crate::devices::gpe::{self, Gpe0};
use crate::devices::mem_hotplug;
use crate::memory::MemoryRegion;
use crate::qmp::AcpiOstInfo;

const GIB: u64 = 1 << 30;
/// The most DIMM slots (QEMU's ACPI_MAX_RAM_SLOTS).
pub const MAX_SLOTS: usize = 256;

struct GpeReset(Arc<Gpe0>);

impl Reset for GpeReset {
    fn reset(&self) {
        self.0.reset();
    }
}

impl Machine {
    /// Reserves `size` bytes of device memory above RAM (QEMU: from 4 GiB
    /// plus high RAM, rounded up to 1 GiB) with `slots` DIMM slots; the
    /// `--memory hotplug_size=...,slots=...` options.
    pub fn enable_memory_hotplug(
        &mut self,
        size: u64,
        slots: usize,
    ) -> Result<Arc<Hotplug>, MachineError> {
        if self.hotplug.is_some() {
            return Err(MachineError::Config("memory hotplug is already on".into()));
        }
        if size == 0 || size % GIB != 0 || slots == 0 || slots > MAX_SLOTS {
            return Err(MachineError::Config(format!(
                "--memory hotplug_size={size} slots={slots}: the size must be a non-zero \
                 multiple of 1 GiB and slots 1 to {MAX_SLOTS}"
            )));
        }
        let base = (FOUR_GIB + self.pc.above_4g).next_multiple_of(GIB);
        let area = MemoryRegion::container("device-memory", size);
        let gpe = Arc::new(Gpe0::new(self.sci.clone()));
        let hp = Hotplug::new(self.memory.clone(), area.clone(), base, slots, gpe.clone());
        let tx = self.memory.begin();
        tx.add_subregion(&self.pc.system, base, &area)?;
        tx.add_subregion(
            &self.pc.io_root,
            mem_hotplug::PORT,
            &MemoryRegion::io("acpi-mem-hotplug", mem_hotplug::SIZE, hp.dev.clone()),
        )?;
        tx.add_subregion(
            &self.pc.io_root,
            gpe::PORT,
            &MemoryRegion::io("acpi-gpe0", gpe::SIZE, gpe.clone()),
        )?;
        tx.commit()?;
        self.on_reset(Arc::new(GpeReset(gpe)));
        let events = self.events();
        hp.set_sink(Arc::new(move |e| match e {
            HotplugEvent::DeviceDeleted { id } => {
                events.device_deleted(Some(&id), &format!("/machine/peripheral/{id}"));
            }
            HotplugEvent::AcpiOst {
                device,
                slot,
                event,
                status,
            } => events.acpi_device_ost(&AcpiOstInfo {
                device,
                slot: slot.to_string(),
                slot_type: "DIMM",
                source: event,
                status,
            }),
        }));
        self.hotplug = Some(hp.clone());
        Ok(hp)
    }

    /// Guest RAM as in-process devices reach it.
    pub fn dma_view(&self) -> &crate::memory::dma::DmaView {
        &self.dma
    }

    pub fn hotplug(&self) -> Option<&Arc<Hotplug>> {
        self.hotplug.as_ref()
    }

    /// Where the 64-bit PCI window may start: above RAM and device memory.
    pub(super) fn pci64_start(&self) -> u64 {
        let end = match &self.hotplug {
            Some(h) => h.base + h.size,
            None => FOUR_GIB + self.pc.above_4g,
        };
        end.next_multiple_of(GIB) + GIB
    }
}
