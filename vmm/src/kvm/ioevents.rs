//! The `kvm-io` listener: KVM_IOEVENTFD for every region ioeventfd, and
//! coalesced MMIO/PIO zones. One instance is registered on the memory
//! address space and one on the I/O address space.
//!
//! kvm-ioctls ties the ioeventfd length to the type of the datamatch value,
//! so an ioeventfd of a given size without datamatch cannot be expressed
//! through it; the ioctl is issued here with the kernel's own struct.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use kvm_bindings::{
    kvm_ioeventfd, kvm_ioeventfd_flag_nr_datamatch, kvm_ioeventfd_flag_nr_deassign,
    kvm_ioeventfd_flag_nr_pio, KVMIO,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use crate::memory::{FlatRange, HookResult, Ioeventfd, MemoryListener};

pub const PRIORITY: i32 = 10;

ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);

/// Which bus an instance serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    Mmio,
    Pio,
}

/// One ioeventfd as KVM sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoEvent {
    pub bus: Bus,
    pub addr: u64,
    /// 0 matches any access size.
    pub len: u32,
    pub datamatch: Option<u64>,
    pub fd: RawFd,
}

/// The ioeventfd and coalescing calls, behind a trait for tests.
pub trait IoEvents: Send {
    fn set_ioevent(&mut self, e: IoEvent, assign: bool) -> io::Result<()>;
    fn set_coalesced(&mut self, bus: Bus, addr: u64, size: u32, assign: bool) -> io::Result<()>;
}

/// The real VM.
pub struct KvmIoEvents {
    vm: Arc<VmFd>,
}

impl KvmIoEvents {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmIoEvents { vm }
    }
}

impl IoEvents for KvmIoEvents {
    fn set_ioevent(&mut self, e: IoEvent, assign: bool) -> io::Result<()> {
        let mut flags = 0u32;
        if e.datamatch.is_some() {
            flags |= 1 << kvm_ioeventfd_flag_nr_datamatch;
        }
        if e.bus == Bus::Pio {
            flags |= 1 << kvm_ioeventfd_flag_nr_pio;
        }
        if !assign {
            flags |= 1 << kvm_ioeventfd_flag_nr_deassign;
        }
        let arg = kvm_ioeventfd {
            datamatch: e.datamatch.unwrap_or(0),
            addr: e.addr,
            len: e.len,
            fd: e.fd,
            flags,
            ..Default::default()
        };
        // SAFETY: the VM fd is valid, the kernel reads exactly one
        // kvm_ioeventfd from a struct that lives across the call, and the
        // return value is checked.
        let ret = unsafe { ioctl_with_ref(self.vm.as_ref(), KVM_IOEVENTFD(), &arg) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn set_coalesced(&mut self, bus: Bus, addr: u64, size: u32, assign: bool) -> io::Result<()> {
        let a = match bus {
            Bus::Mmio => IoEventAddress::Mmio(addr),
            Bus::Pio => IoEventAddress::Pio(addr),
        };
        let r = if assign {
            self.vm.register_coalesced_mmio(a, size)
        } else {
            self.vm.unregister_coalesced_mmio(a, size)
        };
        r.map_err(io::Error::from)
    }
}

pub struct KvmIoListener<E: IoEvents> {
    events: E,
    bus: Bus,
    name: &'static str,
    /// KVM buffers writes to a coalesced zone in a ring that the vCPU loop
    /// must drain before handling any exit, or they are lost. Off until
    /// the machine's vCPU loop drains it.
    coalescing: bool,
}

impl<E: IoEvents> KvmIoListener<E> {
    pub fn new(events: E, bus: Bus) -> Self {
        let name = match bus {
            Bus::Mmio => "kvm-io",
            Bus::Pio => "kvm-io-pio",
        };
        KvmIoListener {
            events,
            bus,
            name,
            coalescing: false,
        }
    }

    /// Registers coalesced zones with KVM from now on; only for a machine
    /// whose vCPU loop drains the coalesced MMIO ring.
    pub fn enable_coalescing(&mut self) {
        self.coalescing = true;
    }

    fn event(&self, e: &Ioeventfd) -> Result<IoEvent, io::Error> {
        let len = match e.size {
            0 | 1 | 2 | 4 | 8 => e.size as u32,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        Ok(IoEvent {
            bus: self.bus,
            addr: e.addr,
            len,
            datamatch: e.datamatch,
            fd: e.fd.as_raw_fd(),
        })
    }
}

impl<E: IoEvents> MemoryListener for KvmIoListener<E> {
    fn name(&self) -> &str {
        self.name
    }
    fn priority(&self) -> i32 {
        PRIORITY
    }
    fn eventfd_add(&mut self, e: &Ioeventfd) -> HookResult {
        let ev = self.event(e)?;
        log::debug!(
            "{}: ioeventfd at {:#x} len {} match {:?}",
            self.name,
            ev.addr,
            ev.len,
            ev.datamatch
        );
        self.events.set_ioevent(ev, true).map_err(|err| {
            format!("KVM_IOEVENTFD at {:#x} (len {}): {err}", ev.addr, ev.len).into()
        })
    }
    fn eventfd_del(&mut self, e: &Ioeventfd) {
        let Ok(ev) = self.event(e) else { return };
        if let Err(err) = self.events.set_ioevent(ev, false) {
            log::error!("{}: removing ioeventfd at {:#x}: {err}", self.name, ev.addr);
        }
    }
    fn coalesced_io_add(&mut self, _r: &FlatRange, addr: u64, size: u64) {
        if !self.coalescing {
            return;
        }
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        if let Err(err) = self.events.set_coalesced(self.bus, addr, size, true) {
            log::warn!(
                "{}: coalesced zone at {addr:#x} refused: {err}; writes will exit",
                self.name
            );
        }
    }
    fn coalesced_io_del(&mut self, _r: &FlatRange, addr: u64, size: u64) {
        if !self.coalescing {
            return;
        }
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        if let Err(err) = self.events.set_coalesced(self.bus, addr, size, false) {
            log::error!("{}: removing coalesced zone at {addr:#x}: {err}", self.name);
        }
    }
}
