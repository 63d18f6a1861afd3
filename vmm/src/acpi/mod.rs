//! ACPI tables for the PC machine, built with `acpi_tables`: RSDP, XSDT,
//! FADT (PM1 block, PM timer, SCI 9, reset register 0xcf9), MADT (a local
//! APIC per vCPU, the IOAPIC, ISA overrides, LINT1 NMI) and a DSDT with the
//! PCI root bridge, its windows and its INTx routing (`_PRT`), COM1, and
//! \_S5.
//!
//! Tables live in a range of low RAM that e820 reports as ACPI data
//! (`TABLES_START`); the RSDP is at its start and its address also goes
//! into the zero page's `acpi_rsdp_addr`. (The legacy 0xe0000-0xfffff
//! search area is ROM or PCI while PAM routes it there, so RAM written
//! there would be hidden.)

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, Package,
    PackageBuilder, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// Where the tables go: ACPI data in e820.
pub const TABLES_START: u64 = 0x9_0000;
pub const TABLES_SIZE: u64 = 0xfc00;
/// The PM1 block: PM1a event (4 bytes), PM1a control (2), PM timer (4).
pub const PM_BASE: u16 = 0x600;
pub const PM1_CNT: u16 = PM_BASE + 4;
pub const PM_TMR: u16 = PM_BASE + 8;
/// SLP_TYP value of \_S5 (what PM1_CNT must carry to power off).
pub const S5_TYPE: u8 = 5;
pub const SCI_IRQ: u8 = 9;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

const OEM_ID: [u8; 6] = *b"VMMRS ";
const OEM_TABLE: [u8; 8] = *b"VMMPC   ";

#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig {
    pub cpus: u8,
    /// The 32-bit PCI hole [start, end).
    pub pci_hole: (u64, u64),
    /// The 64-bit PCI window [start, end).
    pub pci_window64: (u64, u64),
    /// Memory hotplug: (slots, device-memory base, size); adds the MHPC
    /// methods, the slot devices, `\_GPE._E03`, GPE0 in the FADT and a
    /// SRAT whose node 1 is the (hotpluggable) device memory.
    pub memory_hotplug: Option<(usize, u64, u64)>,
    /// RAM below 4 GiB and above, for the SRAT.
    pub ram: (u64, u64),
}

/// Raw AML bytes, to place inside a scope.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// MADT interrupt source override (type 2): ISA `source` on `gsi`.
fn source_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut v = vec![2, 10, 0, source];
    v.extend_from_slice(&gsi.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

/// MADT local APIC NMI (type 4) on `lint` of every processor (0xff).
fn lapic_nmi(lint: u8) -> Vec<u8> {
    vec![4, 6, 0xff, 0, 0, lint]
}

/// Appends raw entries to a finished table, fixing length and checksum.
fn append_entries(mut table: Vec<u8>, entries: &[Vec<u8>]) -> Vec<u8> {
    for e in entries {
        table.extend_from_slice(e);
    }
    let len = table.len() as u32;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
    table
}

fn bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

fn gas_io(port: u16, width_bits: u8, access: AccessSize) -> GAS {
    GAS::new(GasSpace::SystemIo, width_bits, 0, access, u64::from(port))
}

/// The root bus's `_PRT`: every slot's INTA#..INTD# on its IOAPIC GSI
/// (`pci::intx`). Source 0 makes the last field a GSI, which ACPI takes as
/// level-triggered, active low and shareable, as PCI interrupts are.
fn prt() -> Name {
    let mut table = PackageBuilder::new();
    for slot in 0..32u8 {
        for pin in 1..=4u8 {
            let Some(gsi) = crate::pci::intx::gsi(slot, pin) else {
                continue;
            };
            let (addr, index, gsi) = (u32::from(slot) << 16 | 0xffff, pin - 1, u32::from(gsi));
            table.add_element(&Package::new(vec![&addr, &index, &aml::ZERO, &gsi]));
        }
    }
    Name::new("_PRT".into(), &table)
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let cache = AddressSpaceCacheable::NotCacheable;
    let hole = AddressSpace::new_memory(
        cache,
        true,
        cfg.pci_hole.0 as u32,
        (cfg.pci_hole.1 - 1) as u32,
        None,
    );
    let vga = AddressSpace::new_memory(cache, true, 0xa_0000u32, 0xb_ffffu32, None);
    let (w_lo, w_hi) = (cfg.pci_window64.0, cfg.pci_window64.1 - 1);
    let window64 = AddressSpace::new_memory(cache, true, w_lo, w_hi, None);
    let buses = AddressSpace::new_bus_number(0u16, 0xffu16);
    let conf = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::new_io(0u16, 0xcf7u16, None);
    let io_high = AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let crs = ResourceTemplate::new(vec![
        &buses, &conf, &io_low, &io_high, &vga, &hole, &window64,
    ]);
    let pnp0a03 = EISAName::new("PNP0A03");
    let hid = Name::new("_HID".into(), &pnp0a03);
    let adr = Name::new("_ADR".into(), &aml::ZERO);
    let bbn = Name::new("_BBN".into(), &aml::ZERO);
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let crs_name = Name::new("_CRS".into(), &crs);
    let prt = prt();
    let pci0 = Device::new("PCI0".into(), vec![&hid, &adr, &bbn, &uid, &crs_name, &prt]);

    let com1_io = IO::new(0x3f8, 0x3f8, 0, 8);
    let com1_irq = Interrupt::new(true, true, false, false, 4);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let pnp0501 = EISAName::new("PNP0501");
    let c_hid = Name::new("_HID".into(), &pnp0501);
    let c_uid = Name::new("_UID".into(), &aml::ONE);
    let c_crs = Name::new("_CRS".into(), &com1_crs);
    let com1 = Device::new("COM1".into(), vec![&c_hid, &c_uid, &c_crs]);

    let (memhp_sb, memhp_gpe) = match cfg.memory_hotplug {
        Some((slots, _, _)) => memhp::dsdt_parts(slots),
        None => (Vec::new(), Vec::new()),
    };
    let memhp_sb = Raw(memhp_sb);
    let sb = Scope::new("_SB_".into(), vec![&pci0, &com1, &memhp_sb]);
    let s5_pkg = Package::new(vec![&S5_TYPE, &S5_TYPE, &aml::ZERO, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5_pkg);
    let mut body = bytes(&sb);
    body.extend(bytes(&s5));
    body.extend(memhp_gpe);
    let mut t = acpi_tables::sdt::Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64, gpe0: bool) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::ResetRegSup)
        .flag(Flags::TmrValExt)
        .flag(Flags::Wbinvd);
    f.sci_int = u16::from(SCI_IRQ).into();
    f.pm1a_evt_blk = u32::from(PM_BASE).into();
    f.pm1a_cnt_blk = u32::from(PM1_CNT).into();
    f.pm_tmr_blk = u32::from(PM_TMR).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.x_pm1a_evt_blk = gas_io(PM_BASE, 32, AccessSize::DwordAccess);
    f.x_pm1a_cnt_blk = gas_io(PM1_CNT, 16, AccessSize::WordAccess);
    f.x_pm_tmr_blk = gas_io(PM_TMR, 32, AccessSize::DwordAccess);
    if gpe0 {
        let port = crate::devices::gpe::PORT as u16;
        f.gpe0_blk = u32::from(port).into();
        f.gpe0_blk_len = crate::devices::gpe::SIZE as u8;
        f.x_gpe0_blk = gas_io(port, 32, AccessSize::ByteAccess);
    }
    f.reset_reg = gas_io(0xcf9, 8, AccessSize::ByteAccess);
    f.reset_value = 0x06;
    // IA-PC boot architecture: an 8042 is present.
    f.iapc_boot_arch = 0x0002u16.into();
    f.century = 0x32;
    bytes(&f.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(cpus, IOAPIC_ADDR, 0));
    // The PIT's IRQ 0 is wired to IOAPIC pin 2; the SCI is level, high.
    append_entries(
        bytes(&m),
        &[
            source_override(0, 2, 0),
            source_override(SCI_IRQ, u32::from(SCI_IRQ), 0b1101),
            lapic_nmi(1),
        ],
    )
}

/// SRAT: every vCPU and the boot RAM in node 0, the device-memory area
/// hotpluggable in node 1 (so a DIMM can be its own node: its `_PXM`).
fn srat(cfg: &AcpiConfig, base: u64, size: u64) -> Vec<u8> {
    use acpi_tables::srat::{MemoryAffinity, SRAT};
    let mut t = SRAT::new(OEM_ID, OEM_TABLE, 1);
    let (low, high) = cfg.ram;
    t.add_memory_affinity(MemoryAffinity::new(0, 0, low).enabled());
    if high > 0 {
        t.add_memory_affinity(MemoryAffinity::new(0, 1 << 32, high).enabled());
    }
    t.add_memory_affinity(MemoryAffinity::new(1, base, size).enabled().hotpluggable());
    // Processor local APIC affinity (type 0): node 0, enabled.
    let cpus: Vec<Vec<u8>> = (0..cfg.cpus)
        .map(|id| vec![0, 16, 0, id, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .collect();
    append_entries(bytes(&t), &cpus)
}

/// The tables laid out from `TABLES_START`: (guest address, bytes) pieces,
/// and the RSDP's address.
pub fn build(cfg: &AcpiConfig) -> (Vec<(u64, Vec<u8>)>, u64) {
    let align = |a: u64| a.next_multiple_of(16);
    let rsdp_at = TABLES_START;
    let xsdt_at = align(rsdp_at + Rsdp::len() as u64);
    let dsdt_bytes = dsdt(cfg);
    // The XSDT has two or three entries.
    let dsdt_at = align(xsdt_at + 36 + 24);
    let fadt_at = align(dsdt_at + dsdt_bytes.len() as u64);
    let fadt_bytes = fadt(dsdt_at, cfg.memory_hotplug.is_some());
    let madt_at = align(fadt_at + fadt_bytes.len() as u64);
    let madt_bytes = madt(cfg.cpus);
    let srat_at = align(madt_at + madt_bytes.len() as u64);
    let srat_bytes = cfg
        .memory_hotplug
        .map(|(_, base, size)| srat(cfg, base, size));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    if srat_bytes.is_some() {
        xsdt.add_entry(srat_at);
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_at);
    let pieces = vec![
        (rsdp_at, bytes(&rsdp)),
        (xsdt_at, bytes(&xsdt)),
        (dsdt_at, dsdt_bytes),
        (fadt_at, fadt_bytes),
        (madt_at, madt_bytes),
    ];
    let mut pieces = pieces;
    if let Some(b) = srat_bytes {
        pieces.push((srat_at, b));
    }
    (pieces, rsdp_at)
}

pub mod memhp;

#[cfg(test)]
mod tests;
