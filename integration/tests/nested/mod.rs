//! The nested VFIO run: QEMU (TCG, q35, an emulated Intel IOMMU with
//! caching mode, the edu device) boots the guest kit with `vfio-nested`
//! appended; the guest binds edu to vfio-pci and the program drives the
//! guest kernel's VFIO with this project's memory model and `vfio`
//! listener. Its console is returned.

mod assets;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the assets, runs QEMU until the guest powers off (or `limit`
/// passes) and returns the serial console.
pub fn run(limit: Duration) -> String {
    let kit = testkit::guest_kit::assets().expect("the guest kit builds");
    let t = Instant::now();
    let program = assets::build_program();
    eprintln!("vfio-nested built (static) in {:?}", t.elapsed());
    let dir = std::env::temp_dir().join(format!("vmm-vfio-nested-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = assets::initramfs(&kit, &program, &dir);

    let started = Instant::now();
    let mut qemu = Killed(
        testkit::guest_kit::qemu_tcg(
            "q35",
            &kit.bzimage,
            &initrd,
            "console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt kit_test=vfio-nested",
        )
        .args(["-m", "2048"])
        .args(["-device", "intel-iommu,caching-mode=on"])
        .args(["-device", "edu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (.ci/run installs it)"),
    );
    let mut stdout = qemu.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = started + limit;
    let status = loop {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = qemu.0.stderr.take() {
        if status.is_some() {
            let _ = e.read_to_string(&mut stderr);
        }
    }
    drop(qemu);
    let out = reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "QEMU ran {:?} ({}); console:\n{out}\nQEMU stderr:\n{stderr}",
        started.elapsed(),
        status.map_or("killed at the time limit".into(), |s| s.to_string())
    );
    out
}
