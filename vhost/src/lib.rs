//! The vhost-user frontend: protocol client, memory-table builder and dirty
//! log. Knows nothing of the `vmm` crate.

pub mod frontend;
pub mod inflight;
pub mod log;
pub mod memtable;
pub mod sink;

pub use frontend::{BackendConn, FrontendError, Negotiated, VringSetup};
pub use inflight::{Inflight, InflightError, InflightSlot};
pub use memtable::{MemRegion, MemTable, Update};
pub use sink::{apply, FrontendSink, MemTableSink, SinkError};
