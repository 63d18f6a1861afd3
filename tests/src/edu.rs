//! `vfio-user-edu` (vmm-backends' vfio-user server for QEMU's edu test
//! device) as the suites run it: its stdout lines, and the DMA maps it
//! holds (its SIGUSR1 dump).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-edu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `vfio-user-edu` and its stdout lines.
pub struct Server {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
    lines: Receiver<String>,
}

impl Server {
    pub fn start(name: &str) -> Server {
        let dir = temp_dir(name);
        let socket = dir.join("edu.sock");
        let mut child = Command::new(crate::process::binary("vfio-user-edu"))
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the vfio-user-edu binary (cargo build -p vmm-backends)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut s = Server {
            child,
            dir,
            socket,
            lines,
        };
        s.line(|l| l.starts_with("listening on"));
        s
    }

    pub fn line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("server output");
            if pred(&line) {
                return line;
            }
        }
    }

    /// What the server holds, from its SIGUSR1 dump: (iova, size) pairs.
    /// Kills the server (a peer that dies).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dma_dump(&mut self) -> Vec<(u64, u64)> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-USR1", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -USR1 {pid}");
        self.line(|l| l.starts_with("dma dump begin"));
        let mut out = Vec::new();
        loop {
            let line = self.line(|_| true);
            if line == "dma dump end" {
                return out;
            }
            let hex = |k: &str| {
                let f = line.split(' ').find_map(|f| f.strip_prefix(k)).unwrap();
                u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap()
            };
            out.push((hex("iova="), hex("size=")));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
