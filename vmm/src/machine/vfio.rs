//! Host PCI devices through the kernel's VFIO (`--device vfio,host=BDF` or
//! `--device vfio,sysfsdev=PATH`): every device's IOMMU group joins one
//! container, whose `vfio` memory listener (registered when the first group
//! has set the container's IOMMU) DMA-maps all guest RAM; each device is a
//! [`VfioPci`] over a [`KernelDevice`] in the highest free PCI slot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm_vfio::{ContainerMapper, DmaRules, KernelDevice, VfioBackend, VfioContainer};

use super::error_chain as chain;
use super::pc::{Machine, MachineError};
use crate::interrupt::KvmRouting;
use crate::memory::ListenerId;
use crate::vfio::{VfioListener, VfioPci};

/// A host device to pass through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioConfig {
    /// Its sysfs directory (`/sys/bus/pci/devices/DDDD:BB:DD.F`).
    pub sysfs: PathBuf,
    /// The option as given (`host=...` or `sysfsdev=...`), for messages.
    pub spec: String,
}

/// The container all kernel VFIO devices share, and its listener.
pub(super) struct KernelVfio {
    container: Arc<VfioContainer>,
    listener: ListenerId,
}

impl Machine {
    /// Opens the host device `c.sysfs` (bound to vfio-pci), maps guest RAM
    /// for it and puts it in the highest free PCI slot.
    pub fn add_vfio(&mut self, c: &VfioConfig) -> Result<Arc<VfioPci<KvmRouting>>, MachineError> {
        let bad = |what: String| MachineError::Config(format!("--device vfio,{}: {what}", c.spec));
        let slot = self
            .free_slot_from_top()
            .ok_or_else(|| bad("no free PCI slot".into()))?;
        vmm_vfio::kernel::check_bound(&c.sysfs).map_err(|e| bad(chain(&e)))?;
        let (container, fresh) = match &self.kernel_vfio {
            Some(k) => (k.container.clone(), false),
            None => {
                let c = VfioContainer::new(None).map_err(|e| bad(chain(&e)))?;
                (Arc::new(c), true)
            }
        };
        let dev = KernelDevice::open(&c.sysfs, container.clone()).map_err(|e| bad(chain(&e)))?;
        let name = format!("vfio-{}", dev.name());
        if fresh {
            // The first group has set the IOMMU: maps are possible now.
            let listener =
                VfioListener::new(ContainerMapper::new(container.clone()), DmaRules::default());
            let listener = self
                .memory
                .register_listener(&self.pc.memory, Box::new(listener))
                .map_err(|e| bad(chain(&e)))?;
            self.kernel_vfio = Some(KernelVfio {
                container,
                listener,
            });
        }
        let backend: Arc<Mutex<dyn VfioBackend>> = Arc::new(Mutex::new(dev));
        let added = VfioPci::new(&name, backend, self.router.clone(), &self.memory)
            .map_err(|e| chain(&e))
            .and_then(|(dev, mut f)| {
                super::vfio_user::wire_intx(&dev, &mut f, slot);
                self.pci.add(slot, 0, f).map_err(|e| chain(&e))?;
                Ok(dev)
            });
        added.map_err(|e| {
            if fresh {
                if let Some(k) = self.kernel_vfio.take() {
                    self.memory.unregister_listener(&self.pc.memory, k.listener);
                }
            }
            bad(e)
        })
    }
}
