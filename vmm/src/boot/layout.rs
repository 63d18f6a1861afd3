//! Where the boot path puts things in low guest memory.
//!
//! ```text
//! 0x0500  GDT (boot CS 0x10, DS 0x18, TSS 0x20)
//! 0x0520  IDT (empty: the guest installs its own)
//! 0x7000  boot_params, the "zero page"
//! 0x8000  initial stack, growing down from 0x8ff0
//! 0x9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories
//! 0x20000 command line
//! 0x100000 (1 MiB) kernel, loaded at its own addresses above here
//! ```

use vm_memory::GuestAddress;

pub const GDT_START: GuestAddress = GuestAddress(0x500);
pub const IDT_START: GuestAddress = GuestAddress(0x520);
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
pub const PDPT_START: GuestAddress = GuestAddress(0xa000);
pub const PD_START: GuestAddress = GuestAddress(0xb000);
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Room for the command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Kernels load at or above this address (the "high memory" of the boot protocol).
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Boot segment selectors of the Linux 64-bit boot protocol.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;

/// The identity map covers this much with 2 MiB pages.
pub const IDENTITY_MAP_SIZE: u64 = 4 << 30;

/// Where initrds may go at most, unless the kernel's header says otherwise.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
