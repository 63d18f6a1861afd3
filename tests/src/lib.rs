//! Test kit for the end-to-end suites: guest assets, the process harness for
//! `vmm` and its peers, and a QMP client.

pub mod edu;
pub mod guest_kit;
pub mod pattern;
pub mod probe;
pub mod process;
pub mod qmp;
pub mod vhost_script;
pub mod virtq;
