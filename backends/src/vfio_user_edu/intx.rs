//! INTx as a level-triggered line over two eventfds, the way VFIO's INTx
//! with an unmask eventfd works: the device writes `trigger` when it raises
//! (the VMM's resample irqfd asserts the IOAPIC pin); the guest's EOI makes
//! KVM lower the pin and write the unmask (resample) eventfd, and if the
//! device still has an interrupt pending it writes `trigger` again. An
//! acknowledge therefore takes the line down at the guest's next EOI.
//!
//! One watcher thread per unmask eventfd waits for EOIs; it exits when the
//! eventfd is replaced or the client goes (the generation moves on).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use log::{debug, warn};

use super::backend::EduBackend;

/// How often a watcher looks at whether it is still wanted.
const POLL: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Intx {
    pub trigger: Option<File>,
    /// Bumped whenever the unmask eventfd changes or goes.
    pub generation: u64,
}

impl Intx {
    /// Asserts the line (a no-op while it is already asserted).
    pub fn raise(&self) {
        match self.trigger.as_ref() {
            Some(mut fd) => {
                if let Err(e) = fd.write_all(&1u64.to_ne_bytes()) {
                    warn!("edu: signalling INTx: {e}");
                }
            }
            None => debug!("edu: interrupt with neither MSI-X nor INTx set"),
        }
    }
}

/// Watches `unmask` for EOIs until generation `generation` is over.
pub fn watch(backend: EduBackend, mut unmask: File, generation: u64) {
    loop {
        let ready = readable(&unmask);
        let state = backend.lock();
        if state.intx_generation() != generation {
            return;
        }
        if ready {
            let mut count = [0u8; 8];
            // Non-blocking or not, the eventfd is readable: this returns.
            let _ = unmask.read(&mut count);
            state.resample();
        }
    }
}

/// Whether `f` became readable within [`POLL`].
fn readable(f: &File) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call, and
    // `f` keeps its descriptor open.
    let n = unsafe { libc::poll(&mut p, 1, POLL.as_millis() as libc::c_int) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use vfio_bindings::bindings::vfio::{
        VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
        VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    };
    use vfio_user::ServerBackend;

    use super::*;

    fn eventfd() -> File {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { File::from_raw_fd(fd) }
    }

    /// How many times `f` was signalled since the last look (0: none).
    fn taken(mut f: &File) -> u64 {
        let mut count = [0u8; 8];
        f.read(&mut count).map_or(0, |_| u64::from_ne_bytes(count))
    }

    /// Waits up to a second for `f` to be signalled.
    fn signalled(f: &File) -> bool {
        (0..10).any(|_| readable(f)) && taken(f) > 0
    }

    fn set(b: &mut EduBackend, index: u32, action: u32, fd: &File) {
        let flags = action | VFIO_IRQ_SET_DATA_EVENTFD;
        b.set_irqs(index, flags, 0, 1, vec![fd.try_clone().unwrap()])
            .unwrap();
    }

    fn bar0(b: &mut EduBackend, offset: u64, value: u32) {
        b.region_write(VFIO_PCI_BAR0_REGION_INDEX, offset, &value.to_le_bytes())
            .unwrap();
    }

    #[test]
    fn intx_is_a_level_raised_again_at_each_eoi_until_acknowledged() {
        let mut b = EduBackend::new();
        let (trigger, unmask) = (eventfd(), eventfd());
        set(
            &mut b,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_TRIGGER,
            &trigger,
        );
        set(
            &mut b,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_UNMASK,
            &unmask,
        );
        bar0(&mut b, 0x60, 1);
        assert_eq!(taken(&trigger), 1, "the raise asserts the line");
        (&unmask).write_all(&1u64.to_ne_bytes()).unwrap();
        assert!(signalled(&trigger), "an EOI while pending asserts it again");
        bar0(&mut b, 0x64, 1);
        (&unmask).write_all(&1u64.to_ne_bytes()).unwrap();
        std::thread::sleep(POLL * 3);
        assert_eq!(taken(&trigger), 0, "acknowledged: the EOI leaves it down");

        // MSI-X vector 0 set: interrupts go there, not to INTx.
        let vector = eventfd();
        set(
            &mut b,
            VFIO_PCI_MSIX_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_TRIGGER,
            &vector,
        );
        bar0(&mut b, 0x60, 1);
        assert_eq!((taken(&vector), taken(&trigger)), (1, 0));
        b.disconnect();
    }
}
