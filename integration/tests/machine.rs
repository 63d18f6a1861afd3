//! The PC machine end to end, driven by the probe guest on real KVM.
//!
//! Needs /dev/kvm; a test fails (does not skip) without it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use vmm::machine::pam::PamMode;
use vmm::machine::{Machine, MachineConfig};

/// Collects what the guest writes to COM1.
use testkit::process::Captured as Output;

fn probe_machine(cmdline: &str, atomic: bool) -> (Machine, Arc<Mutex<String>>) {
    probe_machine_cpus(cmdline, atomic, 1)
}

fn probe_machine_cpus(cmdline: &str, atomic: bool, cpus: u8) -> (Machine, Arc<Mutex<String>>) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
    let kernel = testkit::probe::build().expect("the probe builds");
    let mut m = Machine::new(MachineConfig {
        memory: 256 << 20,
        cpus,
        kernel,
        cmdline: cmdline.into(),
        initrd: None,
        atomic_memslots: atomic,
        aps_at_entry: true,
    })
    .expect("machine");
    let out = Arc::new(Mutex::new(String::new()));
    m.attach_console(Box::new(Output(out.clone())))
        .expect("COM1 and debug-exit");
    (m, out)
}

#[test]
fn the_probe_passes_its_checks_on_the_machine() {
    let (mut m, out) = probe_machine("console=ttyS0 probe=none", true);
    let started = Instant::now();
    let status = m.run().expect("the guest runs to its exit");
    let out = out.lock().unwrap().clone();
    eprintln!("{out}\n(run took {:?})", started.elapsed());
    assert_eq!(status, 0, "failed checks:\n{out}");
    assert!(
        out.contains("ok 1 - boot_params has the boot flag"),
        "{out}"
    );
    assert!(out.contains("e820 has usable RAM at 1 MiB"), "{out}");
    assert!(
        out.contains("ok") && out.contains("unassigned MMIO reads all ones and ignores writes"),
        "{out}"
    );
    let [_, _, _, _, unassigned, on_ram] = m.stats.snapshot();
    assert_eq!(on_ram, 0, "no RAM access may exit to the VMM");
    assert!(
        unassigned >= 3,
        "the unassigned accesses were counted ({unassigned})"
    );
}

/// Toggles PAM segment 0 (0xf0000) between RAM and PCI as fast as it can:
/// each switch splits or re-merges the memslot that holds all RAM above
/// 1 MiB, where the probe's code, page tables and test pages live.
/// Starts once the probe says it is in its loop.
fn toggle_pam(
    m: &Machine,
    out: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    let memory = m.memory.clone();
    let pam = m.pc.pam_shared.clone();
    thread::spawn(move || {
        while !out.lock().unwrap().contains("memloop start") {
            if stop.load(Ordering::Relaxed) {
                return 0;
            }
            thread::yield_now();
        }
        let mut switches = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mode = if switches % 2 == 0 {
                PamMode::ReadWrite
            } else {
                PamMode::Pci
            };
            let tx = memory.begin();
            pam.lock().unwrap().set_mode(&tx, 0, mode);
            tx.commit().expect("PAM switch");
            switches += 1;
        }
        switches
    })
}

/// (result, output, PAM switches, RAM exits, boots).
type Memloop = (Result<u32, String>, String, u64, u64, u32);

fn memloop(atomic: bool) -> Memloop {
    let (mut m, out) = probe_machine("console=ttyS0 probe=memloop memloop=30000000", atomic);
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = toggle_pam(&m, out.clone(), stop.clone());
    let res = m.run().map_err(|e| format!("{e}"));
    stop.store(true, Ordering::Relaxed);
    let switches = toggler.join().unwrap();
    let on_ram = m.stats.snapshot()[5];
    let out = out.lock().unwrap().clone();
    (res, out, switches, on_ram, m.boots)
}

#[test]
fn memslot_updates_are_atomic_for_a_running_vcpu() {
    // A loaded host starves the toggler while the guest loops: run again
    // (each run must pass on its own) until the switches add up.
    let mut total = 0;
    for _ in 0..5 {
        let (res, out, switches, on_ram, boots) = memloop(true);
        eprintln!("{switches} PAM switches, {on_ram} RAM exits, {boots} boots");
        assert_eq!(boots, 1, "the guest faulted and rebooted\n{out}");
        assert_eq!(res, Ok(0), "{out}");
        assert!(
            out.contains("ok") && out.contains("memloop: every read returned"),
            "{out}"
        );
        assert_eq!(on_ram, 0, "a vCPU found guest RAM without a memslot");
        total += switches;
        if total > 100 {
            break;
        }
    }
    assert!(
        total > 100,
        "too few switches ({total} in 5 runs) to mean anything"
    );
}

#[test]
fn without_the_hold_the_same_switches_fault_the_vcpu() {
    let (res, out, switches, on_ram, boots) = memloop(false);
    let first = res
        .as_ref()
        .err()
        .and_then(|e| e.lines().next().map(String::from));
    eprintln!("{switches} PAM switches, {on_ram} RAM exits, {boots} boots, result {first:?}");
    assert!(
        switches > 0,
        "the guest died before the loop: {res:?}\n{out}"
    );
    // The guest faults (a triple fault reboots it), or reads wrong data, or
    // its accesses exit to the VMM.
    let detected = on_ram > 0 || res != Ok(0) || boots > 1;
    assert!(
        detected,
        "the non-atomic update went unnoticed: the test would not catch the bug"
    );
}

#[test]
fn a_guest_reset_boots_again_with_cmos_kept() {
    for (how, cmdline) in [
        ("0xcf9", "console=ttyS0 probe=reset"),
        ("i8042", "console=ttyS0 probe=reset,kbd"),
    ] {
        let (mut m, out) = probe_machine(cmdline, true);
        let status = m.run().expect("runs");
        let out = out.lock().unwrap().clone();
        assert_eq!(status, 0, "{how}:\n{out}");
        assert_eq!(m.boots, 2, "{how}: one reset, two boots");
        assert!(out.contains("first boot: resetting"), "{how}: {out}");
        assert!(
            out.contains("ok") && out.contains("booted a second time after the reset"),
            "{how}: {out}"
        );
    }
}

#[test]
fn acpi_tables_describe_the_machine_and_s5_powers_it_off() {
    let (mut m, out) = probe_machine_cpus("console=ttyS0 probe=s5 cpus=4", true, 4);
    let status = m.run().expect("runs");
    let out = out.lock().unwrap().clone();
    assert_eq!(status, 0, "{out}");
    for line in [
        "- ACPI RSDP from the zero page is valid",
        "ACPI tables listed in the XSDT have valid checksums",
        "ACPI FADT has a PM1 block and SCI 9",
        "ACPI DSDT is valid and names PCI0, COM1 and _S5_",
        "ACPI MADT has one local APIC per vCPU: 4 local APICs, 4 vCPUs expected",
        "# powering off through ACPI S5",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("not ok"), "{out}");
}

/// The PAM modes the probe tried, as the VMM shows them: the `info mtree -f`
/// line at 0xc0000 for each mode matches what the guest observed there
/// (the option ROM, RAM, read-only RAM).
#[test]
fn info_mtree_f_agrees_with_what_the_guest_saw_for_each_pam_mode() {
    let (mut m, out) = probe_machine("console=ttyS0 probe=none", true);
    assert_eq!(m.run().unwrap(), 0);
    let out = out.lock().unwrap().clone();
    for seen in [
        "- PAM 0 (PCI): 0xc0000 is the option ROM, writes dropped",
        "PAM 3 (RAM): 0xc0000 is read/write RAM",
        "PAM 1 (read-only): reads come from RAM, writes are dropped",
    ] {
        assert!(
            out.contains(seen),
            "the guest did not report {seen:?}:\n{out}"
        );
    }
    // The same register writes from the host, through the same bus.
    for (mode, want) in [
        (
            0u8,
            "00000000000c0000-00000000000dffff (prio 1, rom): pc.rom",
        ),
        (3, "0000000000000000-00000000000c3fff (prio 0, ram): pc.ram"),
        (
            1,
            "00000000000c0000-00000000000c3fff (prio 0, rom): pc.ram @00000000000c0000",
        ),
    ] {
        m.pci.config_write(0, 0, 0x5a, &[mode]);
        let flat = vmm::memory::mtree::info_mtree_flat(&m.memory);
        assert!(
            flat.lines()
                .any(|l| l.trim_start().starts_with(want.trim_start())),
            "PAM {mode}: no line {want:?} in:\n{flat}"
        );
    }
}

fn vmm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(testkit::process::vmm_binary())
        .args(args)
        .output()
        .expect("the vmm binary runs")
}

#[test]
fn the_binary_exits_with_the_guest_status_or_a_clear_error() {
    let ok = vmm(&["--memory", "256M", "--serial", "none"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (args, code, says) in [
        (
            &["--memory", "12X"][..],
            2,
            "--memory: \"12X\" is not a size",
        ),
        (&["--cpus", "0"][..], 2, "--cpus"),
        (&["--bogus"][..], 2, "unknown option \"--bogus\""),
        (
            &["--kernel", "/nonexistent/vmlinux"][..],
            1,
            "--kernel /nonexistent/vmlinux",
        ),
        (
            &["--kernel", "/etc/hostname"][..],
            1,
            "neither ELF nor bzImage",
        ),
    ] {
        let o = vmm(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn without_dev_kvm_the_binary_says_so() {
    // A private mount namespace with an empty /dev hides /dev/kvm.
    let o = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} --serial none",
            testkit::process::vmm_binary().display()
        ))
        .output()
        .expect("unshare (util-linux) runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open /dev/kvm"), "{err}");
}

/// The form of the atomicity test: two vCPUs; the BSP switches PAM
/// segment 0 through the host bridge's config space (the transaction, and
/// the pause, run on its own vCPU thread) while AP 1 reads and writes RAM in
/// the slot being split and re-merged.
fn smp_memloop(atomic: bool) -> (Result<u32, String>, String, u64, u32) {
    let (mut m, out) = probe_machine_cpus(
        "console=ttyS0 cpus=2 probe=smp-memloop memloop=300000000",
        atomic,
        2,
    );
    // Without the hold the guest faults, reboots, and switches again on
    // every boot: stop it once a second boot shows, or after a minute.
    let requests = m.requests.clone();
    let stats = m.stats.clone();
    let runner = std::thread::spawn(move || {
        let res = m.run().map_err(|e| format!("{e}"));
        (res, m.boots)
    });
    let start = Instant::now();
    while !runner.is_finished() && start.elapsed() < std::time::Duration::from_secs(60) {
        if out.lock().unwrap().matches("# probe: ring 3").count() > 1 {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    requests.raise(vmm::machine::Request::Stop(0xdead));
    let (res, boots) = runner.join().unwrap();
    let out = out.lock().unwrap().clone();
    (res, out, stats.snapshot()[5], boots)
}

#[test]
fn two_vcpus_one_switching_pam_through_config_space_never_fault() {
    let (res, out, on_ram, boots) = smp_memloop(true);
    eprintln!("{out}");
    assert_eq!(res, Ok(0), "{out}");
    assert_eq!(boots, 1, "no fault, no reboot");
    assert_eq!(on_ram, 0, "no RAM access exited to the VMM");
    assert!(
        out.contains("ok") && out.contains("AP 1's reads all returned what it wrote"),
        "{out}"
    );
    assert!(out.contains("the switches overlapped the loop"), "{out}");
}

#[test]
fn two_vcpus_without_the_hold_do_fault() {
    let (res, out, on_ram, boots) = smp_memloop(false);
    let first = res
        .as_ref()
        .err()
        .and_then(|e| e.lines().next().map(String::from));
    eprintln!("{on_ram} RAM exits, {boots} boots, result {first:?}");
    assert!(
        out.contains("smp-memloop: AP 1 loops"),
        "the loop never started:\n{out}"
    );
    let detected = res != Ok(0) || boots > 1 || on_ram > 0 || out.contains("not ok");
    assert!(detected, "the non-atomic update went unnoticed:\n{out}");
}
