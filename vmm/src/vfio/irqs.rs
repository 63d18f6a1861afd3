//! Which interrupts the device has eventfds for, so that SET_IRQS is issued
//! only on a change: the vector eventfds of MSI and MSI-X per index (a
//! change of count goes through a disable first: the kernel refuses to
//! grow an enabled MSI block), and INTx, on whenever neither MSI nor MSI-X
//! is (the kernel enables only one interrupt type at a time).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use vmm_vfio::backend::{INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use vmm_vfio::{BackendError, VfioBackend};

#[derive(Default)]
pub struct IrqHandover {
    /// (index, descriptors handed), for indices with vectors handed.
    held: Vec<(u32, Vec<RawFd>)>,
    /// INTx's trigger and unmask (resample) eventfds, once wired.
    intx: Option<(RawFd, RawFd)>,
    intx_on: bool,
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
        let want: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
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
            self.intx_off(b)?;
            b.set_irq_eventfds(index, &want)?;
            self.held.push((index, want));
        }
        self.sync_intx(b)
    }

    /// INTx from now on signals `trigger` and is unmasked by `resample`
    /// (both stay open for as long as the device model lives).
    pub fn wire_intx(
        &mut self,
        b: &mut dyn VfioBackend,
        trigger: &EventFd,
        resample: &EventFd,
    ) -> Result<(), BackendError> {
        self.intx_off(b)?;
        self.intx = Some((trigger.as_raw_fd(), resample.as_raw_fd()));
        self.sync_intx(b)
    }

    /// INTx on if it is wired and no MSI or MSI-X vectors are handed.
    pub fn sync_intx(&mut self, b: &mut dyn VfioBackend) -> Result<(), BackendError> {
        let Some((trigger, resample)) = self.intx else {
            return Ok(());
        };
        if self.intx_on || !self.held.is_empty() {
            return Ok(());
        }
        b.set_irq_eventfds(INTX_IRQ, &[trigger])?;
        b.set_irq_unmask_eventfd(INTX_IRQ, Some(resample))?;
        self.intx_on = true;
        Ok(())
    }

    fn intx_off(&mut self, b: &mut dyn VfioBackend) -> Result<(), BackendError> {
        if self.intx_on {
            self.intx_on = false;
            b.set_irq_eventfds(INTX_IRQ, &[])?;
        }
        Ok(())
    }

    /// Disables every interrupt the device has (before a device reset).
    pub fn release_all(&mut self, b: &mut dyn VfioBackend) -> Result<(), BackendError> {
        for (index, _) in std::mem::take(&mut self.held) {
            b.set_irq_eventfds(index, &[])?;
        }
        self.intx_off(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_vfio::RegionInfo;

    /// Records SET_IRQS as "index:count" / "unmask".
    #[derive(Default)]
    struct Rec(Vec<String>);

    impl VfioBackend for Rec {
        fn region(&self, _index: u32) -> Option<RegionInfo> {
            None
        }
        fn irq_count(&self, _index: u32) -> u32 {
            1
        }
        fn region_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), BackendError> {
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), BackendError> {
            Ok(())
        }
        fn set_irq_eventfds(&mut self, index: u32, fds: &[RawFd]) -> Result<(), BackendError> {
            self.0.push(format!("{index}:{}", fds.len()));
            Ok(())
        }
        fn set_irq_unmask_eventfd(&mut self, _: u32, _: Option<RawFd>) -> Result<(), BackendError> {
            self.0.push("unmask".into());
            Ok(())
        }
        fn reset(&mut self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn intx_yields_to_msi_and_comes_back_and_msi_counts_change_through_a_disable() {
        let fd = || Arc::new(EventFd::new(0).unwrap());
        let (t, r) = (fd(), fd());
        let mut b = Rec::default();
        let mut h = IrqHandover::default();
        h.wire_intx(&mut b, &t, &r).unwrap();
        let one = [fd()];
        let two = [one[0].clone(), fd()];
        h.set(&mut b, IrqHandover::MSI, &one).unwrap();
        h.set(&mut b, IrqHandover::MSI, &one).unwrap(); // no change, no call
        h.set(&mut b, IrqHandover::MSI, &two).unwrap();
        h.set(&mut b, IrqHandover::MSI, &[]).unwrap();
        h.release_all(&mut b).unwrap();
        assert_eq!(
            b.0,
            [
                "0:1", "unmask", // INTx wired
                "0:0", "1:1", // INTx off before MSI on
                "1:0", "1:2", // a new count goes through a disable
                "1:0", "0:1", "unmask", // MSI off: INTx back
                "0:0",    // reset: all off
            ]
        );
    }
}
