//! The guest kit's `hotplug` test from the host's side, shared by the run
//! in our VMM and the run in QEMU: the disk image, the wait for the guest to
//! ask for the DIMM, the DIMM added over QMP, and the checks of what the
//! guest printed and what the image holds.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The image: 64 MiB of the sector pattern under this seed.
pub const SEED: u64 = 71;
const SECTORS: u64 = 131_072;
const MIB: usize = 1 << 20;
/// The DIMM: two of x86's 128 MiB memory blocks.
pub const DIMM: u64 = 256 << 20;
/// The kernel command line (the kit's /init runs /tests/hotplug).
pub const CMDLINE: &str = "console=ttyS0 panic=-1 quiet kit_test=hotplug";

/// The daemon's memory table holds a region of the DIMM's size.
pub fn table_has_dimm(table: &[String]) -> bool {
    table.iter().any(|r| r.ends_with(&format!("+{DIMM:#x}")))
}

/// Writes the patterned image at `path`.
pub fn make_image(path: &Path) {
    std::fs::write(path, testkit::pattern::image(SEED, SECTORS)).unwrap();
}

/// Waits up to `limit` for `what` in the file `serial`; returns whether it
/// came (false also when `child` exited first).
pub fn wait_serial(serial: &Path, what: &str, child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(serial).is_ok_and(|t| t.contains(what)) {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return std::fs::read_to_string(serial).is_ok_and(|t| t.contains(what));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits up to `limit` for `child` to exit; kills it past that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().ok().flatten() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A QMP connection in its plainest form: one command a line, replies
/// read until the one that answers it (events in between are skipped).
pub struct Qmp {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects (waiting up to 20 s for the socket) and leaves capability
    /// negotiation.
    pub fn connect(path: &Path) -> Result<Qmp, String> {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(20) => {
                    return Err(format!("QMP socket {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let lines = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut q = Qmp { out: s, lines };
        let greeting = q.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        q.execute(r#"{"execute": "qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.lines.read_line(&mut l) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => Ok(l),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Sends one command (JSON text); Ok with the `return` line, Err with
    /// the `error` line.
    pub fn execute(&mut self, cmd: &str) -> Result<String, String> {
        writeln!(self.out, "{cmd}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let l = self.line()?;
            if l.contains("\"return\"") {
                return Ok(l);
            }
            if l.contains("\"error\"") {
                return Err(format!("{cmd} -> {l}"));
            }
        }
    }

    /// `object-add` of a shared memfd backend and `device_add` of a
    /// pc-dimm on NUMA node 1, QEMU's spelling (which ours accepts).
    pub fn add_dimm_on_node1(&mut self) -> Result<(), String> {
        self.execute(&format!(
            r#"{{"execute": "object-add", "arguments": {{"qom-type": "memory-backend-memfd", "id": "mem1", "size": {DIMM}, "share": true}}}}"#
        ))?;
        self.execute(
            r#"{"execute": "device_add", "arguments": {"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1", "node": 1}}"#,
        )?;
        Ok(())
    }
}

/// The number after `key=` in `line` (before any unit).
fn field(line: &str, key: &str) -> Option<i64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '+' || *c == '-')
        .collect();
    digits.trim_start_matches('+').parse().ok()
}

/// Checks the guest's lines: it finished, node 1 grew by the DIMM, and the
/// copy's buffer was allocated in node 1 (at least its 4 MiB in pages).
pub fn assert_guest(serial_text: &str) {
    let line = |tag: &str| {
        serial_text
            .lines()
            .find(|l| l.contains(tag))
            .unwrap_or_else(|| panic!("no {tag} line from the guest:\n{serial_text}"))
            .to_string()
    };
    assert!(
        !serial_text.contains("KIT-HP-FAIL"),
        "the guest failed:\n{serial_text}"
    );
    line("KIT-HP-OK");
    let node = line("KIT-HP-NODE1");
    let grew = field(&node, "after").unwrap_or(0) - field(&node, "before").unwrap_or(0);
    assert!(
        grew >= (DIMM >> 10) as i64,
        "node 1 grew by {grew} kB, not the DIMM's {} kB: {node}",
        DIMM >> 10
    );
    let io = line("KIT-HP-IO");
    let pages = field(&io, "node1_numa_hit").unwrap_or(0);
    assert!(
        pages >= (4 << 20) / 4096,
        "node 1 gave {pages} pages during the copy, fewer than its 4 MiB buffer: {io}"
    );
}

/// Checks the image: 32-48 MiB holds what 16-32 MiB held (the guest's
/// copy), and every other byte is as written before the run.
pub fn assert_image(path: &Path) {
    let disk = std::fs::read(path).unwrap();
    let want = testkit::pattern::image(SEED, SECTORS);
    assert_eq!(disk.len(), want.len(), "the image kept its size");
    let (src, dst) = (16 * MIB..32 * MIB, 32 * MIB..48 * MIB);
    let first_bad = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
    if let Some(at) = first_bad(&disk[dst.clone()], &want[src.clone()]) {
        panic!(
            "the copy's bytes are wrong from {:#x} (not the source's bytes)",
            dst.start + at
        );
    }
    for r in [0..dst.start, dst.end..disk.len()] {
        if let Some(at) = first_bad(&disk[r.clone()], &want[r.clone()]) {
            panic!("byte {:#x} outside the copy's target changed", r.start + at);
        }
    }
}
