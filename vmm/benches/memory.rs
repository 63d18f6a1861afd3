//! Memory-model micro benchmarks: rendering, lookup, and a hot-add commit
//! fanned out to four listeners. Targets (issue 2): lookup < 20 ns, render
//! of 1,000 regions < 1 ms, four-listener hot-add commit < 50 us.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vmm::machine::PcMemory;
use vmm::memory::testing::{CallLog, Recorder};
use vmm::memory::{FlatView, Memory, MemoryRegion, RegionOps};

struct Nop;
impl RegionOps for Nop {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

/// 1,000 regions: 250 containers of three I/O regions each, overlapping
/// at mixed priorities, plus an alias per container onto RAM.
fn thousand(mem: &Memory) -> Arc<vmm::memory::AddressSpace> {
    let root = MemoryRegion::container("root", 1 << 40);
    let space = mem.add_address_space("memory", root.clone());
    let ram = MemoryRegion::ram("ram", 1 << 20).unwrap();
    let tx = mem.begin();
    for c in 0..250u64 {
        let cont = MemoryRegion::container(&format!("c{c}"), 0x10000);
        for i in 0..3u64 {
            let r = MemoryRegion::io(&format!("r{c}.{i}"), 0x3000, Arc::new(Nop));
            tx.add_subregion_overlap(&cont, i * 0x2000, &r, (i % 2) as i32)
                .unwrap();
        }
        tx.add_subregion(&root, c * 0x10000, &cont).unwrap();
        let a = MemoryRegion::alias(&format!("a{c}"), &ram, (c % 16) * 0x1000, 0x4000);
        tx.add_subregion_overlap(&root, c * 0x10000 + 0x8000, &a, 1)
            .unwrap();
    }
    tx.commit().unwrap();
    space
}

fn addresses(n: usize, limit: u64) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % limit
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mem = Memory::new();
    let space = thousand(&mem);
    let root = space.root().clone();
    println!(
        "1,000-region tree renders to {} ranges",
        space.view().ranges().len()
    );
    c.bench_function("render 1000 regions", |b| {
        b.iter(|| black_box(FlatView::render(&root, false)))
    });

    let addrs = addresses(4096, 250 * 0x10000);
    let view = space.view();
    let mut i = 0;
    c.bench_function("lookup random address (1000-region view)", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(view.lookup(addrs[i]).map(|(_, off)| off))
        })
    });
    let mut buf = [0u8; 4];
    c.bench_function(
        "dispatch 4-byte read (arc-swap load + lookup + handler)",
        |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(space.read(addrs[i], &mut buf))
            })
        },
    );

    let pcmem = Memory::new();
    let pc = PcMemory::new(&pcmem, 512 << 20).unwrap();
    let pc_addrs = addresses(4096, 1 << 32);
    let pc_view = pc.memory.view();
    c.bench_function("lookup random address (PC view)", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(pc_view.lookup(pc_addrs[i]).map(|(_, off)| off))
        })
    });

    let log: CallLog = Arc::default();
    for (name, prio) in [("vfio", 0), ("vhost", 5), ("kvm-memory", 10), ("dirty", 20)] {
        let mut r = Recorder::new(name, prio, &log);
        r.verbose = false;
        pcmem.register_listener(&pc.memory, Box::new(r)).unwrap();
    }
    let dimm = MemoryRegion::ram("dimm0", 128 << 20).unwrap();
    let mut plugged = false;
    c.bench_function(
        "hot-add or hot-remove commit, four listeners (PC map)",
        |b| {
            b.iter(|| {
                let tx = pcmem.begin();
                if plugged {
                    tx.del_subregion(&pc.system, &dimm).unwrap();
                } else {
                    tx.add_subregion(&pc.system, 1 << 32, &dimm).unwrap();
                }
                tx.commit().unwrap();
                plugged = !plugged;
            })
        },
    );
    assert!(log.lock().unwrap().is_empty());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
