//! vhost-user-blk end to end:
//! - our daemon (`vhost-user-blk`) behind Debian's QEMU as the frontend,
//!   with the guest kit's Linux under TCG running fio: random 4 KiB writes
//!   over 4 MiB with crc32c verify headers, read back and checked in the
//!   guest; the host then verifies the image itself with fio's verify_only
//!   and the same job, and checks that one flipped byte fails that check;
//! - our VMM's vhost-user-blk device in front of qemu-storage-daemon and in
//!   front of our daemon, the probe guest running its disk checks on two
//!   queues; the host checks the image byte for byte;
//! - either daemon killed (SIGKILL) in the middle of the probe's write
//!   stream and restarted on the same socket: the device reconnects,
//!   replays, and the stream completes and verifies.
//!
//! - the daemon's backend in this process, read through its own mappings:
//!   its memory table equals the flat view's guest RAM and holds the bytes
//!   the guest wrote, across a DIMM hot-add and removal (`memtable`).
//!
//! (The frontend library alone, with the test playing the driver, is in
//! vhost/tests/backends.rs.)

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm::machine::VhostUserBlkConfig;

mod common;
#[path = "vhost_user/memtable.rs"]
mod memtable;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_socket(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no socket at {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One QEMU run of the kit test `fio`: the guest's output and the scratch
/// directory holding the image (`disk.raw`; the caller removes it).
fn qemu_run(kit: &testkit::guest_kit::GuestKit) -> (String, PathBuf) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vmm-vu-qemu-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let sock = dir.join("vub.sock");
    let _daemon = Killed(
        Command::new(testkit::process::binary("vhost-user-blk"))
            .args([
                "--socket",
                sock.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
            ])
            .spawn()
            .expect("our vhost-user-blk daemon"),
    );
    wait_socket(&sock);
    let started = Instant::now();
    let mut qemu = Killed(
        testkit::guest_kit::qemu_tcg(
            "pc",
            &kit.bzimage,
            &kit.initramfs,
            "console=ttyS0 panic=-1 quiet kit_test=fio",
        )
        .args(["-m", "512"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=c,path={}", sock.display()))
        .args(["-device", "vhost-user-blk-pci,chardev=c"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (.ci/run installs it)"),
    );
    let mut out = String::new();
    let mut stdout = qemu.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while qemu.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(qemu);
    let out = reader.join().unwrap();
    eprintln!("guest ran {:?}; its output:\n{out}", started.elapsed());
    (out, dir)
}

/// Host fio in verify_only mode with the kit's job over `image`: Ok with
/// fio's output when every block carries the header and crc32c that the
/// guest's run wrote there, Err with fio's output when not.
fn host_fio_verify(image: &Path) -> Result<String, String> {
    let out = Command::new("fio")
        .arg(format!("--filename={}", image.display()))
        .args(["--ioengine=psync", "--verify_only=1"])
        .arg(testkit::guest_kit::fio_job())
        .output()
        .expect("fio on the host (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // All of the job's 4 MiB was read and checked, not some of it.
    if out.status.success() && text.contains("READ: bw=") && text.contains("io=4096KiB") {
        Ok(text)
    } else {
        Err(format!("fio verify_only: {}\n{text}", out.status))
    }
}

#[test]
fn our_daemon_serves_a_linux_guest_in_qemu() {
    let kit = testkit::guest_kit::assets().expect("the guest kit builds");
    let (mut out, mut dir) = qemu_run(&kit);
    if !out.contains("KIT-FIO-") {
        // A known intermittent hang (the guest's I/O stalls after the disk
        // was probed, about one run in ten under load) is under
        // investigation; say so loudly and run once more.
        eprintln!("KNOWN ISSUE: the guest's fio test printed nothing; retrying once");
        let _ = std::fs::remove_dir_all(&dir);
        (out, dir) = qemu_run(&kit);
    }
    let line = out
        .lines()
        .find(|l| l.contains("KIT-FIO-"))
        .unwrap_or_else(|| panic!("the guest's fio test printed no result:\n{out}"));
    assert!(line.contains("KIT-FIO-OK"), "{line}");
    let image = dir.join("disk.raw");
    let verified = host_fio_verify(&image);
    // The host's check is not blind: one byte changed inside the job's
    // range, in a copy of the image, fails it.
    let copy = dir.join("flipped.raw");
    std::fs::copy(&image, &copy).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&copy)
            .unwrap();
        let at = (3 << 20) + 100;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[!b[0]], at).unwrap();
    }
    let flipped = host_fio_verify(&copy);
    let _ = std::fs::remove_dir_all(&dir);
    let text = verified.unwrap_or_else(|e| panic!("the image fails the host's check: {e}"));
    eprintln!("host fio verify_only:\n{text}");
    assert!(
        flipped.is_err(),
        "a flipped byte passed the host's check:\n{flipped:?}"
    );
}

/// A scratch directory with a 64 MiB image holding the probe's pattern of
/// `seed`, and a socket path.
fn pattern_disk(name: &str, seed: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("vmm-vu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.raw");
    std::fs::write(&image, testkit::pattern::image(seed, 131_072)).unwrap();
    (image, dir.join("vub.sock"))
}

fn qemu_storage_daemon(image: &Path, sock: &Path) -> Killed {
    qsd_with(image, sock, &[])
}

/// qemu-storage-daemon with one I/O worker, so it completes requests in
/// the order it takes them: without inflight tracking (which QSD 7.2 does
/// not offer) a restarted backend can only resume at one avail index, and
/// the used index is the right one only for in-order completion.
fn qemu_storage_daemon_in_order(image: &Path, sock: &Path) -> Killed {
    let one_worker = "main-loop,id=ml,thread-pool-min=1,thread-pool-max=1";
    qsd_with(image, sock, &["--object", one_worker])
}

fn qsd_with(image: &Path, sock: &Path, extra: &[&str]) -> Killed {
    Killed(
        Command::new("qemu-storage-daemon")
            .args(extra)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on,num-queues=2",
                sock.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (.ci/run installs it)"),
    )
}

fn our_daemon(image: &Path, sock: &Path) -> Killed {
    Killed(
        Command::new(testkit::process::binary("vhost-user-blk"))
            .args(["--socket", sock.to_str().unwrap()])
            .args(["--image", image.to_str().unwrap()])
            .args(["--num-queues", "2", "--serial", "ours"])
            .spawn()
            .expect("the vhost-user-blk binary"),
    )
}

/// The probe guest on our VMM with one vhost-user-blk disk at `sock`;
/// returns its output after checking every check passed.
fn probe_on(sock: &Path, cmdline: &str) -> String {
    let (mut m, out) = common::probe_machine(cmdline);
    m.add_vhost_user_blk(&VhostUserBlkConfig {
        socket: sock.into(),
        num_queues: 2,
        ..VhostUserBlkConfig::default()
    })
    .expect("the backend answers");
    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    eprintln!("{text}\n{}", m.exit_report());
    assert_eq!(status, 0, "failed checks:\n{text}");
    // The data path never entered the VMM.
    let notify = m.virtio_devices()[0]
        .stats
        .notify
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(notify, 0, "{}", m.exit_report());
    text
}

fn assert_disk_checks(text: &str, seed_before: u64) {
    common::assert_passed(
        text,
        &[
            format!("virtio-blk 00:03.0 holds seed {seed_before} from before"),
            "virtio-blk 00:03.0 stamped set verifies".into(),
            "virtio-blk 00:03.0 queue 0 interrupt arrives on vector 0x40".into(),
            "virtio-blk 00:03.0 queue 1 interrupt arrives on vector 0x41".into(),
            "virtio-blk 00:03.0 flush OK".into(),
            "virtio-blk 00:03.0 read past the end gets IOERR".into(),
            "virtio-blk 00:03.0 device reset and re-initialisation".into(),
            "virtio-blk 00:03.0 sector 0 reads back after the reset".into(),
        ],
    );
}

#[test]
fn our_frontend_serves_the_probe_from_qemu_storage_daemon() {
    let (image, sock) = pattern_disk("qsd-probe", 41);
    let _d = qemu_storage_daemon(&image, &sock);
    wait_socket(&sock);
    let text = probe_on(&sock, "blk-verify=41 blk-seed=42");
    assert_disk_checks(&text, 41);
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(
        testkit::pattern::mismatches(&disk, 41, Some(42)),
        Vec::<u64>::new()
    );
}

#[test]
fn our_frontend_serves_the_probe_from_our_daemon() {
    let (image, sock) = pattern_disk("ours-probe", 51);
    let _d = our_daemon(&image, &sock);
    wait_socket(&sock);
    let text = probe_on(&sock, "blk-verify=51 blk-seed=52");
    assert_disk_checks(&text, 51);
    assert!(text.contains("serial=\"ours\""), "GET_ID:\n{text}");
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(
        testkit::pattern::mismatches(&disk, 51, Some(52)),
        Vec::<u64>::new()
    );
}

/// The probe's write stream (`blk-stream`) on a disk served by the
/// daemon `spawn` starts, which is killed (SIGKILL) in the middle of the
/// stream and started again on the same socket. Checks that the stream
/// completes and verifies in the guest, that the image holds its last
/// pass sector by sector, and that the device reconnected once; returns
/// the VMM's exit report. `after` is how long after pass 1 the kill comes.
fn kill_mid_stream(
    name: &str,
    seed: u64,
    spawn: fn(&Path, &Path) -> Killed,
    after: Duration,
) -> String {
    let (image, sock) = pattern_disk(name, seed);
    let daemon = std::sync::Arc::new(std::sync::Mutex::new(spawn(&image, &sock)));
    wait_socket(&sock);
    let passes = 12;
    let (mut m, out) = common::probe_machine(&format!("blk-stream={passes}"));
    m.add_vhost_user_blk(&VhostUserBlkConfig {
        socket: sock.clone(),
        num_queues: 2,
        reconnect: Duration::from_secs(10),
        ..VhostUserBlkConfig::default()
    })
    .expect("the backend answers");
    let killer = {
        let (out, daemon, image, sock) = (out.clone(), daemon.clone(), image.clone(), sock.clone());
        std::thread::spawn(move || -> Result<String, String> {
            let start = Instant::now();
            while !out.text().contains("blk-stream: pass 1 done") {
                if start.elapsed() > Duration::from_secs(60) {
                    return Err("the stream never got going".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(after);
            // Kill it while writes are in flight, keep it away a moment.
            let at = out.text().matches("pass ").count();
            let mut d = daemon.lock().unwrap();
            let _ = d.0.kill();
            let _ = d.0.wait();
            std::thread::sleep(Duration::from_millis(300));
            *d = spawn(&image, &sock);
            Ok(format!("killed after {at} passes"))
        })
    };
    let status = m.run().expect("the guest runs to its exit");
    let text = out.text();
    let when = killer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let report = m.exit_report();
    eprintln!("{text}\n{report}\n{when}");
    assert_eq!(status, 0, "failed checks:\n{text}");
    assert!(
        !text.contains(&format!("pass {} done", passes - 1)) || text.contains("stream verifies"),
        "{text}"
    );
    common::assert_passed(
        &text,
        &[
            "virtio-blk 00:03.0 stream of writes completes",
            "virtio-blk 00:03.0 stream verifies",
        ],
    );
    assert!(
        report.contains("reconnects=1"),
        "the device reconnected once:\n{report}"
    );
    // From the host: the streamed range holds the last pass, sector by
    // sector, and nothing outside it changed.
    let disk = std::fs::read(&image).unwrap();
    let last = 0x500 + passes - 1;
    let end = 131_072 / 4;
    for s in 0..131_072u64 {
        let want = if (1024..end).contains(&s) {
            testkit::pattern::sector(last, s)
        } else {
            testkit::pattern::sector(seed, s)
        };
        let at = (s * 512) as usize;
        assert!(disk[at..at + 512] == want, "sector {s} is wrong");
    }
    report
}

#[test]
fn a_daemon_killed_mid_stream_and_restarted_loses_no_write() {
    let report = kill_mid_stream("restart", 61, our_daemon, Duration::ZERO);
    // Our daemon offers INFLIGHT_SHMFD: the restarted one got the region.
    assert!(
        report.contains("inflight=on inflight_replays=1"),
        "{report}"
    );
}

/// Our daemon completing each batch of requests last first, 300 us apart
/// (as a backend with parallel I/O may), its log appended to `daemon.log`
/// beside the image.
fn our_daemon_out_of_order(image: &Path, sock: &Path) -> Killed {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(image.with_file_name("daemon.log"))
        .unwrap();
    Killed(
        Command::new(testkit::process::binary("vhost-user-blk"))
            .args(["--socket", sock.to_str().unwrap()])
            .args(["--image", image.to_str().unwrap()])
            .args(["--num-queues", "2", "--serial", "ours"])
            .args(["--complete-late", "300"])
            .stderr(log)
            .spawn()
            .expect("the vhost-user-blk binary"),
    )
}

/// Killed in the middle of a batch it completes last first, the daemon
/// leaves requests unfinished before the used index and finished after
/// it: resuming at the used index would skip the first and redo the
/// second (the probe counts both). The restarted daemon reads the
/// inflight region instead, submits exactly the unfinished ones again and
/// the stream verifies, in the guest and sector by sector on the host.
/// The restarted daemon logs how many of those a resume at the used index
/// would have lost; a kill that lands before the batch's first completion
/// or between batches loses none, so the run is repeated (up to 4 times,
/// each killing at another point of a batch) until one does.
#[test]
fn out_of_order_completions_killed_mid_batch_are_resubmitted_from_the_inflight_region() {
    for attempt in 1..=4u64 {
        let name = format!("ooo{attempt}");
        let after = Duration::from_micros(900 + 1300 * attempt);
        let report = kill_mid_stream(&name, 81, our_daemon_out_of_order, after);
        assert!(
            report.contains("inflight=on inflight_replays=1"),
            "{report}"
        );
        let dir = std::env::temp_dir().join(format!("vmm-vu-{name}-{}", std::process::id()));
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
        // "... submitting again N requests left in flight (L of them lost
        // to a resume at the used index)"
        let lost: usize = log
            .lines()
            .filter(|l| l.contains(" of them lost"))
            .filter_map(|l| {
                let before = l.split(" of them lost").next()?;
                before.rsplit('(').next()?.parse::<usize>().ok()
            })
            .sum();
        eprintln!("attempt {attempt}: a resume at the used index would have lost {lost}\n{log}");
        if lost > 0 {
            let resubmitted: u64 = report
                .split("resubmitted=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(resubmitted as usize >= lost, "{report}");
            return;
        }
    }
    panic!("four kills all landed between batches");
}

#[test]
fn qemu_storage_daemon_killed_mid_stream_and_restarted_loses_no_write() {
    // With its default thread pool QSD completes out of order; killed then,
    // a request taken before the used index may be unfinished and one after
    // it finished: resuming at the used index loses the one and redoes the
    // other (the probe then counts N failed, N completed twice; 2 runs in
    // 20). Only inflight tracking recovers that, and QSD 7.2 does not offer
    // it (QEMU 6.0 stopped offering it; vhost/tests/inflight.rs tests the
    // wire side). So this QSD completes in order.
    let report = kill_mid_stream(
        "qsd-restart",
        71,
        qemu_storage_daemon_in_order,
        Duration::ZERO,
    );
    // A QSD that offers INFLIGHT_SHMFD must get its region on the replay.
    assert!(
        report.contains("inflight=off inflight_replays=0")
            || report.contains("inflight=on inflight_replays=1"),
        "{report}"
    );
}
