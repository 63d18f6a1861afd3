//! `vfio-user-edu`: QEMU's edu test device (vendor 0x1234, device 0x11e8)
//! served over vfio-user with the vfio_user crate's server, for testing the
//! VMM's vfio-user client without hardware.
//!
//! Regions: config space, BAR0 (the edu registers, 1 MiB, trapped), BAR1
//! (4 KiB, the MSI-X table and PBA, which a client emulates), a 2 KiB
//! read-only expansion ROM (signature and pattern). Interrupts:
//! MSI-X with two vectors; vector 0 fires on DMA completion and on writes
//! to the raise register; with no MSI-X vector set, INTx (pin A, level,
//! re-raised on the guest's EOI while still pending; see `intx.rs`). DMA goes through the client's DMA_MAP'd memory.

mod backend;
mod config;
mod dma;
mod intx;
mod regs;
mod rom;
mod server;

pub use backend::{EduBackend, EduState};
pub use config::{DEVICE_ID, MSIX_VECTORS, VENDOR_ID};
pub use dma::{DmaMapError, DmaMappings};
pub use regs::{
    EduHost, EduRegs, DMA_BUF_ADDR, DMA_BUF_SIZE, DMA_CMD_IRQ, DMA_CMD_START, DMA_CMD_TO_RAM,
    EDU_ID, IRQ_DMA, STATUS_DMA_ERROR,
};
pub use rom::{rom_byte, ROM_SIZE};
pub use server::{serve, EduServerError};
