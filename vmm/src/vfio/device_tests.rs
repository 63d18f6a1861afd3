//! The device model over a fake backend whose BAR0 is a memfd: which parts
//! of a BAR are RAM devices and which trap, and when interrupt eventfds are
//! handed to the device.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use vmm_vfio::backend::RegionMmap;
use vmm_vfio::{BackendError, RegionInfo, VfioBackend};

use super::VfioPci;
use crate::interrupt::{GsiRouter, KvmRouting};
use crate::memory::{Access, AddressSpace, Memory, MemoryRegion, RamBlock, RegionKind};
use crate::pci::function::Windows;
use crate::pci::PciFunction;

const BAR_GPA: u64 = 0x1000_0000;
const ROM_GPA: u64 = 0x2000_0000;

/// The fake's 2 KiB expansion ROM: the signature, then a pattern.
fn rom_byte(i: u64) -> u8 {
    match i {
        0 => 0x55,
        1 => 0xaa,
        _ => (i as u8).wrapping_mul(3),
    }
}
const MSI_CAP: usize = 0x50;

struct Fake {
    cfg: [u8; 256],
    bar: RamBlock,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    /// MSI-X (2 vectors, table at BAR0+0x1800, PBA at +0x1c00) at 0x40,
    /// MSI (1 vector, 64-bit) at 0x50; BAR0 is 8 KiB, its second page
    /// mmap-able.
    fn new(calls: Arc<Mutex<Vec<String>>>) -> Self {
        let mut cfg = [0u8; 256];
        cfg[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
        cfg[6] = 0x10;
        cfg[0x34] = 0x40;
        cfg[0x40..0x4c].copy_from_slice(&[0x11, 0x50, 1, 0, 0, 0x18, 0, 0, 0, 0x1c, 0, 0]);
        cfg[0x50..0x54].copy_from_slice(&[0x05, 0, 0x80, 0]);
        cfg[0x3d] = 2; // INTB#
        Fake {
            cfg,
            bar: RamBlock::new_memfd("fake-bar0", 0x2000).unwrap(),
            calls,
        }
    }
}

impl VfioBackend for Fake {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let size = match index {
            0 => 0x2000,
            6 => 0x800,
            7 => 256,
            _ => return None,
        };
        Some(RegionInfo {
            index,
            flags: 7,
            size,
        })
    }
    fn irq_count(&self, index: u32) -> u32 {
        [1, 1, 2].get(index as usize).copied().unwrap_or(0)
    }
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        match index {
            0 => {
                self.bar.read(offset, data);
            }
            6 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = rom_byte(offset + i as u64);
                }
            }
            _ => data.copy_from_slice(&self.cfg[offset as usize..offset as usize + data.len()]),
        }
        Ok(())
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        if index == 0 {
            self.bar.write(offset, data);
        }
        if index == 6 {
            self.calls
                .lock()
                .unwrap()
                .push(format!("rom write {offset:#x}"));
        }
        Ok(())
    }
    fn set_irq_eventfds(&mut self, index: u32, fds: &[RawFd]) -> Result<(), BackendError> {
        let mut c = self.calls.lock().unwrap();
        c.push(format!("irqs {index}:{}", fds.len()));
        Ok(())
    }
    fn set_irq_unmask_eventfd(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
    ) -> Result<(), BackendError> {
        let what = if fd.is_some() { "fd" } else { "none" };
        self.calls
            .lock()
            .unwrap()
            .push(format!("unmask {index}:{what}"));
        Ok(())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        self.calls.lock().unwrap().push("reset".into());
        Ok(())
    }
    fn region_mmap(&self, index: u32) -> Option<RegionMmap> {
        (index == 0).then(|| RegionMmap {
            file: self.bar.file().try_clone().unwrap(),
            offset: 0,
            areas: vec![(0x1000, 0x1000)],
        })
    }
}

struct Rig {
    mem: Memory,
    root: MemoryRegion,
    io: MemoryRegion,
    space: Arc<AddressSpace>,
    dev: Arc<VfioPci<KvmRouting>>,
    f: PciFunction,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Rig {
    fn new() -> Rig {
        let mem = Memory::new();
        let root = MemoryRegion::container("system", 1 << 32);
        let space = mem.add_address_space("memory", root.clone());
        let calls = Arc::default();
        let backend: Arc<Mutex<dyn VfioBackend>> =
            Arc::new(Mutex::new(Fake::new(Arc::clone(&calls))));
        let router = GsiRouter::new(KvmRouting::detached());
        let (dev, f) = VfioPci::new("fake", backend, router, &mem).unwrap();
        let mut rig = Rig {
            mem,
            root,
            io: MemoryRegion::container("io", 0x1_0000),
            space,
            dev,
            f,
            calls,
        };
        rig.cfg_write(0x10, &(BAR_GPA as u32).to_le_bytes());
        rig.cfg_write(0x04, &2u16.to_le_bytes());
        rig
    }

    fn cfg_write(&mut self, off: usize, data: &[u8]) {
        let tx = self.mem.begin();
        let win = Windows {
            mem: &self.root,
            io: &self.io,
        };
        self.f.write(&tx, &win, off, data).unwrap();
        tx.commit().unwrap();
    }

    fn kind(&self, offset: u64) -> &'static str {
        match self
            .space
            .lookup(BAR_GPA + offset)
            .map(|r| r.0.region.kind().clone())
        {
            Some(RegionKind::RamDevice(_)) => "ramd",
            Some(RegionKind::Io(_)) => "io",
            _ => "other",
        }
    }

    fn read(&self, offset: u64) -> (u32, Access) {
        let mut b = [0u8; 4];
        let a = self.space.read(BAR_GPA + offset, &mut b);
        (u32::from_le_bytes(b), a)
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[test]
fn mmap_able_parts_are_ram_devices_under_the_msix_table_and_the_rest_traps() {
    let rig = Rig::new();
    assert_eq!(
        [0, 0x1000, 0x17fc, 0x1800, 0x1c00].map(|o| rig.kind(o)),
        ["io", "ramd", "ramd", "io", "io"],
        "trapped page, mmap'd page, MSI-X table and PBA over it"
    );
    rig.read(0); // the device's first page: one trap
    assert_eq!(rig.dev.trapped_accesses(), 1);
    rig.space
        .write(BAR_GPA + 0x1004, &0xdead_beefu32.to_le_bytes());
    assert_eq!(rig.read(0x1004), (0xdead_beef, Access::Ram));
    assert_eq!(
        rig.dev.trapped_accesses(),
        1,
        "the mmap'd page does not trap"
    );

    rig.dev.set_mmap_enabled(&rig.mem, false).unwrap();
    assert_eq!(rig.kind(0x1000), "io");
    assert_eq!(rig.read(0x1004), (0xdead_beef, Access::Done));
    assert_eq!(rig.dev.trapped_accesses(), 2, "now it traps, same data");
    rig.dev.set_mmap_enabled(&rig.mem, true).unwrap();
    assert_eq!(rig.kind(0x1000), "ramd");
}

#[test]
fn vectors_are_handed_over_while_msi_or_msix_is_enabled_and_taken_back_for_reset() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.calls(),
        Vec::<String>::new(),
        "nothing before the guest enables"
    );
    rig.cfg_write(MSI_CAP + 4, &0xfee0_0000u32.to_le_bytes());
    rig.cfg_write(MSI_CAP + 0xc, &0x41u16.to_le_bytes());
    assert_eq!(rig.calls(), Vec::<String>::new(), "address and data alone");
    rig.cfg_write(MSI_CAP + 2, &1u16.to_le_bytes());
    rig.cfg_write(MSI_CAP + 0xc, &0x42u16.to_le_bytes());
    assert_eq!(
        rig.calls(),
        ["irqs 1:1"],
        "once, a new data is only a route"
    );
    rig.cfg_write(MSI_CAP + 2, &0u16.to_le_bytes());
    rig.cfg_write(0x42, &0x8000u16.to_le_bytes());
    assert_eq!(rig.calls(), ["irqs 1:0", "irqs 2:2"]);

    let tx = rig.mem.begin();
    let win = Windows {
        mem: &rig.root,
        io: &rig.io,
    };
    rig.f.reset(&tx, &win).unwrap();
    tx.commit().unwrap();
    assert_eq!(rig.calls(), ["irqs 2:0", "reset"]);
    assert_eq!(rig.kind(0), "other", "BAR0 unmapped by the reset");
}

#[test]
fn the_rom_bar_is_sized_from_the_rom_region_and_maps_read_only() {
    let mut rig = Rig::new();
    rig.cfg_write(0x30, &u32::MAX.to_le_bytes());
    let mut v = [0u8; 4];
    rig.f.read(0x30, &mut v);
    assert_eq!(u32::from_le_bytes(v), 0xffff_f801, "2 KiB, enable writable");
    let rom_read = |rig: &Rig, at: u64| {
        let mut b = [0u8; 4];
        let a = rig.space.read(ROM_GPA + at, &mut b);
        (b, a)
    };
    rig.cfg_write(0x30, &(ROM_GPA as u32).to_le_bytes());
    assert_ne!(rom_read(&rig, 0).1, Access::Done, "not enabled: not mapped");
    rig.cfg_write(0x30, &(ROM_GPA as u32 | 1).to_le_bytes());
    assert_eq!(rom_read(&rig, 0), ([0x55, 0xaa, 6, 9], Access::Done));
    assert_eq!(rom_read(&rig, 0x7fc).0, [0xf4, 0xf7, 0xfa, 0xfd]);
    rig.space.write(ROM_GPA, &[0; 4]);
    assert_eq!(
        rom_read(&rig, 0).0,
        [0x55, 0xaa, 6, 9],
        "a write changes nothing"
    );
    assert!(rig.calls().is_empty(), "and never reaches the device");
}

#[test]
fn intx_wired_shows_pin_and_line_and_yields_to_msi() {
    let mut rig = Rig::new();
    assert_eq!(rig.dev.intx_pin().unwrap(), 2, "the device's pin");
    let mut v = [0u8; 2];
    rig.f.read(0x3c, &mut v);
    assert_eq!(v, [0, 0], "no pin shown before wiring");
    rig.dev.wire_intx(&mut rig.f, 19).unwrap();
    rig.f.read(0x3c, &mut v);
    assert_eq!(v, [19, 2], "line 19, pin B");
    assert!(rig.dev.intx().is_some());
    assert_eq!(rig.calls(), ["irqs 0:1", "unmask 0:fd"]);
    rig.cfg_write(MSI_CAP + 2, &1u16.to_le_bytes());
    assert_eq!(rig.calls(), ["irqs 0:0", "irqs 1:1"], "INTx off first");
    rig.cfg_write(MSI_CAP + 2, &0u16.to_le_bytes());
    assert_eq!(rig.calls(), ["irqs 1:0", "irqs 0:1", "unmask 0:fd"]);

    let tx = rig.mem.begin();
    let win = Windows {
        mem: &rig.root,
        io: &rig.io,
    };
    rig.f.reset(&tx, &win).unwrap();
    tx.commit().unwrap();
    rig.f.read(0x3c, &mut v);
    assert_eq!(v, [19, 2], "a reset keeps the wiring");
    assert_eq!(
        rig.calls(),
        ["irqs 0:0", "reset", "irqs 0:1", "unmask 0:fd"]
    );
}
