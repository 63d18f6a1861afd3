//! Legacy ISA devices at fixed I/O ports.

pub mod cmos;
pub mod debug_exit;
pub mod pm;
pub mod reset_ports;
pub mod serial;

pub use cmos::Cmos;
pub use debug_exit::DebugExit;
pub use pm::Pm1;
pub use reset_ports::{I8042Data, PortA, I8042};
pub use serial::Serial;
