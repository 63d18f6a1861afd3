//! vfio-nested: runs inside a QEMU guest (q35, emulated Intel IOMMU, edu
//! bound to vfio-pci) and drives the guest kernel's VFIO with this
//! project's memory model: a root container, memfd RAM regions at chosen
//! guest physical addresses (= IOVAs), and the real `vfio` listener over
//! the real `ContainerMapper`. The edu DMA engine proves what is mapped.
//! Prints `ok - CHECK` / `not ok - CHECK: why` per check
//! (`integration::nested`), `bench: ...` lines, then `vfio-nested: done`.
//!
//! usage: vfio-nested BDF (e.g. 0000:00:03.0)

mod bench;
mod budget;
mod checks;
mod edu;
mod kmsg;
mod mapper;
mod model;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use integration::nested::DONE;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm::memory::{AddressSpace, Memory, MemoryRegion};
use vmm::vfio::VfioListener;
use vmm_vfio::{ContainerMapper, DmaRules};

use edu::Edu;
use mapper::{Live, Tracked};

/// The RAM every check copies through: 1 MiB at 1 MiB.
pub const RAM_IOVA: u64 = 0x10_0000;
pub const RAM_SIZE: u64 = 0x10_0000;

/// Prints check `name`'s line for the host-side test (`ok - name` or
/// `not ok - name: why`); returns 1 if it failed.
pub fn report(name: &str, r: Result<(), String>) -> u32 {
    match r {
        Ok(()) => {
            println!("ok - {name}");
            0
        }
        Err(e) => {
            println!("not ok - {name}: {e}");
            1
        }
    }
}

/// The machine under test: memory model, the listener's live mappings, edu.
pub struct Rig {
    pub memory: Memory,
    pub root: MemoryRegion,
    pub space: Arc<AddressSpace>,
    pub ram: MemoryRegion,
    pub live: Live,
    pub edu: Edu,
    /// The container (its IOMMU set by edu's group) and edu's sysfs path,
    /// for opening the device again under the device model.
    pub container: Arc<VfioContainer>,
    pub sysfs: PathBuf,
}

impl Rig {
    pub fn add(&self, addr: u64, r: &MemoryRegion) -> Result<(), String> {
        let tx = self.memory.begin();
        tx.add_subregion(&self.root, addr, r)
            .map_err(|e| format!("adding {}: {e}", r.name()))?;
        tx.commit()
            .map_err(|e| format!("committing {}: {e}", r.name()))
    }

    pub fn remove(&self, r: &MemoryRegion) -> Result<(), String> {
        let tx = self.memory.begin();
        tx.del_subregion(&self.root, r)
            .map_err(|e| format!("removing {}: {e}", r.name()))?;
        tx.commit()
            .map_err(|e| format!("committing the removal of {}: {e}", r.name()))
    }
}

fn setup(bdf: &str) -> Result<Rig, String> {
    let container =
        Arc::new(VfioContainer::new(None).map_err(|e| format!("opening /dev/vfio/vfio: {e}"))?);
    let sysfs = Path::new("/sys/bus/pci/devices").join(bdf);
    let ops: Arc<dyn VfioOps> = container.clone();
    let rig_container = container.clone();
    let dev = VfioDevice::new(&sysfs, ops, false)
        .map_err(|e| format!("opening VFIO device {}: {e}", sysfs.display()))?;
    let edu = Edu { dev };
    edu.enable();

    let memory = Memory::new();
    let root = MemoryRegion::container("system", u64::MAX);
    let space = memory.add_address_space("memory", root.clone());
    let live = Live::default();
    let mapper = Tracked {
        inner: ContainerMapper::new(container),
        live: live.clone(),
    };
    memory
        .register_listener(
            &space,
            Box::new(VfioListener::new(mapper, DmaRules::default())),
        )
        .map_err(|e| format!("registering the vfio listener: {e}"))?;
    let ram = MemoryRegion::ram("ram", RAM_SIZE).map_err(|e| format!("RAM: {e}"))?;
    let rig = Rig {
        memory,
        root,
        space,
        ram,
        live,
        edu,
        container: rig_container,
        sysfs,
    };
    rig.add(RAM_IOVA, &rig.ram)?;
    Ok(rig)
}

fn main() -> ExitCode {
    let Some(bdf) = std::env::args().nth(1) else {
        eprintln!("usage: vfio-nested BDF");
        return ExitCode::from(2);
    };
    let rig = match setup(&bdf) {
        Ok(rig) => rig,
        Err(e) => {
            println!("not ok - setup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = checks::run(&rig);
    failed += model::run(&rig);
    failed += budget::run(&rig);
    if let Err(e) = bench::run(&rig) {
        println!("not ok - benchmarks: {e}");
        failed += 1;
    }
    println!("{DONE}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
