//! The QMP monitor end to end: the `vmm` binary with `--qmp`, driven by
//! QEMU's own Python client (`qemu.qmp` from PyPI, installed into a venv
//! under ~/.cache/vmm-qmp-venv when missing) running
//! `integration/tests/qmp/client.py`.
//!
//! Needs /dev/kvm, python3 with venv, and PyPI the first time; fails (does
//! not skip) without them.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn qmp_python() -> PathBuf {
    testkit::qmp::python()
}

/// Kills the vmm if the test fails half-way.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(st) = child.try_wait().expect("waitpid") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn qemu_qmp_client_drives_the_vmm() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let python = qmp_python();
    let dir = std::env::temp_dir().join(format!("vmm-qmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk image");
    let sock = dir.join("qmp.sock");
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    let vmm = Command::new(testkit::process::vmm_binary())
        .args(["--cpus", "2", "--memory", "4G", "--serial", "none"])
        .args(["--cmdline", "console=ttyS0 probe=spin cpus=2"])
        .arg("--disk")
        .arg(format!("path={},readonly=on", disk.display()))
        .arg("--qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("vmm starts");
    let mut vmm = Vmm(vmm);
    let pid = vmm.0.id();
    let start = Instant::now();
    // The stale file is still a socket: wait until the vmm accepts on it.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the QMP socket did not appear"
        );
        assert!(
            vmm.0.try_wait().expect("waitpid").is_none(),
            "vmm exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::metadata(&sock)
        .expect("socket")
        .file_type()
        .is_socket());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp/client.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&sock)
        .arg(pid.to_string())
        .output()
        .expect("the QMP client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "client.py failed:\n{stdout}");
    for check in [
        "ok - socket mode is 0600",
        "ok - raw: malformed JSON gets an error",
        "ok - raw: the connection keeps working after bad input",
        "ok - raw: unknown command",
        "ok - query-status running",
        "ok - vCPU 1 thread",
        "ok - stop: paused and STOP",
        "ok - stop: the spinning vCPU uses no CPU",
        "ok - cont: running and RESUME",
        "ok - info mtree -f: RAM around the PCI hole",
        "ok - unknown command: CommandNotFound",
        "ok - system_reset: RESET",
        "ok - a reset while stopped stays stopped",
        "ok - cont after the reset: the new vCPU runs",
        "ok - system_powerdown: POWERDOWN",
        "ok - quit: SHUTDOWN",
    ] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
    let status = wait_exit(&mut vmm.0, Duration::from_secs(10)).expect("vmm exits after quit");
    assert_eq!(status.code(), Some(0), "quit ends vmm with status 0");
    assert!(!sock.exists(), "the socket file is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_quits_cleanly() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let sock = std::env::temp_dir().join(format!("vmm-qmp-term-{}.sock", std::process::id()));
    let vmm = Command::new(testkit::process::vmm_binary())
        .args(["--serial", "none", "--cmdline", "console=ttyS0 probe=spin"])
        .arg("--qmp")
        .arg(&sock)
        .spawn()
        .expect("vmm starts");
    let mut vmm = Vmm(vmm);
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no QMP socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = i32::try_from(vmm.0.id()).expect("a pid");
    // SAFETY: kill(2) on our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut vmm.0, Duration::from_secs(10)).expect("vmm exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean quit");
    assert!(!sock.exists(), "the socket file is removed at exit");
}
