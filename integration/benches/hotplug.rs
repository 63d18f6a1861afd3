//! A 1 GiB DIMM hot-add and its removal through the real fan-out, split by
//! listener: `kvm-memory` (memslots on a live KVM VM), `vfio` (DMA_MAP and
//! DMA_UNMAP to the `vfio-user-edu` server over vfio-user), `vhost`
//! (ADD_MEM_REG / REM_MEM_REG to our vhost-user-blk daemon, acknowledged),
//! and `dma` (the in-process devices' view). Prints the median per listener
//! and the whole commit. Not a test.
//!
//! cargo build --release -p vmm-backends --bins && cargo bench -p integration --bench hotplug

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use vmm::kvm::memslots::{KvmMemoryListener, KvmSlots};
use vmm::machine::PcMemory;
use vmm::memory::dma::DmaView;
use vmm::memory::timed::{Clock, Timed};
use vmm::memory::{Memory, MemoryListener, MemoryRegion};
use vmm::vfio::VfioListener;
use vmm::vhost_user::VhostListener;
use vmm_vfio::{DmaRules, UserClient, UserDma};
use vmm_vhost::BackendConn;

const GIB: u64 = 1 << 30;
const ROUNDS: usize = 20;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &str, args: &[&str], sock: &Path) -> Killed {
    let path = testkit::process::binary(bin);
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p vmm-backends --bins",
        path.display()
    );
    let _ = std::fs::remove_file(sock);
    let child = Command::new(path)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no {bin} socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Killed(child)
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64 / 1e3
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vmm-bench-hotplug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let (vub, edu) = (dir.join("vub.sock"), dir.join("edu.sock"));
    let _daemon = spawn(
        "vhost-user-blk",
        &[
            "--socket",
            vub.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ],
        &vub,
    );
    let _server = spawn("vfio-user-edu", &["--socket", edu.to_str().unwrap()], &edu);

    let kvm = Kvm::new().expect("this benchmark needs /dev/kvm");
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let mut clocks: Vec<(&str, Clock)> = Vec::new();
    let mut add = |name: &'static str, l: Box<dyn MemoryListener>| {
        let (t, c) = Timed::new(l);
        mem.register_listener(&pc.memory, Box::new(t)).unwrap();
        clocks.push((name, c));
    };
    add(
        "dma (in-process devices)",
        Box::new(DmaView::default().listener()),
    );
    let client = UserClient::connect(&edu, Duration::from_secs(5)).expect("vfio-user server");
    let client = Arc::new(Mutex::new(client));
    add(
        "vfio (vfio-user DMA_MAP)",
        Box::new(VfioListener::new(UserDma(client), DmaRules::default())),
    );
    let conn = BackendConn::connect(&vub, 1, Duration::from_secs(5)).expect("vhost-user daemon");
    add(
        "vhost (ADD_MEM_REG, acked)",
        Box::new(VhostListener::new("vhost", conn.sink())),
    );
    add(
        "kvm-memory (memslots)",
        Box::new(KvmMemoryListener::new(KvmSlots::new(vm.clone()), None)),
    );

    let n = clocks.len();
    let (mut adds, mut dels) = (vec![Vec::new(); n + 1], vec![Vec::new(); n + 1]);
    for round in 0..ROUNDS + 2 {
        let dimm = MemoryRegion::ram("dimm", GIB).unwrap();
        for (phase, out) in [(0, &mut adds), (1, &mut dels)] {
            for (_, c) in &clocks {
                c.take();
            }
            let start = Instant::now();
            let tx = mem.begin();
            if phase == 0 {
                tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
            } else {
                tx.del_subregion(&pc.system, &dimm).unwrap();
            }
            tx.commit().unwrap();
            let total = start.elapsed().as_nanos() as u64;
            if round >= 2 {
                for (i, (_, c)) in clocks.iter().enumerate() {
                    out[i].push(c.take());
                }
                out[n].push(total);
            }
        }
    }
    println!("1 GiB DIMM through the real fan-out, median of {ROUNDS} (us):");
    println!("  {:30} {:>10} {:>10}", "listener", "add", "remove");
    for (i, (name, _)) in clocks.iter().enumerate() {
        println!(
            "  {name:30} {:10.1} {:10.1}",
            median(&mut adds[i]),
            median(&mut dels[i])
        );
    }
    println!(
        "  {:30} {:10.1} {:10.1}",
        "whole commit",
        median(&mut adds[n]),
        median(&mut dels[n])
    );
    let _ = std::fs::remove_dir_all(&dir);
}
