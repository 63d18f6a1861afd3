//! vfio-user devices (`--device vfio-user,socket=PATH`): a PCI function
//! whose device is served by another process, and a `vfio` memory listener
//! that DMA-maps every guest RAM range to that process (with the RAM
//! block's memfd) before the guest runs and whenever RAM is added later.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_vfio::{DmaRules, UserClient, UserDma, VfioBackend};

use super::error_chain as chain;
use super::pc::{Machine, MachineError};
use crate::interrupt::KvmRouting;
use crate::pci::{intx, PciFunction};
use crate::vfio::{VfioListener, VfioPci};

/// vfio-user and kernel VFIO devices take slots from the top down, so they
/// never collide with the virtio devices' bottom-up slots.
const LAST_SLOT: u8 = 31;
const FIRST_SLOT: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioUserConfig {
    pub socket: PathBuf,
    /// How long any one exchange with the server may take.
    pub timeout: Duration,
}

impl Default for VfioUserConfig {
    fn default() -> Self {
        VfioUserConfig {
            socket: PathBuf::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Machine {
    /// The highest free PCI slot: passed-through devices take slots from
    /// the top down.
    pub(super) fn free_slot_from_top(&self) -> Option<u8> {
        let taken: Vec<u8> = self.pci.list().iter().map(|f| f.0).collect();
        (FIRST_SLOT..=LAST_SLOT).rev().find(|s| !taken.contains(s))
    }

    /// Connects to the vfio-user server on `c.socket`, maps guest RAM for
    /// it and puts its device in the highest free PCI slot.
    pub fn add_vfio_user(
        &mut self,
        c: &VfioUserConfig,
    ) -> Result<Arc<VfioPci<KvmRouting>>, MachineError> {
        let bad = |what: String| {
            MachineError::Config(format!(
                "--device vfio-user,socket={}: {what}",
                c.socket.display()
            ))
        };
        let slot = self
            .free_slot_from_top()
            .ok_or_else(|| bad("no free PCI slot".into()))?;
        let name = format!("vfio-user-{slot:02x}");
        let client = UserClient::connect(&c.socket, c.timeout).map_err(|e| bad(chain(&e)))?;
        let client = Arc::new(Mutex::new(client));
        let listener = VfioListener::new(UserDma(client.clone()), DmaRules::default());
        let id = self
            .memory
            .register_listener(&self.pc.memory, Box::new(listener))
            .map_err(|e| bad(chain(&e)))?;
        let backend: Arc<Mutex<dyn VfioBackend>> = client;
        let added = VfioPci::new(&name, backend, self.router.clone(), &self.memory)
            .map_err(|e| chain(&e))
            .and_then(|(dev, mut f)| {
                wire_intx(&dev, &mut f, slot);
                self.pci.add(slot, 0, f).map_err(|e| chain(&e))?;
                Ok(dev)
            });
        added.map_err(|e| {
            self.memory.unregister_listener(&self.pc.memory, id);
            bad(e)
        })
    }
}

/// Wires a passed-through device's INTx to its slot's GSI (`pci::intx`,
/// as the DSDT's `_PRT` says). A device without INTx, or whose GSI
/// another device's INTx already holds, goes without (its Interrupt Pin
/// reads 0, so the OS looks for no INTx), with a log line.
pub(super) fn wire_intx(dev: &VfioPci<KvmRouting>, f: &mut PciFunction, slot: u8) {
    let pin = match dev.intx_pin() {
        Ok(pin) => pin,
        Err(e) => return log::info!("{}; no INTx", chain(&e)),
    };
    let Some(gsi) = intx::gsi(slot, pin) else {
        return log::warn!(
            "{}: slot {slot} pin {pin} has no GSI; INTx left off",
            dev.name()
        );
    };
    match dev.wire_intx(f, gsi) {
        Ok(()) => log::info!(
            "{}: INTx pin {} on GSI {gsi}",
            dev.name(),
            char::from(b'A' + pin - 1)
        ),
        Err(e) => log::warn!("{}; INTx left off", chain(&e)),
    }
}
