//! A DIMM hot-add and hot-remove through the real fan-out: kvm-memory on a
//! live KVM VM, kvm-io, the vfio listener over a recording mapper and the
//! vhost listener over a backend that accepts every message. Prints the
//! cost per commit next to the same commit with recording listeners only.
//! Needs /dev/kvm.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::Kvm;
use vmm::kvm::ioevents::{Bus, KvmIoEvents, KvmIoListener};
use vmm::kvm::memslots::{KvmMemoryListener, KvmSlots};
use vmm::machine::PcMemory;
use vmm::memory::testing::{CallLog, Recorder};
use vmm::memory::{Memory, MemoryRegion};
use vmm::vfio::VfioListener;
use vmm::vhost_user::VhostListener;
use vmm_vfio::recorder::RecordingMapper;
use vmm_vfio::DmaRules;
use vmm_vhost::memtable::MemRegion;
use vmm_vhost::{MemTableSink, SinkError};

struct AcceptAll;
impl MemTableSink for AcceptAll {
    fn mem_slots(&self) -> bool {
        true
    }
    fn max_regions(&self) -> u64 {
        509
    }
    fn set_mem_table(&mut self, _: &[MemRegion]) -> Result<(), SinkError> {
        Ok(())
    }
    fn add_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError> {
        black_box(r);
        Ok(())
    }
    fn remove_mem_region(&mut self, r: &MemRegion) -> Result<(), SinkError> {
        black_box(r);
        Ok(())
    }
}

/// Mean time of one commit over `n` add/remove pairs.
fn per_commit(mem: &Memory, pc: &PcMemory, n: u32) -> f64 {
    let dimm = MemoryRegion::ram("dimm0", 128 << 20).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        let tx = mem.begin();
        tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
        tx.commit().unwrap();
        let tx = mem.begin();
        tx.del_subregion(&pc.system, &dimm).unwrap();
        tx.commit().unwrap();
    }
    start.elapsed().as_secs_f64() / f64::from(2 * n)
}

fn main() {
    const N: u32 = 2000;
    let kvm = Kvm::new().expect("this benchmark needs /dev/kvm");
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));

    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let vfio = VfioListener::new(RecordingMapper::default(), DmaRules::default());
    mem.register_listener(&pc.memory, Box::new(vfio)).unwrap();
    mem.register_listener(&pc.memory, Box::new(VhostListener::new("vhost", AcceptAll)))
        .unwrap();
    let slots = KvmMemoryListener::new(KvmSlots::new(vm.clone()), None);
    mem.register_listener(&pc.memory, Box::new(slots)).unwrap();
    let io = KvmIoListener::new(KvmIoEvents::new(vm.clone()), Bus::Mmio);
    mem.register_listener(&pc.memory, Box::new(io)).unwrap();
    per_commit(&mem, &pc, 100); // warm up
    let real = per_commit(&mem, &pc, N);

    let rmem = Memory::new();
    let rpc = PcMemory::new(&rmem, 512 << 20).unwrap();
    let log: CallLog = Arc::default();
    for (name, prio) in [
        ("vfio", 0),
        ("vhost", 5),
        ("kvm-memory", 10),
        ("kvm-io", 10),
    ] {
        let mut r = Recorder::new(name, prio, &log);
        r.verbose = false;
        rmem.register_listener(&rpc.memory, Box::new(r)).unwrap();
    }
    per_commit(&rmem, &rpc, 100);
    let recorded = per_commit(&rmem, &rpc, N);

    println!("hot-add/remove commit, PC map, four listeners ({N} pairs):");
    println!(
        "  real (KVM memslots + vfio + vhost + kvm-io): {:8.2} us",
        real * 1e6
    );
    println!(
        "  recording listeners only:                    {:8.2} us",
        recorded * 1e6
    );
    println!(
        "  ratio real / recording:                      {:8.2}",
        real / recorded
    );
}
