//! Helpers the end-to-end suites share: the probe guest on a machine, our
//! vhost-user-blk daemon with its log collected, scratch directories.
#![allow(dead_code)]

pub mod linux_hotplug;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::process::Captured;
use vmm::machine::{Machine, MachineConfig};

/// Our vhost-user-blk daemon, with its log (memory-table lines) collected.
pub struct Daemon {
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(image: &Path, sock: &Path) -> Daemon {
        Self::start_with(image, sock, 509)
    }

    pub fn start_with(image: &Path, sock: &Path, slots: usize) -> Daemon {
        let _ = std::fs::remove_file(sock);
        let mut child = Command::new(testkit::process::binary("vhost-user-blk"))
            .args(["--socket", sock.to_str().unwrap()])
            .args(["--image", image.to_str().unwrap()])
            .args(["--max-mem-slots", &slots.to_string()])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the vhost-user-blk binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (err, l2) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no daemon socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, log }
    }

    /// The regions of the daemon's latest memory table, as "gpa+size".
    pub fn table(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        let line = log
            .iter()
            .rev()
            .find(|l| l.contains("memory table: ["))
            .cloned()
            .unwrap_or_default();
        let inner = line
            .split("memory table: [")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches(']');
        inner.split_whitespace().map(str::to_owned).collect()
    }

    /// The table once the log has been quiet for a while (the stderr reader
    /// may lag behind the daemon's acknowledgements).
    pub fn settled(&self) -> Vec<String> {
        let mut last = (self.log.lock().unwrap().len(), Instant::now());
        while last.1.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(20));
            let n = self.log.lock().unwrap().len();
            if n != last.0 {
                last = (n, Instant::now());
            }
        }
        self.table()
    }

    /// Waits until the latest table satisfies `ok`.
    pub fn wait_table(&self, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        loop {
            let t = self.table();
            if ok(&t) || start.elapsed() > Duration::from_secs(10) {
                return t;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh scratch directory for a test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The probe guest on a 256 MiB, one-vCPU machine, `cmdline` after
/// `console=ttyS0 probe=none`; COM1 collected.
pub fn probe_machine(cmdline: &str) -> (Machine, Captured) {
    probe_machine_with(256 << 20, cmdline)
}

/// `probe_machine` with `memory` bytes of RAM.
pub fn probe_machine_with(memory: u64, cmdline: &str) -> (Machine, Captured) {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let mut m = Machine::new(MachineConfig {
        memory,
        cpus: 1,
        kernel: testkit::probe::build().expect("the probe builds"),
        cmdline: format!("console=ttyS0 probe=none {cmdline}"),
        initrd: None,
        atomic_memslots: true,
        aps_at_entry: true,
    })
    .expect("machine");
    let out = Captured::default();
    m.attach_console(Box::new(out.clone())).expect("COM1");
    (m, out)
}

/// Runs the guest to its end while `host` drives the host side; returns
/// what the host collected and the guest's output, panicking with that
/// output if either side failed.
pub fn run_with_host<T>(
    m: &mut Machine,
    out: &Captured,
    host: std::thread::JoinHandle<Result<T, String>>,
) -> (T, String) {
    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    eprintln!("{text}\n{}", m.exit_report());
    let got = host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(status, 0, "failed checks:\n{text}");
    (got, text)
}

/// Panics unless the guest output `text` has a passing check (`ok ...`)
/// naming each of `checks`.
pub fn assert_passed<S: AsRef<str>>(text: &str, checks: &[S]) {
    for check in checks {
        let check = check.as_ref();
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok ") && l.contains(check)),
            "no passing {check:?}:\n{text}"
        );
    }
}

/// Waits up to a minute for `what` in the guest's output.
pub fn wait_output(out: &Captured, what: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if out.text().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
