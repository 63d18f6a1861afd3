//! Application processors. Each AP arrives in ring 3 at `ap_main(index)`,
//! reports in, and waits for work in a mailbox of atomics.
//!
//! `probe=smp-memloop` (with `memloop=N`): AP 1 writes and reads RAM N times
//! (as in memloop.rs) while the BSP switches PAM segment 0 between RAM and
//! PCI through the host bridge's configuration space as fast as it can; each
//! switch splits or re-merges the memslot holding all RAM above 1 MiB, where
//! AP 1's pages, code and page tables live.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::pci::{read_config, write_config, Bdf};

static ARRIVED: AtomicU32 = AtomicU32::new(0);
static COMMAND: AtomicU32 = AtomicU32::new(0);
static ITERATIONS: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU32 = AtomicU32::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);

const MEMLOOP: u32 = 1;
/// Pages at 4 MiB and 8 MiB, in the slot above 1 MiB.
const PAGES: [u64; 2] = [4 << 20, 8 << 20];
const HOST: Bdf = Bdf {
    bus: 0,
    device: 0,
    function: 0,
};

#[no_mangle]
extern "C" fn ap_main(index: u64) -> ! {
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    loop {
        if index == 1 && COMMAND.load(Ordering::Acquire) == MEMLOOP {
            COMMAND.store(0, Ordering::Release);
            STARTED.store(1, Ordering::Release);
            WRONG.store(memloop(ITERATIONS.load(Ordering::Acquire)), Ordering::Release);
            DONE.store(1, Ordering::Release);
        }
        core::hint::spin_loop();
    }
}

fn memloop(iterations: u64) -> u64 {
    let mut wrong = 0;
    for i in 0..iterations {
        let slot = PAGES[(i & 1) as usize] + (i & 0x1ff) * 8;
        let value = i ^ 0x5a5a_a5a5_0000_0000;
        let p = slot as *mut u64;
        // SAFETY: usable RAM pages outside the probe image, identity-mapped
        // and writable from ring 3; only AP 1 touches them.
        let got = unsafe {
            p.write_volatile(value);
            p.read_volatile()
        };
        wrong += u64::from(got != value);
    }
    wrong
}

/// Spins up to `limit` times for `cond`.
fn wait(limit: u64, cond: impl Fn() -> bool) -> bool {
    for _ in 0..limit {
        if cond() {
            return true;
        }
        core::hint::spin_loop();
    }
    cond()
}

/// Sets PAM segment 0 (byte 0x59, high nibble = dword 0x58 bits 12-15).
fn set_bios_segment(mode: u32) {
    let v = read_config(HOST, 0x58);
    write_config(HOST, 0x58, (v & !(0xf << 12)) | mode << 12);
}

pub fn run(cpus: u64, memloop_iterations: Option<u64>) {
    if cpus <= 1 {
        return;
    }
    let aps = (cpus - 1) as u32;
    let all = wait(1 << 30, || ARRIVED.load(Ordering::Acquire) >= aps);
    crate::check!(
        "every vCPU reached ring 3",
        all,
        "{} of {cpus}",
        ARRIVED.load(Ordering::Acquire) + 1
    );
    let Some(iterations) = memloop_iterations else {
        return;
    };
    if !all {
        return;
    }
    ITERATIONS.store(iterations, Ordering::Release);
    COMMAND.store(MEMLOOP, Ordering::Release);
    wait(1 << 30, || STARTED.load(Ordering::Acquire) == 1);
    crate::diag!("smp-memloop: AP 1 loops {iterations} times, the BSP switches PAM");
    let mut switches = 0u64;
    while DONE.load(Ordering::Acquire) == 0 {
        set_bios_segment(if switches.is_multiple_of(2) { 3 } else { 0 });
        switches += 1;
    }
    set_bios_segment(0);
    let wrong = WRONG.load(Ordering::Acquire);
    crate::check!(
        "smp-memloop: AP 1's reads all returned what it wrote while the BSP switched PAM",
        wrong == 0,
        "{iterations} iterations, {wrong} wrong, {switches} switches"
    );
    crate::check!(
        "smp-memloop: the switches overlapped the loop",
        switches >= 20,
        "{switches} switches"
    );
}
