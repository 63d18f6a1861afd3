//! The `vfio` listener's mapper for a vfio-user device: DMA_MAP and
//! DMA_UNMAP on the device's connection, with the memory's file.

use std::sync::{Arc, Mutex, MutexGuard};

use super::client::UserClient;
use crate::dma::{DmaError, DmaMapper, DmaRequest};

/// The `DmaMapper` of a vfio-user device: DMA_MAP with the memory's file.
#[derive(Clone)]
pub struct UserDma(pub Arc<Mutex<UserClient>>);

impl UserDma {
    fn lock(&self) -> MutexGuard<'_, UserClient> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DmaMapper for UserDma {
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        let (iova, size) = (req.iova, req.size);
        let refuse = |source| DmaError::Map { iova, size, source };
        let Some((fd, offset)) = req.file else {
            return Err(refuse(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "memory without a file cannot be shared with a vfio-user server",
            )));
        };
        let mut client = self.lock();
        if let Some(why) = client.broken() {
            // A dead device cannot DMA: not a reason to refuse the guest memory.
            log::warn!("vfio-user: map of {iova:#x}+{size:#x} skipped: {why}");
            return Ok(());
        }
        client
            .dma_map(iova, size, fd, offset, req.readonly)
            .map_err(|e| refuse(std::io::Error::other(e)))
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DmaError> {
        let mut client = self.lock();
        if client.broken().is_some() {
            return Ok(());
        }
        client.dma_unmap(iova, size).map_err(|e| DmaError::Unmap {
            iova,
            size,
            source: std::io::Error::other(e),
        })
    }
}
