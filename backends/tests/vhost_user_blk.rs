//! The vhost-user-blk daemon driven by the `vhost` crate's frontend, with
//! this test acting as the VMM: memfd guest memory, split rings laid out
//! by hand, kick and call eventfds.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 16;
const IMAGE_SECTORS: u64 = 256;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    image: PathBuf,
}

impl Daemon {
    fn start(extra: &[&str]) -> Result<Daemon> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vub-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("blk.sock");
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; (IMAGE_SECTORS * 512) as usize])?;
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
            .arg("--socket")
            .arg(&socket)
            .arg("--image")
            .arg(&image)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            ensure!(Instant::now() < deadline, "daemon socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Daemon {
            child,
            dir,
            socket,
            image,
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Guest memory in a shared memfd, as a VMM would give it.
fn guest_memory() -> Result<GuestMemoryMmap> {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create
    // returns a new fd we take ownership of below or an error.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), 0) };
    ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64)?;
    Ok(GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])?)
}

/// One split virtqueue laid out at `base` in guest memory.
struct Ring {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    kick: EventFd,
    call: EventFd,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QUEUE_SIZE)
    }
    fn used(&self) -> u64 {
        self.base + 0x1000
    }
}

struct Vmm {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    rings: Vec<Ring>,
    event_idx: bool,
}

impl Vmm {
    fn connect(socket: &Path, queues: usize) -> Result<Vmm> {
        Self::connect_with(socket, queues, false)
    }

    fn connect_with(socket: &Path, queues: usize, event_idx: bool) -> Result<Vmm> {
        let mut frontend = Frontend::connect(socket, queues as u64)?;
        let mem = guest_memory()?;
        frontend.set_owner()?;
        let features = frontend.get_features()?;
        ensure!(features & VERSION_1 != 0 && features & EVENT_IDX != 0);
        let acked = if event_idx {
            features
        } else {
            features & !EVENT_IDX
        };
        frontend.set_features(acked)?;
        let protocol = frontend.get_protocol_features()?;
        let want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        ensure!(protocol.contains(want), "protocol features {protocol:?}");
        frontend.set_protocol_features(want)?;
        let region = mem.iter().next().context("no region")?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)?;
        let host_base = info.userspace_addr;
        frontend.add_mem_region(&info)?;
        let mut rings = Vec::new();
        for q in 0..queues {
            let ring = Ring {
                base: 0x10000 * q as u64,
                next_desc: 0,
                avail_idx: 0,
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
            };
            frontend.set_vring_num(q, QUEUE_SIZE)?;
            frontend.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host_base + ring.desc(),
                    used_ring_addr: host_base + ring.used(),
                    avail_ring_addr: host_base + ring.avail(),
                    log_addr: None,
                },
            )?;
            frontend.set_vring_base(q, 0)?;
            frontend.set_vring_call(q, &ring.call)?;
            frontend.set_vring_kick(q, &ring.kick)?;
            frontend.set_vring_enable(q, true)?;
            rings.push(ring);
        }
        Ok(Vmm {
            frontend,
            mem,
            rings,
            event_idx,
        })
    }

    /// Places a chain of (gpa, len, flags) on queue `q` and kicks.
    fn submit(&mut self, q: usize, chain: &[(u64, u32, u16)]) -> Result<()> {
        let ring = &mut self.rings[q];
        let head = ring.next_desc;
        for (i, &(addr, len, flags)) in chain.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == chain.len();
            let at = GuestAddress(ring.desc() + 16 * u64::from(idx));
            let flags = if last { flags } else { flags | F_NEXT };
            let next = (idx + 1) % QUEUE_SIZE;
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&d, at)?;
        }
        ring.next_desc = (head + chain.len() as u16) % QUEUE_SIZE;
        let slot = ring.avail() + 4 + 2 * u64::from(ring.avail_idx % QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(slot))?;
        if self.event_idx {
            // used_event: ask for a call once this request is used.
            let used_event = GuestAddress(ring.avail() + 4 + 2 * u64::from(QUEUE_SIZE));
            self.mem.write_obj(ring.avail_idx, used_event)?;
        }
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.mem
            .write_obj(ring.avail_idx, GuestAddress(ring.avail() + 2))?;
        ring.kick.write(1)?;
        Ok(())
    }

    /// Waits until queue `q` has used everything submitted; returns the last used len.
    fn wait(&self, q: usize) -> Result<u32> {
        let ring = &self.rings[q];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let used: u16 = self.mem.read_obj(GuestAddress(ring.used() + 2))?;
            if used == ring.avail_idx {
                let slot = ring.used() + 4 + 8 * u64::from(used.wrapping_sub(1) % QUEUE_SIZE);
                ensure!(ring.call.read().is_ok(), "no call after completion");
                return Ok(self.mem.read_obj(GuestAddress(slot + 4))?);
            }
            if Instant::now() > deadline {
                bail!("queue {q}: used idx {used}, expected {}", ring.avail_idx);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One IN/OUT request on queue `q` using buffers at `area`.
    fn rw(&mut self, q: usize, kind: u32, sector: u64, data: &mut [u8], area: u64) -> Result<u8> {
        let (hdr, buf, status) = (area, area + 0x1000, area + 0x100);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr))?;
        self.mem.write_obj(0xffu8, GuestAddress(status))?;
        let dir = if kind == T_IN { F_WRITE } else { 0 };
        if kind == T_OUT {
            self.mem.write_slice(data, GuestAddress(buf))?;
        }
        let len = data.len() as u32;
        self.submit(q, &[(hdr, 16, 0), (buf, len, dir), (status, 1, F_WRITE)])?;
        let used_len = self.wait(q)?;
        let status: u8 = self.mem.read_obj(GuestAddress(status))?;
        let expect = if kind == T_IN && status == 0 {
            len + 1
        } else {
            1
        };
        ensure!(used_len == expect, "used len {used_len}, expected {expect}");
        if kind == T_IN {
            self.mem.read_slice(data, GuestAddress(buf))?;
        }
        Ok(status)
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn write_read_and_config() -> Result<()> {
    let daemon = Daemon::start(&["--serial", "it-serial"])?;
    let mode = std::fs::metadata(&daemon.socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut vmm = Vmm::connect(&daemon.socket, 1)?;
    let (_, payload) = vmm
        .frontend
        .get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])?;
    assert_eq!(u64::from_le_bytes(payload[0..8].try_into()?), IMAGE_SECTORS);

    let mut data = pattern(7, 4096);
    assert_eq!(vmm.rw(0, T_OUT, 10, &mut data, 0x10_0000)?, 0);
    let image = std::fs::read(&daemon.image)?;
    assert_eq!(&image[10 * 512..10 * 512 + 4096], &data[..]);
    let mut back = vec![0u8; 4096];
    assert_eq!(vmm.rw(0, T_IN, 10, &mut back, 0x10_0000)?, 0);
    assert_eq!(back, data);
    // Past the end: IOERR, and the daemon carries on.
    assert_eq!(vmm.rw(0, T_IN, IMAGE_SECTORS, &mut back, 0x10_0000)?, 1);
    Ok(())
}

#[test]
fn survives_bad_requests_and_disconnects() -> Result<()> {
    let mut daemon = Daemon::start(&[])?;
    {
        let mut vmm = Vmm::connect(&daemon.socket, 1)?;
        // Device-readable status and a header outside guest memory.
        vmm.submit(0, &[(0x10_0000, 16, 0), (0x10_0100, 1, 0)])?;
        assert_eq!(vmm.wait(0)?, 0);
        vmm.submit(0, &[(1 << 40, 16, 0), (0x10_0100, 1, F_WRITE)])?;
        assert_eq!(vmm.wait(0)?, 1);
        let mut data = pattern(1, 512);
        assert_eq!(vmm.rw(0, T_OUT, 0, &mut data, 0x10_0000)?, 0);
        // Dropped without any goodbye: an abrupt disconnect.
    }
    // A frontend that vanishes half-way through setup.
    {
        let f = Frontend::connect(&daemon.socket, 1)?;
        f.set_owner()?;
    }
    assert!(daemon.alive());
    let mut vmm = Vmm::connect(&daemon.socket, 1)?;
    let mut back = vec![0u8; 512];
    assert_eq!(vmm.rw(0, T_IN, 0, &mut back, 0x10_0000)?, 0);
    assert_eq!(back, pattern(1, 512));
    assert!(daemon.alive());
    Ok(())
}

/// Found by the `vhost_user_msg` fuzz target: every connection leaked one
/// exit eventfd per queue worker (vhost-user-backend 0.24 never closes the
/// consumer it takes), until accept failed with EMFILE and the daemon quit.
#[test]
fn reconnects_leak_no_fds() -> Result<()> {
    let daemon = Daemon::start(&["--num-queues", "2"])?;
    let fds_dir = format!("/proc/{}/fd", daemon.child.id());
    // Counted while one answered connection is open, so every earlier one
    // is torn down (the daemon serves one frontend at a time).
    let count = |f: &Frontend| -> Result<usize> {
        f.get_features()?;
        Ok(std::fs::read_dir(&fds_dir)?.count())
    };
    let first = Frontend::connect(&daemon.socket, 2)?;
    count(&first)?;
    drop(first);
    let held = Frontend::connect(&daemon.socket, 2)?;
    let before = count(&held)?;
    drop(held);
    for _ in 0..20 {
        Frontend::connect(&daemon.socket, 2)?.get_features()?;
    }
    let held = Frontend::connect(&daemon.socket, 2)?;
    let after = count(&held)?;
    ensure!(
        after == before,
        "open fds went from {before} to {after} over 21 connections"
    );
    Ok(())
}

/// Found by the `vhost_user_msg` fuzz target: a memory region longer than
/// its file was mapped as it came, and reading a ring in the part past the
/// end of the file (here GET_VRING_BASE) killed the daemon with SIGBUS.
#[test]
fn refuses_memory_past_the_end_of_its_file() -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut daemon = Daemon::start(&[])?;
    {
        let mut frontend = Frontend::connect(&daemon.socket, 1)?;
        frontend.set_owner()?;
        let features = frontend.get_features()?;
        frontend.set_features(features & !EVENT_IDX)?;
        frontend.get_protocol_features()?;
        frontend.set_protocol_features(
            VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        )?;
        // SAFETY: the name is a valid NUL-terminated string; memfd_create
        // returns a new fd we take ownership of below or an error.
        let fd = unsafe { libc::memfd_create(c"short-ram".as_ptr(), 0) };
        ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(0x10000)?;
        let host_base = 0x7f00_0000_0000u64;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: 0x100000,
            userspace_addr: host_base,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let refused = frontend.set_mem_table(&[region]);
        frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        ensure!(
            refused.is_err(),
            "a region past the end of its file was accepted"
        );
        // The daemon hangs up on a refused table; were it still there, the
        // rings would lie past the end of the file.
        let _ = frontend.set_vring_num(0, QUEUE_SIZE);
        let _ = frontend.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: host_base + 0x20000,
                used_ring_addr: host_base + 0x21000,
                avail_ring_addr: host_base + 0x20100,
                log_addr: None,
            },
        );
        let _ = frontend.get_vring_base(0);
    }
    std::thread::sleep(Duration::from_millis(100));
    ensure!(daemon.alive(), "the daemon died");
    let mut vmm = Vmm::connect(&daemon.socket, 1)?;
    let mut back = vec![0u8; 512];
    assert_eq!(vmm.rw(0, T_IN, 0, &mut back, 0x10_0000)?, 0);
    Ok(())
}

/// INFLIGHT_SHMFD: offered; GET_INFLIGHT_FD gives a zeroed region of, per
/// queue, a 16-byte header and 16 bytes per descriptor (64-byte aligned);
/// SET_INFLIGHT_FD naming more than its file holds is refused (a NACK) and
/// the daemon goes on serving the connection.
#[test]
fn inflight_region_offered_and_a_short_one_refused() -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let daemon = Daemon::start(&["--num-queues", "2", "--queue-size", "16"])?;
    let mut f = Frontend::connect(&daemon.socket, 2)?;
    f.set_owner()?;
    let features = f.get_features()?;
    f.set_features(features)?;
    let protocol = f.get_protocol_features()?;
    ensure!(
        protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        "{protocol:?}"
    );
    f.set_protocol_features(
        VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ,
    )?;
    let (reply, file) = f.get_inflight_fd(&VhostUserInflight::new(0, 0, 2, 16))?;
    let stride = (16 + 16 * 16u64).div_ceil(64) * 64;
    ensure!(reply.mmap_size == 2 * stride, "{}", reply.mmap_size);
    ensure!(file.metadata()?.len() >= 2 * stride);
    let mut region = vec![1u8; (2 * stride) as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut region, reply.mmap_offset)?;
    ensure!(region.iter().all(|&b| b == 0), "a fresh region is zeroed");
    // SAFETY: a valid NUL-terminated name; the fd is checked and owned below.
    let fd = unsafe { libc::memfd_create(c"short-inflight".as_ptr(), 0) };
    ensure!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let short = unsafe { File::from_raw_fd(fd) };
    short.set_len(64)?;
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let refused = f.set_inflight_fd(
        &VhostUserInflight::new(2 * stride, 0, 2, 16),
        short.as_raw_fd(),
    );
    ensure!(
        refused.is_err(),
        "a region past the end of its file was taken"
    );
    f.set_inflight_fd(&reply, file.as_raw_fd())?;
    f.set_hdr_flags(VhostUserHeaderFlag::empty());
    ensure!(f.get_features()? == features, "the connection still serves");
    Ok(())
}

#[test]
fn two_queues_concurrently() -> Result<()> {
    let daemon = Daemon::start(&["--num-queues", "2"])?;
    let mut vmm = Vmm::connect(&daemon.socket, 2)?;
    for round in 0..8u64 {
        let a = pattern(round as u8, 2048);
        let b = pattern(!round as u8, 2048);
        // Submit on both queues before waiting on either.
        for (q, data) in [(0usize, &a), (1, &b)] {
            let area = 0x20_0000 + 0x2_0000 * q as u64;
            vmm.mem.write_slice(data, GuestAddress(area + 0x1000))?;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&T_OUT.to_le_bytes());
            h[8..16].copy_from_slice(&(round * 16 + 8 * q as u64).to_le_bytes());
            vmm.mem.write_slice(&h, GuestAddress(area))?;
            vmm.submit(
                q,
                &[
                    (area, 16, 0),
                    (area + 0x1000, 2048, 0),
                    (area + 0x100, 1, F_WRITE),
                ],
            )?;
        }
        vmm.wait(0)?;
        vmm.wait(1)?;
        let image = std::fs::read(&daemon.image)?;
        let at = (round * 16 * 512) as usize;
        assert_eq!(&image[at..at + 2048], &a[..]);
        assert_eq!(&image[at + 8 * 512..at + 8 * 512 + 2048], &b[..]);
        let mut back = vec![0u8; 2048];
        assert_eq!(vmm.rw(1, T_IN, round * 16, &mut back, 0x30_0000)?, 0);
        assert_eq!(back, a);
    }
    Ok(())
}

#[test]
fn event_idx_and_thread_names() -> Result<()> {
    let daemon = Daemon::start(&["--num-queues", "2"])?;
    let mut vmm = Vmm::connect_with(&daemon.socket, 2, true)?;
    for round in 0..20u64 {
        for q in 0..2 {
            let mut data = pattern((round + q as u64) as u8, 512);
            let sector = round * 2 + q as u64;
            let area = 0x20_0000 + 0x2_0000 * q as u64;
            assert_eq!(vmm.rw(q, T_OUT, sector, &mut data, area)?, 0);
            let mut back = vec![0u8; 512];
            assert_eq!(vmm.rw(q, T_IN, sector, &mut back, area)?, 0);
            assert_eq!(back, data);
        }
    }
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", daemon.child.id()))? {
        names.push(
            std::fs::read_to_string(task?.path().join("comm"))?
                .trim()
                .to_string(),
        );
    }
    assert!(names.iter().any(|n| n == "blk0-q0"), "{names:?}");
    assert!(names.iter().any(|n| n == "blk0-q1"), "{names:?}");
    Ok(())
}

#[test]
fn survives_malformed_messages() -> Result<()> {
    use std::io::Write;
    let mut daemon = Daemon::start(&[])?;
    for junk in [
        vec![0xffu8; 12],
        // A valid-looking header announcing a huge payload.
        [
            1u32.to_le_bytes(),
            1u32.to_le_bytes(),
            0xffff_fff0u32.to_le_bytes(),
        ]
        .concat(),
        // SET_MEM_TABLE (5) with a short body and no fds.
        [
            5u32.to_le_bytes(),
            1u32.to_le_bytes(),
            8u32.to_le_bytes(),
            [0u8; 4],
            [0u8; 4],
        ]
        .concat(),
    ] {
        // The socket file exists a moment before the daemon listens on it.
        let mut tries = 0;
        let mut s = loop {
            match std::os::unix::net::UnixStream::connect(&daemon.socket) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let _ = s.write_all(&junk);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
    }
    assert!(daemon.alive());
    let mut vmm = Vmm::connect(&daemon.socket, 1)?;
    let mut data = pattern(9, 1024);
    assert_eq!(vmm.rw(0, T_OUT, 4, &mut data, 0x10_0000)?, 0);
    assert_eq!(&std::fs::read(&daemon.image)?[2048..3072], &data[..]);
    Ok(())
}

#[test]
fn read_only_direct_image() -> Result<()> {
    let daemon = Daemon::start(&["--readonly", "--direct"])?;
    let mut vmm = Vmm::connect(&daemon.socket, 1)?;
    let features = vmm.frontend.get_features()?;
    assert_ne!(features & (1 << 5), 0, "VIRTIO_BLK_F_RO");
    assert_eq!(features & (1 << 13), 0, "no DISCARD when read-only");
    let mut data = pattern(3, 512);
    assert_eq!(vmm.rw(0, T_OUT, 0, &mut data, 0x10_0000)?, 1);
    assert!(std::fs::read(&daemon.image)?.iter().all(|&b| b == 0));
    let mut back = vec![0xffu8; 4096];
    assert_eq!(vmm.rw(0, T_IN, 1, &mut back, 0x10_0000)?, 0);
    assert!(back.iter().all(|&b| b == 0));
    Ok(())
}

#[test]
fn bad_options_name_the_option() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_vhost-user-blk");
    for (args, needle) in [
        (vec!["--socket", "/tmp/x.sock"], "--image"),
        (
            vec!["--image", "/nonexistent", "--socket", "/tmp/x"],
            "--image",
        ),
        (vec!["--num-queues", "zero"], "--num-queues"),
        (vec!["--queue-size", "100"], "--queue-size"),
        (vec!["--frobnicate"], "--frobnicate"),
        (vec!["--socket"], "--socket"),
    ] {
        let out = Command::new(bin).args(&args).output()?;
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    Ok(())
}

#[test]
fn exits_cleanly_on_sigterm() -> Result<()> {
    let mut daemon = Daemon::start(&[])?;
    let pid = libc::pid_t::try_from(daemon.child.id())?;
    // SAFETY: kill only sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = daemon.child.wait()?;
    assert!(status.success(), "{status:?}");
    assert!(!daemon.socket.exists());
    Ok(())
}
