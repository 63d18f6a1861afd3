//! The VMM's vfio-pci device model over the kernel backend on the real edu
//! device: config space virtualised, BAR0 as a RAM-device region of its
//! mmap (no trap) and, with the mmap switched off, trapped and forwarded;
//! an MSI through the model's MSI capability, its GSI route and the
//! vector eventfd it handed to the kernel; INTx with its resample eventfd. The interrupt routing has no VM
//! (`KvmRouting::detached()`): the route is programmed and the eventfd is
//! the one KVM would inject from.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use integration::nested::*;
use vmm::interrupt::{GsiRouter, KvmRouting};
use vmm::memory::{Access, MemoryRegion};
use vmm::pci::function::Windows;
use vmm::pci::PciFunction;
use vmm::vfio::VfioPci;
use vmm_sys_util::eventfd::EventFd;
use vmm_vfio::{KernelDevice, VfioBackend};

use crate::edu;
use crate::{report, Rig};

/// Where the guest (this program) puts the model's BAR0.
const BAR0_GPA: u64 = 0xe000_0000;
const EDU_ID: u32 = 0x0100_00ed;
/// The MSI the guest programs: the local APIC's window, vector 0x41.
const MSI_ADDR: u32 = 0xfee0_0000;
const MSI_DATA: u16 = 0x0041;
const CMD_MEMORY_AND_MASTER: u16 = 0x6;
const EDU_RAISE: u64 = 0x60;
/// The IOAPIC pin the model's INTx is wired to.
const INTX_GSI: u8 = 10;
const EDU_ACK: u64 = 0x64;
/// `KVM_IRQ_ROUTING_MSI` (linux/kvm.h).
const KVM_IRQ_ROUTING_MSI: u32 = 2;

struct Model {
    dev: Arc<VfioPci<KvmRouting>>,
    f: PciFunction,
    router: GsiRouter<KvmRouting>,
    io: MemoryRegion,
}

impl Model {
    fn cfg32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.f.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// A guest config write, in one transaction (BAR moves take effect).
    fn cfg_write(&mut self, rig: &Rig, off: usize, data: &[u8]) -> Result<(), String> {
        let tx = rig.memory.begin();
        let win = Windows {
            mem: &rig.root,
            io: &self.io,
        };
        self.f
            .write(&tx, &win, off, data)
            .map_err(|e| format!("config write at {off:#x}: {e}"))?;
        tx.commit()
            .map_err(|e| format!("committing the config write at {off:#x}: {e}"))
    }

    /// Our config space's capability `id`, if listed.
    fn capability(&self, id: u8) -> Option<usize> {
        let mut at = (self.cfg32(0x34) & 0xfc) as usize;
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            let head = self.cfg32(at);
            if head as u8 == id {
                return Some(at);
            }
            at = ((head >> 8) & 0xfc) as usize;
        }
        None
    }
}

fn build(rig: &Rig) -> Result<Model, String> {
    let backend = KernelDevice::open(&rig.sysfs, rig.container.clone())
        .map_err(|e| format!("kernel backend: {}", chain(&e)))?;
    println!(
        "model: kernel backend on {}, device reset {}",
        backend.name(),
        if backend.can_reset() {
            "supported"
        } else {
            "not offered by the kernel (no VFIO_DEVICE_FLAGS_RESET)"
        }
    );
    let backend: Arc<Mutex<dyn VfioBackend>> = Arc::new(Mutex::new(backend));
    let router = GsiRouter::new(KvmRouting::detached());
    let (dev, mut f) = VfioPci::new("edu", backend, router.clone(), &rig.memory)
        .map_err(|e| format!("the vfio-pci model: {}", chain(&e)))?;
    dev.wire_intx(&mut f, INTX_GSI)
        .map_err(|e| format!("INTx: {}", chain(&e)))?;
    Ok(Model {
        dev,
        f,
        router,
        io: MemoryRegion::container("io", 0x1_0000),
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

fn ids(m: &mut Model, rig: &Rig) -> Result<(), String> {
    let id = m.cfg32(0);
    if id != 0x11e8_1234 {
        return Err(format!("vendor/device {id:#010x}"));
    }
    let class = m.cfg32(8) >> 8;
    if class != 0x00ff00 {
        return Err(format!("class {class:#08x}"));
    }
    let msi = m.capability(0x05).ok_or("no MSI capability in the list")?;
    let ctl = m.cfg32(msi) >> 16;
    if ctl & 1 != 0 {
        return Err(format!("MSI starts enabled (control {ctl:#x})"));
    }
    // BAR sizing, as a guest's PCI scan does it: edu's BAR0 is 1 MiB.
    m.cfg_write(rig, 0x10, &u32::MAX.to_le_bytes())?;
    let sized = m.cfg32(0x10);
    if sized != 0xfff0_0000 {
        return Err(format!("BAR0 sizing read {sized:#010x}, not 0xfff00000"));
    }
    println!("model: ids {id:#010x}, class {class:#08x}, MSI capability at {msi:#x}, BAR0 1 MiB");
    Ok(())
}

fn map_bar0(m: &mut Model, rig: &Rig) -> Result<(), String> {
    m.cfg_write(rig, 0x10, &(BAR0_GPA as u32).to_le_bytes())?;
    m.cfg_write(rig, 0x04, &CMD_MEMORY_AND_MASTER.to_le_bytes())?;
    let p2p = rig.live.snapshot().contains_key(&BAR0_GPA);
    println!(
        "model: BAR0 at {BAR0_GPA:#x}; the vfio listener {} it for peer-to-peer",
        if p2p {
            "mapped"
        } else {
            "did not map (warned)"
        }
    );
    Ok(())
}

fn read_space(rig: &Rig, gpa: u64) -> (u32, Access) {
    let mut b = [0u8; 4];
    let a = rig.space.read(gpa, &mut b);
    (u32::from_le_bytes(b), a)
}

fn bar_mmap(m: &Model, rig: &Rig) -> Result<(), String> {
    let (range, _) = rig
        .space
        .lookup(BAR0_GPA)
        .ok_or("nothing at BAR0 in the view")?;
    if !range.is_ram_device() {
        return Err(format!(
            "BAR0 is {:?} in the view, not a RAM device",
            range.region.kind()
        ));
    }
    let host = range
        .host_addr()
        .ok_or("the RAM device has no host address")?;
    let traps = m.dev.trapped_accesses();
    // SAFETY: `host` is the RAM device's mapping of BAR0 (1 MiB, held by
    // the view we looked it up in); its first word is the id register,
    // read with one aligned volatile load as MMIO wants.
    let id = unsafe { std::ptr::read_volatile(host as *const u32) };
    let (via_space, access) = read_space(rig, BAR0_GPA);
    if id != EDU_ID || via_space != EDU_ID {
        return Err(format!(
            "read {id:#010x} by the host mapping, {via_space:#010x} through the view"
        ));
    }
    if access != Access::Ram || m.dev.trapped_accesses() != traps {
        return Err(format!(
            "the access trapped ({access:?}, {} traps)",
            m.dev.trapped_accesses() - traps
        ));
    }
    Ok(())
}

fn bar_trap(m: &Model, rig: &Rig) -> Result<(), String> {
    m.dev
        .set_mmap_enabled(&rig.memory, false)
        .map_err(|e| format!("switching the mmap off: {e}"))?;
    let res = (|| {
        let traps = m.dev.trapped_accesses();
        let (id, access) = read_space(rig, BAR0_GPA);
        if id != EDU_ID {
            return Err(format!("read {id:#010x}"));
        }
        let n = m.dev.trapped_accesses() - traps;
        if access != Access::Done || n != 1 {
            return Err(format!(
                "{access:?} with {n} traps, not one forwarded access"
            ));
        }
        // The liveness register inverts what is written: the write went
        // through to the device too.
        rig.space.write(BAR0_GPA + 4, &0x1234_5678u32.to_le_bytes());
        let (live, _) = read_space(rig, BAR0_GPA + 4);
        if live != !0x1234_5678 {
            return Err(format!(
                "liveness read {live:#010x} after writing 0x12345678"
            ));
        }
        Ok(())
    })();
    m.dev
        .set_mmap_enabled(&rig.memory, true)
        .map_err(|e| format!("switching the mmap back on: {e}"))?;
    res
}

fn wait_readable(fd: &EventFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

fn msi(m: &mut Model, rig: &Rig) -> Result<(), String> {
    let cap = m.capability(0x05).ok_or("no MSI capability")?;
    let is64 = (m.cfg32(cap) >> 16) & 0x80 != 0;
    let data_at = cap + if is64 { 0x0c } else { 0x08 };
    m.cfg_write(rig, cap + 4, &MSI_ADDR.to_le_bytes())?;
    if is64 {
        m.cfg_write(rig, cap + 8, &0u32.to_le_bytes())?;
    }
    m.cfg_write(rig, data_at, &MSI_DATA.to_le_bytes())?;
    m.cfg_write(rig, cap + 2, &1u16.to_le_bytes())?;
    if m.dev.failed() {
        return Err("the model failed enabling MSI (SET_IRQS refused)".into());
    }
    let v = m.dev.msi().ok_or("the model has no MSI vectors")?;
    let fd = v.vector_fd(0).ok_or("no eventfd for vector 0")?;
    let gsi = v.gsi(0).ok_or("no GSI for vector 0")?;
    let routed = m.router.table().iter().any(|e| {
        // SAFETY: the msi member is the one set for MSI entries.
        let msi = unsafe { e.u.msi };
        e.type_ == KVM_IRQ_ROUTING_MSI
            && e.gsi == gsi
            && msi.address_lo == MSI_ADDR
            && msi.data == u32::from(MSI_DATA)
    });
    if !routed {
        return Err(format!(
            "GSI {gsi} has no MSI route to {MSI_ADDR:#x}/{MSI_DATA:#x}"
        ));
    }
    let _ = fd.read();
    // Raise edu's interrupt through the RAM-device mapping (no trap).
    rig.space.write(BAR0_GPA + EDU_RAISE, &1u32.to_le_bytes());
    let arrived = wait_readable(&fd, 3000);
    let status = rig.edu.read32(edu::IRQ_STATUS);
    rig.edu.write32(edu::IRQ_ACK, status);
    m.cfg_write(rig, cap + 2, &0u16.to_le_bytes())?;
    if !arrived {
        return Err(format!(
            "no interrupt on GSI {gsi}'s eventfd within 3 s (edu status {status:#x})"
        ));
    }
    let count = fd.read().map_err(|e| format!("reading the eventfd: {e}"))?;
    println!("model: MSI on GSI {gsi} (route {MSI_ADDR:#x}/{MSI_DATA:#x}), eventfd count {count}, edu status {status:#x}");
    Ok(())
}

fn edu_ack(rig: &Rig) {
    let (status, _) = read_space(rig, BAR0_GPA + edu::IRQ_STATUS);
    rig.space.write(BAR0_GPA + EDU_ACK, &status.to_le_bytes());
}

/// INTx (on again now that MSI is off): the first interrupt arrives on the
/// trigger eventfd and the kernel masks the line; a second one, raised
/// after an ack, waits until the resample eventfd (KVM's, on the guest's
/// EOI; here written by hand, as there is no VM) unmasks it.
fn intx(m: &Model, rig: &Rig) -> Result<(), String> {
    let (trigger, resample) = m.dev.intx().ok_or("INTx is not wired")?;
    let pin_line = m.cfg32(0x3c) & 0xffff;
    if pin_line != 0x0100 | u32::from(INTX_GSI) {
        return Err(format!("interrupt pin/line {pin_line:#06x}"));
    }
    let _ = trigger.read();
    rig.space.write(BAR0_GPA + EDU_RAISE, &1u32.to_le_bytes());
    if !wait_readable(&trigger, 3000) {
        edu_ack(rig);
        return Err("the first INTx did not arrive within 3 s".into());
    }
    let _ = trigger.read();
    edu_ack(rig);
    rig.space.write(BAR0_GPA + EDU_RAISE, &1u32.to_le_bytes());
    let early = wait_readable(&trigger, 500);
    resample
        .write(1)
        .map_err(|e| format!("writing the resample eventfd: {e}"))?;
    let after = wait_readable(&trigger, 3000);
    edu_ack(rig);
    let _ = trigger.read();
    let _ = resample.write(1);
    if early {
        return Err("the second INTx arrived before the resample (the line was not masked)".into());
    }
    if !after {
        return Err("the second INTx did not arrive within 3 s of the resample".into());
    }
    println!(
        "model: INTx on GSI {INTX_GSI}: masked after the first, delivered again after the resample"
    );
    Ok(())
}

/// A machine reset: the function goes back to its power-on config (BAR0
/// unmapped, MSI off), the device is reset (if the kernel can) with its
/// interrupts taken back first; programmed again, BAR0 answers.
fn reset(m: &mut Model, rig: &Rig) -> Result<(), String> {
    let tx = rig.memory.begin();
    let win = Windows {
        mem: &rig.root,
        io: &m.io,
    };
    m.f.reset(&tx, &win).map_err(|e| format!("reset: {e}"))?;
    tx.commit()
        .map_err(|e| format!("committing the reset: {e}"))?;
    if m.dev.failed() {
        return Err("the device failed its reset".into());
    }
    if rig.space.lookup(BAR0_GPA).is_some() || m.cfg32(0x10) != 0 {
        return Err(format!("BAR0 still programmed ({:#x})", m.cfg32(0x10)));
    }
    let cap = m.capability(0x05).ok_or("no MSI capability after reset")?;
    if (m.cfg32(cap) >> 16) & 1 != 0 || m.cfg32(0x3c) & 0xff00 != 0x0100 {
        return Err("MSI enabled or the interrupt pin lost after reset".into());
    }
    map_bar0(m, rig)?;
    let (id, access) = read_space(rig, BAR0_GPA);
    if id != EDU_ID || access != Access::Ram {
        return Err(format!("after reset BAR0 reads {id:#010x} ({access:?})"));
    }
    Ok(())
}

/// Runs the model's checks; returns how many failed. The model and its
/// second descriptor of the device are gone when it returns.
pub fn run(rig: &Rig) -> u32 {
    let mut m = match build(rig) {
        Ok(m) => m,
        Err(e) => {
            let n = MODEL_CHECKS.len() as u32;
            for c in MODEL_CHECKS {
                println!("not ok - {c}: {e}");
            }
            return n;
        }
    };
    let mut failed = report(MODEL_IDS, ids(&mut m, rig));
    let mapped = map_bar0(&mut m, rig);
    let (mmap, trap) = match &mapped {
        Ok(()) => (bar_mmap(&m, rig), bar_trap(&m, rig)),
        Err(e) => (Err(e.clone()), Err(e.clone())),
    };
    failed += report(MODEL_MMAP, mmap);
    failed += report(MODEL_TRAP, trap);
    let msi_done = mapped.and_then(|()| msi(&mut m, rig));
    let intx_res = match &msi_done {
        Ok(()) => intx(&m, rig),
        Err(_) => Err("skipped: MSI failed".into()),
    };
    failed += report(MODEL_MSI, msi_done);
    failed += report(MODEL_INTX, intx_res);
    failed += report(MODEL_RESET, reset(&mut m, rig));
    // Unmap BAR0 (command register) so the view lets go of the mapping.
    if let Err(e) = m.cfg_write(rig, 0x04, &0u16.to_le_bytes()) {
        println!("# model: unmapping BAR0: {e}");
    }
    failed
}
