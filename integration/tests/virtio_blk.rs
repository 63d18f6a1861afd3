//! virtio-blk in process, end to end: the probe guest drives the disk
//! through its own virtio-pci driver on real KVM, and the host checks the
//! image afterwards, byte for byte, against the pattern the guest wrote.
//!
//! Needs /dev/kvm; a test fails (does not skip) without it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use testkit::pattern;
mod common;

use testkit::process::Captured;
use vmm::machine::{DiskConfig, Machine};

/// 64 MiB: 131072 sectors.
const SECTORS: u64 = 131_072;

struct Image(PathBuf);

impl Image {
    /// A temporary image filled with the pattern of `seed`.
    fn new(name: &str, seed: u64) -> Image {
        let p = std::env::temp_dir().join(format!("vmm-vblk-{}-{name}.img", std::process::id()));
        std::fs::write(&p, pattern::image(seed, SECTORS)).unwrap();
        Image(p)
    }

    /// Sectors that are not what stamping `new` over `old` leaves.
    fn mismatches(&self, old: u64, new: Option<u64>) -> Vec<u64> {
        pattern::mismatches(&std::fs::read(&self.0).unwrap(), old, new)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn disk(path: &Path, serial: &str) -> DiskConfig {
    DiskConfig {
        path: path.into(),
        serial: serial.into(),
        ..DiskConfig::default()
    }
}

fn machine(cmdline: &str) -> (Machine, Captured) {
    common::probe_machine(cmdline)
}

/// Runs the guest to its end; panics with the guest's output unless every
/// check passed.
fn run(m: &mut Machine, out: &Captured) -> String {
    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    eprintln!("{text}\n{}", m.exit_report());
    assert_eq!(status, 0, "failed checks:\n{text}");
    text
}

/// The value of `key=` in the probe's `# virtio-blk BDF capacity=...` line.
fn info(text: &str, bdf: &str, key: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("# virtio-blk {bdf} capacity=")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

fn assert_passed(text: &str, check: &str) {
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok ") && l.contains(check)),
        "no passing check {check:?} in:\n{text}"
    );
}

#[test]
fn the_guest_drives_a_disk_and_the_image_holds_exactly_what_it_wrote() {
    let img = Image::new("one", 7);
    let (mut m, out) = machine("blk-verify=7 blk-seed=9");
    m.add_disk(&disk(&img.0, "vmm-disk-0")).unwrap();
    let text = run(&mut m, &out);

    assert_eq!(
        info(&text, "00:03.0", "capacity").as_deref(),
        Some("131072")
    );
    assert!(
        text.contains("# virtio-blk 00:03.0 serial=\"vmm-disk-0\""),
        "GET_ID:\n{text}"
    );
    for check in [
        "virtio-blk 00:03.0 features negotiated",
        "virtio-blk 00:03.0 flush OK",
        "virtio-blk 00:03.0 read past the end gets IOERR",
        "virtio-blk 00:03.0 unknown request type gets UNSUPP",
        "virtio-blk 00:03.0 IN of 100 bytes gets IOERR",
        "virtio-blk 00:03.0 sector 0 reads after the malformed requests",
        "virtio-blk 00:03.0 WRITE_ZEROES reads back zeros",
        "virtio-blk 00:03.0 DISCARD gets OK",
        "virtio-blk 00:03.0 device reset and re-initialisation",
        "virtio-blk 00:03.0 holds seed 7 from before",
        "virtio-blk 00:03.0 stamped set verifies",
        "virtio-blk 00:03.0 queue 0 interrupt arrives on vector 0x40",
    ] {
        assert_passed(&text, check);
    }
    assert_eq!(
        img.mismatches(7, Some(9)),
        Vec::<u64>::new(),
        "sectors that differ from what the guest wrote"
    );

    // The data path ran on the iothread: no queue notification reached a
    // vCPU thread (KVM signalled the ioeventfd), yet requests were served.
    let dev = &m.virtio_devices()[0];
    assert_eq!(
        dev.stats.notify.load(Ordering::Relaxed),
        0,
        "{}",
        m.exit_report()
    );
    let report = m.exit_report();
    let runs: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("iothread-virtio-blk0: runs="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(runs > 0, "the iothread served the queue:\n{report}");
}

#[test]
fn data_survives_a_guest_reboot_and_a_vmm_restart() {
    let img = Image::new("persist", 1);
    let (mut m, out) = machine("probe=reset blk-seed=11");
    m.add_disk(&disk(&img.0, "persist")).unwrap();
    let text = run(&mut m, &out);
    assert_eq!(m.boots, 2, "the guest rebooted once");
    // The second boot finds what the first one wrote.
    assert_passed(&text, "virtio-blk 00:03.0 holds seed 11 from before");
    drop(m);

    // A new VMM on the same image.
    let (mut m, out) = machine("blk-verify=11 blk-seed=12");
    m.add_disk(&disk(&img.0, "persist")).unwrap();
    let text = run(&mut m, &out);
    assert_passed(&text, "virtio-blk 00:03.0 holds seed 11 from before");
    assert_eq!(img.mismatches(1, Some(12)), Vec::<u64>::new());
}

#[test]
fn two_disks_on_two_iothreads_and_one_disk_across_two_more() {
    let a = Image::new("a", 21);
    let b = Image::new("b", 22);
    let c = Image::new("c", 23);
    let (mut m, out) = machine("blk-seed=30");
    for id in ["io0", "io1", "io2", "io3"] {
        m.add_iothread(id).unwrap();
    }
    let on = |img: &Image, threads: &[&str], queues: u16| DiskConfig {
        iothreads: threads.iter().map(|s| s.to_string()).collect(),
        num_queues: queues,
        ..disk(&img.0, "multi")
    };
    m.add_disk(&on(&a, &["io0"], 1)).unwrap();
    m.add_disk(&on(&b, &["io1"], 1)).unwrap();
    m.add_disk(&on(&c, &["io2", "io3"], 2)).unwrap();
    let text = run(&mut m, &out);
    for bdf in ["00:03.0", "00:04.0", "00:05.0"] {
        assert_passed(&text, &format!("virtio-blk {bdf} stamped set verifies"));
    }
    assert_eq!(info(&text, "00:05.0", "queues").as_deref(), Some("2"));
    // The probe gives the d-th disk vectors from 0x40 + 0x10 * d.
    assert_passed(
        &text,
        "virtio-blk 00:05.0 queue 1 interrupt arrives on vector 0x61",
    );
    for (img, seed) in [(&a, 21), (&b, 22), (&c, 23)] {
        assert_eq!(img.mismatches(seed, Some(30)), Vec::<u64>::new());
    }
    let report = m.exit_report();
    for id in ["io0", "io1", "io2", "io3"] {
        let runs: u64 = report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("iothread-{id}: runs=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(runs > 0, "iothread {id} served its queues:\n{report}");
    }
    for dev in m.virtio_devices() {
        assert_eq!(dev.stats.notify.load(Ordering::Relaxed), 0, "{report}");
    }
}

#[test]
fn a_read_only_disk_refuses_writes_and_is_left_unchanged() {
    let img = Image::new("ro", 5);
    let (mut m, out) = machine("blk-verify=5 blk-seed=6");
    m.add_disk(&DiskConfig {
        readonly: true,
        ..disk(&img.0, "ro")
    })
    .unwrap();
    let text = run(&mut m, &out);
    assert_eq!(info(&text, "00:03.0", "ro").as_deref(), Some("1"));
    assert_passed(&text, "virtio-blk 00:03.0 holds seed 5 from before");
    assert_passed(
        &text,
        "virtio-blk 00:03.0 OUT to a read-only disk gets IOERR",
    );
    let all = std::fs::read(&img.0).unwrap();
    assert!(
        all == pattern::image(5, SECTORS),
        "a read-only image changed"
    );
}

#[test]
fn bad_disk_options_end_the_vmm_with_an_error_naming_them() {
    let vmm = testkit::process::vmm_binary();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(&vmm)
            .args(args)
            .output()
            .expect("vmm runs");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--disk", "path=/nonexistent/disk.img"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
    let (code, err) = run(&["--disk", "path=/x.img,num_queues=0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("num_queues=\"0\""), "{err}");
    let (code, err) = run(&["--disk", "path=/dev/null,iothread=nope"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("iothread \"nope\" is not defined"), "{err}");
}

#[test]
fn an_o_direct_disk_passes_the_same_checks() {
    let img = Image::new("direct", 13);
    let (mut m, out) = machine("blk-verify=13 blk-seed=14");
    m.add_disk(&DiskConfig {
        direct: true,
        num_queues: 2,
        ..disk(&img.0, "direct")
    })
    .unwrap();
    let text = run(&mut m, &out);
    assert_passed(&text, "virtio-blk 00:03.0 holds seed 13 from before");
    assert_passed(&text, "virtio-blk 00:03.0 stamped set verifies");
    assert_eq!(img.mismatches(13, Some(14)), Vec::<u64>::new());
}
