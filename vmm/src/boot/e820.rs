//! The e820 memory map, as the caller describes it, checked and converted
//! to the zero page's table.

use linux_loader::loader::bootparam::{boot_e820_entry, E820_MAX_ENTRIES_ZEROPAGE};

use super::BootError;

/// The type of an e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram,
    Reserved,
    Acpi,
    Nvs,
    Unusable,
}

impl E820Kind {
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
            E820Kind::Acpi => 3,
            E820Kind::Nvs => 4,
            E820Kind::Unusable => 5,
        }
    }
}

/// One range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

impl E820Entry {
    pub fn new(addr: u64, size: u64, kind: E820Kind) -> Self {
        E820Entry { addr, size, kind }
    }

    /// One past the last byte, or `None` if the range wraps.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.size)
    }
}

/// Checks the map (non-empty ranges, sorted, disjoint, at most 128 entries)
/// and converts it to the zero page's table format.
pub fn to_zero_page(entries: &[E820Entry]) -> Result<Vec<boot_e820_entry>, BootError> {
    if entries.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::E820TooManyEntries(entries.len()));
    }
    let mut previous_end = 0;
    for (index, entry) in entries.iter().enumerate() {
        let end = entry.end().ok_or(BootError::E820BadEntry(index))?;
        if entry.size == 0 || entry.addr < previous_end {
            return Err(BootError::E820BadEntry(index));
        }
        previous_end = end;
    }
    Ok(entries
        .iter()
        .map(|e| boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        })
        .collect())
}

/// The map of a PC with `ram_size` bytes of RAM and a hole for PCI from
/// `pci_hole_start` to 4 GiB: RAM below 640 KiB, the legacy area reserved,
/// RAM from 1 MiB up to the hole, the rest of RAM above 4 GiB.
pub fn pc_layout(ram_size: u64, pci_hole_start: u64) -> Vec<E820Entry> {
    const LOW_RAM_END: u64 = 0x9_fc00;
    const BIOS_START: u64 = 0xf_0000;
    const HIGH_RAM_START: u64 = 0x10_0000;
    const FOUR_GIB: u64 = 1 << 32;

    let mut map = vec![E820Entry::new(0, LOW_RAM_END.min(ram_size), E820Kind::Ram)];
    map.push(E820Entry::new(
        BIOS_START,
        HIGH_RAM_START - BIOS_START,
        E820Kind::Reserved,
    ));
    let below = ram_size.min(pci_hole_start);
    if below > HIGH_RAM_START {
        map.push(E820Entry::new(
            HIGH_RAM_START,
            below - HIGH_RAM_START,
            E820Kind::Ram,
        ));
    }
    let above = ram_size.saturating_sub(pci_hole_start.max(HIGH_RAM_START));
    if ram_size > pci_hole_start && above > 0 {
        map.push(E820Entry::new(FOUR_GIB, above, E820Kind::Ram));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_layout_below_hole() {
        let map = pc_layout(256 << 20, 0xc000_0000);
        assert_eq!(
            map,
            vec![
                E820Entry::new(0, 0x9_fc00, E820Kind::Ram),
                E820Entry::new(0xf_0000, 0x1_0000, E820Kind::Reserved),
                E820Entry::new(0x10_0000, (256 << 20) - 0x10_0000, E820Kind::Ram),
            ]
        );
        assert!(to_zero_page(&map).is_ok());
    }

    #[test]
    fn pc_layout_splits_around_hole() {
        let map = pc_layout(4 << 30, 0xc000_0000);
        assert_eq!(
            map[2],
            E820Entry::new(0x10_0000, 0xc000_0000 - 0x10_0000, E820Kind::Ram)
        );
        assert_eq!(map[3], E820Entry::new(1 << 32, 1 << 30, E820Kind::Ram));
    }

    #[test]
    fn converts_types_and_order() {
        let map = [
            E820Entry::new(0, 0x1000, E820Kind::Ram),
            E820Entry::new(0x1000, 0x1000, E820Kind::Acpi),
            E820Entry::new(0x3000, 0x1000, E820Kind::Nvs),
        ];
        let table = to_zero_page(&map).unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!({ table[1].r#type }, 3);
        assert_eq!({ table[2].addr }, 0x3000);
        assert_eq!({ table[2].r#type }, 4);
    }

    #[test]
    fn rejects_overlap_empty_wrap_and_overflow() {
        let overlap = [
            E820Entry::new(0, 0x2000, E820Kind::Ram),
            E820Entry::new(0x1000, 0x1000, E820Kind::Ram),
        ];
        assert!(matches!(
            to_zero_page(&overlap),
            Err(BootError::E820BadEntry(1))
        ));
        let empty = [E820Entry::new(0, 0, E820Kind::Ram)];
        assert!(matches!(
            to_zero_page(&empty),
            Err(BootError::E820BadEntry(0))
        ));
        let wrap = [E820Entry::new(u64::MAX, 2, E820Kind::Ram)];
        assert!(matches!(
            to_zero_page(&wrap),
            Err(BootError::E820BadEntry(0))
        ));
        let many: Vec<_> = (0..129)
            .map(|i| E820Entry::new(i * 0x1000, 0x1000, E820Kind::Ram))
            .collect();
        assert!(matches!(
            to_zero_page(&many),
            Err(BootError::E820TooManyEntries(129))
        ));
    }
}
