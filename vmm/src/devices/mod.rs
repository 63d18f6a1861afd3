//! Devices of the PC platform.

pub mod legacy;
