//! The vfio-user-edu server driven over its socket by the vfio_user crate's
//! client, this test acting as the VMM: memfd memory DMA-mapped to the
//! device, an eventfd for MSI-X vector 0, and raw garbage from bad peers.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use vfio_user::Client;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM_IOVA: u64 = 0x10_0000;
const RAM_SIZE: usize = 0x1_0000;
const BUF: u64 = 0x4_0000;

struct Edu {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    stdout: Receiver<String>,
}

impl Edu {
    fn start() -> Result<Edu> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vue-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("edu.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-user-edu"))
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("server stdout")?;
        let (tx, stdout) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut edu = Edu {
            child,
            dir,
            socket,
            stdout,
        };
        edu.line(|l| l.starts_with("listening on"))?;
        Ok(edu)
    }

    /// Waits for a stdout line matching `pred`, and returns it.
    fn line(&mut self, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stdout.recv_timeout(left).context("server output")?;
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// The `(iova, size)` pairs of a SIGUSR1 dump.
    fn dma_dump(&mut self) -> Result<Vec<(u64, u64)>> {
        // SAFETY: kill only sends a signal to our own child process.
        let ret = unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        ensure!(ret == 0, "kill: {}", std::io::Error::last_os_error());
        self.line(|l| l.starts_with("dma dump begin"))?;
        let mut ranges = Vec::new();
        loop {
            let line = self.line(|_| true)?;
            if line == "dma dump end" {
                return Ok(ranges);
            }
            let hex = |key: &str| -> Result<u64> {
                let field = line
                    .split(' ')
                    .find_map(|f| f.strip_prefix(key))
                    .with_context(|| format!("no {key} in {line:?}"))?;
                Ok(u64::from_str_radix(field.trim_start_matches("0x"), 16)?)
            };
            ranges.push((hex("iova=")?, hex("size=")?));
        }
    }

    fn client(&self) -> Result<Client> {
        Client::new(&self.socket).map_err(|e| anyhow::anyhow!("connecting: {e}"))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Edu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read32(client: &mut Client, region: u32, offset: u64) -> Result<u32> {
    let mut b = [0; 4];
    client
        .region_read(region, offset, &mut b)
        .map_err(|e| anyhow::anyhow!("region {region} read at {offset:#x}: {e}"))?;
    Ok(u32::from_le_bytes(b))
}

fn write64(client: &mut Client, offset: u64, value: u64) -> Result<()> {
    client
        .region_write(VFIO_PCI_BAR0_REGION_INDEX, offset, &value.to_le_bytes())
        .map_err(|e| anyhow::anyhow!("BAR0 write at {offset:#x}: {e}"))
}

fn dma(client: &mut Client, src: u64, dst: u64, count: u64, cmd: u64) -> Result<()> {
    write64(client, 0x80, src)?;
    write64(client, 0x88, dst)?;
    write64(client, 0x90, count)?;
    write64(client, 0x98, cmd | 1)
}

/// Client memory: a memfd mapped here at RAM_IOVA, and the file to share.
fn memory() -> Result<(GuestMemoryMmap, File)> {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create
    // returns a new fd we take ownership of below or an error.
    let fd = unsafe { libc::memfd_create(c"edu-ram".as_ptr(), 0) };
    ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(RAM_SIZE as u64)?;
    let shared = file.try_clone()?;
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(RAM_IOVA),
        RAM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])?;
    Ok((mem, shared))
}

fn wait_irq(irq: &EventFd) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match irq.read() {
            Ok(n) => return Ok(n),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => bail!("no interrupt on the MSI-X eventfd: {e}"),
        }
    }
}

#[test]
fn config_ids_and_bar0_registers() -> Result<()> {
    let edu = Edu::start()?;
    let mode = std::fs::metadata(&edu.socket)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    let mut c = edu.client()?;
    assert_eq!(
        read32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, 0)?,
        0x11e8_1234
    );
    assert_eq!(
        read32(&mut c, VFIO_PCI_CONFIG_REGION_INDEX, 0x40)? & 0x7ff_00ff,
        0x1_0011
    );
    assert_eq!(
        c.region(VFIO_PCI_BAR0_REGION_INDEX).map(|r| r.size),
        Some(1 << 20)
    );
    assert_eq!(read32(&mut c, 0, 0x00)?, 0x0100_00ed);
    c.region_write(0, 0x04, &0x55aa_0ff0u32.to_le_bytes())
        .map_err(anyhow::Error::msg)?;
    assert_eq!(read32(&mut c, 0, 0x04)?, !0x55aa_0ff0);
    c.region_write(0, 0x08, &5u32.to_le_bytes())
        .map_err(anyhow::Error::msg)?;
    assert_eq!(read32(&mut c, 0, 0x08)?, 120);
    assert_eq!(
        c.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(anyhow::Error::msg)?
            .count,
        2
    );
    Ok(())
}

#[test]
fn dma_both_ways_with_interrupt_and_reset_keeps_mappings() -> Result<()> {
    let mut edu = Edu::start()?;
    let mut c = edu.client()?;
    let (mem, file) = memory()?;
    c.dma_map(0, RAM_IOVA, RAM_SIZE as u64, file.as_raw_fd())
        .map_err(anyhow::Error::msg)?;
    assert_eq!(edu.dma_dump()?, vec![(RAM_IOVA, RAM_SIZE as u64)]);
    let irq = EventFd::new(EFD_NONBLOCK)?;
    let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, flags, 0, 1, &[irq.as_raw_fd()])
        .map_err(anyhow::Error::msg)?;

    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(RAM_IOVA + 0x100))?;
    dma(&mut c, RAM_IOVA + 0x100, BUF, 256, 4)?; // RAM -> device, irq
    assert_eq!(wait_irq(&irq)?, 1);
    assert_eq!(read32(&mut c, 0, 0x24)?, 0x100, "irq status says DMA");
    dma(&mut c, BUF, RAM_IOVA + 0x8000, 256, 2)?; // device -> RAM
    let mut back = vec![0; 256];
    mem.read_slice(&mut back, GuestAddress(RAM_IOVA + 0x8000))?;
    assert_eq!(back, pattern);
    assert!(irq.read().is_err(), "no interrupt without the irq bit");

    c.region_write(0, 0x08, &6u32.to_le_bytes())
        .map_err(anyhow::Error::msg)?;
    c.reset().map_err(anyhow::Error::msg)?;
    assert_eq!(read32(&mut c, 0, 0x08)?, 1, "factorial back to power-on");
    assert_eq!(read32(&mut c, 0, 0x24)?, 0, "irq status back to power-on");
    assert_eq!(edu.dma_dump()?, vec![(RAM_IOVA, RAM_SIZE as u64)]);
    dma(&mut c, RAM_IOVA + 0x100, BUF, 16, 0)?;
    assert_eq!(read32(&mut c, 0, 0x20)? & 0x100, 0, "DMA after reset works");

    c.dma_unmap(RAM_IOVA, RAM_SIZE as u64)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(edu.dma_dump()?, vec![]);
    Ok(())
}

#[test]
fn dma_outside_mappings_is_refused() -> Result<()> {
    let edu = Edu::start()?;
    let mut c = edu.client()?;
    let (mem, file) = memory()?;
    c.dma_map(0, RAM_IOVA, RAM_SIZE as u64, file.as_raw_fd())
        .map_err(anyhow::Error::msg)?;
    let irq = EventFd::new(EFD_NONBLOCK)?;
    let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    c.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, flags, 0, 1, &[irq.as_raw_fd()])
        .map_err(anyhow::Error::msg)?;
    // Crosses the end of the mapping: not a byte may move.
    let end = RAM_IOVA + RAM_SIZE as u64;
    c.region_write(0, BUF, &[0x5a; 64])
        .map_err(anyhow::Error::msg)?;
    dma(&mut c, BUF, end - 32, 64, 2 | 4)?;
    assert_ne!(read32(&mut c, 0, 0x20)? & 0x100, 0, "DMA error status bit");
    let mut tail = [0xffu8; 32];
    mem.read_slice(&mut tail, GuestAddress(end - 32))?;
    assert_eq!(tail, [0; 32], "memory below the end untouched");
    dma(&mut c, 0x5000_0000, BUF, 64, 4)?;
    assert_ne!(read32(&mut c, 0, 0x20)? & 0x100, 0);
    let mut buf = [0; 4];
    c.region_read(0, BUF, &mut buf)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(buf, [0x5a; 4], "device buffer untouched");
    assert!(irq.read().is_err(), "a refused DMA raises no interrupt");
    Ok(())
}

/// Sends `bytes` on a fresh connection, then waits for the server to hang
/// up or stay silent.
fn garbage(edu: &Edu, bytes: &[u8]) -> Result<()> {
    let mut s = UnixStream::connect(&edu.socket)?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    let _ = s.write_all(bytes);
    let mut sink = [0; 256];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

#[test]
fn garbage_drops_the_client_and_the_next_is_served() -> Result<()> {
    let mut edu = Edu::start()?;
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // A VERSION header whose size is smaller than the header itself.
    let short_version = [0, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // A VERSION with a non-JSON, unterminated payload.
    let mut bad_json = vec![0, 0, 1, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    bad_json.extend_from_slice(b"{{{{xxxx");
    // A REGION_READ of region 99 and an unknown command 0x7777.
    let mut bad_region = vec![1, 0, 9, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    bad_region.extend_from_slice(&[0; 8]);
    bad_region.extend_from_slice(&99u32.to_le_bytes());
    bad_region.extend_from_slice(&4u32.to_le_bytes());
    let unknown = [2, 0, 0x77, 0x77, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for bytes in [
        &noise[..],
        &short_version,
        &bad_json,
        &bad_region,
        &unknown,
        &[],
    ] {
        garbage(&edu, bytes)?;
        assert!(
            edu.alive(),
            "server died on {:02x?}",
            &bytes[..bytes.len().min(16)]
        );
        let mut c = edu.client()?;
        assert_eq!(read32(&mut c, 0, 0)?, 0x0100_00ed);
    }
    Ok(())
}
