//! The KVM listeners against fakes of the KVM calls, driven through the
//! memory model and the PC map.

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use vmm_sys_util::eventfd::EventFd;

use super::ioevents::{Bus, IoEvent, IoEvents, KvmIoListener};
use super::memslots::{KvmMemoryListener, Memslots, VcpuPause};
use crate::machine::pam::PamMode;
use crate::machine::PcMemory;
use crate::memory::{dirty, Ioeventfd, Memory, MemoryError, MemoryRegion};

type Ops = Arc<Mutex<Vec<String>>>;

/// Records every slot call; can be told how many slots exist and to refuse
/// the n-th call.
struct FakeSlots {
    ops: Ops,
    max: u32,
    fail_at: Arc<Mutex<Option<usize>>>,
    calls: usize,
    live: Arc<Mutex<Vec<kvm_userspace_memory_region>>>,
}

impl Memslots for FakeSlots {
    fn max_slots(&self) -> u32 {
        self.max
    }
    unsafe fn set(&mut self, r: kvm_userspace_memory_region) -> io::Result<()> {
        self.calls += 1;
        if *self.fail_at.lock().unwrap() == Some(self.calls) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let mut live = self.live.lock().unwrap();
        live.retain(|s| s.slot != r.slot);
        let what = if r.memory_size == 0 {
            format!("del slot {}", r.slot)
        } else {
            live.push(r);
            format!(
                "set slot {} {:#x}+{:#x} flags {:#x}",
                r.slot, r.guest_phys_addr, r.memory_size, r.flags
            )
        };
        self.ops.lock().unwrap().push(what);
        Ok(())
    }
}

struct FakePause(Ops);
impl VcpuPause for FakePause {
    fn pause(&self) {
        self.0.lock().unwrap().push("pause".into());
    }
    fn resume(&self) {
        self.0.lock().unwrap().push("resume".into());
    }
}

struct Rig {
    mem: Memory,
    pc: PcMemory,
    ops: Ops,
    fail_at: Arc<Mutex<Option<usize>>>,
    live: Arc<Mutex<Vec<kvm_userspace_memory_region>>>,
}

impl Rig {
    fn new(max: u32) -> Rig {
        let mem = Memory::new();
        let pc = PcMemory::new(&mem, 512 << 20).unwrap();
        let ops: Ops = Arc::default();
        let fail_at = Arc::new(Mutex::new(None));
        let live = Arc::new(Mutex::new(Vec::new()));
        let slots = FakeSlots {
            ops: ops.clone(),
            max,
            fail_at: fail_at.clone(),
            calls: 0,
            live: live.clone(),
        };
        let l = KvmMemoryListener::new(slots, Some(Box::new(FakePause(ops.clone()))));
        mem.register_listener(&pc.memory, Box::new(l)).unwrap();
        Rig {
            mem,
            pc,
            ops,
            fail_at,
            live,
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.ops.lock().unwrap())
    }

    /// (gpa, size, flags) of the installed slots, by address.
    fn slots(&self) -> Vec<(u64, u64, u32)> {
        let mut v: Vec<_> = self
            .live
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.guest_phys_addr, s.memory_size, s.flags))
            .collect();
        v.sort();
        v
    }
}

const RO: u32 = KVM_MEM_READONLY;

#[test]
fn the_pc_map_gets_one_slot_per_ram_or_rom_range() {
    let rig = Rig::new(32);
    assert_eq!(
        rig.slots(),
        vec![
            (0, 0xc0000, 0),
            (0xc0000, 0x20000, RO),
            (0xe0000, 0x20000, RO),
            (0x100000, 0x1ff00000, 0),
            (0xfffc0000, 0x40000, RO),
        ]
    );
}

#[test]
fn a_pam_switch_pauses_vcpus_and_deletes_before_it_adds() {
    let rig = Rig::new(32);
    rig.take();
    let tx = rig.mem.begin();
    rig.pc.pam().set_mode(&tx, 0, PamMode::ReadWrite);
    tx.commit().unwrap();
    let ops = rig.take();
    assert_eq!(ops.first().map(String::as_str), Some("pause"));
    assert_eq!(ops.last().map(String::as_str), Some("resume"));
    let first_set = ops.iter().position(|o| o.starts_with("set")).unwrap();
    let last_del = ops.iter().rposition(|o| o.starts_with("del")).unwrap();
    assert!(last_del < first_set, "deletes come first: {ops:?}");
    assert_eq!(ops.len(), 2 + 2 + 2, "{ops:?}");
    assert!(
        rig.slots().contains(&(0xf0000, 0x1ff10000, 0)),
        "{:x?}",
        rig.slots()
    );
    assert!(rig.slots().contains(&(0xe0000, 0x10000, RO)));
}

#[test]
fn a_pure_hot_add_and_remove_need_no_pause_and_recycle_the_slot() {
    let rig = Rig::new(32);
    rig.take();
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    for _ in 0..3 {
        let tx = rig.mem.begin();
        tx.add_subregion(&rig.pc.system, 1 << 32, &dimm).unwrap();
        tx.commit().unwrap();
        let tx = rig.mem.begin();
        tx.del_subregion(&rig.pc.system, &dimm).unwrap();
        tx.commit().unwrap();
    }
    let ops = rig.take();
    assert!(!ops.iter().any(|o| o == "pause"), "{ops:?}");
    // Five slots (0-4) are in use; the DIMM gets slot 5 every time.
    assert_eq!(
        ops.iter()
            .filter(|o| o.starts_with("set slot 5 0x100000000+0x8000000"))
            .count(),
        3
    );
}

#[test]
fn running_out_of_slots_refuses_the_transaction_with_no_kvm_call() {
    let rig = Rig::new(5);
    rig.take();
    let dimm = MemoryRegion::ram("dimm0", 0x800_0000).unwrap();
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.pc.system, 1 << 32, &dimm).unwrap();
    let err = tx.commit().unwrap_err();
    match &err {
        MemoryError::Listener {
            listener,
            hook,
            source,
            ..
        } => {
            assert_eq!((listener.as_str(), *hook), ("kvm-memory", "commit"));
            assert!(
                source.to_string().contains("no free KVM memslot"),
                "{source}"
            );
        }
        e => panic!("{e}"),
    }
    assert!(rig.take().is_empty(), "no slot was touched");
    assert!(!dimm.is_mapped());
    assert_eq!(rig.slots().len(), 5);
}

#[test]
fn a_kvm_refusal_midway_restores_the_slots_it_had_replaced() {
    let rig = Rig::new(32);
    rig.take();
    let before = rig.slots();
    // The switch deletes two slots and sets two: refuse the second set.
    *rig.fail_at.lock().unwrap() = Some(5 + 4);
    let tx = rig.mem.begin();
    rig.pc.pam().set_mode(&tx, 0, PamMode::ReadWrite);
    assert!(tx.commit().is_err());
    rig.pc.pam().sync();
    assert_eq!(rig.pc.pam().mode(0), Some(PamMode::Pci));
    assert_eq!(rig.slots(), before);
    let ops = rig.take();
    assert_eq!(ops.last().map(String::as_str), Some("resume"), "{ops:?}");
}

#[test]
fn unaligned_edges_stay_out_of_slots() {
    let rig = Rig::new(32);
    let dev = MemoryRegion::io("dev", 0x100, Arc::new(crate::memory::testing::NopOps));
    let tx = rig.mem.begin();
    tx.add_subregion_overlap(&rig.pc.system, 0x20_1080, &dev, 2)
        .unwrap();
    tx.commit().unwrap();
    let s = rig.slots();
    assert!(s.contains(&(0x100000, 0x101000, 0)), "{s:x?}");
    assert!(
        s.contains(&(0x202000, 0x2000_0000 - 0x20_2000, 0)),
        "{s:x?}"
    );
    // The partial pages are served by the address space instead.
    rig.pc.memory.write(0x201000, &[7]);
    let mut b = [0u8];
    rig.pc.ram.ram_block().unwrap().read(0x201000, &mut b);
    assert_eq!(b, [7]);
}

#[test]
fn dirty_logging_reflags_the_live_slot_in_place() {
    let rig = Rig::new(32);
    rig.take();
    let tx = rig.mem.begin();
    tx.set_dirty_log(&rig.pc.ram, dirty::MIGRATION, true);
    tx.commit().unwrap();
    let ops = rig.take();
    assert!(
        ops.iter().all(|o| o.starts_with("set")),
        "no delete: {ops:?}"
    );
    assert_eq!(ops.len(), 2, "both RAM slots: {ops:?}");
    assert!(rig
        .slots()
        .contains(&(0x100000, 0x1ff00000, KVM_MEM_LOG_DIRTY_PAGES)));
}

type Events = Arc<Mutex<Vec<(IoEvent, bool)>>>;

struct FakeEvents {
    seen: Events,
    refuse: bool,
}

impl IoEvents for FakeEvents {
    fn set_ioevent(&mut self, e: IoEvent, assign: bool) -> io::Result<()> {
        if assign && self.refuse {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.seen.lock().unwrap().push((e, assign));
        Ok(())
    }
    fn set_coalesced(&mut self, _: Bus, _: u64, _: u32, _: bool) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn ioeventfds_reach_kvm_with_their_exact_length_and_datamatch() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let seen: Events = Arc::default();
    let l = KvmIoListener::new(
        FakeEvents {
            seen: seen.clone(),
            refuse: false,
        },
        Bus::Pio,
    );
    mem.register_listener(&pc.io, Box::new(l)).unwrap();
    let dev = MemoryRegion::io("notify", 0x10, Arc::new(crate::memory::testing::NopOps));
    let fd = Arc::new(EventFd::new(0).unwrap());
    let tx = mem.begin();
    tx.add_subregion(&pc.io_root, 0xc000, &dev).unwrap();
    for (addr, size, datamatch) in [(0, 2, None), (4, 4, Some(1))] {
        let e = Ioeventfd {
            addr,
            size,
            datamatch,
            fd: fd.clone(),
        };
        tx.add_eventfd(&dev, e).unwrap();
    }
    tx.commit().unwrap();
    let seen_now = seen.lock().unwrap().clone();
    let got: Vec<(Bus, u64, u32, Option<u64>, bool)> = seen_now
        .iter()
        .map(|(e, a)| (e.bus, e.addr, e.len, e.datamatch, *a))
        .collect();
    assert_eq!(
        got,
        vec![
            (Bus::Pio, 0xc000, 2, None, true),
            (Bus::Pio, 0xc004, 4, Some(1), true)
        ]
    );
    let tx = mem.begin();
    tx.del_subregion(&pc.io_root, &dev).unwrap();
    tx.commit().unwrap();
    assert_eq!(seen.lock().unwrap().iter().filter(|(_, a)| !a).count(), 2);
}

#[test]
fn a_refused_ioeventfd_or_a_bad_size_refuses_the_transaction() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let l = KvmIoListener::new(
        FakeEvents {
            seen: Arc::default(),
            refuse: true,
        },
        Bus::Mmio,
    );
    mem.register_listener(&pc.memory, Box::new(l)).unwrap();
    let dev = MemoryRegion::io("bar", 0x1000, Arc::new(crate::memory::testing::NopOps));
    let fd = Arc::new(EventFd::new(0).unwrap());
    let tx = mem.begin();
    tx.add_subregion(&pc.pci, 0xfe00_0000, &dev).unwrap();
    tx.add_eventfd(
        &dev,
        Ioeventfd {
            addr: 0,
            size: 3,
            datamatch: None,
            fd,
        },
    )
    .unwrap();
    let err = tx.commit().unwrap_err();
    assert!(err.to_string().contains("kvm-io"), "{err}");
    assert!(!dev.is_mapped());
}
