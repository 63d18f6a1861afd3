//! Linux on the PC machine, with the Debian cloud kernel of the guest kit.
//!
//! Under PVM-nested KVM (these machines) a stock kernel runs ring 0 about a
//! hundred times slower and never finishes booting, so here the uncompressed
//! vmlinux is entered and must print its first console lines on our COM1,
//! and the bzImage's boot parameters are checked from the host side. The
//! full boot to the initramfs runs where KVM is hardware-backed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::boot::{self, BootSpec};
use vmm::machine::{Machine, MachineConfig, Request};

use testkit::process::Captured as Output;

fn kit() -> testkit::guest_kit::GuestKit {
    testkit::guest_kit::assets().expect("the guest kit builds (Debian packages by name)")
}

#[test]
fn the_bzimage_is_loaded_with_linux_boot_parameters() {
    let kit = kit();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 512 << 20)]).unwrap();
    let e820 = boot::pc_layout(512 << 20, 0xc000_0000);
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 kit_test=none";
    let info = boot::load(
        &mem,
        &BootSpec {
            kernel: &kit.bzimage,
            cmdline,
            initrd: Some(&kit.initramfs),
            e820: &e820,
            acpi_rsdp: Some(0x9_0000),
        },
    )
    .expect("the bzImage loads");
    assert_eq!(info.kernel.format, boot::KernelFormat::BzImage);
    let zp = info.zero_page.0;
    let rd8 = |o: u64| mem.read_obj::<u8>(GuestAddress(zp + o)).unwrap();
    let rd16 = |o: u64| mem.read_obj::<u16>(GuestAddress(zp + o)).unwrap();
    let rd32 = |o: u64| mem.read_obj::<u32>(GuestAddress(zp + o)).unwrap();
    assert_eq!(rd16(0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&rd32(0x202).to_le_bytes(), b"HdrS", "setup header magic");
    assert!(
        rd16(0x206) >= 0x020c,
        "boot protocol {:#x} has 64-bit entry",
        rd16(0x206)
    );
    assert_ne!(rd8(0x210), 0, "type_of_loader set");
    assert_eq!(rd8(0x211) & 1, 1, "LOADED_HIGH");
    let cmd_ptr = u64::from(rd32(0x228));
    let mut cmd = vec![0u8; cmdline.len()];
    mem.read_slice(&mut cmd, GuestAddress(cmd_ptr)).unwrap();
    assert_eq!(cmd, cmdline.as_bytes());
    let (rd_at, rd_len) = (u64::from(rd32(0x218)), rd32(0x21c) as usize);
    let initrd = std::fs::read(&kit.initramfs).unwrap();
    assert_eq!(rd_len, initrd.len());
    let mut loaded = vec![0u8; rd_len];
    mem.read_slice(&mut loaded, GuestAddress(rd_at)).unwrap();
    assert!(
        loaded == initrd,
        "the initramfs bytes are where ramdisk_image says"
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(zp + 0x70)).unwrap(),
        0x9_0000,
        "acpi_rsdp_addr"
    );
    assert_eq!(usize::from(rd8(0x1e8)), e820.len(), "e820 entries");
    assert_eq!(
        info.entry().0,
        0x10_0000 + 0x200,
        "64-bit entry of a bzImage"
    );
}

fn linux_machine(
    kernel: std::path::PathBuf,
    initrd: Option<std::path::PathBuf>,
    cmdline: &str,
) -> (Machine, Arc<Mutex<String>>) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
    let mut m = Machine::new(MachineConfig {
        memory: 1 << 30,
        cpus: 1,
        kernel,
        cmdline: cmdline.into(),
        initrd,
        atomic_memslots: true,
        aps_at_entry: false,
    })
    .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    m.attach_console(Box::new(Output(out.clone()))).unwrap();
    (m, out)
}

/// Runs the machine until the line holding `marker` has arrived whole on
/// COM1 (then stops it) or `limit` passes; returns the output and the time
/// to that line. Waiting for the line's end matters under PVM, where the
/// console crawls a character at a time.
fn run_until(
    mut m: Machine,
    out: Arc<Mutex<String>>,
    marker: &str,
    limit: Duration,
) -> (String, Option<Duration>) {
    let requests = m.requests.clone();
    let start = Instant::now();
    let runner = std::thread::spawn(move || m.run().map_err(|e| format!("{e:#}")));
    let mut seen = None;
    while start.elapsed() < limit && !runner.is_finished() {
        if has_whole_line(&out.lock().unwrap(), marker) {
            seen = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    requests.raise(Request::Stop(0));
    let res = runner.join().unwrap();
    let text = out.lock().unwrap().clone();
    if seen.is_none() {
        eprintln!("machine result: {res:?}");
    }
    (text, seen)
}

fn has_whole_line(text: &str, marker: &str) -> bool {
    text.find(marker)
        .is_some_and(|at| text[at..].contains('\n'))
}

#[test]
fn the_uncompressed_kernel_is_entered_and_prints_on_com1() {
    let kit = kit();
    let (m, out) = linux_machine(
        kit.vmlinux.clone(),
        None,
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 nokaslr",
    );
    let (text, seen) = run_until(m, out, "Linux version", Duration::from_secs(300));
    eprintln!(
        "--- first console lines ({}):",
        kit.manifest.lines().next().unwrap_or("")
    );
    for l in text.lines().take(5) {
        eprintln!("{l}");
    }
    let t = seen.unwrap_or_else(|| panic!("no `Linux version` line on COM1 in 300 s:\n{text}"));
    eprintln!(
        "--- `Linux version` after {t:?} (PVM: {})",
        testkit::guest_kit::kvm_is_pvm()
    );
    assert!(text.contains("Linux version 6."), "{text}");
}

#[test]
fn linux_boots_to_the_initramfs_where_kvm_is_hardware_backed() {
    if testkit::guest_kit::kvm_is_pvm() {
        eprintln!(
            "SKIPPED: KVM here is PVM (/sys/module/kvm_pvm): a stock kernel runs ring 0 about \
             100x slower and stops on an emulation failure; the full boot runs on hardware KVM"
        );
        return;
    }
    let kit = kit();
    let (m, out) = linux_machine(
        kit.bzimage.clone(),
        Some(kit.initramfs.clone()),
        "console=ttyS0 panic=-1 quiet",
    );
    let (text, seen) = run_until(m, out, "GUEST-KIT-UP", Duration::from_secs(120));
    assert!(
        seen.is_some(),
        "the initramfs never said GUEST-KIT-UP:\n{text}"
    );
}
