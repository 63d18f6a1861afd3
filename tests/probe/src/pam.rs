//! The i440FX PAM seen from inside: switching the segment at 0xc0000
//! through the host bridge's configuration space and checking what reads and
//! writes reach in each mode. Runs when the host bridge is present.

use crate::pci::{read_config, write_config, Bdf, Function};

const HOST: Bdf = Bdf {
    bus: 0,
    device: 0,
    function: 0,
};
/// PAM1 (0x5a) low nibble controls 0xc0000-0xc3fff; it is byte 2 of the
/// dword at 0x58.
const PAM_DWORD: u8 = 0x58;
const PAM1_SHIFT: u32 = 16;
const SEGMENT: u64 = 0xc0000;

fn set_mode(mode: u32) {
    let v = read_config(HOST, PAM_DWORD);
    let v = (v & !(0xf << PAM1_SHIFT)) | (mode << PAM1_SHIFT);
    write_config(HOST, PAM_DWORD, v);
}

fn mode() -> u32 {
    (read_config(HOST, PAM_DWORD) >> PAM1_SHIFT) & 0xf
}

fn read() -> u32 {
    // SAFETY: 0xc0000 is identity-mapped; whatever backs it (ROM, RAM,
    // nothing) answers a read.
    unsafe { (SEGMENT as *const u32).read_volatile() }
}

fn write(v: u32) {
    // SAFETY: as above; a write that nothing takes is dropped.
    unsafe { (SEGMENT as *mut u32).write_volatile(v) }
}

pub fn run() {
    let host = Function::probe(HOST).filter(|f| f.vendor == 0x8086 && f.device == 0x1237);
    if host.is_none() {
        crate::diag!("no i440FX host bridge at 00:00.0: PAM checks skipped");
        return;
    }
    set_mode(0);
    crate::check!("PAM register reads back", mode() == 0, "mode {}", mode());
    let rom = read();
    write(!rom);
    crate::check!(
        "PAM 0 (PCI): 0xc0000 is the option ROM, writes dropped",
        read() == rom,
        "read {:#x}",
        read()
    );
    crate::diag!("pam mode 0 reads {rom:#010x}");

    set_mode(3);
    write(0x1234_5678);
    crate::check!(
        "PAM 3 (RAM): 0xc0000 is read/write RAM",
        read() == 0x1234_5678,
        "read {:#x}",
        read()
    );
    set_mode(1);
    write(0xdead_beef);
    crate::check!(
        "PAM 1 (read-only): reads come from RAM, writes are dropped",
        read() == 0x1234_5678,
        "read {:#x}",
        read()
    );
    set_mode(0);
    crate::check!(
        "PAM 0 again: the option ROM is back",
        read() == rom,
        "read {:#x}",
        read()
    );
    set_mode(3);
    crate::check!(
        "PAM 3 again: the RAM kept its value",
        read() == 0x1234_5678,
        "read {:#x}",
        read()
    );
    set_mode(0);
}
