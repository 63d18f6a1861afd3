//! The probe guest: a freestanding test program that checks the machine from
//! inside. `entry` sets up in ring 0; everything here runs in ring 3.
//!
//! Output is TAP on COM1; the run ends by writing the number of failed checks
//! to the debug-exit port (0x501). Statuses above 0xff: 0x100 | vector for a
//! CPU exception, 0x1ff for a panic.
//!
//! `probe=` words on the command line select extras: `spin` loops in ring 3
//! after the checks (counting in RBX, no exits) for the host's vCPU control
//! tests; `exception` raises #UD after the checks; `memloop` writes and
//! reads RAM `memloop=N` times while the host changes the memory map;
//! `reset` resets through 0xcf9 once and checks the second boot; `s5`
//! powers off through ACPI instead of the debug-exit port when all passed;
//! `smp-memloop` runs the memory loop on AP 1 while the BSP switches PAM.
//! `cpus=N` says how many vCPUs to expect. `dimm` waits for a hot-added
//! DIMM, uses it (CPU and disk DMA), and ejects it when the host asks.
//! `dirty` writes known pages, paced by the host, for the dirty-log tests.
//! `memtable` stamps known bytes in low and high RAM for the host to read
//! through a vhost-user backend's mappings (before `dimm`, when both run).

#![no_std]
#![no_main]

mod acpi;
mod blk;
mod bootparams;
mod cmdline;
mod dimm;
mod dirty;
mod edu;
mod entry;
mod intr;
mod ioapic;
mod lapic;
mod mem;
mod memloop;
mod memtable;
mod pam;
mod pci;
mod port;
mod ram;
mod reset;
mod sci;
mod serial;
mod smp;
mod tap;
mod unassigned;

use bootparams::{BootParams, E820_RAM};
use cmdline::Cmdline;

const MIB: u64 = 1 << 20;

#[no_mangle]
extern "C" fn probe_main(boot_params: u64) -> ! {
    println!("# probe: ring 3, boot_params at {boot_params:#x}");
    let params = BootParams::new(boot_params);
    let cmdline = boot_checks(&params);
    ram::run(&params);
    pci::run();
    blk::run(&cmdline);
    edu::run();
    pam::run();
    unassigned::run();
    let cpus = cmdline.number("cpus").unwrap_or(1);
    acpi::run(boot_params, cpus);
    let smp_loop = cmdline.selects("smp-memloop").then(|| cmdline.number("memloop").unwrap_or(1_000_000));
    smp::run(cpus, smp_loop);
    if cmdline.selects("dirty") {
        dirty::run();
    }
    if cmdline.selects("dirtydma") {
        dirty::dma();
    }
    if cmdline.selects("dirtyrate") {
        dirty::rate(
            cmdline.number("dirtyrate-mb").unwrap_or(32),
            cmdline.number("dirtyrate-secs").unwrap_or(4),
        );
    }
    if cmdline.selects("memtable") {
        memtable::run(&params);
    }
    if cmdline.selects("dimm") {
        dimm::run();
    }
    if cmdline.selects("reset") {
        reset::run(cmdline.selects("kbd"));
    }
    if cmdline.selects("memloop") {
        memloop::run(cmdline.number("memloop").unwrap_or(1_000_000));
    }
    if cmdline.selects("exception") {
        diag!("raising #UD");
        // SAFETY: ud2 faults; the exception stub ends the run with 0x106.
        unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
    }
    if cmdline.selects("spin") {
        spin();
    }
    if cmdline.selects("s5") && tap::failed() == 0 {
        tap::plan();
        acpi::power_off();
    }
    tap::finish()
}

/// Checks of what the VMM handed over; returns the parsed command line.
fn boot_checks(params: &BootParams) -> Cmdline {
    check!(
        "boot_params has the boot flag and HdrS",
        params.has_signature(),
        "at {:#x}",
        params.base()
    );
    let count = params.e820_count();
    check!(
        "e820 table has entries",
        count > 0 && count <= 128,
        "{count} entries"
    );
    for e in params.e820() {
        diag!(
            "e820 {:#012x}-{:#012x} type {}",
            e.addr,
            e.end().saturating_sub(1),
            e.kind
        );
    }
    let low = params.ram_at(0);
    check!("e820 has usable RAM at 0", low.is_some());
    let high = params.ram_at(MIB);
    check!(
        "e820 has usable RAM at 1 MiB",
        high.is_some(),
        "{} MiB",
        high.map_or(0, |e| e.size / MIB)
    );
    let sorted = params
        .e820()
        .zip(params.e820().skip(1))
        .all(|(a, b)| a.end() <= b.addr);
    check!("e820 entries are sorted and disjoint", sorted);
    let ram_count = params.e820().filter(|e| e.kind == E820_RAM).count();
    diag!("{ram_count} RAM entries");

    let cmdline = Cmdline::read(params.cmdline_addr(), params.cmdline_size() as usize);
    check!(
        "command line is readable",
        cmdline.is_some(),
        "at {:#x}, {} bytes max",
        params.cmdline_addr(),
        params.cmdline_size()
    );
    let cmdline = cmdline.unwrap_or_else(Cmdline::empty);
    diag!("cmdline: {}", cmdline.as_str());
    cmdline
}

/// `probe=spin`: count in RBX forever, for the host's pause/kick tests.
fn spin() -> ! {
    diag!("spinning");
    // SAFETY: an endless register-only loop.
    unsafe {
        core::arch::asm!(
            "xor ebx, ebx",
            "2:",
            "inc rbx",
            "jmp 2b",
            options(noreturn, nomem, nostack)
        )
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("Bail out! panic: {info}");
    tap::exit(tap::PANIC_STATUS)
}
