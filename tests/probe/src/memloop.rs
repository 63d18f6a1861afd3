//! `probe=memloop`: write and read back RAM in a tight ring-3 loop while the
//! host changes the memory map around it (PAM switches that split and
//! re-merge the memslot holding this RAM and the probe itself). Every read
//! must return what was written; with a non-atomic memslot update the
//! vCPU faults on memory that exists before and after the switch.

/// Pages at 4 MiB and 8 MiB: inside the slot that holds RAM above 1 MiB.
const PAGES: [u64; 2] = [4 << 20, 8 << 20];

pub fn run(iterations: u64) {
    crate::diag!("memloop start: {iterations} iterations");
    let mut wrong = 0u64;
    let mut first_wrong = (0u64, 0u64, 0u64);
    for i in 0..iterations {
        let page = PAGES[(i & 1) as usize];
        let slot = page + (i & 0x1ff) * 8;
        let value = i ^ 0xa5a5_5a5a_0000_0000;
        let p = slot as *mut u64;
        // SAFETY: both pages are usable RAM (the e820 check passed), outside
        // the probe image, identity-mapped and writable from ring 3.
        let got = unsafe {
            p.write_volatile(value);
            p.read_volatile()
        };
        if got != value {
            if wrong == 0 {
                first_wrong = (slot, value, got);
            }
            wrong += 1;
        }
    }
    crate::check!(
        "memloop: every read returned what was written",
        wrong == 0,
        "{iterations} iterations, {wrong} wrong (first at {:#x}: wrote {:#x}, read {:#x})",
        first_wrong.0,
        first_wrong.1,
        first_wrong.2
    );
}
