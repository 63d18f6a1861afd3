//! The Linux `boot_params` zero page the VMM hands over in RSI.

/// Offsets in `struct boot_params` (Documentation/arch/x86/zero-page.rst).
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const E820_ENTRIES: usize = 0x1e8;
const HDR_BOOT_FLAG: usize = 0x1fe;
const HDR_HEADER: usize = 0x202;
const HDR_CMD_LINE_PTR: usize = 0x228;
const HDR_CMDLINE_SIZE: usize = 0x238;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;
const E820_ENTRY_SIZE: usize = 20;

pub const E820_RAM: u32 = 1;

#[derive(Clone, Copy)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.addr <= addr && addr < self.end()
    }
}

pub struct BootParams {
    base: u64,
}

impl BootParams {
    /// `base` is the zero page's guest-physical (= virtual) address.
    pub fn new(base: u64) -> Self {
        BootParams { base }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        let addr = self.base as usize + offset;
        // SAFETY: the zero page is identity-mapped guest RAM; reads of plain
        // integers at any alignment are valid.
        unsafe { core::ptr::read_unaligned(addr as *const T) }
    }

    /// 0xaa55 and "HdrS" as a boot loader writes them.
    pub fn has_signature(&self) -> bool {
        self.read::<u16>(HDR_BOOT_FLAG) == 0xaa55 && self.read::<u32>(HDR_HEADER) == 0x5372_6448
    }

    /// The e820 entry count as given (may exceed the table when bogus).
    pub fn e820_count(&self) -> usize {
        self.read::<u8>(E820_ENTRIES) as usize
    }

    pub fn e820_entry(&self, index: usize) -> Option<E820Entry> {
        if index >= self.e820_count().min(E820_MAX) {
            return None;
        }
        let offset = E820_TABLE + index * E820_ENTRY_SIZE;
        Some(E820Entry {
            addr: self.read(offset),
            size: self.read(offset + 8),
            kind: self.read(offset + 16),
        })
    }

    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        (0..E820_MAX).map_while(move |i| self.e820_entry(i))
    }

    /// The RAM entry containing `addr`, if any.
    pub fn ram_at(&self, addr: u64) -> Option<E820Entry> {
        self.e820().find(|e| e.kind == E820_RAM && e.contains(addr))
    }

    pub fn cmdline_addr(&self) -> u64 {
        let low: u32 = self.read(HDR_CMD_LINE_PTR);
        let high: u32 = self.read(EXT_CMD_LINE_PTR);
        (u64::from(high) << 32) | u64::from(low)
    }

    pub fn cmdline_size(&self) -> u32 {
        self.read(HDR_CMDLINE_SIZE)
    }
}
