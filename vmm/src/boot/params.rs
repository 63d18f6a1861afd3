//! The Linux `boot_params` zero page.

use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::{to_zero_page, E820Entry};
use super::layout::{CMDLINE_START, ZERO_PAGE_START};
use super::BootError;

const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
/// "Undefined" boot loader type: the kernel accepts any.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page besides the kernel's own header.
pub struct ZeroPage<'a> {
    /// The bzImage's setup header, copied in first when present.
    pub setup_header: Option<setup_header>,
    pub e820: &'a [E820Entry],
    /// Length of the command line at `CMDLINE_START`, NUL included.
    pub cmdline_size: usize,
    pub initrd: Option<(GuestAddress, u64)>,
    /// Where the ACPI RSDP is (boot protocol 2.14 `acpi_rsdp_addr`).
    pub acpi_rsdp: Option<u64>,
}

impl ZeroPage<'_> {
    /// Builds the zero page contents.
    pub fn build(&self) -> Result<boot_params, BootError> {
        let mut params = boot_params::default();
        if let Some(header) = self.setup_header {
            params.hdr = header;
        }
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.header = HDRS;
        params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
        if self.setup_header.is_none() {
            params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
        }
        let cmdline = CMDLINE_START.0;
        params.hdr.cmd_line_ptr = cmdline as u32;
        params.ext_cmd_line_ptr = (cmdline >> 32) as u32;
        params.hdr.cmdline_size =
            u32::try_from(self.cmdline_size).map_err(|_| BootError::CommandLineTooLong)?;
        if let Some((addr, size)) = self.initrd {
            params.hdr.ramdisk_image = addr.0 as u32;
            params.ext_ramdisk_image = (addr.0 >> 32) as u32;
            params.hdr.ramdisk_size = size as u32;
            params.ext_ramdisk_size = (size >> 32) as u32;
        }
        if let Some(rsdp) = self.acpi_rsdp {
            params.acpi_rsdp_addr = rsdp;
        }
        let table = to_zero_page(self.e820)?;
        params.e820_table[..table.len()].copy_from_slice(&table);
        params.e820_entries = table.len() as u8;
        Ok(params)
    }

    /// Builds the zero page and writes it to `ZERO_PAGE_START`.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<GuestAddress, BootError> {
        let params = self.build()?;
        mem.write_obj(params, ZERO_PAGE_START)
            .map_err(BootError::WriteZeroPage)?;
        Ok(ZERO_PAGE_START)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::{pc_layout, E820Kind};

    #[test]
    fn fields_for_elf_kernel() {
        let map = pc_layout(256 << 20, 0xc000_0000);
        let page = ZeroPage {
            setup_header: None,
            e820: &map,
            cmdline_size: 12,
            initrd: Some((GuestAddress(0x1_2345_6000), 0x1_0000_0010)),
            acpi_rsdp: None,
        };
        let p = page.build().unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.ext_cmd_line_ptr }, 0);
        assert_eq!({ p.hdr.cmdline_size }, 12);
        assert_eq!({ p.hdr.ramdisk_image }, 0x2345_6000);
        assert_eq!({ p.ext_ramdisk_image }, 1);
        assert_eq!({ p.hdr.ramdisk_size }, 0x10);
        assert_eq!({ p.ext_ramdisk_size }, 1);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.e820_table[2].addr }, 0x10_0000);
        assert_eq!({ p.e820_table[2].size }, (256 << 20) - 0x10_0000);
        assert_eq!({ p.e820_table[1].r#type }, E820Kind::Reserved.code());
    }

    #[test]
    fn keeps_bzimage_header_fields() {
        let header = setup_header {
            setup_sects: 27,
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let page = ZeroPage {
            setup_header: Some(header),
            e820: &[E820Entry::new(0, 0x9_fc00, E820Kind::Ram)],
            cmdline_size: 1,
            initrd: None,
            acpi_rsdp: None,
        };
        let p = page.build().unwrap();
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn written_at_zero_page() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = [E820Entry::new(0, 0x9_fc00, E820Kind::Ram)];
        let page = ZeroPage {
            setup_header: None,
            e820: &map,
            cmdline_size: 1,
            initrd: None,
            acpi_rsdp: None,
        };
        assert_eq!(page.write(&mem).unwrap(), GuestAddress(0x7000));
        let flag: u16 = mem.read_obj(GuestAddress(0x7000 + 0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55);
        let count: u8 = mem.read_obj(GuestAddress(0x7000 + 0x1e8)).unwrap();
        assert_eq!(count, 1);
        let size: u64 = mem.read_obj(GuestAddress(0x7000 + 0x2d0 + 8)).unwrap();
        assert_eq!(size, 0x9_fc00);
    }
}
