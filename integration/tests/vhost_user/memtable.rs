//! The memory table a vhost-user backend holds, checked byte for byte
//! (QEMU's vhost-user-test pattern): the daemon's own request handler
//! (`vmm-backends`' `Handler`, what `vhost-user-blk` runs) serves in this
//! process on a socket, so the test reads guest RAM through the very
//! mappings the daemon made of the fds it received. After boot, after a DIMM is hot-added and after it is removed,
//! the backend's regions (guest address, size, file offset) equal the
//! guest RAM of the flat view (`info mtree -f`), and the bytes the probe
//! guest wrote in low RAM, above 4 GiB and in the DIMM read back through
//! the backend's mappings; after the removal the DIMM is gone from them.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
use vmm::machine::hotplug::HotplugEvent;
use vmm::machine::VhostUserBlkConfig;
use vmm::memory::mtree::info_mtree_flat;
use vmm::memory::Memory;
use vmm_backends::block::ImageOptions;
use vmm_backends::vhost_user_blk::{
    open_engine, serve_connection, BlkBackend, Handler, LogMemory, ServerOptions,
};

use super::common::{probe_machine_with, scratch, wait_output};

/// Enough RAM for the PC split: 3 GiB below the PCI hole, 512 MiB at 4 GiB.
const RAM: u64 = 0xe000_0000;
const DIMM: u64 = 128 << 20;
const MIB: u64 = 1 << 20;
/// The probe's seeds: `memtable.rs` for its stamps, `dimm.rs` for the
/// first (seed) and last (seed + 1) MiB of the DIMM.
const STAMP_SEED: u64 = 0x3e;
const DIMM_SEED: u64 = 0xd1;

/// A piece of guest RAM: where it is and its offset in the file behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    gpa: u64,
    size: u64,
    offset: u64,
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:#x}+{:#x}@{:#x}", self.gpa, self.size, self.offset)
    }
}

/// Bytes the guest wrote: `len` bytes at `gpa` holding the disk pattern
/// of sectors `first_sector..` under `seed`.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    gpa: u64,
    len: u64,
    seed: u64,
    first_sector: u64,
}

impl Stamp {
    fn expected(&self) -> Vec<u8> {
        (0..self.len / 512)
            .flat_map(|s| testkit::pattern::sector(self.seed, self.first_sector + s))
            .collect()
    }
}

/// Our vhost-user-blk daemon's handler served from this process; `memory`
/// is the guest memory it maps, replaced on every table message.
struct Backend {
    memory: LogMemory,
}

impl Backend {
    fn start(image: &Path, sock: &Path) -> Backend {
        let options = ServerOptions {
            socket: sock.into(),
            image: image.into(),
            image_options: ImageOptions::default(),
            num_queues: 1,
            queue_size: 256,
            max_mem_slots: 509,
        };
        let engine = open_engine(&options).expect("the image opens");
        let backend = Arc::new(BlkBackend::new(engine, 1, 256, 0));
        let handler = Handler::new(backend, None).expect("the queue workers start");
        let memory = handler.memory();
        let handler = Arc::new(std::sync::Mutex::new(handler));
        // Listening before the frontend connects: no wait for the file.
        let mut listener = Listener::new(sock, true).expect("the socket listens");
        std::thread::spawn(move || {
            let _ = serve_connection(&mut listener, handler);
        });
        Backend { memory }
    }

    /// The regions the backend maps now, by guest address.
    fn regions(&self) -> Vec<Region> {
        let mem = self.memory.memory();
        let mut v: Vec<Region> = mem
            .iter()
            .map(|r| Region {
                gpa: r.start_addr().0,
                size: r.len(),
                offset: r.file_offset().map_or(u64::MAX, |f| f.start()),
            })
            .collect();
        v.sort_by_key(|r| r.gpa);
        v
    }

    /// `len` bytes at `gpa`, read through the backend's own mappings.
    fn read(&self, gpa: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len as usize];
        self.memory
            .memory()
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|e| format!("the backend cannot read {gpa:#x}+{len:#x}: {e}"))?;
        Ok(buf)
    }
}

/// Guest RAM in the flat view of the `memory` address space, from the
/// `info mtree -f` text: the `ram` ranges (not ROM, not RAM devices),
/// neighbours of one region contiguous in address and offset merged, as
/// a backend receives them.
fn flat_ram(memory: &Memory) -> Vec<Region> {
    let text = info_mtree_flat(memory);
    let mut out: Vec<(Region, String)> = Vec::new();
    let lines = text
        .lines()
        .skip_while(|l| !l.trim().starts_with("AS \"memory\""))
        .skip(2)
        .take_while(|l| !l.trim().is_empty());
    for line in lines {
        let Some((range, rest)) = line.trim().split_once(' ') else {
            continue;
        };
        if !rest.contains(", ram): ") {
            continue;
        }
        let (first, last) = range.split_once('-').expect("start-last");
        let gpa = u64::from_str_radix(first, 16).expect("hex start");
        let size = u64::from_str_radix(last, 16).expect("hex last") - gpa + 1;
        let what = rest.split_once("): ").expect("kind: name").1;
        let (name, offset) = match what.split_once(" @") {
            Some((n, o)) => (n, u64::from_str_radix(o, 16).expect("hex offset")),
            None => (what, 0),
        };
        match out.last_mut() {
            Some((r, n)) if n == name && r.gpa + r.size == gpa && r.offset + r.size == offset => {
                r.size += size
            }
            _ => out.push((Region { gpa, size, offset }, name.into())),
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}

fn show(regions: &[Region]) -> String {
    regions
        .iter()
        .map(Region::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// (a) The backend maps exactly the guest RAM of the flat view, at the
/// same file offsets.
fn same_table(memory: &Memory, backend: &Backend, when: &str) -> Result<(), String> {
    let (flat, held) = (flat_ram(memory), backend.regions());
    eprintln!("{when}: the backend maps [{}]", show(&held));
    if flat.is_empty() || flat != held {
        return Err(format!(
            "{when}: the backend maps [{}], the flat view has guest RAM [{}]\n{}",
            show(&held),
            show(&flat),
            info_mtree_flat(memory)
        ));
    }
    Ok(())
}

/// (b) The backend's mappings hold what the guest wrote.
fn same_bytes(backend: &Backend, stamps: &[Stamp], when: &str) -> Result<(), String> {
    for st in stamps {
        let got = backend.read(st.gpa, st.len)?;
        let want = st.expected();
        if let Some(at) = (0..got.len()).find(|&i| got[i] != want[i]) {
            return Err(format!(
                "{when}: at {:#x} the backend reads {:#04x}, the guest wrote {:#04x} \
                 ({} of {} bytes differ)",
                st.gpa + at as u64,
                got[at],
                want[at],
                got.iter().zip(&want).filter(|(a, b)| a != b).count(),
                got.len()
            ));
        }
    }
    Ok(())
}

/// The probe's `memtable: stamped 0x...+0x...` lines.
fn stamps(text: &str) -> Vec<Stamp> {
    text.lines()
        .filter_map(|l| l.split_once("memtable: stamped 0x"))
        .filter_map(|(_, area)| {
            let (gpa, len) = area.split_once("+0x")?;
            let gpa = u64::from_str_radix(gpa, 16).ok()?;
            Some(Stamp {
                gpa,
                len: u64::from_str_radix(len.trim(), 16).ok()?,
                seed: STAMP_SEED,
                first_sector: gpa / 512,
            })
        })
        .collect()
}

#[test]
fn the_backend_maps_the_flat_views_guest_ram_and_reads_what_the_guest_wrote() {
    let dir = scratch("memtable");
    let (image, sock) = (dir.join("disk.img"), dir.join("vub.sock"));
    std::fs::write(&image, testkit::pattern::image(3, 131_072)).unwrap();
    let backend = Backend::start(&image, &sock);

    let (mut m, out) = probe_machine_with(RAM, "probe=memtable probe=dimm");
    let hp = m.enable_memory_hotplug(1 << 30, 2).unwrap();
    m.add_vhost_user_blk(&VhostUserBlkConfig {
        socket: sock.clone(),
        num_queues: 1,
        ..VhostUserBlkConfig::default()
    })
    .expect("the backend answers");
    let (tx, events) = mpsc::channel();
    hp.set_sink(Arc::new(move |e| {
        let _ = tx.send(e);
    }));
    let memory = m.memory.clone();
    same_table(&memory, &backend, "at start").unwrap_or_else(|e| panic!("{e}"));

    let requests = m.requests.clone();
    let host = {
        let out = out.clone();
        let steps = move || -> Result<(), String> {
            if !wait_output(&out, "dimm: waiting") {
                return Err("the probe never waited for a DIMM".into());
            }
            let low_high = stamps(&out.text());
            let high = low_high.iter().filter(|s| s.gpa >= 1 << 32).count();
            if low_high.len() != 4 || high != 2 {
                return Err(format!("expected 4 stamps, 2 above 4 GiB: {low_high:x?}"));
            }
            same_table(&memory, &backend, "after boot")?;
            same_bytes(&backend, &low_high, "after boot")?;

            hp.object_add_memfd("mem1", DIMM)?;
            let dimm = hp.device_add_dimm("dimm1", "mem1", None)?;
            // The frontend waits for each message's acknowledgement: the
            // backend has the DIMM by the time device_add returns.
            same_table(&memory, &backend, "after device_add")?;
            if !wait_output(&out, "dimm: used") {
                return Err("the probe never used the DIMM".into());
            }
            let mut all = low_high.clone();
            for (n, gpa) in [dimm.addr, dimm.addr + dimm.size - MIB]
                .into_iter()
                .enumerate()
            {
                all.push(Stamp {
                    gpa,
                    len: MIB,
                    seed: DIMM_SEED + n as u64,
                    first_sector: 0,
                });
            }
            same_table(&memory, &backend, "with the DIMM in use")?;
            same_bytes(&backend, &all, "with the DIMM in use")?;

            hp.device_del("dimm1")?;
            loop {
                match events.recv_timeout(Duration::from_secs(60)) {
                    Ok(HotplugEvent::DeviceDeleted { id }) if id == "dimm1" => break,
                    Ok(HotplugEvent::AcpiOst { .. }) => continue,
                    other => return Err(format!("expected DEVICE_DELETED, got {other:?}")),
                }
            }
            same_table(&memory, &backend, "after device_del")?;
            same_bytes(&backend, &low_high, "after device_del")?;
            let end = dimm.addr + dimm.size;
            let left: Vec<Region> = backend
                .regions()
                .into_iter()
                .filter(|r| r.gpa < end && dimm.addr < r.gpa + r.size)
                .collect();
            if !left.is_empty() || backend.read(dimm.addr, MIB).is_ok() {
                return Err(format!(
                    "the backend still maps the DIMM's {:#x}+{:#x}: [{}]",
                    dimm.addr,
                    dimm.size,
                    show(&left)
                ));
            }
            Ok(())
        };
        // A failed step stops the guest rather than leave it waiting.
        std::thread::spawn(move || {
            let result = steps();
            if result.is_err() {
                requests.raise(vmm::machine::Request::Stop(1));
            }
            result
        })
    };
    let ((), text) = super::common::run_with_host(&mut m, &out, host);
    super::common::assert_passed(
        &text,
        &[
            "memtable: known bytes stamped",
            "dimm: CPU writes to the DIMM read back",
            "virtio-blk 00:03.0 DMA from and into the DIMM verifies",
            "dimm: the memory is gone after eject",
        ],
    );
}
