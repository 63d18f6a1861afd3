//! A mapper that records every call and the live mappings, and can be told
//! to refuse: for tests that assert the exact map/unmap sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::dma::{DmaError, DmaMapper, DmaRequest};

#[derive(Default)]
pub struct Recorded {
    /// "map iova+size [ro]" / "unmap iova+size", in order.
    pub calls: Vec<String>,
    /// Live mappings by IOVA: (size, vaddr, readonly).
    pub live: BTreeMap<u64, (u64, u64, bool)>,
    /// Refuse maps whose IOVA is in this list.
    pub refuse: Vec<u64>,
}

#[derive(Clone, Default)]
pub struct RecordingMapper(pub Arc<Mutex<Recorded>>);

impl RecordingMapper {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DmaMapper for RecordingMapper {
    unsafe fn map(&mut self, req: DmaRequest) -> Result<(), DmaError> {
        let mut r = self.lock();
        if r.refuse.contains(&req.iova) {
            return Err(DmaError::Map {
                iova: req.iova,
                size: req.size,
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        let ro = if req.readonly { " ro" } else { "" };
        r.calls
            .push(format!("map {:#x}+{:#x}{ro}", req.iova, req.size));
        let overlap = r
            .live
            .iter()
            .any(|(&i, &(s, _, _))| i < req.iova + req.size && req.iova < i + s);
        assert!(!overlap, "mapped {:#x} over a live mapping", req.iova);
        r.live.insert(req.iova, (req.size, req.vaddr, req.readonly));
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<(), DmaError> {
        let mut r = self.lock();
        r.calls.push(format!("unmap {iova:#x}+{size:#x}"));
        let had = r.live.remove(&iova);
        assert_eq!(
            had.map(|h| h.0),
            Some(size),
            "unmap of {iova:#x} does not match a mapping"
        );
        Ok(())
    }
}
