//! The PC machine: its memory map and chipset pieces.

pub mod control;
pub mod disks;
pub mod dispatch;
pub mod guest_ram;
pub mod hotplug;
pub mod hotplug_setup;
pub mod layout;
pub mod pam;
pub mod pc;
pub mod requests;
pub mod vfio;
pub mod vfio_user;

#[cfg(test)]
mod tests;

pub use control::MachineControl;
pub use disks::{DiskConfig, VhostUserBlkConfig};
pub use layout::PcMemory;
pub use pc::{Machine, MachineConfig, MachineError, Reset};
pub use requests::{Request, Requests};
pub use vfio::VfioConfig;
pub use vfio_user::VfioUserConfig;

/// An error and its sources, one line: what a user needs to see.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
