//! A vfio-user client (the protocol QEMU and libvfio-user speak): the
//! device behind a UNIX socket, as a `VfioBackend` ([`UserClient`]) and a
//! `DmaMapper` ([`UserDma`]).
//!
//! Written here rather than taken from the vfio_user crate's `Client`
//! because a VMM must survive its peer: every reply is checked (reply flag,
//! message id, command, size) before it is believed, socket waits are
//! bounded, and after the first failure the connection is marked broken
//! and every later call fails at once with the first reason.

mod client;
mod dma;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{UserClient, UserError};
pub use dma::UserDma;
