//! The real mapper (vmm-vfio's `ContainerMapper`) with a record of what is
//! live, so a check can see that a refused transaction left nothing mapped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vmm_vfio::{ContainerMapper, DmaError, DmaMapper, DmaRequest};

/// Live mappings by IOVA: size.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<BTreeMap<u64, u64>>>);

impl Live {
    pub fn snapshot(&self) -> BTreeMap<u64, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct Tracked {
    pub inner: ContainerMapper,
    pub live: Live,
}

impl DmaMapper for Tracked {
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        // SAFETY: forwarded under the caller's own guarantee.
        unsafe { self.inner.map(req) }?;
        let mut live = self.live.0.lock().unwrap_or_else(|e| e.into_inner());
        live.insert(req.iova, req.size);
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DmaError> {
        self.inner.unmap(iova, size)?;
        let mut live = self.live.0.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&iova);
        Ok(())
    }
}
