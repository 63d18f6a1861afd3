//! The vhost-user-blk device: the block engine behind vhost-user-backend's
//! `VhostUserBackend` trait (`backend`), the daemon's own request handler
//! on the `vhost` crate's message loop (`handler`) with one worker thread
//! per queue (`worker`), inflight tracking (`inflight`), the frontend's
//! dirty log (`dirty`), and the accept loop that serves frontends
//! (`server`).

mod backend;
mod chain;
mod dirty;
mod handler;
pub mod inflight;
mod server;
mod worker;

pub use backend::{BlkBackend, BlkBackendError};
pub use handler::Handler;
pub use server::{open_engine, serve, serve_connection, serve_late, ServerError, ServerOptions};
pub use worker::LogMemory;
