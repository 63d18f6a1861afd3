//! The ACPI SCI: one level-triggered line on IOAPIC pin 9 that several
//! event blocks share (PM1's fixed events, GPE0's general-purpose ones). The
//! line is the OR of its sources, driven with KVM_IRQ_LINE on whichever VM
//! runs and re-asserted on a new VM; a source dropping its level leaves the
//! line up while another still holds it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use kvm_ioctls::VmFd;

use crate::acpi::SCI_IRQ;

/// A block that raises the SCI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SciSource {
    Pm1 = 1,
    Gpe0 = 2,
}

#[derive(Default)]
pub struct SciLine {
    vm: ArcSwapOption<VmFd>,
    /// One bit per [`SciSource`] holding the line up.
    sources: AtomicU8,
}

impl SciLine {
    /// Sets `source`'s level; the line follows the OR of all sources.
    pub fn set(&self, source: SciSource, level: bool) {
        let bit = source as u8;
        if level {
            self.sources.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.sources.fetch_and(!bit, Ordering::AcqRel);
        }
        self.apply();
    }

    /// Whether any source holds the line up.
    pub fn is_raised(&self) -> bool {
        self.sources.load(Ordering::Acquire) != 0
    }

    /// Follows the machine to a new VM (None between VMs).
    pub fn attach(&self, vm: Option<Arc<VmFd>>) {
        self.vm.store(vm);
        self.apply();
    }

    fn apply(&self) {
        if let Some(vm) = self.vm.load_full() {
            if let Err(e) = vm.set_irq_line(u32::from(SCI_IRQ), self.is_raised()) {
                log::warn!("SCI: KVM_IRQ_LINE failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_stays_up_while_any_source_holds_it() {
        let sci = SciLine::default();
        sci.set(SciSource::Gpe0, true);
        sci.set(SciSource::Pm1, true);
        sci.set(SciSource::Pm1, false);
        assert!(sci.is_raised(), "GPE0 still pending");
        sci.set(SciSource::Gpe0, false);
        assert!(!sci.is_raised());
    }
}
