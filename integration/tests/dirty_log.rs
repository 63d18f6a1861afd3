//! Dirty logging through the fan-out on real KVM: global logging turns
//! KVM_MEM_LOG_DIRTY_PAGES on for all RAM, `log_sync` moves KVM's bitmap
//! into the RAM block's, and taking it re-arms tracking. The probe guest
//! writes known pages from ring 3, paced by the host through a mailbox in
//! RAM; the host checks that exactly those pages are dirty, plus only the
//! guest's own image, stack and page tables (below 2 MiB).
//!
//! Needs /dev/kvm; a test fails (does not skip) without it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use testkit::process::Captured;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const MAILBOX: u64 = 63 * MIB;
const AREA_PAGE: u64 = 64 * MIB / PAGE;

fn wait_output(out: &Captured, what: &str) -> Result<(), String> {
    let start = Instant::now();
    while !out.text().contains(what) {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("no {what:?} from the guest"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Dirty pages of guest RAM: (pages in the 1 MiB test area, relative to
/// its start; pages elsewhere).
fn split(pages: Vec<u64>) -> (Vec<u64>, Vec<u64>) {
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for p in pages {
        if (AREA_PAGE..AREA_PAGE + 256).contains(&p) {
            inside.push(p - AREA_PAGE);
        } else {
            outside.push(p);
        }
    }
    (inside, outside)
}

#[test]
fn kvm_reports_exactly_the_pages_the_guest_wrote_and_a_clear_rearms_it() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let (mut m, out) = common::probe_machine("probe=dirty");
    let memory = m.memory.clone();
    let space = m.pc.memory.clone();
    let ram = m.pc.ram.ram_block().expect("RAM block").clone();
    let host = {
        let out = out.clone();
        std::thread::spawn(move || -> Result<(Vec<u64>, Vec<u64>), String> {
            let post = |step: u64| {
                ram.write(MAILBOX, &step.to_le_bytes());
            };
            wait_output(&out, "dirty: ready")?;
            memory.log_global_start().map_err(|e| e.to_string())?;
            memory.log_sync(&space);
            ram.dirty.take();
            post(1);
            wait_output(&out, "dirty: A written")?;
            memory.log_sync(&space);
            let first = ram.dirty.take();
            post(2);
            wait_output(&out, "dirty: B written")?;
            memory.log_sync(&space);
            let second = ram.dirty.take();
            memory.log_global_stop().map_err(|e| e.to_string())?;
            post(3);
            Ok((first, second))
        })
    };
    let (first, second) = common::run_with_host(&mut m, &out, host).0;

    let (a, a_rest) = split(first);
    let want_a: Vec<u64> = (0..128).step_by(2).collect();
    assert_eq!(a, want_a, "after set A, the test area's dirty pages");
    let (b, b_rest) = split(second);
    let want_b: Vec<u64> = std::iter::once(0).chain((129..192).step_by(2)).collect();
    assert_eq!(
        b, want_b,
        "after the take: only set B, and page 0 of A, written again"
    );
    // Elsewhere only the probe itself (image, stacks, page tables, all
    // below 2 MiB) may have been written.
    for (name, rest) in [("A", a_rest), ("B", b_rest)] {
        assert!(
            rest.iter().all(|&p| p < 2 * MIB / PAGE),
            "with set {name}, pages outside the probe were dirty: {rest:?}"
        );
        eprintln!(
            "set {name}: {} probe pages dirty besides the set",
            rest.len()
        );
    }
}

#[test]
fn calc_dirty_rate_over_qmp_measures_what_the_guest_writes() {
    let dir = std::env::temp_dir().join(format!("vmm-dirty-rate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (qmp, serial) = (dir.join("qmp.sock"), dir.join("com1.txt"));
    let mb = 32;
    let mut vmm = std::process::Command::new(testkit::process::vmm_binary())
        .args(["--memory", "256M", "--qmp", qmp.to_str().unwrap()])
        .args(["--serial", &format!("file={}", serial.display())])
        .args([
            "--cmdline",
            &format!("console=ttyS0 probe=none probe=dirtyrate dirtyrate-mb={mb} dirtyrate-secs=5"),
        ])
        .spawn()
        .expect("the vmm binary");
    let start = Instant::now();
    while !qmp.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no QMP socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dirty_log/qmp_dirty_rate.py");
    let out = std::process::Command::new(testkit::qmp::python())
        .arg(&script)
        .args([
            qmp.to_str().unwrap(),
            serial.to_str().unwrap(),
            &mb.to_string(),
        ])
        .output()
        .expect("python runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let status = vmm.wait().unwrap();
    let guest = std::fs::read_to_string(&serial).unwrap_or_default();
    eprintln!("{text}");
    assert!(out.status.success(), "{text}\nguest:\n{guest}");
    assert!(status.success(), "vmm: {status}\n{guest}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The probe's disk reads 16 pages into the test area through a
/// vhost-user-blk disk on our daemon while dirty logging is on; returns the
/// test-area pages reported dirty after it.
/// A scratch directory with a 64 MiB patterned image and our daemon
/// serving it: (directory, image, socket, daemon).
fn daemon_disk(name: &str) -> (PathBuf, PathBuf, PathBuf, common::Daemon) {
    let dir = common::scratch(&format!("dirty-{name}"));
    let (image, sock) = (dir.join("disk.img"), dir.join("vub.sock"));
    std::fs::write(&image, testkit::pattern::image(9, 131_072)).unwrap();
    let daemon = common::Daemon::start(&image, &sock);
    (dir, image, sock, daemon)
}

/// Which disk does the read: our daemon behind the vhost-user-blk device
/// (with its log used or not), or the in-process device on an iothread.
#[derive(Clone, Copy, Debug)]
enum Disk {
    Vhost { use_log: bool },
    InProcess,
}

fn backend_write_pages(disk: Disk) -> Vec<u64> {
    use vmm::machine::{DiskConfig, VhostUserBlkConfig};
    let (dir, image, sock, daemon) = daemon_disk(&format!("{disk:?}"));
    let (mut m, out) = common::probe_machine("probe=dirtydma");
    match disk {
        Disk::Vhost { use_log } => m.add_vhost_user_blk(&VhostUserBlkConfig {
            socket: sock.clone(),
            dirty_log: use_log,
            ..VhostUserBlkConfig::default()
        }),
        Disk::InProcess => m.add_disk(&DiskConfig {
            path: image.clone(),
            ..DiskConfig::default()
        }),
    }
    .unwrap();
    let memory = m.memory.clone();
    let space = m.pc.memory.clone();
    let ram = m.pc.ram.ram_block().expect("RAM block").clone();
    let host = {
        let out = out.clone();
        std::thread::spawn(move || -> Result<Vec<u64>, String> {
            wait_output(&out, "dirty: ready")?;
            memory.log_global_start().map_err(|e| e.to_string())?;
            memory.log_sync(&space);
            ram.dirty.take();
            ram.write(MAILBOX, &1u64.to_le_bytes());
            wait_output(&out, "dirty: dma done")?;
            memory.log_sync(&space);
            let dirty = ram.dirty.take();
            memory.log_global_stop().map_err(|e| e.to_string())?;
            ram.write(MAILBOX, &2u64.to_le_bytes());
            Ok(dirty)
        })
    };
    let dirty = common::run_with_host(&mut m, &out, host).0;
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    split(dirty).0
}

#[test]
fn pages_a_vhost_user_backend_writes_come_from_its_log() {
    let want: Vec<u64> = (64..80).collect();
    assert_eq!(
        backend_write_pages(Disk::Vhost { use_log: true }),
        want,
        "the disk read's buffer pages, reported through the daemon's log"
    );
    assert_eq!(
        backend_write_pages(Disk::Vhost { use_log: false }),
        Vec::<u64>::new(),
        "without the backend's log nobody reports them: KVM never saw the writes"
    );
}

#[test]
fn pages_the_in_process_device_writes_are_logged_too() {
    let want: Vec<u64> = (64..80).collect();
    assert_eq!(
        backend_write_pages(Disk::InProcess),
        want,
        "the iothread's DMA into the buffer marks its pages"
    );
}

#[test]
fn a_dimm_added_while_logging_is_logged_from_its_first_write() {
    use vmm::machine::hotplug::HotplugEvent;
    use vmm::machine::VhostUserBlkConfig;
    let (dir, _image, sock, daemon) = daemon_disk("dimm");
    let (mut m, out) = common::probe_machine("probe=dimm");
    let hp = m.enable_memory_hotplug(1 << 30, 2).unwrap();
    m.add_vhost_user_blk(&VhostUserBlkConfig {
        socket: sock.clone(),
        ..VhostUserBlkConfig::default()
    })
    .unwrap();
    let (tx, events) = std::sync::mpsc::channel();
    hp.set_sink(std::sync::Arc::new(move |e| {
        let _ = tx.send(e);
    }));
    let memory = m.memory.clone();
    let space = m.pc.memory.clone();
    let host = {
        let out = out.clone();
        std::thread::spawn(move || -> Result<Vec<u64>, String> {
            wait_output(&out, "dimm: waiting")?;
            memory.log_global_start().map_err(|e| e.to_string())?;
            hp.object_add_memfd("mem1", 64 << 20)?;
            hp.device_add_dimm("dimm1", "mem1", None)?;
            wait_output(&out, "dimm: used")?;
            memory.log_sync(&space);
            let block = hp.backend_block("mem1").ok_or("no block for mem1")?;
            let dirty = block.dirty.take();
            memory.log_global_stop().map_err(|e| e.to_string())?;
            hp.device_del("dimm1")?;
            loop {
                match events.recv_timeout(Duration::from_secs(60)) {
                    Ok(HotplugEvent::DeviceDeleted { .. }) => break,
                    Ok(_) => continue,
                    Err(e) => return Err(format!("no DEVICE_DELETED: {e}")),
                }
            }
            Ok(dirty)
        })
    };
    let dirty = common::run_with_host(&mut m, &out, host).0;
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    // The probe's CPU wrote the DIMM's first and last MiB (KVM's log of the
    // new slot); the vhost-user disk read 8 pages into it at 2 MiB (the
    // daemon's log, grown for the DIMM before the daemon could write it).
    let last = (64 << 20) / PAGE - 256;
    let cpu: Vec<u64> = (0..256).chain(last..last + 256).collect();
    let disk: Vec<u64> = (512..520).collect();
    for p in cpu.iter().chain(&disk) {
        assert!(dirty.contains(p), "DIMM page {p} not reported: {dirty:?}");
    }
    assert_eq!(
        dirty.len(),
        cpu.len() + disk.len(),
        "nothing else: {dirty:?}"
    );
}
