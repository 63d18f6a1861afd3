//! The vhost-user frontend: protocol client, memory-table builder and dirty
//! log. Knows nothing of the `vmm` crate.
