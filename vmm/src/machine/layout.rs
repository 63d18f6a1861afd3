//! The PC memory map, as QEMU's `pc` machine builds it: one RAM block seen
//! through `ram-below-4g` and `ram-above-4g`, the PCI address space beneath
//! everything at priority -1 (so the PCI hole is wherever RAM is not), the
//! BIOS ROM at the top of 4 GiB with its last 128 KiB mirrored below 1 MiB,
//! the option ROM area, the SMRAM/VGA window and the PAM segments.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::memory::{AddressSpace, Memory, MemoryError, MemoryRegion};

use super::pam::Pam;

/// RAM below 4 GiB ends here when the guest has more than fits below the
/// PCI hole (QEMU's gigabyte-aligned split).
pub const LOWMEM_SPLIT: u64 = 0xc000_0000;
/// Guests with at least this much RAM get the split at [`LOWMEM_SPLIT`].
pub const LOWMEM_MAX: u64 = 0xe000_0000;
pub const FOUR_GIB: u64 = 1 << 32;
pub const BIOS_SIZE: u64 = 0x40000;
pub const ISA_BIOS_SIZE: u64 = 0x20000;
pub const OPTION_ROM_START: u64 = 0xc0000;
pub const OPTION_ROM_SIZE: u64 = 0x20000;
pub const SMRAM_START: u64 = 0xa0000;
pub const SMRAM_SIZE: u64 = 0x20000;

/// The regions of a PC memory map that other parts of the machine touch.
pub struct PcMemory {
    pub memory: Arc<AddressSpace>,
    pub io: Arc<AddressSpace>,
    pub system: MemoryRegion,
    pub io_root: MemoryRegion,
    /// The PCI memory address space; BARs map here.
    pub pci: MemoryRegion,
    /// The RAM block behind both RAM aliases.
    pub ram: MemoryRegion,
    pub below_4g: u64,
    pub above_4g: u64,
    pub bios: MemoryRegion,
    pub option_rom: MemoryRegion,
    /// Shared with the host bridge, whose config writes switch it. Lock
    /// order: the memory transaction first, then this.
    pub pam_shared: Arc<Mutex<Pam>>,
}

impl PcMemory {
    /// Builds the map for `ram_size` bytes of RAM in `mem`.
    pub fn new(mem: &Memory, ram_size: u64) -> Result<PcMemory, MemoryError> {
        let below_4g = if ram_size >= LOWMEM_MAX {
            LOWMEM_SPLIT
        } else {
            ram_size
        };
        let above_4g = ram_size - below_4g;
        let system = MemoryRegion::container("system", u64::MAX);
        let io_root = MemoryRegion::container("io", 0x10000);
        let pci = MemoryRegion::container("pci", u64::MAX);
        let ram = MemoryRegion::ram("pc.ram", ram_size)?;
        let bios = MemoryRegion::rom("pc.bios", BIOS_SIZE)?;
        let option_rom = MemoryRegion::rom("pc.rom", OPTION_ROM_SIZE)?;
        let isa_bios =
            MemoryRegion::alias("isa-bios", &bios, BIOS_SIZE - ISA_BIOS_SIZE, ISA_BIOS_SIZE);
        let smram = MemoryRegion::alias("smram-region", &pci, SMRAM_START, SMRAM_SIZE);

        let memory = mem.add_address_space("memory", system.clone());
        let io = mem.add_address_space("I/O", io_root.clone());
        let tx = mem.begin();
        let low = MemoryRegion::alias("ram-below-4g", &ram, 0, below_4g);
        tx.add_subregion(&system, 0, &low)?;
        if above_4g > 0 {
            let high = MemoryRegion::alias("ram-above-4g", &ram, below_4g, above_4g);
            tx.add_subregion(&system, FOUR_GIB, &high)?;
        }
        tx.add_subregion_overlap(&system, 0, &pci, -1)?;
        tx.add_subregion_overlap(&pci, OPTION_ROM_START, &option_rom, 1)?;
        tx.add_subregion(&pci, FOUR_GIB - BIOS_SIZE, &bios)?;
        tx.set_readonly(&isa_bios, true);
        tx.add_subregion_overlap(&pci, 0x100000 - ISA_BIOS_SIZE, &isa_bios, 1)?;
        tx.add_subregion_overlap(&system, SMRAM_START, &smram, 1)?;
        let pam = Pam::new(mem, &system, &ram, &pci)?;
        tx.commit()?;
        Ok(PcMemory {
            memory,
            io,
            system,
            io_root,
            pci,
            ram,
            below_4g,
            above_4g,
            bios,
            option_rom,
            pam_shared: Arc::new(Mutex::new(pam)),
        })
    }

    /// The PAM segments (take the memory transaction first).
    pub fn pam(&self) -> MutexGuard<'_, Pam> {
        self.pam_shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The e820 map the guest should see: (start, size, type) with type 1
    /// usable RAM, 2 reserved and 3 ACPI data (the tables). The legacy
    /// window and the BIOS are reserved, as QEMU's firmware reports them.
    pub fn e820(&self) -> Vec<(u64, u64, u32)> {
        let acpi = crate::acpi::TABLES_START;
        let mut v = vec![
            (0, acpi, 1),
            (acpi, crate::acpi::TABLES_SIZE, 3),
            (acpi + crate::acpi::TABLES_SIZE, 0x400, 2),
            (0xf0000, 0x10000, 2),
        ];
        if self.below_4g > 0x100000 {
            v.push((0x100000, self.below_4g - 0x100000, 1));
        }
        v.push((FOUR_GIB - BIOS_SIZE, BIOS_SIZE, 2));
        if self.above_4g > 0 {
            v.push((FOUR_GIB, self.above_4g, 1));
        }
        v
    }
}
