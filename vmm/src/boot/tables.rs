//! The boot GDT and identity-mapped page tables, written to guest memory.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::layout::{
    BOOT_CS, BOOT_DS, BOOT_TSS, GDT_START, IDENTITY_MAP_SIZE, IDT_START, PDPT_START, PD_START,
    PML4_START,
};
use super::BootError;

/// Flat 64-bit code, ring 0 (access 0x9b, L and G set).
const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// Flat data, ring 0 (access 0x93, D/B and G set).
const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// A busy 64-bit TSS at 0 (type 0xb), limit 0x67; its upper half is zero.
const TSS: u64 = gdt_entry(0x008b, 0, 0x67);

/// The boot GDT: null, null, code (0x10), data (0x18), TSS (0x20, 16 bytes).
pub const GDT: [u64; 6] = [0, 0, CODE64, DATA, TSS, 0];

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
const PAGE_2M: u64 = 2 << 20;
const ENTRIES_PER_TABLE: u64 = 512;

/// Packs a segment descriptor: `flags` holds the access byte in bits 0..8
/// and the G, D/B, L, AVL nibble in bits 12..16.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of the descriptor at `index` of `GDT`.
pub fn segment(index: u16) -> kvm_segment {
    let entry = GDT[usize::from(index)];
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let granular = (entry >> 55) & 1;
    kvm_segment {
        base,
        limit: if granular == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

pub fn code_segment() -> kvm_segment {
    segment(BOOT_CS / 8)
}

pub fn data_segment() -> kvm_segment {
    segment(BOOT_DS / 8)
}

pub fn tss_segment() -> kvm_segment {
    segment(BOOT_TSS / 8)
}

/// Writes the GDT and an empty IDT.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&to_bytes(&GDT), GDT_START)
        .map_err(BootError::WriteTables)?;
    mem.write_obj(0u64, IDT_START)
        .map_err(BootError::WriteTables)?;
    Ok(())
}

/// The identity map of the first `IDENTITY_MAP_SIZE` bytes: one PML4 entry,
/// one PDPT entry per GiB, 2 MiB pages; supervisor-only, write-back.
pub fn page_tables() -> (u64, Vec<u64>, Vec<u64>) {
    let gibs = IDENTITY_MAP_SIZE >> 30;
    let pml4 = PDPT_START.0 | PTE_PRESENT | PTE_WRITABLE;
    let pdpt = (0..gibs)
        .map(|i| (PD_START.0 + i * 4096) | PTE_PRESENT | PTE_WRITABLE)
        .collect();
    let pd = (0..gibs * ENTRIES_PER_TABLE)
        .map(|i| (i * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE)
        .collect();
    (pml4, pdpt, pd)
}

/// Writes the identity map; returns the value for CR3.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let (pml4, pdpt, pd) = page_tables();
    mem.write_obj(pml4, PML4_START)
        .map_err(BootError::WriteTables)?;
    mem.write_slice(&to_bytes(&pdpt), PDPT_START)
        .map_err(BootError::WriteTables)?;
    mem.write_slice(&to_bytes(&pd), PD_START)
        .map_err(BootError::WriteTables)?;
    Ok(PML4_START.0)
}

fn to_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn descriptors_match_known_encodings() {
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
        assert_eq!(TSS, 0x0000_8b00_0000_0067);
    }

    #[test]
    fn segments_decode_descriptors() {
        let cs = code_segment();
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.s, cs.present),
            (0x10, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = data_segment();
        assert_eq!(
            (ds.selector, ds.type_, ds.l, ds.db, ds.g),
            (0x18, 3, 0, 1, 1)
        );
        let tr = tss_segment();
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.limit, tr.unusable),
            (0x20, 0xb, 0, 0x67, 0)
        );
    }

    #[test]
    fn identity_map_covers_4_gib() {
        let (pml4, pdpt, pd) = page_tables();
        assert_eq!(pml4, 0xa003);
        assert_eq!(pdpt, vec![0xb003, 0xc003, 0xd003, 0xe003]);
        assert_eq!(pd.len(), 2048);
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[1], 0x20_0083);
        assert_eq!(pd[2047], 0xffe0_0083);
        // Supervisor-only: no user bit anywhere.
        assert!(pd.iter().chain(&pdpt).all(|e| e & 4 == 0));
    }

    #[test]
    fn tables_written_where_cr3_points() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_gdt(&mem).unwrap();
        let cr3 = write_page_tables(&mem).unwrap();
        assert_eq!(cr3, 0x9000);
        let pml4: u64 = mem.read_obj(GuestAddress(cr3)).unwrap();
        let pdpt3: u64 = mem.read_obj(GuestAddress((pml4 & !0xfff) + 3 * 8)).unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0083);
        let code: u64 = mem.read_obj(GuestAddress(0x500 + 0x10)).unwrap();
        assert_eq!(code, CODE64);
    }
}
