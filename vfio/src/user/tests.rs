//! The client against scripted servers: a well-behaved handshake, then
//! replies that are right, refused, wrong, or missing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::wire::{self, Header, Reader, Writer, FLAG_ERROR, FLAG_REPLY, HEADER_SIZE};
use super::{UserClient, UserError};
use crate::backend::VfioBackend;

const TIMEOUT: Duration = Duration::from_millis(300);

/// A server thread running `script` on the first connection.
fn serve(script: impl FnOnce(&mut UnixStream) + Send + 'static) -> (PathBuf, JoinHandle<()>) {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vfio-user-client-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        script(&mut s);
    });
    (path, t)
}

/// Reads one command: its header and body.
fn recv(s: &mut UnixStream) -> (Header, Vec<u8>) {
    let mut raw = [0; HEADER_SIZE];
    s.read_exact(&mut raw).unwrap();
    let h = Header::decode(&raw);
    let mut body = vec![0; h.size as usize - HEADER_SIZE];
    s.read_exact(&mut body).unwrap();
    (h, body)
}

fn reply(s: &mut UnixStream, to: &Header, flags: u32, error: u32, body: &[u8]) {
    let h = Header {
        id: to.id,
        command: to.command,
        size: (HEADER_SIZE + body.len()) as u32,
        flags: FLAG_REPLY | flags,
        error,
    };
    s.write_all(&h.encode()).unwrap();
    s.write_all(body).unwrap();
}

/// Answers the connect sequence: a PCI device with a 256-byte config
/// region (7) and a 4 KiB BAR0, two MSI-X vectors (IRQ index 2).
fn handshake(s: &mut UnixStream) {
    let (h, _) = recv(s);
    assert_eq!(h.command, wire::VERSION);
    reply(
        s,
        &h,
        0,
        0,
        &Writer::default().u16(0).u16(1).bytes(b"{}\0").0,
    );
    let (h, _) = recv(s);
    assert_eq!(h.command, wire::DEVICE_GET_INFO);
    reply(
        s,
        &h,
        0,
        0,
        &Writer::default().u32(16).u32(2 | 1).u32(9).u32(5).0,
    );
    for index in 0..9u32 {
        let (h, body) = recv(s);
        assert_eq!(h.command, wire::DEVICE_GET_REGION_INFO);
        assert_eq!(Reader(&body[8..12]).u32(), Some(index));
        let size = match index {
            0 => 0x1000,
            7 => 256,
            _ => 0,
        };
        let info = Writer::default()
            .u32(32)
            .u32(3)
            .u32(index)
            .u32(0)
            .u64(size)
            .u64(0);
        reply(s, &h, 0, 0, &info.0);
    }
    for index in 0..5u32 {
        let (h, _) = recv(s);
        assert_eq!(h.command, wire::DEVICE_GET_IRQ_INFO);
        let count = if index == 2 { 2 } else { 0 };
        reply(
            s,
            &h,
            0,
            0,
            &Writer::default().u32(16).u32(1).u32(index).u32(count).0,
        );
    }
}

fn connect(path: &std::path::Path) -> UserClient {
    UserClient::connect(path, TIMEOUT).expect("connects")
}

#[test]
fn connect_learns_regions_and_irqs_and_reads_come_back() {
    let (path, t) = serve(|s| {
        handshake(s);
        let (h, body) = recv(s);
        assert_eq!(h.command, wire::REGION_READ);
        let mut r = Reader(&body);
        assert_eq!((r.u64(), r.u32(), r.u32()), (Some(0x10), Some(0), Some(4)));
        let data = Writer::default().u64(0x10).u32(0).u32(4).u32(0x0100_00ed);
        reply(s, &h, 0, 0, &data.0);
    });
    let mut c = connect(&path);
    assert_eq!(c.region(7).map(|r| r.size), Some(256));
    assert_eq!(c.region(0).map(|r| r.size), Some(0x1000));
    assert_eq!(c.irq_count(2), 2);
    let mut b = [0; 4];
    c.region_read(0, 0x10, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x0100_00ed);
    t.join().unwrap();
}

#[test]
fn a_refusal_is_an_error_but_the_connection_carries_on() {
    let (path, t) = serve(|s| {
        handshake(s);
        let (h, _) = recv(s);
        reply(s, &h, FLAG_ERROR, 22, &[]);
        let (h, _) = recv(s);
        assert_eq!(h.command, wire::DEVICE_RESET);
        reply(s, &h, 0, 0, &[]);
    });
    let mut c = connect(&path);
    let e = c.region_write(0, 0, &[1, 2, 3, 4]).unwrap_err().to_string();
    assert!(e.contains("REGION_WRITE") && e.contains("errno 22"), "{e}");
    c.reset().expect("still usable");
    assert!(c.broken().is_none());
    t.join().unwrap();
}

#[test]
fn a_reply_to_another_message_breaks_the_connection_for_good() {
    let (path, t) = serve(|s| {
        handshake(s);
        let (mut h, _) = recv(s);
        h.id = h.id.wrapping_add(7);
        reply(s, &h, 0, 0, &[0; 20]);
    });
    let mut c = connect(&path);
    let mut b = [0; 4];
    let e = c.region_read(0, 0, &mut b).unwrap_err().to_string();
    assert!(e.contains("REGION_READ: bad reply"), "{e}");
    t.join().unwrap();
    let started = Instant::now();
    let e = c.reset().unwrap_err().to_string();
    assert!(e.contains("broken") && e.contains("does not answer"), "{e}");
    assert!(
        started.elapsed() < TIMEOUT,
        "no waiting on a broken connection"
    );
}

#[test]
fn garbage_sizes_and_short_data_are_refused() {
    let (path, t) = serve(|s| {
        let (h, _) = recv(s);
        let mut bogus = h;
        bogus.flags = FLAG_REPLY;
        bogus.size = u32::MAX;
        s.write_all(&bogus.encode()).unwrap();
    });
    let e = UserClient::connect(&path, TIMEOUT)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("VERSION") && e.contains("message size 4294967295"),
        "{e}"
    );
    t.join().unwrap();

    let (path, t) = serve(|s| {
        handshake(s);
        let (h, _) = recv(s);
        // Says 4 bytes, carries 2.
        reply(
            s,
            &h,
            0,
            0,
            &Writer::default().u64(0).u32(0).u32(4).u16(0xffff).0,
        );
    });
    let mut c = connect(&path);
    let mut b = [0; 4];
    let e = c.region_read(0, 0, &mut b).unwrap_err().to_string();
    assert!(
        e.contains("REGION_READ") && e.contains("for a read of 4"),
        "{e}"
    );
    t.join().unwrap();
}

#[test]
fn a_silent_or_vanished_server_times_out_or_fails() {
    let (path, t) = serve(|s| {
        handshake(s);
        let _ = recv(s);
        std::thread::sleep(TIMEOUT * 3);
    });
    let mut c = connect(&path);
    let started = Instant::now();
    let e = c.reset().unwrap_err().to_string();
    assert!(e.contains("DEVICE_RESET: socket I/O"), "{e}");
    assert!(started.elapsed() < TIMEOUT * 3, "bounded by the timeout");
    t.join().unwrap();

    let (path, t) = serve(handshake);
    let mut c = connect(&path);
    t.join().unwrap();
    assert!(matches!(c.dma_unmap(0, 0x1000), Err(UserError::Io { .. })));
}

#[test]
fn dma_map_passes_the_file_and_its_offset() {
    let (path, t) = serve(|s| {
        handshake(s);
        let mut raw = [0u8; HEADER_SIZE + 32];
        let (n, fd) = s.recv_with_fd(&mut raw).unwrap();
        assert_eq!(n, raw.len());
        let h = Header::decode(raw[..HEADER_SIZE].try_into().unwrap());
        assert_eq!(h.command, wire::DMA_MAP);
        let mut r = Reader(&raw[HEADER_SIZE..]);
        let fields = (r.u32(), r.u32(), r.u64(), r.u64(), r.u64());
        assert_eq!(
            fields,
            (
                Some(32),
                Some(3),
                Some(0x2000),
                Some(0x10_0000),
                Some(0x1000)
            )
        );
        let mut f = fd.expect("the memory's file");
        f.seek(SeekFrom::Start(0x2000)).unwrap();
        f.write_all(b"seen").unwrap();
        reply(s, &h, 0, 0, &[]);
    });
    let mut c = connect(&path);
    // SAFETY: the name is a NUL-terminated string; the fd is checked and
    // then owned by `file` alone.
    let fd = unsafe { libc::memfd_create(c"dma".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.set_len(0x4000).unwrap();
    c.dma_map(0x10_0000, 0x1000, file.as_raw_fd(), 0x2000, false)
        .unwrap();
    t.join().unwrap();
    let mut seen = [0; 4];
    file.seek(SeekFrom::Start(0x2000)).unwrap();
    file.read_exact(&mut seen).unwrap();
    assert_eq!(&seen, b"seen", "the server wrote through the file it got");
}

#[test]
fn the_intx_unmask_eventfd_goes_with_set_irqs_unmask() {
    let (path, t) = serve(|s| {
        handshake(s);
        let mut raw = [0u8; HEADER_SIZE + 20];
        let (n, fd) = s.recv_with_fd(&mut raw).unwrap();
        assert_eq!(n, raw.len());
        let h = Header::decode(raw[..HEADER_SIZE].try_into().unwrap());
        assert_eq!(h.command, wire::DEVICE_SET_IRQS);
        let mut r = Reader(&raw[HEADER_SIZE..]);
        let fields = (r.u32(), r.u32(), r.u32(), r.u32(), r.u32());
        // argsz, ACTION_UNMASK | DATA_EVENTFD, INTx, start 0, one eventfd.
        assert_eq!(fields, (Some(20), Some(0x14), Some(0), Some(0), Some(1)));
        let mut f = fd.expect("the unmask eventfd");
        f.write_all(&7u64.to_ne_bytes()).unwrap();
        reply(s, &h, 0, 0, &[]);
    });
    let mut c = connect(&path);
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    c.set_irq_unmask_eventfd(0, Some(file.as_raw_fd())).unwrap();
    t.join().unwrap();
    let mut count = [0u8; 8];
    file.read_exact(&mut count).unwrap();
    assert_eq!(
        u64::from_ne_bytes(count),
        7,
        "the server signalled the eventfd it got"
    );
}
