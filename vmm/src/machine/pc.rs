//! The PC machine: the memory map, KVM behind its listeners, the boot path
//! and the vCPUs, and the main loop that turns guest requests into a stop
//! or a reboot.
//!
//! A reboot recreates the KVM VM and its vCPUs and keeps everything else
//! (RAM, devices, their state): the KVM listeners are unregistered from the
//! old VM and registered on the new one, whose memslots and ioeventfds then
//! come from the listener replay. Devices are reset through their reset
//! hooks, the PAM segments go back to PCI, and the kernel is loaded again.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, BootSpec, CpuTemplate, E820Entry, E820Kind};
use crate::devices::legacy::{
    cmos, debug_exit, pm, reset_ports, serial, Cmos, DebugExit, I8042Data, Pm1, PortA, Serial,
    I8042,
};
use crate::devices::sci::SciLine;
use crate::interrupt::{GsiRouter, KvmRouting};
use crate::iothread::IoThread;
use crate::kvm::ioevents::{Bus, KvmIoEvents, KvmIoListener};
use crate::kvm::memslots::{KvmMemoryListener, KvmSlots, VcpuPause};
use crate::kvm::{KvmError, VcpuEvent, VcpuSet, VcpuStop, Vm};
use crate::memory::dma::DmaView;
use crate::memory::{AddressSpace, ListenerId, Memory, MemoryError, MemoryRegion};
use crate::pci::i440fx::{HostBridge, IsaBridge};
use crate::pci::{ConfigIo, PciBus, PciError, CONFIG_PORT, CONFIG_PORTS};
use crate::virtio::VirtioPci;

use super::control::MonitorState;
use super::dispatch::{Dispatch, ExitStats};
use super::guest_ram::{guest_memory, GuestRamError};
use super::hotplug::Hotplug;
use super::layout::PcMemory;
use super::requests::{Request, Requests};

/// What a device does on a machine reset.
pub trait Reset: Send + Sync {
    fn reset(&self);
}

#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    pub cpus: u8,
    pub kernel: PathBuf,
    pub cmdline: String,
    pub initrd: Option<PathBuf>,
    /// Hold vCPUs while an overlapping memslot update is applied (QEMU
    /// f39b7d2b). Off only to show what goes wrong without it.
    pub atomic_memslots: bool,
    /// Start every vCPU at the kernel's 64-bit entry, runnable, instead of
    /// keeping application processors waiting for INIT/SIPI: for guests
    /// that bring their CPUs up themselves (the probe). Linux wants false.
    pub aps_at_entry: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("cannot build the memory map")]
    Memory(#[from] MemoryError),
    #[error("cannot map guest RAM")]
    GuestRam(#[from] GuestRamError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("cannot boot {kernel}")]
    Boot {
        kernel: String,
        #[source]
        source: boot::BootError,
    },
    #[error("cannot set up vCPU {cpu}")]
    VcpuSetup {
        cpu: u8,
        #[source]
        source: boot::BootError,
    },
    #[error("vCPU {cpu} stopped: {detail}")]
    Vcpu { cpu: usize, detail: String },
    #[error("cannot create the machine's request eventfd")]
    Requests(#[source] std::io::Error),
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("cannot write the ACPI tables: {0}")]
    Acpi(String),
    #[error("cannot create the {0} device")]
    Device(&'static str, #[source] std::io::Error),
    #[error("cannot bind the interrupt line of GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Lets the memslot listener pause whatever vCPUs are running now.
struct Pauser(Arc<ArcSwapOption<VcpuSet>>);

impl VcpuPause for Pauser {
    fn pause(&self) {
        if let Some(v) = self.0.load_full() {
            v.pause();
        }
    }
    fn resume(&self) {
        if let Some(v) = self.0.load_full() {
            v.resume();
        }
    }
}

struct Running {
    vcpus: Arc<VcpuSet>,
    listeners: Vec<(Arc<AddressSpace>, ListenerId)>,
    events: Receiver<VcpuEvent>,
}

pub struct Machine {
    cfg: MachineConfig,
    pub memory: Arc<Memory>,
    pub pc: PcMemory,
    ram: GuestMemoryMmap,
    pub requests: Requests,
    pub stats: Arc<ExitStats>,
    /// PCI bus 0: the i440FX host bridge at 00.0 and the PIIX3 at 01.0.
    pub pci: Arc<PciBus>,
    resets: Vec<Arc<dyn Reset>>,
    /// Device interrupt lines bound to a GSI with an irqfd on every VM.
    irq_lines: Vec<(Arc<EventFd>, u32)>,
    /// MSI routes of every device, moved to each new VM.
    pub(super) router: GsiRouter<KvmRouting>,
    /// Guest RAM as in-process devices reach it.
    pub(super) dma: DmaView,
    pub(super) iothreads: Vec<Arc<IoThread>>,
    pub(super) virtio: Vec<Arc<VirtioPci<KvmRouting>>>,
    /// In-process disks added so far (names virtio-blk<N>).
    pub(super) disks: usize,
    /// The `vhost` listeners of vhost-user devices.
    pub(super) vhost_user: Vec<ListenerId>,
    /// The kernel VFIO container of `--device vfio` devices.
    pub(super) kernel_vfio: Option<super::vfio::KernelVfio>,
    /// The ACPI SCI, driven on whichever VM runs.
    pub(super) sci: Arc<SciLine>,
    /// Memory hotplug, once enabled.
    pub(super) hotplug: Option<Arc<Hotplug>>,
    pub(super) vcpu_slot: Arc<ArcSwapOption<VcpuSet>>,
    running: Option<Running>,
    /// Run state, events and device lists for the monitor (control.rs).
    pub(super) monitor: MonitorState,
    /// How many times the guest was started (1 + reboots).
    pub boots: u32,
}

impl Machine {
    pub fn new(cfg: MachineConfig) -> Result<Machine, MachineError> {
        if cfg.cpus == 0 {
            return Err(MachineError::Config("--cpus must be at least 1".into()));
        }
        if cfg.memory < 16 << 20 {
            return Err(MachineError::Config(format!(
                "--memory {} MiB is too small (at least 16 MiB)",
                cfg.memory >> 20
            )));
        }
        let memory = Arc::new(Memory::new());
        let pc = PcMemory::new(&memory, cfg.memory)?;
        let ram = guest_memory(&pc)?;
        let requests = Requests::new().map_err(MachineError::Requests)?;
        let pci = Arc::new(PciBus::new(
            memory.clone(),
            pc.pci.clone(),
            pc.io_root.clone(),
        ));
        pci.add(0, 0, HostBridge::function(pc.pam_shared.clone()))?;
        pci.add(1, 0, IsaBridge::function())?;
        let rcr = requests.clone();
        let conf = ConfigIo::new(
            pci.clone(),
            // PIIX3 reset control: RCPU (bit 2) resets the machine.
            Box::new(move |v| {
                if v & 4 != 0 {
                    rcr.raise(Request::Reset);
                }
            }),
        );
        let conf = MemoryRegion::io("pci-conf", CONFIG_PORTS, Arc::new(conf));
        let cmos = Arc::new(Cmos::new(pc.below_4g, pc.above_4g));
        let io = |name: &str, size, ops: Arc<dyn crate::memory::RegionOps>| {
            MemoryRegion::io(name, size, ops)
        };
        let tx = memory.begin();
        tx.add_subregion(&pc.io_root, CONFIG_PORT, &conf)?;
        tx.add_subregion(
            &pc.io_root,
            cmos::PORT,
            &io("rtc", cmos::SIZE, cmos.clone()),
        )?;
        let kbd = Arc::new(I8042(requests.clone()));
        tx.add_subregion(
            &pc.io_root,
            reset_ports::I8042_DATA,
            &io("i8042-data", 1, Arc::new(I8042Data)),
        )?;
        tx.add_subregion(
            &pc.io_root,
            reset_ports::I8042_COMMAND,
            &io("i8042-cmd", 1, kbd),
        )?;
        let sci = Arc::new(SciLine::default());
        let pm1 = Arc::new(Pm1::new(requests.clone()).with_sci(sci.clone()));
        tx.add_subregion(
            &pc.io_root,
            u64::from(acpi::PM_BASE),
            &io("acpi-pm1", pm::SIZE, pm1.clone()),
        )?;
        let port_a = Arc::new(PortA::new(requests.clone()));
        tx.add_subregion(&pc.io_root, reset_ports::PORT_A, &io("port92", 1, port_a))?;
        tx.commit()?;
        let dma = DmaView::default();
        memory.register_listener(&pc.memory, Box::new(dma.listener()))?;
        Ok(Machine {
            cfg,
            memory,
            pc,
            ram,
            requests,
            stats: Arc::default(),
            pci,
            monitor: MonitorState::new(pm1.clone()),
            resets: vec![cmos as Arc<dyn Reset>, pm1 as Arc<dyn Reset>],
            irq_lines: Vec::new(),
            router: GsiRouter::new(KvmRouting::detached()),
            dma,
            iothreads: Vec::new(),
            virtio: Vec::new(),
            disks: 0,
            vhost_user: Vec::new(),
            kernel_vfio: None,
            sci,
            hotplug: None,
            vcpu_slot: Arc::default(),
            running: None,
            boots: 0,
        })
    }

    /// Guest RAM at guest-physical addresses.
    pub fn guest_ram(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// Registers a device's reset hook.
    pub fn on_reset(&mut self, r: Arc<dyn Reset>) {
        self.resets.push(r);
    }

    /// Maps COM1 (output to `out`) and the debug-exit port.
    pub fn attach_console(&mut self, out: serial::Sink) -> Result<(), MachineError> {
        let com1 = Arc::new(Serial::new(out).map_err(|e| MachineError::Device("serial", e))?);
        self.irq_lines.push((com1.irq(), serial::COM1_GSI));
        let uart = crate::memory::MemoryRegion::io("serial", serial::SIZE, com1);
        let exit = crate::memory::MemoryRegion::io(
            "debug-exit",
            debug_exit::SIZE,
            Arc::new(DebugExit(self.requests.clone())),
        );
        let tx = self.memory.begin();
        tx.add_subregion(&self.pc.io_root, serial::COM1_PORT, &uart)?;
        tx.add_subregion(&self.pc.io_root, debug_exit::PORT, &exit)?;
        tx.commit()?;
        Ok(())
    }

    /// The running vCPUs, if the guest is running.
    pub fn vcpus(&self) -> Option<Arc<VcpuSet>> {
        self.vcpu_slot.load_full()
    }

    pub fn e820(&self) -> Vec<E820Entry> {
        self.pc
            .e820()
            .into_iter()
            .map(|(addr, size, kind)| {
                let kind = match kind {
                    1 => E820Kind::Ram,
                    3 => E820Kind::Acpi,
                    _ => E820Kind::Reserved,
                };
                E820Entry::new(addr, size, kind)
            })
            .collect()
    }

    /// Creates the VM, gives it the memory map through the KVM listeners,
    /// loads the kernel and starts the vCPUs.
    fn start(&mut self) -> Result<(), MachineError> {
        let vm = Arc::new(Vm::new()?);
        for (fd, gsi) in &self.irq_lines {
            vm.fd()
                .register_irqfd(fd, *gsi)
                .map_err(|source| MachineError::Irqfd { gsi: *gsi, source })?;
        }
        let mut listeners = Vec::new();
        let res = self
            .router
            .switch(KvmRouting::new(vm.fd().clone()))
            .map_err(|e| MachineError::Config(format!("MSI routes on the new VM: {e}")));
        let res = res.and_then(|()| self.register_kvm(&vm, &mut listeners));
        self.sci.attach(Some(vm.fd().clone()));
        let res = res.and_then(|()| self.boot_vcpus(&vm));
        match res {
            Ok((vcpus, events)) => {
                self.vcpu_slot.store(Some(vcpus.clone()));
                self.running = Some(Running {
                    vcpus,
                    listeners,
                    events,
                });
                self.boots += 1;
                Ok(())
            }
            Err(e) => {
                self.unregister(listeners);
                Err(e)
            }
        }
    }

    fn register_kvm(
        &self,
        vm: &Arc<Vm>,
        out: &mut Vec<(Arc<AddressSpace>, ListenerId)>,
    ) -> Result<(), MachineError> {
        let pause = Box::new(Pauser(self.vcpu_slot.clone()));
        let mut slots = KvmMemoryListener::new(KvmSlots::new(vm.fd().clone()), Some(pause));
        slots.set_atomic(self.cfg.atomic_memslots);
        let id = self
            .memory
            .register_listener(&self.pc.memory, Box::new(slots))?;
        out.push((self.pc.memory.clone(), id));
        for (space, bus) in [(&self.pc.memory, Bus::Mmio), (&self.pc.io, Bus::Pio)] {
            let l = KvmIoListener::new(KvmIoEvents::new(vm.fd().clone()), bus);
            let id = self.memory.register_listener(space, Box::new(l))?;
            out.push((space.clone(), id));
        }
        Ok(())
    }

    fn boot_vcpus(
        &self,
        vm: &Arc<Vm>,
    ) -> Result<(Arc<VcpuSet>, Receiver<VcpuEvent>), MachineError> {
        let e820 = self.e820();
        let rsdp = self.write_acpi_tables()?;
        let spec = BootSpec {
            kernel: &self.cfg.kernel,
            cmdline: &self.cfg.cmdline,
            initrd: self.cfg.initrd.as_deref(),
            e820: &e820,
            acpi_rsdp: Some(rsdp),
        };
        let info = boot::load(&self.ram, &spec).map_err(|source| MachineError::Boot {
            kernel: self.cfg.kernel.display().to_string(),
            source,
        })?;
        let template = CpuTemplate::from_kvm(vm.kvm())
            .map_err(|source| MachineError::VcpuSetup { cpu: 0, source })?;
        let cpus = self.cfg.cpus;
        let mut fds = Vec::with_capacity(cpus.into());
        for cpu in 0..cpus {
            let fd = vm.create_vcpu(cpu)?;
            let at_entry = cpu == 0 || self.cfg.aps_at_entry;
            boot::setup_vcpu(&fd, &template, cpu, cpus, at_entry.then_some(&info))
                .map_err(|source| MachineError::VcpuSetup { cpu, source })?;
            if cpu > 0 && at_entry {
                let runnable = kvm_bindings::kvm_mp_state {
                    mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
                };
                fd.set_mp_state(runnable)
                    .map_err(|source| MachineError::VcpuSetup {
                        cpu,
                        source: boot::BootError::Vcpu(source),
                    })?;
            }
            fds.push(fd);
        }
        let handler = Arc::new(Dispatch::new(
            self.pc.memory.clone(),
            self.pc.io.clone(),
            self.requests.clone(),
            self.stats.clone(),
        ));
        let (tx, events) = mpsc::channel();
        let vcpus = VcpuSet::spawn(vm.clone(), fds, handler, tx)?;
        Ok((Arc::new(vcpus), events))
    }

    /// Writes the ACPI tables into their RAM range; returns the RSDP's
    /// address.
    fn write_acpi_tables(&self) -> Result<u64, MachineError> {
        use vm_memory::{Bytes, GuestAddress};
        let cfg = AcpiConfig {
            cpus: self.cfg.cpus,
            pci_hole: (self.pc.below_4g.max(0x1000_0000), 0xfec0_0000),
            pci_window64: (self.pci64_start(), 1 << 40),
            memory_hotplug: self
                .hotplug
                .as_ref()
                .map(|h| (h.dev.slots().len(), h.base, h.size)),
            ram: (self.pc.below_4g, self.pc.above_4g),
        };
        let (pieces, rsdp) = acpi::build(&cfg);
        for (at, bytes) in pieces {
            self.ram
                .write_slice(&bytes, GuestAddress(at))
                .map_err(|e| MachineError::Acpi(e.to_string()))?;
        }
        Ok(rsdp)
    }

    fn unregister(&self, listeners: Vec<(Arc<AddressSpace>, ListenerId)>) {
        for (space, id) in listeners.into_iter().rev() {
            self.memory.unregister_listener(&space, id);
        }
    }

    /// Stops the vCPUs and lets go of the VM.
    fn teardown(&mut self) {
        if let Some(r) = self.running.take() {
            self.vcpu_slot.store(None);
            r.vcpus.stop();
            self.unregister(r.listeners);
            // Between VMs routes are kept and replayed on the next one.
            let _ = self.router.switch(KvmRouting::detached());
            self.sci.attach(None);
        }
    }

    /// Puts the platform back as after power-on, keeping RAM and the state
    /// devices keep across resets (CMOS).
    fn reset_platform(&mut self) -> Result<(), MachineError> {
        // PCI reset unmaps BARs and, through the host bridge, the PAM.
        self.pci.reset()?;
        for r in &self.resets {
            r.reset();
        }
        Ok(())
    }

    /// Boots the guest and runs it until it stops; returns its exit status
    /// (ACPI S5: 0; the debug-exit port: the value written). Guest reboots
    /// are handled here.
    pub fn run(&mut self) -> Result<u32, MachineError> {
        self.start()?;
        self.monitor_started();
        loop {
            if let Some(err) = self.wait_event() {
                self.teardown();
                return Err(err);
            }
            match self.requests.take() {
                Some(Request::Stop(status)) => {
                    log::info!("guest stopped with status {status}");
                    self.teardown();
                    self.monitor_stopped();
                    return Ok(status);
                }
                Some(Request::Reset) => {
                    log::info!("guest reset");
                    self.teardown();
                    self.reset_platform()?;
                    self.monitor_reset();
                    self.start()?;
                    self.monitor_started();
                }
                None => {}
            }
        }
    }

    /// Waits a little for a vCPU to stop and turns what it says into a
    /// request, or into an error for a stop the machine cannot carry on from.
    fn wait_event(&mut self) -> Option<MachineError> {
        let r = self.running.as_ref()?;
        let ev = match r.events.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => return None,
            Err(RecvTimeoutError::Disconnected) => {
                if self.requests.pending().is_some() {
                    return None;
                }
                return Some(MachineError::Vcpu {
                    cpu: 0,
                    detail: "every vCPU has stopped".into(),
                });
            }
        };
        let cpu = ev.cpu;
        match ev.stop {
            VcpuStop::Requested | VcpuStop::Poweroff | VcpuStop::Reset => None,
            VcpuStop::Shutdown => {
                log::info!("vcpu{cpu}: triple fault; resetting the machine");
                self.requests.raise(Request::Reset);
                None
            }
            VcpuStop::SystemEvent { kind, data } => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                    self.requests.raise(Request::Stop(0));
                    None
                }
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    self.requests.raise(Request::Reset);
                    None
                }
                _ => Some(MachineError::Vcpu {
                    cpu,
                    detail: format!("system event {kind} {data:x?}"),
                }),
            },
            VcpuStop::InternalError {
                suberror,
                data,
                registers,
            } => Some(MachineError::Vcpu {
                cpu,
                detail: format!("KVM internal error {suberror} {data:x?}\n{registers}"),
            }),
            VcpuStop::FailEntry { reason, registers } => Some(MachineError::Vcpu {
                cpu,
                detail: format!("VM entry failed (reason {reason:#x})\n{registers}"),
            }),
            VcpuStop::Error(e) => Some(MachineError::Vcpu { cpu, detail: e }),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.teardown();
        // Devices are also held by the memory tree (their regions), so
        // dropping the machine alone would not stop them.
        for v in &self.virtio {
            v.shutdown();
        }
    }
}
