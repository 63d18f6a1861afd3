//! Boots the probe guest on /dev/kvm through `boot` and `kvm`.
//! These tests need /dev/kvm and fail, saying so, without it.

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::boot::{self, BootSpec, CpuTemplate};
use vmm::kvm::{ExitAction, ExitHandler, VcpuEvent, VcpuSet, VcpuStop, Vm};

const MEM_SIZE: u64 = 256 << 20;
const PCI_HOLE_START: u64 = 0xc000_0000;
const COM1: u16 = 0x3f8;
const COM1_LSR: u16 = 0x3fd;
const DEBUG_EXIT: u16 = 0x501;
/// The probe's image lies between 1 MiB and 2 MiB.
const PROBE_IMAGE: std::ops::Range<u64> = 0x10_0000..0x20_0000;
const USER_CS: u16 = 0x23;
/// Top of the probe's ring-0 stack, fixed by its linker script.
const PROBE_KERNEL_STACK_TOP: u64 = 0x20_0000;

/// Collects COM1 output and the debug-exit status; answers all ones elsewhere.
#[derive(Default)]
struct ProbeHandler {
    serial: Mutex<Vec<u8>>,
    exit_status: Mutex<Option<u32>>,
}

impl ProbeHandler {
    fn output(&self) -> String {
        String::from_utf8_lossy(&self.serial.lock().unwrap()).replace('\r', "")
    }
}

impl ExitHandler for ProbeHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        let value = match port {
            // THR empty, transmitter empty.
            COM1_LSR => 0x60,
            _ => 0xff,
        };
        data.fill(value);
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> ExitAction {
        match port {
            COM1 => {
                self.serial.lock().unwrap().extend_from_slice(&data[..1]);
                ExitAction::Continue
            }
            DEBUG_EXIT => {
                let mut bytes = [0u8; 4];
                let n = data.len().min(4);
                bytes[..n].copy_from_slice(&data[..n]);
                *self.exit_status.lock().unwrap() = Some(u32::from_le_bytes(bytes));
                ExitAction::Poweroff
            }
            _ => ExitAction::Continue,
        }
    }

    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn mmio_write(&self, _addr: u64, _data: &[u8]) -> ExitAction {
        ExitAction::Continue
    }
}

struct Guest {
    mem: GuestMemoryMmap,
    handler: Arc<ProbeHandler>,
    vcpus: VcpuSet,
    events: Receiver<VcpuEvent>,
    started: Instant,
}

fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs /dev/kvm, which cannot be opened: {e}");
    }
}

fn boot_probe(cmdline: &str) -> Guest {
    let elf = testkit::probe::build().expect("probe builds");
    boot_kernel(&elf, cmdline, 1)
}

/// Boots `kernel` on `cpus` vCPUs; vCPU 0 enters it, the others wait for
/// INIT/SIPI in the in-kernel LAPIC.
fn boot_kernel(kernel: &std::path::Path, cmdline: &str, cpus: u8) -> Guest {
    require_kvm();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let vm = Arc::new(Vm::new().expect("VM with irqchip and PIT"));
    vm.map_memory(&mem).unwrap();
    let e820 = boot::pc_layout(MEM_SIZE, PCI_HOLE_START);
    let info = boot::load(
        &mem,
        &BootSpec {
            kernel,
            cmdline,
            initrd: None,
            e820: &e820,
            acpi_rsdp: None,
        },
    )
    .expect("probe loads");
    assert_eq!(info.entry(), GuestAddress(0x10_0000));
    let template = CpuTemplate::from_kvm(vm.kvm()).unwrap();
    let vcpus: Vec<_> = (0..cpus)
        .map(|cpu| {
            let vcpu = vm.create_vcpu(cpu).unwrap();
            let boot = (cpu == 0).then_some(&info);
            boot::setup_vcpu(&vcpu, &template, cpu, cpus, boot).expect("vCPU set up");
            vcpu
        })
        .collect();
    let handler = Arc::new(ProbeHandler::default());
    let (tx, events) = channel();
    let started = Instant::now();
    let vcpus = VcpuSet::spawn(vm, vcpus, handler.clone(), tx).unwrap();
    Guest {
        mem,
        handler,
        vcpus,
        events,
        started,
    }
}

#[test]
fn probe_passes_its_checks() {
    let guest = boot_probe("console=ttyS0 probe=none");
    let event = guest
        .events
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("no exit in 120 s; output:\n{}", guest.handler.output()));
    let elapsed = guest.started.elapsed();
    let output = guest.handler.output();
    eprintln!("probe output ({elapsed:?} from vCPU start to exit):\n{output}");
    assert_eq!(
        event,
        VcpuEvent {
            cpu: 0,
            stop: VcpuStop::Poweroff
        },
        "{output}"
    );
    let status = guest
        .handler
        .exit_status
        .lock()
        .unwrap()
        .unwrap_or(u32::MAX);
    assert_eq!(status, 0, "{output}{}", exception_report(&guest, status));
    for line in [
        "boot_params has the boot flag and HdrS",
        "e820 table has entries: 3 entries",
        "e820 has usable RAM at 0",
        "e820 has usable RAM at 1 MiB: 255 MiB",
        "e820 entries are sorted and disjoint",
        "command line is readable",
        "RAM above 1 MiB is read/write: 4 pages tested",
        "pci bus 0 scanned: 0 functions",
    ] {
        assert!(
            output.lines().any(|l| l.starts_with("ok ")
                && l.split_once(" - ")
                    .is_some_and(|(_, check)| check.starts_with(line))),
            "no `ok` line for {line:?} in:\n{output}"
        );
    }
    assert!(
        output.contains("# cmdline: console=ttyS0 probe=none"),
        "{output}"
    );
    assert!(!output.contains("not ok"), "{output}");
    let oks = output.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        output.contains(&format!("\n1..{oks}\n")),
        "the plan counts every check:\n{output}"
    );
}

/// The probe's exception stubs run on its kernel stack (top at
/// `PROBE_KERNEL_STACK_TOP`) and report `0x100 | vector`; the CPU's frame
/// is still there: error code (if any), RIP, CS, RFLAGS, RSP, SS.
fn exception_report(guest: &Guest, status: u32) -> String {
    if !(0x100..0x120).contains(&status) {
        return String::new();
    }
    let vector = status & 0xff;
    let has_error_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
    let words = if has_error_code { 6 } else { 5 };
    let frame: Vec<u64> = (0..words)
        .map(|i| {
            let addr = PROBE_KERNEL_STACK_TOP - 8 * (words - i);
            guest.mem.read_obj(GuestAddress(addr)).unwrap_or(u64::MAX)
        })
        .collect();
    format!("\nCPU exception {vector} in the probe, frame (error code?, rip, cs, rflags, rsp, ss): {frame:#x?}")
}

/// Waits until the guest has printed `text`.
fn wait_for_output(guest: &Guest, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !guest.handler.output().contains(text) {
        if let Ok(event) = guest.events.try_recv() {
            panic!("vCPU stopped early: {event:?}\n{}", guest.handler.output());
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in 120 s:\n{}",
            guest.handler.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// RBX (the spin counter), RIP and CS of vCPU 0, read on its own thread.
fn spin_state(vcpus: &VcpuSet) -> (u64, u64, u16) {
    vcpus
        .run_on_cpu(0, |fd| {
            let regs = fd.get_regs().unwrap();
            let sregs = fd.get_sregs().unwrap();
            (regs.rbx, regs.rip, sregs.cs.selector)
        })
        .expect("vCPU runs the work")
}

#[test]
fn kick_pause_resume_and_run_on_cpu_on_a_spinning_guest() {
    let guest = boot_probe("probe=spin");
    wait_for_output(&guest, "# spinning");

    // The guest now loops in ring 3 without exits: only a kick gets the
    // vCPU thread out of KVM_RUN, so work completing proves the kick.
    let (count, rip, cs) = spin_state(&guest.vcpus);
    assert!(PROBE_IMAGE.contains(&rip), "rip {rip:#x}");
    assert_eq!(cs, USER_CS, "the probe spins in ring 3");
    guest.vcpus.kick(0).unwrap();

    guest.vcpus.pause_parked();
    assert!(guest.vcpus.is_paused(0).unwrap());
    let (paused_a, _, _) = spin_state(&guest.vcpus);
    std::thread::sleep(Duration::from_millis(50));
    let (paused_b, _, _) = spin_state(&guest.vcpus);
    assert_eq!(paused_a, paused_b, "a paused vCPU does not run");
    assert!(paused_a >= count);

    guest.vcpus.resume();
    std::thread::sleep(Duration::from_millis(50));
    assert!(!guest.vcpus.is_paused(0).unwrap());
    let (running, _, _) = spin_state(&guest.vcpus);
    assert!(running > paused_b, "a resumed vCPU runs again");

    guest.vcpus.stop();
    let event = guest.events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(event.stop, VcpuStop::Requested);
    assert!(guest.vcpus.run_on_cpu(0, |_| ()).is_err());
}

#[test]
fn probe_exception_is_reported_with_its_frame() {
    let guest = boot_probe("probe=exception");
    let event = guest
        .events
        .recv_timeout(Duration::from_secs(120))
        .expect("the probe stops");
    assert_eq!(event.stop, VcpuStop::Poweroff);
    let status = guest.handler.exit_status.lock().unwrap().unwrap();
    assert_eq!(status, 0x106, "#UD reported as 0x100 | 6");
    let report = exception_report(&guest, status);
    assert!(report.contains("CPU exception 6"), "{report}");
    // Frame of #UD (no error code): rip, cs, ...
    let rip: u64 = guest
        .mem
        .read_obj(GuestAddress(PROBE_KERNEL_STACK_TOP - 40))
        .unwrap();
    let cs: u64 = guest
        .mem
        .read_obj(GuestAddress(PROBE_KERNEL_STACK_TOP - 32))
        .unwrap();
    assert!(PROBE_IMAGE.contains(&rip), "rip {rip:#x}");
    assert_eq!(cs, u64::from(USER_CS));
}

/// A minimal ELF: one segment at 1 MiB holding `code`, entered at its start.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let mut elf = vec![0u8; 120];
    elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&62u16.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    elf[64..68].copy_from_slice(&1u32.to_le_bytes());
    elf[68..72].copy_from_slice(&5u32.to_le_bytes());
    elf[72..80].copy_from_slice(&120u64.to_le_bytes());
    elf[80..88].copy_from_slice(&0x10_0000u64.to_le_bytes());
    elf[88..96].copy_from_slice(&0x10_0000u64.to_le_bytes());
    let len = code.len() as u64;
    elf[96..104].copy_from_slice(&len.to_le_bytes());
    elf[104..112].copy_from_slice(&len.to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

#[test]
fn triple_fault_is_reported_as_shutdown() {
    // ud2 under the boot IDT, which has no valid gate: #UD, #GP, #DF, reset.
    let dir = std::env::temp_dir().join(format!("vmm-triple-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("ud2.elf");
    std::fs::write(&kernel, tiny_elf(&[0x0f, 0x0b])).unwrap();
    let guest = boot_kernel(&kernel, "", 1);
    let event = guest.events.recv_timeout(Duration::from_secs(60));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        event.expect("the vCPU stops"),
        VcpuEvent {
            cpu: 0,
            stop: VcpuStop::Shutdown
        }
    );
}

#[test]
fn pause_reaches_a_vcpu_parked_in_the_kernel() {
    let elf = testkit::probe::build().expect("probe builds");
    let guest = boot_kernel(&elf, "probe=spin", 2);
    wait_for_output(&guest, "# spinning");
    // vCPU 1 waits for INIT/SIPI inside KVM_RUN; only a signal gets it out.
    guest.vcpus.pause_parked();
    assert!(guest.vcpus.is_paused(0).unwrap());
    assert!(guest.vcpus.is_paused(1).unwrap());
    let state = guest
        .vcpus
        .run_on_cpu(1, |fd| fd.get_mp_state().unwrap().mp_state)
        .unwrap();
    assert_eq!(state, kvm_bindings::KVM_MP_STATE_UNINITIALIZED);
    let apic_id = guest
        .vcpus
        .run_on_cpu(1, |fd| {
            fd.get_cpuid2(80)
                .unwrap()
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .map(|e| e.ebx >> 24)
        })
        .unwrap();
    assert_eq!(apic_id, Some(1));
    guest.vcpus.resume();
    let (count, _, _) = spin_state(&guest.vcpus);
    guest.vcpus.stop();
    assert!(count > 0);
    let mut stops: Vec<_> = guest.events.try_iter().collect();
    stops.sort_by_key(|e| e.cpu);
    assert_eq!(
        stops,
        vec![
            VcpuEvent {
                cpu: 0,
                stop: VcpuStop::Requested
            },
            VcpuEvent {
                cpu: 1,
                stop: VcpuStop::Requested
            },
        ]
    );
}

#[test]
fn emulation_failure_is_reported_with_registers() {
    // PVM emulates ring 0 and cannot emulate `lock cmpxchg16b`; on hosts
    // with hardware KVM it runs, and the ud2 after it triple-faults.
    let dir = std::env::temp_dir().join(format!("vmm-emul-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("cmpxchg16b.elf");
    let code = [0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x24, 0x0f, 0x0b];
    std::fs::write(&kernel, tiny_elf(&code)).unwrap();
    let guest = boot_kernel(&kernel, "", 1);
    let event = guest.events.recv_timeout(Duration::from_secs(60));
    std::fs::remove_dir_all(&dir).unwrap();
    let stop = event.expect("the vCPU stops").stop;
    eprintln!("{stop:?}");
    match stop {
        VcpuStop::InternalError { registers, .. } => {
            assert!(registers.contains("rip=0x0000000000100000"), "{registers}");
            assert!(registers.contains("cr3=0x9000"), "{registers}");
        }
        VcpuStop::Shutdown => {}
        other => panic!("unexpected stop: {other:?}"),
    }
}

#[test]
fn pauses_nest_and_a_stray_resume_does_nothing() {
    let guest = boot_probe("probe=spin");
    wait_for_output(&guest, "# spinning");
    // A resume with no pause outstanding must not undo a later pause.
    guest.vcpus.resume();
    // The monitor's stop, then a memslot update's pause/resume inside it.
    guest.vcpus.pause();
    guest.vcpus.pause();
    guest.vcpus.resume();
    let (a, _, _) = spin_state(&guest.vcpus);
    std::thread::sleep(Duration::from_millis(50));
    let (b, _, _) = spin_state(&guest.vcpus);
    assert_eq!(
        a, b,
        "one pause is still outstanding: the vCPU stays paused"
    );
    guest.vcpus.resume();
    std::thread::sleep(Duration::from_millis(50));
    let (c, _, _) = spin_state(&guest.vcpus);
    assert!(c > b, "the last resume lets the vCPU run");
    let tids = guest.vcpus.thread_ids();
    assert_eq!(tids.len(), 1);
    let task = format!("/proc/self/task/{}/comm", tids[0]);
    let comm = std::fs::read_to_string(&task).expect("the vCPU thread's comm");
    assert_eq!(comm.trim(), "vcpu0");
    guest.vcpus.stop();
}
