//! Legacy ISA devices at fixed I/O ports.

pub mod debug_exit;
pub mod serial;

pub use debug_exit::DebugExit;
pub use serial::Serial;
