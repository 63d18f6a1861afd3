//! Putting the kernel, the initrd and the command line into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    ReadVolatile,
};

use super::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use super::BootError;

/// The kernel image formats the loader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable (an uncompressed vmlinux, or the probe), entered at
    /// its ELF entry point in 64-bit mode.
    Elf,
    /// A bzImage, entered at its 64-bit entry (load address + 0x200).
    BzImage,
}

/// Where a loaded kernel is and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// One past the highest byte the image occupies (its memory size).
    pub end: u64,
    /// The bzImage's setup header, to be completed in the zero page.
    pub setup_header: Option<setup_header>,
}

/// Tells the formats apart by their magic: "\x7fELF" at 0, "HdrS" at 0x202.
pub fn detect_format<F: Read + Seek>(image: &mut F) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; 0x206];
    image
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    let mut filled = 0;
    while filled < head.len() {
        match image
            .read(&mut head[filled..])
            .map_err(BootError::ReadKernel)?
        {
            0 => break,
            n => filled += n,
        }
    }
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if filled == head.len() && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownKernelFormat)
}

/// Loads a kernel image of either format at its preferred addresses.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, image: &mut F) -> Result<LoadedKernel, BootError>
where
    F: Read + ReadVolatile + Seek,
{
    let format = detect_format(image)?;
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, image, Some(HIMEM_START)),
        KernelFormat::BzImage => BzImage::load(mem, None, image, Some(HIMEM_START)),
    }
    .map_err(BootError::LoadKernel)?;
    if format == KernelFormat::Elf {
        zero_elf_bss(mem, image)?;
    }
    let entry = match format {
        KernelFormat::Elf => loaded.kernel_load,
        // The 64-bit entry of a bzImage sits 0x200 past its 32-bit start.
        KernelFormat::BzImage => loaded
            .kernel_load
            .checked_add(0x200)
            .ok_or(BootError::KernelOutOfMemory)?,
    };
    log::debug!(
        "kernel ({format:?}) loaded at {:#x}..{:#x}, entry {:#x}",
        loaded.kernel_load.raw_value(),
        loaded.kernel_end,
        entry.raw_value()
    );
    Ok(LoadedKernel {
        format,
        entry,
        end: loaded.kernel_end,
        setup_header: loaded.setup_header,
    })
}

/// Zeroes what each ELF load segment has in memory beyond its file
/// contents (.bss): linux-loader copies only the file part, and memory that
/// held an earlier run (after a reset) is not zero.
fn zero_elf_bss<F: Read + Seek>(mem: &GuestMemoryMmap, image: &mut F) -> Result<(), BootError> {
    const PT_LOAD: u32 = 1;
    const PHDR_SIZE: usize = 56;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));

    // linux-loader has validated the header; read what it used.
    let mut ehdr = [0u8; 64];
    image
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    image.read_exact(&mut ehdr).map_err(BootError::ReadKernel)?;
    let phoff = u64_at(&ehdr, 32);
    let phnum = u16_at(&ehdr, 56);
    image
        .seek(SeekFrom::Start(phoff))
        .map_err(BootError::ReadKernel)?;
    for _ in 0..phnum {
        let mut phdr = [0u8; PHDR_SIZE];
        image.read_exact(&mut phdr).map_err(BootError::ReadKernel)?;
        let (paddr, filesz, memsz) = (u64_at(&phdr, 24), u64_at(&phdr, 32), u64_at(&phdr, 40));
        if u32_at(&phdr, 0) != PT_LOAD || memsz <= filesz {
            continue;
        }
        let start = paddr
            .checked_add(filesz)
            .ok_or(BootError::KernelOutOfMemory)?;
        zero_guest(mem, start, memsz - filesz)?;
    }
    Ok(())
}

/// Zeroes `len` bytes of guest memory from `start`, a chunk at a time.
fn zero_guest(mem: &GuestMemoryMmap, start: u64, len: u64) -> Result<(), BootError> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        let addr = start
            .checked_add(done)
            .ok_or(BootError::KernelOutOfMemory)?;
        mem.write_slice(&zeros[..n as usize], GuestAddress(addr))
            .map_err(|_| BootError::KernelOutOfMemory)?;
        done += n;
    }
    Ok(())
}

/// Writes the command line to its fixed place; returns its length with NUL.
pub fn load_command_line(mem: &GuestMemoryMmap, text: &str) -> Result<usize, BootError> {
    let cmdline = Cmdline::try_from(text, CMDLINE_MAX_SIZE).map_err(BootError::CommandLine)?;
    load_cmdline(mem, CMDLINE_START, &cmdline).map_err(BootError::LoadCommandLine)?;
    Ok(text.len() + 1)
}

/// Places the initrd as high as allowed: page-aligned, inside guest RAM,
/// below `addr_max` and above `kernel_end`. Returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(GuestAddress, u64), BootError> {
    const PAGE: u64 = 4096;
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(BootError::ReadInitrd)?;
    initrd
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadInitrd)?;
    let addr =
        initrd_address(mem, size, kernel_end, addr_max).ok_or(BootError::InitrdDoesNotFit(size))?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdDoesNotFit(size))?;
    mem.read_exact_volatile_from(addr, initrd, len)
        .map_err(BootError::WriteInitrd)?;
    log::debug!("initrd at {:#x}, {size} bytes", addr.raw_value());
    debug_assert_eq!(addr.raw_value() % PAGE, 0);
    Ok((addr, size))
}

/// The highest page-aligned start where `size` bytes fit in one RAM region,
/// end at or below `addr_max + 1` and start at or above `kernel_end`.
pub fn initrd_address(
    mem: &GuestMemoryMmap,
    size: u64,
    kernel_end: u64,
    addr_max: u64,
) -> Option<GuestAddress> {
    const PAGE_MASK: u64 = !4095;
    mem.iter()
        .filter_map(|region| {
            let start = region.start_addr().raw_value();
            let last = region.last_addr().raw_value().min(addr_max);
            let end = last.checked_add(1)?;
            let addr = end.checked_sub(size)? & PAGE_MASK;
            (addr >= start && addr >= kernel_end).then_some(addr)
        })
        .max()
        .map(GuestAddress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn memory(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn detects_formats() {
        let mut elf = Cursor::new(b"\x7fELF\x02\x01\x01".to_vec());
        assert_eq!(detect_format(&mut elf).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            KernelFormat::BzImage
        );
        assert!(matches!(
            detect_format(&mut Cursor::new(vec![0u8; 16])),
            Err(BootError::UnknownKernelFormat)
        ));
    }

    /// A minimal ELF64: header, one PT_LOAD of 4 bytes (8 KiB in memory)
    /// at 1 MiB, entry at its start.
    fn tiny_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // e_entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        elf[ph + 16..ph + 24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_vaddr
        elf[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_paddr
        elf[ph + 32..ph + 40].copy_from_slice(&4u64.to_le_bytes()); // p_filesz
        elf[ph + 40..ph + 48].copy_from_slice(&0x2000u64.to_le_bytes()); // p_memsz
        elf.extend_from_slice(&[0xeb, 0xfe, 0x90, 0x90]);
        elf
    }

    #[test]
    fn loads_elf_at_its_addresses() {
        let mem = memory(4 << 20);
        let loaded = load_kernel(&mem, &mut Cursor::new(tiny_elf())).unwrap();
        assert_eq!(loaded.format, KernelFormat::Elf);
        assert_eq!(loaded.entry, GuestAddress(0x10_0000));
        assert_eq!(loaded.end, 0x10_2000);
        assert!(loaded.setup_header.is_none());
        let code: u32 = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(code, 0x9090_feeb);
    }

    #[test]
    fn zeroes_elf_bss_left_from_before() {
        let mem = memory(4 << 20);
        mem.write_slice(&[0xaa; 0x3000], GuestAddress(0x10_0000))
            .unwrap();
        load_kernel(&mem, &mut Cursor::new(tiny_elf())).unwrap();
        let mut bss = [0xffu8; 0x2000 - 4];
        mem.read_slice(&mut bss, GuestAddress(0x10_0004)).unwrap();
        assert!(bss.iter().all(|&b| b == 0));
        let after: u8 = mem.read_obj(GuestAddress(0x10_2000)).unwrap();
        assert_eq!(after, 0xaa, "nothing beyond the segment is touched");
    }

    #[test]
    fn rejects_elf_outside_memory() {
        let mem = memory(1 << 20);
        assert!(matches!(
            load_kernel(&mem, &mut Cursor::new(tiny_elf())),
            Err(BootError::LoadKernel(_))
        ));
    }

    #[test]
    fn command_line_written_with_nul() {
        let mem = memory(1 << 20);
        assert_eq!(
            load_command_line(&mem, "console=ttyS0 probe=spin").unwrap(),
            25
        );
        let mut buf = [0u8; 25];
        mem.read_slice(&mut buf, CMDLINE_START).unwrap();
        assert_eq!(&buf, b"console=ttyS0 probe=spin\0");
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let mem = memory(64 << 20);
        let addr = initrd_address(&mem, 10_000, 2 << 20, u64::MAX).unwrap();
        assert_eq!(addr.raw_value() % 4096, 0);
        assert!(addr.raw_value() + 10_000 <= 64 << 20);
        assert!(addr.raw_value() + 10_000 + 4096 > 64 << 20);
        let capped = initrd_address(&mem, 4096, 0, (32 << 20) - 1).unwrap();
        assert_eq!(capped.raw_value(), (32 << 20) - 4096);
        assert!(initrd_address(&mem, 63 << 20, 2 << 20, u64::MAX).is_none());
    }
}
