//! The vhost-user-blk device: the block engine behind vhost-user-backend's
//! `VhostUserBackend` trait, and the accept loop that serves frontends.

mod backend;
mod server;

pub use backend::{BlkBackend, BlkBackendError};
pub use server::{open_engine, serve, ServerError, ServerOptions};
