//! PCI through port I/O, as a vCPU would drive it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::bar::BarKind;
use super::bus::{ConfigIo, PciBus};
use super::config::ConfigSpace;
use super::function::{PciDevice, PciFunction};
use super::i440fx::{HostBridge, IsaBridge};
use crate::machine::PcMemory;
use crate::memory::testing::{held_of, CallLog, NopOps, Recorder, Refuse};
use crate::memory::{Memory, MemoryRegion};

struct TestDevice;
impl PciDevice for TestDevice {}

struct Rig {
    /// Keeps the memory system alive with the rig.
    _mem: Arc<Memory>,
    pc: PcMemory,
    resets: Arc<AtomicU32>,
    log: CallLog,
    refuse: Arc<std::sync::Mutex<Option<Refuse>>>,
}

fn rig() -> Rig {
    let mem = Arc::new(Memory::new());
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let bus = Arc::new(PciBus::new(mem.clone(), pc.pci.clone(), pc.io_root.clone()));
    bus.add(0, 0, HostBridge::function(pc.pam_shared.clone()))
        .unwrap();
    bus.add(1, 0, IsaBridge::function()).unwrap();
    let mut dev = PciFunction::new(
        "test",
        ConfigSpace::new(0x1af4, 0x10ff, 0xff_0000, 1),
        Box::new(TestDevice),
    );
    let r = |name: &str, size| MemoryRegion::io(name, size, Arc::new(NopOps));
    dev.add_bar(0, BarKind::Mem32, false, r("bar0", 0x1000))
        .unwrap();
    dev.add_bar(2, BarKind::Mem64, true, r("bar2", 0x10_0000))
        .unwrap();
    dev.add_bar(4, BarKind::Io, false, r("bar4", 0x20)).unwrap();
    dev.add_bar(6, BarKind::Rom, false, r("rom", 0x1000))
        .unwrap();
    bus.add(3, 0, dev).unwrap();
    let resets = Arc::new(AtomicU32::new(0));
    let r2 = resets.clone();
    let io = MemoryRegion::io(
        "pci-conf",
        8,
        Arc::new(ConfigIo::new(
            bus,
            Box::new(move |v| {
                if v & 4 != 0 {
                    r2.fetch_add(1, Ordering::SeqCst);
                }
            }),
        )),
    );
    let tx = mem.begin();
    tx.add_subregion(&pc.io_root, 0xcf8, &io).unwrap();
    tx.commit().unwrap();
    let log: CallLog = Arc::default();
    let mut rec = Recorder::new("rec", 0, &log);
    rec.verbose = true;
    let refuse = rec.refuse.clone();
    mem.register_listener(&pc.memory, Box::new(rec)).unwrap();
    log.lock().unwrap().clear();
    Rig {
        _mem: mem,
        pc,
        resets,
        log,
        refuse,
    }
}

fn addr(dev: u8, func: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg & 0xfc)
}

impl Rig {
    fn read(&self, dev: u8, func: u8, reg: u8) -> u32 {
        self.pc.io.write(0xcf8, &addr(dev, func, reg).to_le_bytes());
        let mut b = [0u8; 4];
        self.pc.io.read(0xcfc, &mut b);
        u32::from_le_bytes(b)
    }
    fn write(&self, dev: u8, func: u8, reg: u8, v: u32) {
        self.pc.io.write(0xcf8, &addr(dev, func, reg).to_le_bytes());
        self.pc.io.write(0xcfc, &v.to_le_bytes());
    }
    fn commits(&self) -> usize {
        let n = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.ends_with(" commit"))
            .count();
        self.log.lock().unwrap().clear();
        n
    }
    fn at(&self, a: u64) -> Option<String> {
        self.pc
            .memory
            .lookup(a)
            .map(|(r, _)| r.region.name().to_string())
    }
}

#[test]
fn a_bus_scan_finds_the_host_bridge_and_the_isa_bridge() {
    let r = rig();
    let mut found = Vec::new();
    for dev in 0..32 {
        for func in 0..8 {
            let id = r.read(dev, func, 0);
            if id != u32::MAX {
                found.push((
                    dev,
                    func,
                    id,
                    r.read(dev, func, 8) >> 8,
                    (r.read(dev, func, 0xc) >> 16) as u8,
                ));
            }
        }
    }
    assert_eq!(
        found,
        vec![
            (0, 0, 0x1237_8086, 0x06_0000, 0x00),
            (1, 0, 0x7000_8086, 0x06_0100, 0x80),
            (3, 0, 0x10ff_1af4, 0xff_0000, 0x00),
        ]
    );
    // Read-only identity.
    r.write(0, 0, 0, 0xdead_beef);
    assert_eq!(r.read(0, 0, 0), 0x1237_8086);
    // Another bus, or the enable bit off: all ones.
    r.pc.io
        .write(0xcf8, &(addr(0, 0, 0) | 1 << 16).to_le_bytes());
    let mut b = [0u8; 4];
    r.pc.io.read(0xcfc, &mut b);
    assert_eq!(u32::from_le_bytes(b), u32::MAX);
    r.pc.io.write(0xcf8, &0u32.to_le_bytes());
    r.pc.io.read(0xcfc, &mut b);
    assert_eq!(u32::from_le_bytes(b), u32::MAX);
}

#[test]
fn pam_registers_through_config_space_switch_the_legacy_window() {
    let r = rig();
    assert_eq!(r.at(0xf0000).as_deref(), Some("pc.bios"));
    // Dword write at 0x58: PAM0 (byte 0x59) high nibble = 3 (RAM).
    let v = r.read(0, 0, 0x58);
    r.write(0, 0, 0x58, v | 0x30 << 8);
    assert_eq!(r.at(0xf0000).as_deref(), Some("pc.ram"));
    assert_eq!(r.read(0, 0, 0x58) >> 8 & 0xff, 0x30, "PAM0 reads back");
    // Reserved bits stay zero.
    r.write(0, 0, 0x58, 0xffff_ffff);
    assert_eq!(r.read(0, 0, 0x58), 0x3333_3000);
    assert_eq!(r.commits(), 2, "one transaction per config write");
}

#[test]
fn the_rom_bar_sizes_and_decodes_only_while_enabled_with_memory_on() {
    let r = rig();
    assert_eq!(r.read(3, 0, 0x30), 0, "off and unplaced at power-on");
    r.write(3, 0, 0x30, !1);
    assert_eq!(r.read(3, 0, 0x30), 0xffff_f000, "4 KiB, enable clear");
    r.write(3, 0, 0x30, u32::MAX);
    assert_eq!(r.read(3, 0, 0x30), 0xffff_f001);
    r.write(3, 0, 4, 0x2);
    assert_ne!(
        r.at(0xffff_f000).as_deref(),
        Some("rom"),
        "sizing leaves it unmapped"
    );
    r.write(3, 0, 0x30, 0xfd00_0000);
    assert!(r.at(0xfd00_0000).is_none(), "not enabled");
    r.commits();
    r.write(3, 0, 0x30, 0xfd00_0001);
    assert_eq!(r.commits(), 1);
    assert_eq!(r.at(0xfd00_0000).as_deref(), Some("rom"));
    assert_eq!(r.at(0xfd00_0fff).as_deref(), Some("rom"));
    r.write(3, 0, 4, 0);
    assert!(r.at(0xfd00_0000).is_none(), "memory decode off");
    r.write(3, 0, 4, 0x2);
    r.write(3, 0, 0x30, 0xfd00_0000);
    assert!(r.at(0xfd00_0000).is_none(), "enable cleared");

    // A ROM anywhere but index 6, or anything else at 6, is refused.
    let mut f = PciFunction::new("x", ConfigSpace::new(1, 2, 0, 0), Box::new(TestDevice));
    let reg = |size| MemoryRegion::io("r", size, Arc::new(NopOps));
    assert!(f.add_bar(0, BarKind::Rom, false, reg(0x800)).is_err());
    assert!(f.add_bar(6, BarKind::Mem32, false, reg(0x800)).is_err());
    assert!(
        f.add_bar(6, BarKind::Rom, false, reg(0x400)).is_err(),
        "under 2 KiB"
    );
    assert!(f.add_bar(6, BarKind::Rom, false, reg(0x800)).is_ok());
}

#[test]
fn bars_size_map_move_and_unmap_in_one_transaction_each() {
    let r = rig();
    // Sizing: all ones, read back the masks with the flag bits.
    for (reg, want) in [
        (0x10, 0xffff_f000u32),
        (0x18, 0xfff0_000c),
        (0x1c, 0xffff_ffff),
        (0x20, 0xffff_ffe1),
    ] {
        r.write(3, 0, reg, u32::MAX);
        assert_eq!(r.read(3, 0, reg), want, "BAR at {reg:#x}");
    }
    r.commits();
    r.write(3, 0, 0x10, 0xfe00_0000);
    r.write(3, 0, 0x18, 0x0000_000c);
    r.write(3, 0, 0x1c, 0x1);
    r.write(3, 0, 0x20, 0xc000);
    assert!(r.at(0xfe00_0000).is_none(), "decoding is off");
    r.commits();
    r.write(3, 0, 4, 0x3); // I/O + memory decode
    assert_eq!(r.commits(), 1);
    assert_eq!(r.at(0xfe00_0000).as_deref(), Some("bar0"));
    assert_eq!(r.at(0x1_0000_0000).as_deref(), Some("bar2"));
    assert_eq!(
        r.pc.io
            .lookup(0xc010)
            .map(|(x, _)| x.region.name().to_string())
            .as_deref(),
        Some("bar4")
    );
    // Move BAR0.
    r.write(3, 0, 0x10, 0xfe10_0000);
    assert_eq!(r.commits(), 1);
    assert!(r.at(0xfe00_0000).is_none());
    assert_eq!(r.at(0xfe10_0000).as_deref(), Some("bar0"));
    // Memory decode off: both memory BARs go, the I/O one stays.
    r.write(3, 0, 4, 0x1);
    assert!(r.at(0xfe10_0000).is_none() && r.at(0x1_0000_0000).is_none());
    assert!(r.pc.io.lookup(0xc000).is_some());
}

#[test]
fn a_refused_bar_mapping_keeps_the_register_and_the_old_map() {
    let r = rig();
    r.write(3, 0, 0x10, 0xfe00_0000);
    r.write(3, 0, 4, 0x2);
    assert_eq!(r.at(0xfe00_0000).as_deref(), Some("bar0"));
    *r.refuse.lock().unwrap() = Some(Refuse {
        hook: "region_add",
        region: Some("bar0".into()),
        addr: None,
        keep: Some(held_of(&r.pc.memory.view())),
    });
    r.write(3, 0, 0x10, 0xfe20_0000);
    assert_eq!(
        r.read(3, 0, 0x10),
        0xfe20_0000,
        "the register holds what was written"
    );
    assert_eq!(
        r.at(0xfe00_0000).as_deref(),
        Some("bar0"),
        "the map is as before"
    );
    assert!(r.at(0xfe20_0000).is_none());
    // Once accepted again, the next write maps it where the register says.
    *r.refuse.lock().unwrap() = None;
    r.write(3, 0, 4, 0x0);
    r.write(3, 0, 4, 0x2);
    assert_eq!(r.at(0xfe20_0000).as_deref(), Some("bar0"));
}

#[test]
fn odd_accesses_behave_like_hardware_and_0xcf9_is_reset_control() {
    let r = rig();
    r.pc.io.write(0xcf8, &addr(0, 0, 0).to_le_bytes());
    // A byte write to 0xcf8 does not change the address register.
    r.pc.io.write(0xcf8, &[0x12]);
    let mut a = [0u8; 4];
    r.pc.io.read(0xcf8, &mut a);
    assert_eq!(u32::from_le_bytes(a), addr(0, 0, 0));
    // A 2-byte read at 0xcfe is the device id.
    let mut w = [0u8; 2];
    r.pc.io.read(0xcfe, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1237);
    // A dword at 0xcfd would cross the window: all ones, no panic.
    let mut d = [0u8; 4];
    r.pc.io.read(0xcfd, &mut d);
    // Dword writes to 0xcf8 with bit 2 in byte 1 never reset...
    r.pc.io.write(0xcf8, &addr(0, 4, 0).to_le_bytes());
    assert_eq!(r.resets.load(Ordering::SeqCst), 0);
    // ...a byte write of 0x06 to 0xcf9 does.
    r.pc.io.write(0xcf9, &[0x06]);
    assert_eq!(r.resets.load(Ordering::SeqCst), 1);
    let mut b = [0u8; 1];
    r.pc.io.read(0xcf9, &mut b);
    assert_eq!(b[0], 0x06);
}
