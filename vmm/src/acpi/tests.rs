//! The tables: checksums, pointers, entry counts, AML names.

use super::*;

fn find(pieces: &[(u64, Vec<u8>)], at: u64) -> &[u8] {
    &pieces
        .iter()
        .find(|(a, _)| *a == at)
        .expect("a table at that address")
        .1
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn tables(cpus: u8) -> (Vec<(u64, Vec<u8>)>, u64) {
    build(&AcpiConfig {
        cpus,
        pci_hole: (0x2000_0000, 0xfec0_0000),
        pci_window64: (1 << 36, 1 << 38),
        memory_hotplug: None,
        ram: (512 << 20, 0),
    })
}

#[test]
fn every_table_sums_to_zero_and_the_pointers_chain() {
    let (pieces, rsdp_at) = tables(2);
    let rsdp = find(&pieces, rsdp_at);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&rsdp[..36]), 0, "RSDP extended checksum");
    let xsdt_at = u64_at(rsdp, 24);
    let xsdt = find(&pieces, xsdt_at);
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!(u32_at(xsdt, 4) as usize, xsdt.len());
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(xsdt, o))
        .collect();
    let mut sigs = Vec::new();
    for &e in &entries {
        let t = find(&pieces, e);
        assert_eq!(u32_at(t, 4) as usize, t.len(), "length field");
        assert_eq!(sum(t), 0, "{:?} checksum", std::str::from_utf8(&t[..4]));
        sigs.push(t[..4].to_vec());
    }
    assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
    for (at, t) in &pieces {
        assert!(*at >= TABLES_START && at + t.len() as u64 <= TABLES_START + TABLES_SIZE);
    }
}

#[test]
fn the_fadt_points_at_the_dsdt_pm_block_and_reset_register() {
    let (pieces, rsdp_at) = tables(1);
    let xsdt = find(&pieces, u64_at(find(&pieces, rsdp_at), 24));
    let fadt = find(&pieces, u64_at(xsdt, 36));
    assert_eq!(u32_at(fadt, 56), u32::from(PM_BASE), "PM1a_EVT_BLK");
    assert_eq!(u32_at(fadt, 64), u32::from(PM1_CNT), "PM1a_CNT_BLK");
    assert_eq!(u32_at(fadt, 76), u32::from(PM_TMR), "PM_TMR_BLK");
    assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI_INT");
    // RESET_REG: GAS at 116 (system I/O, 8 bits, port 0xcf9), value 6.
    assert_eq!(fadt[116], 1);
    assert_eq!(u64_at(fadt, 120), 0xcf9);
    assert_eq!(fadt[128], 6);
    let dsdt = find(&pieces, u64_at(fadt, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    assert_eq!(sum(dsdt), 0);
    let has = |name: &[u8]| dsdt.windows(name.len()).any(|w| w == name);
    for name in [&b"PCI0"[..], b"_S5_", b"COM1", b"_CRS", b"_HID"] {
        assert!(has(name), "DSDT names {:?}", std::str::from_utf8(name));
    }
}

#[test]
fn the_madt_has_a_local_apic_per_cpu_and_the_ioapic() {
    for cpus in [1u8, 4] {
        let (pieces, rsdp_at) = tables(cpus);
        let xsdt = find(&pieces, u64_at(find(&pieces, rsdp_at), 24));
        let madt = find(&pieces, u64_at(xsdt, 44));
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let mut off = 44;
        let mut kinds = Vec::new();
        while off < madt.len() {
            kinds.push(madt[off]);
            off += usize::from(madt[off + 1]);
        }
        assert_eq!(off, madt.len(), "entries fill the table exactly");
        assert_eq!(kinds.iter().filter(|k| **k == 0).count(), usize::from(cpus));
        assert_eq!(kinds.iter().filter(|k| **k == 1).count(), 1, "one IOAPIC");
        assert_eq!(
            kinds.iter().filter(|k| **k == 2).count(),
            2,
            "two overrides"
        );
        assert_eq!(kinds.iter().filter(|k| **k == 4).count(), 1, "LINT1 NMI");
    }
}

/// Disassembles `table` with iasl (Debian's acpica-tools, which .ci/run
/// installs) and returns the ASL text.
fn disassemble(name: &str, table: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("vmm-acpi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, table).unwrap();
    let out = std::process::Command::new("iasl")
        .current_dir(&dir)
        .args(["-d", dat.to_str().unwrap()])
        .output()
        .expect("iasl (acpica-tools) must be installed");
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && !dsl.is_empty(),
        "iasl failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dsl
}

#[test]
fn memory_hotplug_aml_and_srat_disassemble_as_qemus_do() {
    let (pieces, _) = build(&AcpiConfig {
        cpus: 2,
        pci_hole: (0x2000_0000, 0xfec0_0000),
        pci_window64: (1 << 36, 1 << 38),
        memory_hotplug: Some((4, 1 << 32, 1 << 30)),
        ram: (512 << 20, 0),
    });
    let table = |sig: &[u8]| {
        pieces
            .iter()
            .find(|(_, b)| &b[..4] == sig)
            .map(|(_, b)| b.clone())
            .expect("the table is there")
    };
    let dsdt = disassemble("dsdt", &table(b"DSDT"));
    for want in [
        "Device (MHPC)",
        "OperationRegion (HPMR, SystemIO, 0x0A00, 0x18)",
        "Method (MSCN, 0, Serialized)",
        "Method (MCRS, 1, Serialized)",
        "Device (MP03)",
        "EisaId (\"PNP0C80\") /* Memory Device */",
        "Notify (MP02, Arg1)",
        "Method (_E03, 0, NotSerialized)",
        "\\_SB.MHPC.MSCN ()",
        "\\_SB.MHPC.MEJ0 (Zero, Arg0)",
    ] {
        assert!(dsdt.contains(want), "no {want:?} in:\n{dsdt}");
    }
    let srat = disassemble("srat", &table(b"SRAT"));
    assert!(srat.contains("Hot Pluggable : 1"), "{srat}");
    assert!(srat.contains("Proximity Domain : 00000001"), "{srat}");
    let fadt = table(b"FACP");
    assert_eq!(u32_at(&fadt, 80), 0xafe0, "GPE0_BLK");
    assert_eq!(fadt[92], 4, "GPE0_BLK_LEN");
}

#[test]
fn the_prt_routes_every_slots_intx_to_gsis_16_to_23_rotated_by_slot() {
    let (pieces, _) = tables(1);
    let dsdt = pieces
        .iter()
        .find(|(_, b)| &b[..4] == b"DSDT")
        .map(|(_, b)| b.clone())
        .expect("a DSDT");
    let dsl = disassemble("prt", &dsdt);
    let flat: String = dsl.split_whitespace().collect();
    let (_, prt) = flat
        .split_once("Name(_PRT,Package(0x80)")
        .unwrap_or_else(|| panic!("no 128-entry _PRT in:\n{dsl}"));
    let value = |v: &str| match v {
        "Zero" => 0,
        "One" => 1,
        _ => u32::from_str_radix(v.trim_start_matches("0x"), 16).expect(v),
    };
    let entries: Vec<[u32; 4]> = prt
        .split("Package(0x04){")
        .skip(1)
        .take(128)
        .map(|e| {
            let fields: Vec<u32> = e.split('}').next().unwrap().split(',').map(value).collect();
            fields.try_into().expect("four fields")
        })
        .collect();
    assert_eq!(entries.len(), 128);
    for slot in 0..32u32 {
        for pin in 0..4u32 {
            let want = [slot << 16 | 0xffff, pin, 0, 16 + (slot + pin) % 8];
            assert!(entries.contains(&want), "no {want:x?} in {entries:x?}");
        }
    }
    assert!(entries.contains(&[0x1f_ffff, 0, 0, 0x17]), "slot 31 INTA#");
    assert!(entries.contains(&[0x1f_ffff, 1, 0, 0x10]), "slot 31 INTB#");
    let pci0 = dsl.find("Device (PCI0)").expect("PCI0");
    let at = dsl.find("Name (_PRT").expect("_PRT");
    let com1 = dsl.find("Device (COM1)").expect("COM1");
    assert!(pci0 < at && at < com1, "the _PRT is PCI0's");
}
