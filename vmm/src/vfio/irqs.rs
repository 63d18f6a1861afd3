//! Which vector eventfds the device holds, per IRQ index, so that SET_IRQS
//! is issued only on a change, and a change of count goes through a
//! disable first (the kernel refuses to grow an enabled MSI block).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use vmm_vfio::backend::{MSIX_IRQ, MSI_IRQ};
use vmm_vfio::{BackendError, VfioBackend};

#[derive(Default)]
pub struct IrqHandover {
    /// (index, descriptors handed), for indices with vectors handed.
    held: Vec<(u32, Vec<i32>)>,
}

impl IrqHandover {
    pub const MSI: u32 = MSI_IRQ;
    pub const MSIX: u32 = MSIX_IRQ;

    /// Makes `fds` the triggers of `index` (none: disabled).
    pub fn set(
        &mut self,
        b: &mut dyn VfioBackend,
        index: u32,
        fds: &[Arc<EventFd>],
    ) -> Result<(), BackendError> {
        let want: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let had = self.held.iter().position(|(i, _)| *i == index);
        let current = had.map_or(&[][..], |p| &self.held[p].1[..]);
        if current == want.as_slice() {
            return Ok(());
        }
        if let Some(p) = had {
            self.held.remove(p);
            b.set_irq_eventfds(index, &[])?;
        }
        if !want.is_empty() {
            b.set_irq_eventfds(index, &want)?;
            self.held.push((index, want));
        }
        Ok(())
    }

    /// Disables every index that has vectors (before a device reset).
    pub fn release_all(&mut self, b: &mut dyn VfioBackend) -> Result<(), BackendError> {
        for (index, _) in std::mem::take(&mut self.held) {
            b.set_irq_eventfds(index, &[])?;
        }
        Ok(())
    }
}
