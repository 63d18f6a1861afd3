//! Golden views of the PC memory map (seed 000: the PAM-controlled legacy
//! window) and what accesses do in each PAM mode.

use crate::memory::{mtree, Memory};

use super::pam::{segment, PamMode};
use super::PcMemory;

fn flat_memory(pc: &PcMemory) -> Vec<String> {
    pc.memory
        .view()
        .ranges()
        .iter()
        .map(|r| {
            format!(
                "{:#x}-{:#x} {}{}{}",
                r.addr,
                r.end() - 1,
                r.region.name(),
                if r.offset_in_region != 0 {
                    format!(" @{:#x}", r.offset_in_region)
                } else {
                    String::new()
                },
                if r.readonly { " ro" } else { "" }
            )
        })
        .collect()
}

fn set_segment(mem: &Memory, pc: &PcMemory, idx: usize, mode: PamMode) {
    let tx = mem.begin();
    pc.pam().set_mode(&tx, idx, mode);
    tx.commit().unwrap();
}

#[test]
fn info_mtree_of_a_512m_pc_matches_the_golden_text() {
    let mem = Memory::new();
    let _pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let want = include_str!("testdata/pc-512m.mtree");
    assert_eq!(mtree::info_mtree(&mem).trim_end(), want.trim_end());
    let want = include_str!("testdata/pc-512m.mtree-f");
    assert_eq!(mtree::info_mtree_flat(&mem).trim_end(), want.trim_end());
}

#[test]
fn pam_switches_the_bios_segment_between_pci_ram_and_read_only_ram() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let bios_tail = [
        "0xe0000-0xfffff pc.bios @0x20000 ro",
        "0x100000-0x1fffffff pc.ram @0x100000",
        "0xfffc0000-0xffffffff pc.bios ro",
    ];
    assert_eq!(flat_memory(&pc)[2..], bios_tail);

    set_segment(&mem, &pc, 0, PamMode::ReadWrite);
    assert_eq!(
        flat_memory(&pc)[2..],
        [
            "0xe0000-0xeffff pc.bios @0x20000 ro",
            "0xf0000-0x1fffffff pc.ram @0xf0000",
            "0xfffc0000-0xffffffff pc.bios ro",
        ],
        "RAM at 0xf0000 merges with the RAM above 1 MiB"
    );

    set_segment(&mem, &pc, 0, PamMode::ReadOnly);
    assert_eq!(
        flat_memory(&pc)[2..],
        [
            "0xe0000-0xeffff pc.bios @0x20000 ro",
            "0xf0000-0xfffff pc.ram @0xf0000 ro",
            "0x100000-0x1fffffff pc.ram @0x100000",
            "0xfffc0000-0xffffffff pc.bios ro",
        ]
    );

    set_segment(&mem, &pc, 0, PamMode::WriteOnly);
    assert_eq!(flat_memory(&pc)[3], "0xf0000-0x1fffffff pc.ram @0xf0000");

    set_segment(&mem, &pc, 0, PamMode::Pci);
    assert_eq!(flat_memory(&pc)[2..], bios_tail);
}

#[test]
fn pam_modes_decide_what_reads_and_writes_reach() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let (start, _) = segment(1); // 0xc0000, under the option ROM
    pc.option_rom.ram_block().unwrap().write(0, &[0x55, 0xaa]);
    pc.ram.ram_block().unwrap().write(start, &[1, 2]);
    let read = |pc: &PcMemory| {
        let mut b = [0u8; 2];
        pc.memory.read(start, &mut b);
        b
    };
    assert_eq!(read(&pc), [0x55, 0xaa], "PCI mode shows the option ROM");
    pc.memory.write(start, &[9, 9]);
    assert_eq!(read(&pc), [0x55, 0xaa], "the ROM ignores writes");

    set_segment(&mem, &pc, 1, PamMode::ReadWrite);
    assert_eq!(read(&pc), [1, 2], "RAM mode shows RAM");
    pc.memory.write(start, &[3, 4]);
    assert_eq!(read(&pc), [3, 4]);

    set_segment(&mem, &pc, 1, PamMode::ReadOnly);
    pc.memory.write(start, &[5, 6]);
    assert_eq!(read(&pc), [3, 4], "read-only RAM drops writes");

    // The next segment was never switched: still the ROM.
    let mut b = [0u8; 1];
    pc.memory.read(segment(2).0, &mut b);
    assert_eq!(b, [0]);
    assert_eq!(pc.pam().mode(1), Some(PamMode::ReadOnly));
    assert_eq!(pc.pam().mode(2), Some(PamMode::Pci));
}

#[test]
fn pam_register_writes_switch_both_nibbles() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let tx = mem.begin();
    pc.pam().write_register(&tx, 0x5a, 0x13);
    pc.pam().write_register(&tx, 0x59, 0x30);
    tx.commit().unwrap();
    assert_eq!(pc.pam().mode(1), Some(PamMode::ReadWrite));
    assert_eq!(pc.pam().mode(2), Some(PamMode::ReadOnly));
    assert_eq!(pc.pam().mode(0), Some(PamMode::ReadWrite));
    assert_eq!(pc.pam().mode(3), Some(PamMode::Pci));
}

#[test]
fn a_large_guest_splits_ram_around_the_pci_hole() {
    let mem = Memory::new();
    let pc = PcMemory::new(&mem, 6 << 30).unwrap();
    assert_eq!((pc.below_4g, pc.above_4g), (0xc000_0000, 0xc000_0000));
    let flat = flat_memory(&pc);
    assert_eq!(flat[3], "0x100000-0xbfffffff pc.ram @0x100000");
    assert_eq!(flat[4], "0xfffc0000-0xffffffff pc.bios ro");
    assert_eq!(flat[5], "0x100000000-0x1bfffffff pc.ram @0xc0000000");
    assert!(pc.memory.lookup(0xd000_0000).is_none(), "the PCI hole");
    assert_eq!(pc.e820().last(), Some(&(1u64 << 32, 0xc000_0000u64, 1u32)));
}

#[test]
fn info_ramblock_lists_ram_and_roms() {
    let mem = Memory::new();
    let _pc = PcMemory::new(&mem, 512 << 20).unwrap();
    let text = mtree::info_ramblock(&mem);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].trim_start().starts_with("Block Name    PSize"));
    assert!(lines[1]
        .trim_start()
        .starts_with("pc.ram    4 KiB  0x0000000000000000 0x0000000020000000"));
    assert!(lines[1].ends_with(" rw"));
    assert!(lines[2].trim_start().starts_with("pc.bios"));
    assert!(lines[2].ends_with(" ro"));
    assert_eq!(lines.len(), 4);
}
