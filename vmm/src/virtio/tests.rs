//! The virtio-pci transport and virtio-blk device, driven through the BAR
//! as a guest would, with guest RAM in the memory model, a real iothread and
//! a disk image in a temporary file. KVM is replaced by a router that binds
//! nothing, so a raised vector stays readable on its eventfd.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_irq_routing_entry;
use vmm_backends::block::{BlockEngine, BlockLimits, DiskImage, ImageOptions};
use vmm_sys_util::eventfd::EventFd;

use super::blk::Blk;
use super::pci::VirtioPci;
use crate::interrupt::{GsiRouter, MsixConfig, Routing};
use crate::iothread::IoThread;
use crate::memory::dma::DmaView;
use crate::memory::{Memory, MemoryRegion, RegionOps};
use crate::pci::function::Windows;
use crate::pci::PciFunction;

struct NoKvm;

impl Routing for NoKvm {
    fn set_routing(&mut self, _t: &[kvm_irq_routing_entry]) -> io::Result<()> {
        Ok(())
    }
    fn irqfd(&mut self, _fd: &EventFd, _gsi: u32, _assign: bool) -> io::Result<()> {
        Ok(())
    }
}

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x10000;
const DATA: u64 = 0x11000;
const STATUS: u64 = 0x12000;
const NOTIFY: u64 = 0x3000;
const QSIZE: u16 = 16;

struct Rig {
    _memory: Memory,
    ram: MemoryRegion,
    t: Arc<VirtioPci<NoKvm>>,
    f: PciFunction,
    image: std::path::PathBuf,
    _thread: Arc<IoThread>,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let image =
            std::env::temp_dir().join(format!("vmm-virtio-{}-{name}.img", std::process::id()));
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let disk = DiskImage::open(&image, &ImageOptions::default()).unwrap();
        let engine = Arc::new(BlockEngine::new(disk, BlockLimits::default()));
        let thread = IoThread::new(name).unwrap();
        let memory = Memory::new();
        let root = MemoryRegion::container("root", 1 << 32);
        let space = memory.add_address_space("memory", root.clone());
        let dma = DmaView::default();
        memory
            .register_listener(&space, Box::new(dma.listener()))
            .unwrap();
        let ram = MemoryRegion::ram("ram", 1 << 20).unwrap();
        let tx = memory.begin();
        tx.add_subregion(&root, 0, &ram).unwrap();
        tx.commit().unwrap();
        let blk = Blk::new(engine, 1, 64, vec![thread.clone()]);
        let (t, f) =
            VirtioPci::new("vblk", Box::new(blk), GsiRouter::new(NoKvm), &memory, dma).unwrap();
        Rig {
            _memory: memory,
            ram,
            t,
            f,
            image,
            _thread: thread,
        }
    }

    fn w(&self, off: u64, v: u64, len: usize) {
        self.t.write(off, &v.to_le_bytes()[..len]);
    }
    fn r(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.t.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn poke(&self, gpa: u64, data: &[u8]) {
        self.ram.ram_block().unwrap().write(gpa, data);
    }
    fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram.ram_block().unwrap().read(gpa, &mut v);
        v
    }

    /// A driver's bring-up of queue 0 on vector 1, config on vector 0.
    fn bring_up(&self) {
        self.w(0x14, 1, 1);
        self.w(0x14, 3, 1);
        let features = 1u64 << 32 | 1 << 29; // VERSION_1, EVENT_IDX
        self.w(0x08, 0, 4);
        self.w(0x0c, features & 0xffff_ffff, 4);
        self.w(0x08, 1, 4);
        self.w(0x0c, features >> 32, 4);
        self.w(0x14, 0xb, 1);
        assert_eq!(self.r(0x14, 1), 0xb, "FEATURES_OK accepted");
        self.w(0x10, 0, 2);
        self.w(0x16, 0, 2);
        self.w(0x18, u64::from(QSIZE), 2);
        self.w(0x20, DESC, 8);
        self.w(0x28, AVAIL, 8);
        self.w(0x30, USED, 8);
        self.w(0x1a, 1, 2);
        self.w(0x1c, 1, 2);
        let msix = self.t.msix().regions().0;
        for v in 0..2u64 {
            msix.write(v * 16, &0xfee0_0000u32.to_le_bytes());
            msix.write(v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
            msix.write(v * 16 + 12, &0u32.to_le_bytes());
        }
        self.t.msix().set_config(MsixConfig {
            enabled: true,
            function_mask: false,
        });
        self.w(0x14, 0xf, 1);
    }

    /// Puts a 3-descriptor request (header, 512 bytes, status) at ring slot
    /// `n` and notifies through the BAR.
    fn request(&self, n: u16, kind: u32, sector: u64) {
        let mut hdr = kind.to_le_bytes().to_vec();
        hdr.extend_from_slice(&[0; 4]);
        hdr.extend_from_slice(&sector.to_le_bytes());
        self.poke(HDR, &hdr);
        self.poke(STATUS, &[0xff]);
        let dir = if kind == 0 { 2 } else { 0 };
        for (i, (addr, len, flags)) in [(HDR, 16u32, 1u16), (DATA, 512, 1 | dir), (STATUS, 1, 2)]
            .into_iter()
            .enumerate()
        {
            let mut d = addr.to_le_bytes().to_vec();
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&((i as u16 + 1) % 3).to_le_bytes());
            self.poke(DESC + 16 * i as u64, &d);
        }
        self.poke(AVAIL + 4 + 2 * u64::from(n % QSIZE), &0u16.to_le_bytes());
        self.poke(AVAIL + 2, &(n + 1).to_le_bytes());
        self.w(NOTIFY, 0, 2);
    }

    fn wait_used(&self, idx: u16) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if u16::from_le_bytes(self.peek(USED + 2, 2).try_into().unwrap()) == idx {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn a_write_then_a_read_go_through_the_iothread_and_raise_the_vector() {
    let rig = Rig::new("rw");
    rig.bring_up();
    assert_eq!(rig.r(0x1a, 2), 1, "queue vector reads back");
    rig.poke(DATA, &[0x5a; 512]);
    rig.request(0, 1, 3);
    assert!(rig.wait_used(1), "write completed");
    assert_eq!(rig.peek(STATUS, 1), [0]);
    let disk = std::fs::read(&rig.image).unwrap();
    assert!(disk[3 * 512..4 * 512].iter().all(|&b| b == 0x5a));
    assert!(
        disk[..3 * 512].iter().all(|&b| b == 0),
        "nothing else written"
    );
    let vector = rig.t.msix().vector_fd(1).unwrap();
    assert_eq!(
        vector.read().unwrap(),
        1,
        "one interrupt on the queue's vector"
    );
    assert!(
        rig.t.msix().vector_fd(0).unwrap().read().is_err(),
        "no config interrupt"
    );

    rig.poke(DATA, &[0; 512]);
    rig.request(1, 0, 3);
    assert!(rig.wait_used(2), "read completed");
    assert_eq!(rig.peek(DATA, 512), vec![0x5a; 512]);
    assert!(rig.t.report().contains("requests=2"), "{}", rig.t.report());
    assert!(rig.t.report().contains("notify=2"), "{}", rig.t.report());
}

#[test]
fn a_broken_ring_sets_needs_reset_and_a_reset_brings_the_device_back() {
    let rig = Rig::new("broken");
    rig.bring_up();
    // An available index far ahead of the ring: illegal.
    rig.poke(AVAIL + 2, &500u16.to_le_bytes());
    rig.w(NOTIFY, 0, 2);
    let start = Instant::now();
    while rig.r(0x14, 1) & 0x40 == 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rig.r(0x14, 1) & 0x40, 0x40, "DEVICE_NEEDS_RESET");
    assert!(rig.t.broken_reason().unwrap().contains("queue 0"));
    assert_eq!(rig.r(0x1000, 1) & 2, 2, "ISR shows a config change");
    assert_eq!(rig.t.msix().vector_fd(0).unwrap().read().unwrap(), 1);

    rig.w(0x14, 0, 1);
    assert_eq!(rig.r(0x14, 1), 0, "reset clears the status");
    rig.poke(USED + 2, &0u16.to_le_bytes());
    rig.bring_up();
    rig.poke(DATA, &[7; 512]);
    rig.request(0, 1, 0);
    assert!(rig.wait_used(1), "works again after reset");
    assert_eq!(rig.peek(STATUS, 1), [0]);
}

#[test]
fn odd_accesses_anywhere_in_the_bar_do_no_harm() {
    let rig = Rig::new("odd");
    for off in (0..0x4000u64).step_by(3) {
        for len in [1usize, 2, 4, 8] {
            rig.w(off, u64::MAX, len);
            rig.r(off, len);
        }
    }
    rig.w(0x14, 0, 1);
    rig.bring_up();
    rig.request(0, 1, 0);
    assert!(rig.wait_used(1), "still serves after garbage");
}

/// The config-space offset of the vendor capability of `cfg_type`.
fn virtio_cap(f: &PciFunction, cfg_type: u8) -> Option<usize> {
    let mut at = usize::from(f.cfg.u8(0x34));
    while at != 0 {
        if f.cfg.u8(at) == 0x09 && f.cfg.u8(at + 3) == cfg_type {
            return Some(at);
        }
        at = usize::from(f.cfg.u8(at + 1));
    }
    None
}

#[test]
fn the_pci_cfg_capability_is_a_window_into_bar4() {
    let mut rig = Rig::new("pcicfg");
    let cap = virtio_cap(&rig.f, 5).expect("a VIRTIO_PCI_CAP_PCI_CFG capability");
    assert_eq!(rig.f.cfg.u8(cap + 2), 20, "cap_len");
    let (mem, io) = (
        MemoryRegion::container("pci-mem", 1 << 32),
        MemoryRegion::container("pci-io", 1 << 16),
    );
    let win = Windows { mem: &mem, io: &io };
    let cfg_write = |rig: &mut Rig, off: usize, v: u32, len: usize| {
        let tx = rig._memory.begin();
        rig.f
            .write(&tx, &win, off, &v.to_le_bytes()[..len])
            .unwrap();
        tx.commit().unwrap();
    };
    let cfg_read = |rig: &Rig, off: usize, len: usize| {
        let mut b = [0u8; 4];
        rig.f.read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    };
    let select = |rig: &mut Rig, bar: u32, at: u32, len: u32| {
        cfg_write(rig, cap + 4, bar, 1);
        cfg_write(rig, cap + 8, at, 4);
        cfg_write(rig, cap + 12, len, 4);
    };

    // queue_select = 0 through the window, then queue_size read back.
    select(&mut rig, 4, 0x16, 2);
    cfg_write(&mut rig, cap + 16, 0, 2);
    select(&mut rig, 4, 0x18, 2);
    assert_eq!(cfg_read(&rig, cap + 16, 4) & 0xffff, 64, "queue_size");
    assert_eq!(cfg_read(&rig, cap + 17, 1), 0, "a byte of it, at its place");
    // device_status written through the window is what the BAR shows.
    select(&mut rig, 4, 0x14, 1);
    cfg_write(&mut rig, cap + 16, 1, 1);
    assert_eq!(rig.r(0x14, 1), 1, "ACKNOWLEDGE reached the common config");
    assert_eq!(cfg_read(&rig, cap + 16, 1), 1);
    // The device config (capacity of the 1 MiB disk: 2048 sectors).
    select(&mut rig, 4, 0x2000, 4);
    assert_eq!(cfg_read(&rig, cap + 16, 4), 2048);

    // What the spec does not allow is inert: another BAR, a length of 3,
    // an unaligned offset, a range past the BAR.
    for (bar, at, len) in [(1, 0x14, 1), (4, 0x14, 3), (4, 0x15, 2), (4, 0x3ffe, 4)] {
        select(&mut rig, bar, at, len);
        cfg_write(&mut rig, cap + 16, 0x7f, 1);
        assert_eq!(rig.r(0x14, 1), 1, "bar {bar} offset {at:#x} length {len}");
    }
}
