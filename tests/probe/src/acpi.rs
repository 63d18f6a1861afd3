//! ACPI from inside: the RSDP the zero page points at, the XSDT and its
//! tables (checksums, FADT PM1 block, one local APIC per vCPU in the MADT),
//! the DSDT's names; and, with `probe=s5`, power-off through PM1a_CNT.

use crate::port::outw;

/// `acpi_rsdp_addr` in the zero page (boot protocol 2.14).
const RSDP_FIELD: u64 = 0x70;

fn bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the tables lie in identity-mapped low RAM (an e820 ACPI
    // range) that nothing writes while the probe reads.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// A table at `addr` if its length is sane and it sums to zero.
fn table(addr: u64) -> Option<&'static [u8]> {
    if addr == 0 || addr >= 1 << 32 {
        return None;
    }
    let len = u32_at(bytes(addr, 8), 4) as usize;
    if !(36..=0x10000).contains(&len) {
        return None;
    }
    let t = bytes(addr, len);
    (sum(t) == 0).then_some(t)
}

/// The PM1a control port, for power-off.
static mut PM1A_CNT: u16 = 0;

pub fn run(boot_params: u64, cpus: u64) {
    // SAFETY: the zero page is identity-mapped RAM.
    let rsdp_at = unsafe { ((boot_params + RSDP_FIELD) as *const u64).read_volatile() };
    if rsdp_at == 0 {
        crate::diag!("no ACPI RSDP in the zero page: ACPI checks skipped");
        return;
    }
    let rsdp = bytes(rsdp_at, 36);
    let ok = &rsdp[..8] == b"RSD PTR " && sum(&rsdp[..20]) == 0 && sum(rsdp) == 0;
    crate::check!("ACPI RSDP from the zero page is valid", ok, "at {rsdp_at:#x}");
    if !ok {
        return;
    }
    let Some(xsdt) = table(u64_at(rsdp, 24)).filter(|t| &t[..4] == b"XSDT") else {
        crate::check!("ACPI XSDT is valid", false);
        return;
    };
    let (mut fadt, mut madt) = (None, None);
    let mut all_sum = true;
    for off in (36..xsdt.len()).step_by(8) {
        match table(u64_at(xsdt, off)) {
            Some(t) if &t[..4] == b"FACP" => fadt = Some(t),
            Some(t) if &t[..4] == b"APIC" => madt = Some(t),
            Some(_) => {}
            None => all_sum = false,
        }
    }
    crate::check!("ACPI tables listed in the XSDT have valid checksums", all_sum);
    let Some(fadt) = fadt else {
        crate::check!("ACPI FADT present", false);
        return;
    };
    let pm1a_cnt = u32_at(fadt, 64);
    crate::check!(
        "ACPI FADT has a PM1 block and SCI 9",
        pm1a_cnt != 0 && fadt[46] == 9,
        "PM1a_CNT {pm1a_cnt:#x}"
    );
    // SAFETY: single-threaded ring-3 code writes this once.
    unsafe { PM1A_CNT = pm1a_cnt as u16 };
    let dsdt = table(u64_at(fadt, 140));
    let names = |t: &[u8]| [&b"PCI0"[..], b"_S5_", b"COM1"].iter().all(|n| t.windows(4).any(|w| w == *n));
    crate::check!(
        "ACPI DSDT is valid and names PCI0, COM1 and _S5_",
        dsdt.is_some_and(|t| &t[..4] == b"DSDT" && names(t))
    );
    let lapics = madt.map_or(0, |m| {
        let mut n = 0;
        let mut off = 44;
        while off + 2 <= m.len() && m[off + 1] >= 2 {
            n += u64::from(m[off] == 0);
            off += usize::from(m[off + 1]);
        }
        n
    });
    crate::check!(
        "ACPI MADT has one local APIC per vCPU",
        lapics == cpus,
        "{lapics} local APICs, {cpus} vCPUs expected"
    );
}

/// Powers off through ACPI: SLP_TYP = 5 (the DSDT's \_S5) with SLP_EN.
pub fn power_off() {
    // SAFETY: written once in run, read here on the same thread.
    let port = unsafe { PM1A_CNT };
    if port != 0 {
        crate::diag!("powering off through ACPI S5");
        outw(port, 5 << 10 | 1 << 13);
    }
}
