//! KVM GSI routing. The in-kernel irqchip's default routes (GSI 0-23 to
//! IOAPIC pins, 0-15 to the PICs) are kept, MSI routes are allocated from
//! GSI 24 up, and the whole table is handed to KVM on every change (that is
//! how KVM_SET_GSI_ROUTING works). Each MSI route has an eventfd bound to it
//! with KVM_IRQFD, so a device thread raises the interrupt by writing the
//! eventfd, without the VMM.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// First GSI for MSI routes; below are the IOAPIC's 24 pins.
pub const FIRST_MSI_GSI: u32 = 24;
/// KVM_MAX_IRQ_ROUTES on x86.
pub const MAX_GSI: u32 = 4096;

/// An MSI as the guest programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no free GSI for another MSI route ({MAX_GSI} in use)")]
    NoGsi,
    #[error("no MSI route on GSI {0}")]
    NoRoute(u32),
    #[error("GSI {0} already has a level-triggered line")]
    LineTaken(u32),
    #[error("KVM refused the GSI routing table")]
    SetRouting(#[source] io::Error),
    #[error("KVM refused the irqfd for GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

/// What the router needs of KVM, behind a trait for tests.
pub trait Routing: Send {
    fn set_routing(&mut self, table: &[kvm_irq_routing_entry]) -> io::Result<()>;
    fn irqfd(&mut self, fd: &EventFd, gsi: u32, assign: bool) -> io::Result<()>;
    /// A level-triggered line: `fd` asserts GSI `gsi` (an IOAPIC pin) and
    /// KVM writes `resample` when the guest ends the interrupt (EOI), so
    /// the source can check whether the line is still asserted.
    fn irqfd_resample(
        &mut self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
        assign: bool,
    ) -> io::Result<()> {
        let _ = (fd, resample, gsi, assign);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Routes on a KVM VM, or, between VMs (before the first boot, across a
/// reboot), nowhere: the router keeps the table and replays it with
/// [`GsiRouter::switch`] when the next VM exists.
pub struct KvmRouting(pub Option<Arc<VmFd>>);

impl KvmRouting {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmRouting(Some(vm))
    }
    pub fn detached() -> Self {
        KvmRouting(None)
    }
}

impl Routing for KvmRouting {
    fn set_routing(&mut self, table: &[kvm_irq_routing_entry]) -> io::Result<()> {
        let Some(vm) = &self.0 else { return Ok(()) };
        let mut r = KvmIrqRouting::new(table.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        r.as_mut_slice().copy_from_slice(table);
        vm.set_gsi_routing(&r).map_err(io::Error::from)
    }
    fn irqfd(&mut self, fd: &EventFd, gsi: u32, assign: bool) -> io::Result<()> {
        let Some(vm) = &self.0 else { return Ok(()) };
        let r = if assign {
            vm.register_irqfd(fd, gsi)
        } else {
            vm.unregister_irqfd(fd, gsi)
        };
        r.map_err(io::Error::from)
    }
    fn irqfd_resample(
        &mut self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
        assign: bool,
    ) -> io::Result<()> {
        let Some(vm) = &self.0 else { return Ok(()) };
        let r = if assign {
            vm.register_irqfd_with_resample(fd, resample, gsi)
        } else {
            vm.unregister_irqfd(fd, gsi)
        };
        r.map_err(io::Error::from)
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, m: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.addr as u32;
    e.u.msi.address_hi = (m.addr >> 32) as u32;
    e.u.msi.data = m.data;
    e
}

struct Route {
    msg: MsiMessage,
    /// Whether the irqfd is bound (false while the vector is masked).
    bound: bool,
    fd: Arc<EventFd>,
}

struct Inner<R: Routing> {
    kvm: R,
    routes: BTreeMap<u32, Route>,
    /// Level-triggered lines with resample (INTx): GSI -> (fd, resample).
    lines: BTreeMap<u32, (Arc<EventFd>, Arc<EventFd>)>,
}

/// Allocates MSI routes and binds their irqfds. Cloneable; every device
/// shares the machine's one router.
pub struct GsiRouter<R: Routing> {
    inner: Arc<Mutex<Inner<R>>>,
}

impl<R: Routing> Clone for GsiRouter<R> {
    fn clone(&self) -> Self {
        GsiRouter {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Routing> GsiRouter<R> {
    pub fn new(kvm: R) -> Self {
        GsiRouter {
            inner: Arc::new(Mutex::new(Inner {
                kvm,
                routes: BTreeMap::new(),
                lines: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<R>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The full table as KVM gets it.
    pub fn table(&self) -> Vec<kvm_irq_routing_entry> {
        table_of(&self.lock().routes)
    }

    /// A new MSI route with its eventfd, bound (unmasked) or not.
    pub fn add(&self, msg: MsiMessage, bound: bool) -> Result<(u32, Arc<EventFd>), RouteError> {
        let mut g = self.lock();
        let gsi = (FIRST_MSI_GSI..MAX_GSI)
            .find(|g2| !g.routes.contains_key(g2))
            .ok_or(RouteError::NoGsi)?;
        let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(RouteError::EventFd)?);
        g.routes.insert(
            gsi,
            Route {
                msg,
                bound: false,
                fd: fd.clone(),
            },
        );
        if let Err(e) = commit(&mut g) {
            g.routes.remove(&gsi);
            return Err(e);
        }
        drop(g);
        if bound {
            if let Err(e) = self.set_bound(gsi, true) {
                self.remove(gsi);
                return Err(e);
            }
        }
        Ok((gsi, fd))
    }

    /// Reprograms the message of a route (the guest wrote the vector).
    pub fn update(&self, gsi: u32, msg: MsiMessage) -> Result<(), RouteError> {
        let mut g = self.lock();
        let r = g.routes.get_mut(&gsi).ok_or(RouteError::NoRoute(gsi))?;
        if r.msg == msg {
            return Ok(());
        }
        let old = std::mem::replace(&mut r.msg, msg);
        if let Err(e) = commit(&mut g) {
            if let Some(r) = g.routes.get_mut(&gsi) {
                r.msg = old;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Binds (unmask) or unbinds (mask) the irqfd. A write to an unbound
    /// eventfd stays pending in its counter; KVM injects it when the irqfd
    /// is bound again.
    pub fn set_bound(&self, gsi: u32, bound: bool) -> Result<(), RouteError> {
        let mut g = self.lock();
        let inner = &mut *g;
        let r = inner.routes.get_mut(&gsi).ok_or(RouteError::NoRoute(gsi))?;
        if r.bound == bound {
            return Ok(());
        }
        inner
            .kvm
            .irqfd(&r.fd, gsi, bound)
            .map_err(|source| RouteError::Irqfd { gsi, source })?;
        r.bound = bound;
        Ok(())
    }

    /// Moves every route to `kvm` (a new VM after a reboot): the table, then
    /// the irqfds of the bound routes. The old backend is dropped without
    /// unbinding (its VM is going away).
    pub fn switch(&self, kvm: R) -> Result<(), RouteError> {
        let mut g = self.lock();
        g.kvm = kvm;
        commit(&mut g)?;
        let inner = &mut *g;
        for (&gsi, r) in inner.routes.iter().filter(|(_, r)| r.bound) {
            inner
                .kvm
                .irqfd(&r.fd, gsi, true)
                .map_err(|source| RouteError::Irqfd { gsi, source })?;
        }
        for (&gsi, (fd, resample)) in &inner.lines {
            inner
                .kvm
                .irqfd_resample(fd, resample, gsi, true)
                .map_err(|source| RouteError::Irqfd { gsi, source })?;
        }
        Ok(())
    }

    /// Binds a level-triggered line with resample on IOAPIC pin `gsi`, on
    /// this VM and every later one.
    pub fn bind_line(
        &self,
        gsi: u32,
        fd: Arc<EventFd>,
        resample: Arc<EventFd>,
    ) -> Result<(), RouteError> {
        if gsi >= FIRST_MSI_GSI {
            return Err(RouteError::NoRoute(gsi));
        }
        let mut g = self.lock();
        if g.lines.contains_key(&gsi) {
            return Err(RouteError::LineTaken(gsi));
        }
        g.kvm
            .irqfd_resample(&fd, &resample, gsi, true)
            .map_err(|source| RouteError::Irqfd { gsi, source })?;
        g.lines.insert(gsi, (fd, resample));
        Ok(())
    }

    /// Drops a line bound with [`GsiRouter::bind_line`].
    pub fn unbind_line(&self, gsi: u32) {
        let mut g = self.lock();
        if let Some((fd, resample)) = g.lines.remove(&gsi) {
            if let Err(e) = g.kvm.irqfd_resample(&fd, &resample, gsi, false) {
                log::error!("releasing the line on GSI {gsi}: {e}");
            }
        }
    }

    /// Drops a route and its irqfd.
    pub fn remove(&self, gsi: u32) {
        let mut g = self.lock();
        let Some(r) = g.routes.remove(&gsi) else {
            return;
        };
        if r.bound {
            if let Err(e) = g.kvm.irqfd(&r.fd, gsi, false) {
                log::error!("releasing irqfd of GSI {gsi}: {e}");
            }
        }
        if let Err(e) = commit(&mut g) {
            log::error!("dropping GSI {gsi}: {e}");
        }
    }
}

fn table_of(routes: &BTreeMap<u32, Route>) -> Vec<kvm_irq_routing_entry> {
    let mut t = Vec::with_capacity(40 + routes.len());
    for gsi in 0..24 {
        t.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            t.push(irqchip(gsi, chip, gsi % 8));
        }
    }
    t.extend(routes.iter().map(|(&gsi, r)| msi(gsi, r.msg)));
    t
}

fn commit<R: Routing>(g: &mut Inner<R>) -> Result<(), RouteError> {
    let table = table_of(&g.routes);
    g.kvm.set_routing(&table).map_err(RouteError::SetRouting)
}
