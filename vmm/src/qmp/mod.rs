//! The QMP monitor: QEMU's JSON wire protocol on a unix socket, so
//! existing clients (the `qemu.qmp` Python package, `socat`) drive this
//! VMM. The server thread works only through a [`Control`] handle (the
//! machine's is `Machine::control()`); the machine reports what happens
//! through [`Events`].

mod args;
pub mod control;
pub mod dispatch;
pub mod events;
mod hmp;
mod query;
pub mod server;
pub mod signals;
pub mod splitter;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod hotplug_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

pub use control::{BlockInfo, Control, ControlError, CpuInfo, MemoryDeviceInfo, RunStatus};
pub use events::{AcpiOstInfo, Events};
pub use server::{QmpServer, QmpServerError};

/// QEMU's error classes that this monitor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
        }
    }
}

/// An error reply: its class and the `desc` text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}
