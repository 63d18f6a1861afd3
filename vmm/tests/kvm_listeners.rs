//! The KVM listeners against a real VM: the PC map becomes memslots, a PAM
//! switch and a DIMM hot-add are accepted by KVM, and ioeventfds register
//! with their exact length. Needs /dev/kvm; fails with that reason without.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, Kvm};
use vmm::kvm::ioevents::{Bus, KvmIoEvents, KvmIoListener};
use vmm::kvm::memslots::{KvmMemoryListener, KvmSlots};
use vmm::machine::pam::PamMode;
use vmm::machine::PcMemory;
use vmm::memory::testing::NopOps;
use vmm::memory::{Ioeventfd, Memory, MemoryRegion};
use vmm_sys_util::eventfd::EventFd;

fn vm() -> Arc<kvm_ioctls::VmFd> {
    let kvm = Kvm::new().expect("this test needs /dev/kvm (open failed)");
    Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"))
}

#[test]
fn kvm_accepts_the_pc_map_a_pam_switch_and_a_hot_added_dimm() {
    let vm = vm();
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 256 << 20).unwrap();
    let l = KvmMemoryListener::new(KvmSlots::new(vm.clone()), None);
    mem.register_listener(&pc.memory, Box::new(l)).unwrap();

    let tx = mem.begin();
    for idx in 0..13 {
        pc.pam().set_mode(&tx, idx, PamMode::ReadWrite);
    }
    tx.commit().expect("KVM accepts the PAM switch");

    let dimm = MemoryRegion::ram("dimm0", 128 << 20).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
    tx.commit().expect("KVM accepts the DIMM");
    let tx = mem.begin();
    tx.del_subregion(&pc.system, &dimm).unwrap();
    tx.commit().expect("KVM drops the DIMM");
}

#[test]
fn kvm_registers_ioeventfds_and_refuses_a_duplicate_cleanly() {
    let vm = vm();
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 64 << 20).unwrap();
    for (space, bus) in [(&pc.memory, Bus::Mmio), (&pc.io, Bus::Pio)] {
        let l = KvmIoListener::new(KvmIoEvents::new(vm.clone()), bus);
        mem.register_listener(space, Box::new(l)).unwrap();
    }
    let fd = Arc::new(EventFd::new(0).unwrap());
    let port = MemoryRegion::io("port", 4, Arc::new(NopOps));
    let bar = MemoryRegion::io("bar", 0x1000, Arc::new(NopOps));
    let ev = |addr, size, datamatch| Ioeventfd {
        addr,
        size,
        datamatch,
        fd: fd.clone(),
    };
    let tx = mem.begin();
    tx.add_subregion(&pc.io_root, 0xc000, &port).unwrap();
    tx.add_subregion(&pc.pci, 0xfebf_0000, &bar).unwrap();
    tx.add_eventfd(&port, ev(0, 2, None)).unwrap();
    tx.add_eventfd(&bar, ev(0x100, 4, Some(7))).unwrap();
    tx.commit().expect("KVM takes both ioeventfds");

    // Someone else already holds this exact ioeventfd in KVM.
    let taken = 0xfebe_0100;
    vm.register_ioevent(&fd, &IoEventAddress::Mmio(taken), 7u32)
        .unwrap();
    let tx = mem.begin();
    tx.set_address(&bar, 0xfebe_0000);
    let err = tx
        .commit()
        .expect_err("KVM refuses the same ioeventfd twice");
    assert!(err.to_string().contains("kvm-io"), "{err}");
    assert_eq!(bar.addr(), 0xfebf_0000, "the move was undone");
    // The old registration is back: moving elsewhere works, which needs
    // KVM to release it first.
    let tx = mem.begin();
    tx.set_address(&bar, 0xfebd_0000);
    tx.commit().expect("the restored ioeventfd moves normally");
}
