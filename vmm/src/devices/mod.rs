//! Devices of the PC platform.

pub mod gpe;
pub mod legacy;
pub mod mem_hotplug;
pub mod sci;
