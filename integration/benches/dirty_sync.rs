//! One dirty-log sync of 4 GiB of guest RAM, split by source: KVM's
//! bitmaps (KVM_GET_DIRTY_LOG per memslot) and our vhost-user-blk daemon's
//! log (one atomic fetch_and per 64 pages), with nothing dirty: the fixed
//! cost a migration pays per sync. Not a test.
//!
//! cargo build --release -p vmm-backends --bins && cargo bench -p integration --bench dirty_sync

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use vmm::kvm::memslots::{KvmMemoryListener, KvmSlots};
use vmm::machine::PcMemory;
use vmm::memory::timed::Timed;
use vmm::memory::{Memory, MemoryListener};
use vmm::vhost_user::VhostListener;
use vmm_vhost::BackendConn;

const RAM: u64 = 4 << 30;
const ROUNDS: usize = 20;

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64 / 1e3
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vmm-bench-dirty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (image, sock) = (dir.join("disk.img"), dir.join("vub.sock"));
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let bin = testkit::process::binary("vhost-user-blk");
    assert!(
        bin.exists(),
        "cargo build --release -p vmm-backends --bins first"
    );
    let mut daemon = Command::new(bin)
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let kvm = Kvm::new().expect("this benchmark needs /dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, RAM).unwrap();
    let conn = BackendConn::connect(&sock, 1, Duration::from_secs(5)).unwrap();
    let (kvm_l, kvm_clock) = Timed::new(Box::new(KvmMemoryListener::new(
        KvmSlots::new(vm.clone()),
        None,
    )) as Box<dyn MemoryListener>);
    let (vhost_l, vhost_clock) =
        Timed::new(Box::new(VhostListener::new("vhost", conn.sink())) as Box<dyn MemoryListener>);
    mem.register_listener(&pc.memory, Box::new(vhost_l))
        .unwrap();
    mem.register_listener(&pc.memory, Box::new(kvm_l)).unwrap();
    mem.log_global_start()
        .expect("logging starts on KVM and the daemon");
    let block = pc.ram.ram_block().unwrap().clone();
    let (mut k, mut v, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS + 2 {
        kvm_clock.take();
        vhost_clock.take();
        let t = Instant::now();
        mem.log_sync(&pc.memory);
        let all = t.elapsed().as_nanos() as u64;
        block.dirty.take();
        if round >= 2 {
            k.push(kvm_clock.take());
            v.push(vhost_clock.take());
            total.push(all);
        }
    }
    println!(
        "one log_sync of {} GiB guest RAM, median of {ROUNDS} (us):",
        RAM >> 30
    );
    println!("  kvm-memory (KVM_GET_DIRTY_LOG)      {:10.1}", median(k));
    println!("  vhost (daemon's log, atomic take)  {:10.1}", median(v));
    println!(
        "  whole sync                         {:10.1}",
        median(total)
    );
    mem.log_global_stop().unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
