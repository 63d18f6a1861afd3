//! Memory hotplug end to end: one transaction brings a DIMM to KVM, to the
//! in-process virtio-blk device's DMA view and to the vhost-user-blk
//! daemon's memory table; the probe guest finds it through the ACPI
//! hotplug registers, writes it, has every disk DMA out of and into it,
//! and ejects it when asked; then nothing of the DIMM remains.
//!
//! And a Linux guest (the guest kit's `hotplug` test): a DIMM added over
//! QMP on NUMA node 1 is onlined, and `numactl --membind=1 dd` with O_DIRECT
//! moves data through vhost-user-blk with its buffer in the DIMM; the host
//! checks the guest's figures and the image. In our VMM where KVM is
//! hardware-backed (skipped, saying why, under PVM), and in QEMU under TCG
//! everywhere, with the same script and the same ACPI interface.
//!
//! Needs /dev/kvm; a test fails (does not skip) without it.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{probe_machine, scratch, wait_output, Daemon};
use vmm::machine::hotplug::HotplugEvent;
use vmm::machine::{DiskConfig, VhostUserBlkConfig};
use vmm::memory::mtree::info_mtree_flat;

const SECTORS: u64 = 131_072;
const DIMM: u64 = 128 << 20;

#[test]
fn a_dimm_reaches_kvm_the_iothread_device_and_the_daemon_then_leaves_them_all() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let dir = scratch("three");
    let (disk, remote, sock) = (dir.join("a.img"), dir.join("b.img"), dir.join("vub.sock"));
    for p in [&disk, &remote] {
        std::fs::write(p, testkit::pattern::image(3, SECTORS)).unwrap();
    }
    let daemon = Daemon::start(&remote, &sock);

    let (mut m, out) = probe_machine("probe=dimm blk-seed=4");
    let hp = m.enable_memory_hotplug(1 << 30, 4).unwrap();
    m.add_disk(&DiskConfig {
        path: disk.clone(),
        ..DiskConfig::default()
    })
    .unwrap();
    m.add_vhost_user_blk(&VhostUserBlkConfig {
        socket: sock.clone(),
        ..VhostUserBlkConfig::default()
    })
    .unwrap();
    let (tx, events) = mpsc::channel();
    hp.set_sink(Arc::new(move |e| {
        let _ = tx.send(e);
    }));
    let before = daemon.settled();
    assert!(!before.is_empty(), "the daemon got guest RAM");

    let memory = m.memory.clone();
    let host = {
        let out = out.clone();
        std::thread::spawn(move || -> Result<(), String> {
            if !wait_output(&out, "dimm: waiting") {
                return Err("the probe never waited for a DIMM".into());
            }
            hp.object_add_memfd("mem1", DIMM)?;
            let info = hp.device_add_dimm("dimm1", "mem1", Some(0))?;
            let flat = info_mtree_flat(&memory);
            if !flat.contains("mem1") {
                return Err(format!("info mtree -f lacks the DIMM:\n{flat}"));
            }
            let dimm = format!("{:#x}+{:#x}", info.addr, info.size);
            let t = daemon.wait_table(|t| t.contains(&dimm));
            if !t.contains(&dimm) {
                return Err(format!("the daemon's table lacks {dimm}: {t:?}"));
            }
            if !wait_output(&out, "dimm: used") {
                return Err("the probe never used the DIMM".into());
            }
            hp.device_del("dimm1")?;
            // ACPI_DEVICE_OST events (the guest's _OST) come and go first.
            loop {
                match events.recv_timeout(Duration::from_secs(60)) {
                    Ok(HotplugEvent::DeviceDeleted { id }) if id == "dimm1" => break,
                    Ok(HotplugEvent::AcpiOst { .. }) => continue,
                    other => return Err(format!("expected DEVICE_DELETED, got {other:?}")),
                }
            }
            let flat = info_mtree_flat(&memory);
            if flat.contains("mem1") {
                return Err(format!("info mtree -f still shows the DIMM:\n{flat}"));
            }
            let t = daemon.wait_table(|t| !t.contains(&dimm));
            if t.contains(&dimm) || t != before {
                return Err(format!(
                    "the daemon still has the DIMM: {t:?} (before {before:?})"
                ));
            }
            if !hp.dimms().is_empty() {
                return Err("query-memory-devices still lists the DIMM".into());
            }
            Ok(())
        })
    };
    let ((), text) = common::run_with_host(&mut m, &out, host);
    common::assert_passed(
        &text,
        &[
            "dimm: a DIMM is announced",
            "dimm: CPU writes to the DIMM read back",
            "virtio-blk 00:03.0 DMA from and into the DIMM verifies",
            "virtio-blk 00:04.0 DMA from and into the DIMM verifies",
            "dimm: the host asks for removal",
            "dimm: ejected, the slot is empty",
            "dimm: the memory is gone after eject",
        ],
    );
}

#[test]
fn a_backend_without_a_free_slot_refuses_the_dimm_and_nothing_of_it_remains() {
    let dir = scratch("rollback");
    let (remote, sock) = (dir.join("b.img"), dir.join("vub.sock"));
    std::fs::write(&remote, testkit::pattern::image(3, SECTORS)).unwrap();
    // How many regions guest RAM takes in a memory table: that many slots
    // and not one more.
    let needed = {
        let daemon = Daemon::start(&remote, &sock);
        let (mut m, _) = probe_machine("");
        m.add_vhost_user_blk(&VhostUserBlkConfig {
            socket: sock.clone(),
            ..VhostUserBlkConfig::default()
        })
        .unwrap();
        daemon.settled().len()
    };
    let daemon = Daemon::start_with(&remote, &sock, needed);
    let (mut m, out) = probe_machine("probe=dimm");
    let hp = m.enable_memory_hotplug(1 << 30, 4).unwrap();
    m.add_vhost_user_blk(&VhostUserBlkConfig {
        socket: sock.clone(),
        ..VhostUserBlkConfig::default()
    })
    .unwrap();
    let before = daemon.settled();
    assert_eq!(before.len(), needed);
    let memory = m.memory.clone();
    let dma = m.dma_view().clone();
    let requests = m.requests.clone();
    let host = std::thread::spawn(move || -> Result<(), String> {
        if !wait_output(&out, "dimm: waiting") {
            return Err("the probe never waited for a DIMM".into());
        }
        hp.object_add_memfd("mem1", DIMM)?;
        let err = match hp.device_add_dimm("dimm1", "mem1", None) {
            Ok(d) => return Err(format!("device_add succeeded: {d:?}")),
            Err(e) => e,
        };
        let result = (|| {
            // vhost-user's REPLY_ACK carries no reason; the daemon logs it.
            if !(err.contains("vhost:vhost-user-blk0") && err.contains("refused ADD_MEM_REG")) {
                return Err(format!(
                    "the error names neither listener nor reason: {err}"
                ));
            }
            let flat = info_mtree_flat(&memory);
            if flat.contains("mem1") {
                return Err(format!("info mtree -f shows the refused DIMM:\n{flat}"));
            }
            use vm_memory::GuestMemoryBackend;
            let at = vm_memory::GuestAddress(hp.base);
            if dma.snapshot().address_in_range(at) {
                return Err("the DMA view still reaches the DIMM".into());
            }
            let t = daemon.settled();
            if t != before {
                return Err(format!(
                    "the daemon's table changed: {t:?} (before {before:?})"
                ));
            }
            if !hp.dimms().is_empty() || hp.dev.slots().iter().any(|s| s.status != 0) {
                return Err("a slot or a DIMM record remains".into());
            }
            // The backend is free again once nothing is plugged.
            hp.object_del("mem1")
        })();
        requests.raise(vmm::machine::Request::Stop(0));
        let said = daemon.log.lock().unwrap().join("\n");
        if !said.contains("refusing a memory table") {
            return Err(format!("the daemon did not log why:\n{said}"));
        }
        result.map_err(|e| format!("{e} (device_add said: {err})"))
    });
    let status = m.run().expect("the machine runs until stopped");
    host.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 0);
}

/// The `vmm` binary with hotplug, one virtio-blk disk, one vhost-user-blk
/// disk at `sock` and the vfio-user edu device at `edu`: the three kinds of
/// DMA consumer. QMP at `qmp`, COM1 into `serial`, the probe in dimm mode.
fn vmm_process(disk: &Path, sock: &Path, edu: &Path, qmp: &Path, serial: &Path) -> Child {
    Command::new(testkit::process::vmm_binary())
        .args(["--memory", "size=256M,hotplug_size=1G,slots=4"])
        .args(["--disk", &format!("path={}", disk.display())])
        .args(["--vhost-user-blk", &format!("socket={}", sock.display())])
        .args(["--device", &format!("vfio-user,socket={}", edu.display())])
        .args(["--qmp", qmp.to_str().unwrap()])
        .args(["--serial", &format!("file={}", serial.display())])
        .args(["--cmdline", "console=ttyS0 probe=none probe=dimm"])
        .spawn()
        .expect("the vmm binary")
}

/// Runs the QMP client script in `mode`; returns its output, panicking
/// with it if a check failed.
fn qmp_client(qmp: &Path, serial: &Path, mode: &str) -> String {
    let start = Instant::now();
    while !qmp.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no QMP socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hotplug/qmp_hotplug.py");
    let out = Command::new(testkit::qmp::python())
        .arg(&script)
        .args([qmp.to_str().unwrap(), serial.to_str().unwrap(), mode])
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let guest = std::fs::read_to_string(serial).unwrap_or_default();
    assert!(out.status.success(), "{text}\nguest:\n{guest}");
    text
}

fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the vmm did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn qmp_hot_adds_a_dimm_for_every_consumer_and_removes_it_from_all() {
    let dir = scratch("qmp");
    let (disk, remote, sock) = (dir.join("a.img"), dir.join("b.img"), dir.join("vub.sock"));
    let (qmp, serial) = (dir.join("qmp.sock"), dir.join("com1.txt"));
    for p in [&disk, &remote] {
        std::fs::write(p, testkit::pattern::image(3, SECTORS)).unwrap();
    }
    let daemon = Daemon::start(&remote, &sock);
    let mut edu = testkit::edu::Server::start("hotplug-qmp");
    let mut vmm = vmm_process(&disk, &sock, &edu.socket, &qmp, &serial);
    let text = qmp_client(&qmp, &serial, "add-remove");
    let status = wait_child(&mut vmm);
    let guest = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(status.success(), "vmm: {status}\n{guest}\n{text}");
    common::assert_passed(
        &guest,
        &[
            "virtio-blk 00:03.0 DMA from and into the DIMM verifies",
            "virtio-blk 00:04.0 DMA from and into the DIMM verifies",
            "edu 00:1f.0 DMA from and into the DIMM verifies",
            "dimm: the memory is gone after eject",
        ],
    );
    // The daemon had the DIMM while it was plugged, and not after.
    let line = text.lines().find(|l| l.starts_with("dimm addr=")).unwrap();
    let mut w = line
        .split_whitespace()
        .skip(1)
        .map(|kv| kv.split('=').nth(1).unwrap());
    let dimm = format!("{}+{}", w.next().unwrap(), w.next().unwrap());
    let log = daemon.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.contains("memory table: [") && l.contains(&dimm)),
        "the daemon never had {dimm}:\n{}",
        log.join("\n")
    );
    assert!(
        !daemon.settled().contains(&dimm),
        "the daemon still has {dimm}"
    );
    // The vfio-user server let go of it too (the VMM has exited, so it
    // holds nothing at all now; while the DIMM was in use its DMA check
    // above went through the server's mapping of it).
    assert_eq!(edu.dma_dump(), Vec::<(u64, u64)>::new());
}

#[test]
fn qmp_device_add_refused_by_a_backend_leaves_nothing_behind() {
    let dir = scratch("qmp-refused");
    let (disk, remote, sock) = (dir.join("a.img"), dir.join("b.img"), dir.join("vub.sock"));
    let (qmp, serial) = (dir.join("qmp.sock"), dir.join("com1.txt"));
    for p in [&disk, &remote] {
        std::fs::write(p, testkit::pattern::image(3, SECTORS)).unwrap();
    }
    // The PC layout takes two regions of a memory table: no room for more.
    let daemon = Daemon::start_with(&remote, &sock, 2);
    let mut edu = testkit::edu::Server::start("hotplug-refused");
    let before = edu.dma_dump();
    let mut vmm = vmm_process(&disk, &sock, &edu.socket, &qmp, &serial);
    // The client stops before `quit` until told: the vfio listener
    // (priority 0) mapped the DIMM before vhost (5) refused it, and the
    // rollback must have unmapped it again while the VMM still runs.
    let quit = dir.join("quit");
    let client = std::thread::spawn({
        let (qmp, serial) = (qmp.clone(), serial.clone());
        move || qmp_client(&qmp, &serial, "refused")
    });
    let start = Instant::now();
    while !dir.join("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the client never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let during = edu.dma_dump();
    std::fs::write(&quit, b"").unwrap();
    let text = client.join().unwrap();
    let status = wait_child(&mut vmm);
    assert!(status.success(), "vmm: {status}\n{text}");
    assert!(before.is_empty(), "{before:x?}");
    assert!(!during.is_empty(), "the server maps guest RAM");
    assert!(
        during.iter().all(|&(iova, _)| iova < 1 << 32),
        "the refused DIMM is still mapped for the device: {during:x?}"
    );
    let table = daemon.settled();
    assert_eq!(table.len(), 2, "{table:?}");
    assert!(
        table.iter().all(|r| !r.starts_with("0x100000000")),
        "{table:?}"
    );
}

/// Runs the guest kit's `hotplug` test in `vm` (already started, COM1 into
/// `serial`, QMP at `qmp`, its disk on `daemon` over `image`): waits for the
/// guest to ask, adds a DIMM on node 1 over QMP, waits for the guest to
/// finish, and checks its lines, the daemon's memory table and the image.
fn linux_hotplug_run(vm: &mut Child, serial: &Path, qmp: &Path, daemon: &Daemon, image: &Path) {
    use common::linux_hotplug as lh;
    let guest = || std::fs::read_to_string(serial).unwrap_or_default();
    assert!(
        lh::wait_serial(serial, "KIT-HP-READY", vm, Duration::from_secs(120)),
        "the guest never asked for the DIMM:\n{}",
        guest()
    );
    let before = daemon.settled();
    assert!(!lh::table_has_dimm(&before), "{before:?}");
    lh::Qmp::connect(qmp)
        .and_then(|mut q| q.add_dimm_on_node1())
        .unwrap_or_else(|e| panic!("{e}\n{}", guest()));
    let table = daemon.wait_table(lh::table_has_dimm);
    let status = lh::wait_exit(vm, Duration::from_secs(90));
    let text = guest();
    eprintln!("guest:\n{text}");
    assert!(
        lh::table_has_dimm(&table),
        "the daemon never got the DIMM: {table:?}\n{text}"
    );
    lh::assert_guest(&text);
    lh::assert_image(image);
    let status = status.unwrap_or_else(|| panic!("the guest did not power off:\n{text}"));
    assert!(status.success(), "{status}\n{text}");
}

#[test]
fn a_linux_guest_onlines_a_dimm_and_does_numa_bound_io_through_it() {
    use common::linux_hotplug as lh;
    if testkit::guest_kit::kvm_is_pvm() {
        eprintln!(
            "SKIPPED: KVM here is PVM (/sys/module/kvm_pvm): a stock kernel runs ring 0 about \
             100x slower and does not finish booting; this test runs on hardware KVM \
             (its guest script runs here under QEMU: \
             a_linux_guest_onlines_a_dimm_and_does_numa_bound_io_through_it_in_qemu)"
        );
        return;
    }
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let kit = testkit::guest_kit::assets().expect("the guest kit builds");
    let dir = scratch("linux-dimm");
    let (image, sock) = (dir.join("disk.raw"), dir.join("vub.sock"));
    let (qmp, serial) = (dir.join("qmp.sock"), dir.join("com1.txt"));
    lh::make_image(&image);
    let daemon = Daemon::start(&image, &sock);
    let mut vmm = Command::new(testkit::process::vmm_binary())
        .arg("--kernel")
        .arg(&kit.bzimage)
        .arg("--initrd")
        .arg(&kit.initramfs)
        .args(["--cmdline", lh::CMDLINE])
        .args(["--memory", "size=512M,hotplug_size=1G,slots=4"])
        .args(["--vhost-user-blk", &format!("socket={}", sock.display())])
        .args(["--qmp", qmp.to_str().unwrap()])
        .args(["--serial", &format!("file={}", serial.display())])
        .spawn()
        .expect("the vmm binary");
    linux_hotplug_run(&mut vmm, &serial, &qmp, &daemon, &image);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same guest script against QEMU's ACPI memory hotplug (the interface
/// ours implements), under TCG, so it runs where KVM is PVM: node 0 holds
/// the boot RAM and the CPU, node 1 is empty until the DIMM comes (as in
/// our SRAT, where node 1 is the device memory).
#[test]
fn a_linux_guest_onlines_a_dimm_and_does_numa_bound_io_through_it_in_qemu() {
    use common::linux_hotplug as lh;
    let kit = testkit::guest_kit::assets().expect("the guest kit builds");
    let dir = scratch("linux-dimm-qemu");
    let (image, sock) = (dir.join("disk.raw"), dir.join("vub.sock"));
    let (qmp, serial) = (dir.join("qmp.sock"), dir.join("com1.txt"));
    lh::make_image(&image);
    let daemon = Daemon::start(&image, &sock);
    let started = Instant::now();
    let mut qemu = testkit::guest_kit::qemu_tcg("pc", &kit.bzimage, &kit.initramfs, lh::CMDLINE)
        .args(["-m", "512M,slots=4,maxmem=4G"])
        .args(["-object", "memory-backend-memfd,id=mem0,size=512M,share=on"])
        .args(["-numa", "node,nodeid=0,memdev=mem0,cpus=0"])
        .args(["-numa", "node,nodeid=1"])
        .arg("-chardev")
        .arg(format!("socket,id=c,path={}", sock.display()))
        .args(["-device", "vhost-user-blk-pci,chardev=c"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdout(std::fs::File::create(&serial).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (.ci/run installs it)");
    linux_hotplug_run(&mut qemu, &serial, &qmp, &daemon, &image);
    eprintln!("QEMU run: {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
