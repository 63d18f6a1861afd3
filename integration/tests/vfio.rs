//! vfio-user end to end: `vfio-user-edu` serves QEMU's edu device, the VMM
//! passes it through as a PCI function (`Machine::add_vfio_user`), and the
//! probe guest drives it: registers, DMA both ways through the DMA maps the
//! `vfio` listener gave the server, an MSI-X interrupt straight from the
//! server's eventfd to KVM. Bad peers must not take the VMM down.
//!
//! Needs /dev/kvm; a test fails (does not skip) without it.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

mod common;

use testkit::process::Captured;
use vmm::machine::{Machine, VfioUserConfig};

const EDU: &str = "edu 00:1f.0";
const CHECKS: [&str; 14] = [
    "BAR0 assigned and MSI-X found",
    "ROM BAR sizes to 2 KiB and decodes only when enabled",
    "expansion ROM reads 55 aa and its pattern",
    "a write to the ROM changes nothing",
    "registers hold their power-on values",
    "id register reads 0x010000ed",
    "liveness register inverts",
    "factorial of 5 is 120",
    "INTx is pin A on the _PRT's GSI",
    "INTx raises vector 0x84 through its IOAPIC pin with MSI-X off",
    "INTx is raised again at each EOI until acknowledged",
    "INTx acknowledged stays down and the device carries on",
    "DMA completion raises MSI-X vector 0x70",
    "DMA round trip RAM to device to RAM",
];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-vfio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

use testkit::edu::Server;

fn config(server: &Server) -> VfioUserConfig {
    VfioUserConfig {
        socket: server.socket.clone(),
        ..VfioUserConfig::default()
    }
}

fn machine(cmdline: &str) -> (Machine, Captured) {
    common::probe_machine(cmdline)
}

fn passes(text: &str, check: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("ok ") && l.contains(check))
        .count()
}

/// Guest RAM and ROM as the memory view has it, whole pages.
fn ram_ranges(m: &Machine) -> Vec<(u64, u64)> {
    m.pc.memory
        .view()
        .ranges()
        .iter()
        .filter(|r| r.is_ram() || r.is_rom())
        .filter_map(|r| {
            let start = r.addr.next_multiple_of(4096);
            let end = r.end() & !4095;
            (end > start).then_some((start, end - start))
        })
        .collect()
}

#[test]
fn the_guest_drives_the_edu_device_over_vfio_user() {
    let mut server = Server::start("drive");
    let (mut m, out) = machine("");
    m.add_vfio_user(&config(&server))
        .expect("the device is added");
    let ram = ram_ranges(&m);
    assert!(
        ram.iter()
            .any(|&(a, s)| a <= 0x10_0000 && a + s >= 255 << 20),
        "{ram:x?}"
    );
    assert_eq!(server.dma_dump(), ram, "the server maps exactly guest RAM");

    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    eprintln!("{text}");
    assert_eq!(status, 0, "failed checks:\n{text}");
    for check in CHECKS
        .iter()
        .chain(&["DMA from outside guest RAM is refused"])
    {
        assert_eq!(
            passes(&text, &format!("{EDU} {check}")),
            1,
            "{check}:\n{text}"
        );
    }
}

#[test]
fn after_a_machine_reset_the_device_works_again() {
    let mut server = Server::start("reset");
    let (mut m, out) = machine("probe=reset");
    m.add_vfio_user(&config(&server))
        .expect("the device is added");
    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    eprintln!("{text}");
    assert_eq!(status, 0, "failed checks:\n{text}");
    assert_eq!(m.boots, 2);
    assert!(text.contains(&format!("# {EDU}: second boot")), "{text}");
    for check in CHECKS {
        assert_eq!(
            passes(&text, &format!("{EDU} {check}")),
            2,
            "{check}:\n{text}"
        );
    }
    // The reset kept the maps: still exactly guest RAM.
    assert_eq!(server.dma_dump(), ram_ranges(&m));
}

/// A fake server: accepts, then `act`s on the connection.
fn fake_server(name: &str, act: fn(std::os::unix::net::UnixStream)) -> PathBuf {
    let socket = temp_dir(name).join("bad.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            act(s);
        }
    });
    socket
}

#[test]
fn a_peer_that_answers_garbage_or_hangs_up_fails_the_add_and_the_vmm_carries_on() {
    let garbage = fake_server("garbage", |mut s| {
        let mut b = [0; 64];
        let _ = s.read(&mut b);
        let _ = s.write_all(&[0xa5; 4096]);
    });
    let closes = fake_server("closes", drop);
    let (mut m, out) = machine("");
    for (socket, why) in [(&garbage, "bad reply"), (&closes, "socket I/O")] {
        let c = VfioUserConfig {
            socket: socket.clone(),
            timeout: Duration::from_secs(2),
        };
        let e = m
            .add_vfio_user(&c)
            .err()
            .expect("adding must fail")
            .to_string();
        assert!(e.contains("--device vfio-user") && e.contains(why), "{e}");
    }
    assert!(
        m.pci.list().iter().all(|f| f.2 != 0x1234),
        "no device left behind"
    );
    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    assert_eq!(status, 0, "failed checks:\n{text}");
    assert!(text.contains("# edu: no device"), "{text}");
}

#[test]
fn a_server_that_dies_leaves_a_device_reading_all_ones() {
    let mut server = Server::start("dies");
    let (mut m, out) = machine("");
    let dev = m
        .add_vfio_user(&config(&server))
        .expect("the device is added");
    server.kill();
    let status = m.run().expect("the VMM keeps running the guest");
    let text = out.text();
    eprintln!("{text}");
    assert!(status > 0, "the edu checks must fail:\n{text}");
    assert!(
        text.lines().any(|l| l.starts_with("not ok")
            && l.contains(&format!("{EDU} id register reads 0x010000ed"))
            && l.contains("read 0xffffffff")),
        "{text}"
    );
    assert!(dev.failed(), "the device knows it failed");
    assert!(
        text.contains("ok") && text.contains("pci bus 0 scanned"),
        "{text}"
    );
}

#[test]
fn ram_added_and_removed_later_is_mapped_and_unmapped_for_the_device() {
    use vmm::memory::MemoryRegion;
    let mut server = Server::start("hotplug");
    let (mut m, _out) = machine("");
    m.add_vfio_user(&config(&server))
        .expect("the device is added");
    let before = server.dma_dump();

    let hot = MemoryRegion::ram("hot-ram", 64 << 20).expect("RAM");
    let tx = m.memory.begin();
    tx.add_subregion(&m.pc.system, 1 << 32, &hot).unwrap();
    tx.commit().expect("the hot add");
    let with = server.dma_dump();
    assert!(with.contains(&(1 << 32, 64 << 20)), "{with:x?}");
    assert_eq!(with, ram_ranges(&m));

    let tx = m.memory.begin();
    tx.del_subregion(&m.pc.system, &hot).unwrap();
    tx.commit().expect("the removal");
    assert_eq!(server.dma_dump(), before);
}

#[test]
fn bad_kernel_vfio_device_options_end_the_vmm_with_an_error_naming_them() {
    let vmm = testkit::process::vmm_binary();
    let run = |spec: &str| {
        let o = std::process::Command::new(&vmm)
            .args(["--device", spec])
            .output()
            .expect("vmm runs");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run("vfio,host=0000:01:00");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--device: vfio: host=\"0000:01:00\" is not a PCI address"),
        "{err}"
    );
    let (code, err) = run("vfio,sysfsdev=0000:01:00.0");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("sysfsdev=\"0000:01:00.0\""), "{err}");
    // Well formed but not a device bound to vfio-pci here: the machine
    // refuses it before opening any VFIO file.
    let (code, err) = run("vfio,host=0000:00:1f.7");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--device vfio,host=0000:00:1f.7")
            && err.contains("is not a device bound to vfio-pci"),
        "{err}"
    );
}

mod nested;

/// The real kernel mapper under a real (emulated) IOMMU: inside QEMU
/// (q35, intel-iommu, edu bound to vfio-pci) `vfio-nested` maps guest RAM
/// through the memory model's `vfio` listener and the container mapper and
/// proves each mapping, removal and refusal with edu's DMA engine; runs the
/// vfio-pci device model over the kernel backend on edu (config space, BAR0
/// as a RAM device and trapped, MSI, INTx with resample, reset); and runs
/// into the kernel's mapping budget (dma_entry_limit lowered to 16).
#[test]
fn kernel_vfio_through_a_real_iommu_in_a_nested_guest() {
    use integration::nested::{CHECKS, DONE};
    let out = nested::run(Duration::from_secs(240));
    let bench: Vec<&str> = out.lines().filter(|l| l.starts_with("bench: ")).collect();
    for line in &bench {
        eprintln!("{line}");
    }
    let failed: Vec<&str> = out.lines().filter(|l| l.contains("not ok - ")).collect();
    assert!(
        failed.is_empty(),
        "failed checks in the guest:\n{}",
        failed.join("\n")
    );
    for check in CHECKS {
        let line = format!("ok - {check}");
        assert!(out.lines().any(|l| l.trim_end() == line), "missing: {line}");
    }
    assert!(
        out.contains(DONE),
        "the program did not finish ({DONE:?} missing)"
    );
    assert_eq!(
        bench.len(),
        3,
        "expected two 1 GiB map timings and the PC layout's mapping count"
    );
}
