//! An access to an address nothing answers: reads are all ones, writes
//! vanish, and the machine carries on (the VMM logs it, rate-limited).

/// In the PCI hole, where the probe programs no BAR.
const NOWHERE: u64 = 0xd000_0000;

pub fn run() {
    let p = NOWHERE as *mut u32;
    // SAFETY: the probe maps 3-4 GiB uncached and user-accessible; the
    // access exits to the VMM, which answers it.
    let (before, after) = unsafe {
        let before = p.read_volatile();
        p.write_volatile(0x1234_5678);
        (before, p.read_volatile())
    };
    crate::check!(
        "unassigned MMIO reads all ones and ignores writes",
        before == u32::MAX && after == u32::MAX,
        "{NOWHERE:#x}: read {before:#x}, then {after:#x}"
    );
}
