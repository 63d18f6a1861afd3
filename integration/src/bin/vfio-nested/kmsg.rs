//! The guest kernel's log (/dev/kmsg), searched for the IOMMU's fault report.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// Waits up to `within` for a kernel record containing every one of
/// `needles` and returns it.
pub fn find(needles: &[&str], within: Duration) -> Result<String, String> {
    let t = Instant::now();
    loop {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("opening /dev/kmsg: {e}"))?;
        let mut rec = vec![0u8; 8192];
        // One record per read; EAGAIN at the end of the buffer.
        while let Ok(n) = f.read(&mut rec) {
            let line = String::from_utf8_lossy(&rec[..n]);
            let text = line.split_once(';').map_or(&*line, |(_, t)| t).trim_end();
            if needles.iter().all(|s| text.contains(s)) {
                return Ok(text.to_owned());
            }
        }
        if t.elapsed() > within {
            return Err(format!(
                "no kernel log record with {needles:?} within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
