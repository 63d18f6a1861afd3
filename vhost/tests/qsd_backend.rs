//! Our frontend against QEMU's vhost-user-blk backend
//! (`qemu-storage-daemon --export type=vhost-user-blk`): the test plays the
//! guest driver with a split virtqueue in memfd "guest RAM", writes a block,
//! reads it back, and checks the image from the host side.
//! Needs qemu-storage-daemon (Debian's qemu-utils / qemu-system-x86).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vmm_vhost::frontend::{VringSetup, F_VERSION_1};
use vmm_vhost::memtable::MemRegion;
use vmm_vhost::{BackendConn, MemTableSink};

const MEM: usize = 4 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

struct GuestRam {
    fd: OwnedFd,
    ptr: *mut u8,
}

impl GuestRam {
    fn new() -> GuestRam {
        // SAFETY: plain memfd/ftruncate/mmap calls with checked results.
        unsafe {
            let fd = libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, MEM as i64), 0);
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED);
            GuestRam {
                fd: OwnedFd::from_raw_fd(fd),
                ptr: ptr.cast(),
            }
        }
    }
    fn host(&self, gpa: u64) -> u64 {
        self.ptr as u64 + gpa
    }
    fn write(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM);
        // SAFETY: bounds checked above; the backend only touches buffers
        // the test hands it, after the test wrote them.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(gpa as usize), data.len())
        }
    }
    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa as usize + len <= MEM);
        let mut v = vec![0u8; len];
        // SAFETY: as in write; volatile-free reads after the call eventfd.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(gpa as usize), v.as_mut_ptr(), len) }
        v
    }
}

/// Writes descriptor `i` and returns nothing; flags: 1 NEXT, 2 WRITE.
fn desc(m: &GuestRam, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = Vec::with_capacity(16);
    d.extend_from_slice(&addr.to_le_bytes());
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    m.write(DESC + u64::from(i) * 16, &d);
}

/// One virtio-blk request: avail slot, head descriptor, type (0 IN,
/// 1 OUT), sector, and the data buffer.
struct Req {
    slot: u16,
    head: u16,
    kind: u32,
    sector: u64,
    data: u64,
    len: u32,
}

/// Submits a three-descriptor request (header, data, status), kicks, and
/// waits for the used ring to advance; returns the status byte.
fn request(m: &GuestRam, kick: &EventFd, call: &EventFd, r: Req) -> u8 {
    let Req {
        slot,
        head,
        kind,
        sector,
        data,
        len,
    } = r;
    let hdr = 0x10000 + u64::from(head) * 0x100;
    let status = hdr + 0x80;
    let mut h = Vec::new();
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    m.write(hdr, &h);
    m.write(status, &[0xff]);
    let data_flags = if kind == 0 { 2 } else { 0 };
    desc(m, head, hdr, 16, 1, head + 1);
    desc(m, head + 1, data, len, data_flags | 1, head + 2);
    desc(m, head + 2, status, 1, 2, 0);
    m.write(AVAIL + 4 + u64::from(slot % QSIZE) * 2, &head.to_le_bytes());
    m.write(AVAIL + 2, &(slot + 1).to_le_bytes());
    kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let used_idx = u16::from_le_bytes(m.read(USED + 2, 2).try_into().unwrap());
        if used_idx == slot + 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion from the backend"
        );
        let _ = call.read();
        std::thread::sleep(Duration::from_millis(1));
    }
    m.read(status, 1)[0]
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(image: &Path, sock: &Path) -> Daemon {
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
            sock.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-storage-daemon must be installed (apt-get install qemu-system-x86)");
    Daemon(child)
}

#[test]
fn our_frontend_writes_and_reads_through_qemu_storage_daemon() {
    let dir = std::env::temp_dir().join(format!("vmm-qsd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.raw");
    let sock = dir.join("vub.sock");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(8 << 20).unwrap();
    let _d = daemon(&image, &sock);

    let conn = BackendConn::connect(&sock, 8, Duration::from_secs(10)).expect("connect");
    let n = conn.negotiated;
    eprintln!("negotiated: {n:?}");
    assert!(n.device_features & F_VERSION_1 != 0);
    conn.set_features(F_VERSION_1).unwrap();
    let cap = u64::from_le_bytes(conn.config(0, 8).unwrap().try_into().unwrap());
    assert_eq!(cap, (8 << 20) / 512, "capacity in sectors from GET_CONFIG");

    let m = GuestRam::new();
    let mut sink = conn.sink();
    let region = MemRegion {
        gpa: 0,
        size: MEM as u64,
        host: m.host(0),
        fd: m.fd.as_raw_fd(),
        fd_offset: 0,
    };
    if sink.mem_slots() {
        sink.add_mem_region(&region).unwrap();
    } else {
        sink.set_mem_table(&[region]).unwrap();
    }
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    conn.start_vring(&VringSetup {
        index: 0,
        size: QSIZE,
        desc: m.host(DESC),
        avail: m.host(AVAIL),
        used: m.host(USED),
        base: 0,
        kick: &kick,
        call: &call,
    })
    .unwrap();

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    m.write(0x20000, &pattern);
    assert_eq!(
        request(
            &m,
            &kick,
            &call,
            Req {
                slot: 0,
                head: 0,
                kind: 1,
                sector: 24,
                data: 0x20000,
                len: 4096
            }
        ),
        0,
        "OUT status"
    );
    assert_eq!(
        request(
            &m,
            &kick,
            &call,
            Req {
                slot: 1,
                head: 3,
                kind: 0,
                sector: 24,
                data: 0x30000,
                len: 4096
            }
        ),
        0,
        "IN status"
    );
    assert_eq!(
        m.read(0x30000, 4096),
        pattern,
        "read back through the backend"
    );
    let mut on_disk = vec![0u8; 4096];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut on_disk, 24 * 512)
        .unwrap();
    assert_eq!(on_disk, pattern, "the image holds what the guest wrote");
    let _ = std::fs::remove_dir_all(&dir);
}
