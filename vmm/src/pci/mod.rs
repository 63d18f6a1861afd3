//! PCI: configuration space with write masks, BARs mapped through memory
//! transactions, bus 0 with configuration mechanism 1, and the i440FX/PIIX3
//! pair of QEMU's `pc` machine.
//!
//! Lock order: the memory transaction first, then the bus's function map,
//! then the PAM. A config write runs on the vCPU thread that made it; it
//! never calls back into an address space while holding these.

pub mod bar;
pub mod bus;
pub mod config;
pub mod function;
pub mod i440fx;
pub mod intx;

#[cfg(test)]
mod tests;

pub use bar::{Bar, BarKind};
pub use bus::{ConfigIo, PciBus, CONFIG_PORT, CONFIG_PORTS};
pub use config::ConfigSpace;
pub use function::{PciDevice, PciFunction};

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("PCI slot {device:02x}.{function} is taken or out of range")]
    SlotTaken { device: u8, function: u8 },
    #[error("{function}: BAR {index} of {size:#x} bytes is not possible")]
    BadBar {
        function: String,
        index: usize,
        size: u64,
    },
}
