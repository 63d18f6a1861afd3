//! Direct kernel boot: loading an ELF (the probe, an uncompressed vmlinux) or
//! a bzImage with its command line and initrd, the zero page with the e820
//! map, and the vCPU state for the Linux 64-bit boot protocol.
//!
//! The boot contract, as the guest sees it at its entry point: 64-bit long
//! mode, CS = 0x10 (flat code), DS = ES = SS = 0x18 (flat data), paging on
//! with an identity map of the first 4 GiB (2 MiB pages, supervisor-only,
//! at 0x9000), interrupts off, RSI = the zero page (0x7000) holding the e820
//! table and `cmd_line_ptr` (0x20000), RSP = 0x8ff0.
//!
//! Typical use: `load` once into guest memory, then for each vCPU
//! `setup_vcpu` (the boot vCPU gets `Some(&BootInfo)`).

mod cpu;
mod cpuid;
mod e820;
mod lapic;
pub mod layout;
mod loader;
mod msr;
mod params;
mod tables;

use std::fs::File;
use std::path::{Path, PathBuf};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use e820::{pc_layout, E820Entry, E820Kind};
pub use loader::{KernelFormat, LoadedKernel};

use cpu::EntryState;
use layout::DEFAULT_INITRD_ADDR_MAX;
use params::ZeroPage;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {}", .0.display())]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    #[error("kernel image is neither ELF nor bzImage")]
    UnknownKernelFormat,
    #[error("cannot load the kernel")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("kernel entry point lies outside guest memory")]
    KernelOutOfMemory,
    #[error("invalid command line")]
    CommandLine(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line")]
    LoadCommandLine(#[source] linux_loader::loader::Error),
    #[error("command line too long")]
    CommandLineTooLong,
    #[error("cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    #[error("no room for an initrd of {0} bytes")]
    InitrdDoesNotFit(u64),
    #[error("cannot write the initrd")]
    WriteInitrd(#[source] vm_memory::GuestMemoryError),
    #[error("e820 map has {0} entries, the zero page holds 128")]
    E820TooManyEntries(usize),
    #[error("e820 entry {0} is empty, wraps, or overlaps the one before")]
    E820BadEntry(usize),
    #[error("cannot write the zero page")]
    WriteZeroPage(#[source] vm_memory::GuestMemoryError),
    #[error("cannot write the boot GDT or page tables")]
    WriteTables(#[source] vm_memory::GuestMemoryError),
    #[error("cannot query KVM")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("cannot set vCPU state")]
    Vcpu(#[source] kvm_ioctls::Error),
    #[error("too many MSRs for one KVM_SET_MSRS")]
    TooManyMsrs,
    #[error("KVM refused MSR {0:#x}")]
    MsrRefused(u32),
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub cmdline: &'a str,
    pub initrd: Option<&'a Path>,
    /// The guest's memory map, sorted and disjoint (see `pc_layout`).
    pub e820: &'a [E820Entry],
    /// The ACPI RSDP's guest address, for the zero page.
    pub acpi_rsdp: Option<u64>,
}

/// Where the boot pieces landed; what the boot vCPU needs.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub kernel: LoadedKernel,
    pub zero_page: GuestAddress,
    pub cr3: u64,
    pub initrd: Option<(GuestAddress, u64)>,
}

impl BootInfo {
    pub fn entry(&self) -> GuestAddress {
        self.kernel.entry
    }
}

/// Loads kernel, command line and initrd, writes the zero page, the boot
/// GDT and the identity map.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<BootInfo, BootError> {
    let open = |path: &Path| File::open(path).map_err(|e| BootError::Open(path.to_owned(), e));
    let kernel = loader::load_kernel(mem, &mut open(spec.kernel)?)?;
    let cmdline_size = loader::load_command_line(mem, spec.cmdline)?;
    let initrd = match spec.initrd {
        Some(path) => {
            let addr_max = kernel
                .setup_header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|&max| max != 0)
                .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
            Some(loader::load_initrd(
                mem,
                &mut open(path)?,
                kernel.end,
                addr_max,
            )?)
        }
        None => None,
    };
    let zero_page = ZeroPage {
        setup_header: kernel.setup_header,
        e820: spec.e820,
        cmdline_size,
        initrd,
        acpi_rsdp: spec.acpi_rsdp,
    }
    .write(mem)?;
    tables::write_gdt(mem)?;
    let cr3 = tables::write_page_tables(mem)?;
    Ok(BootInfo {
        kernel,
        zero_page,
        cr3,
        initrd,
    })
}

/// What KVM offers every vCPU, queried once per VM.
#[derive(Clone, Debug)]
pub struct CpuTemplate {
    cpuid: CpuId,
    msr_indices: Vec<u32>,
}

impl CpuTemplate {
    pub fn from_kvm(kvm: &Kvm) -> Result<Self, BootError> {
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(BootError::Kvm)?;
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(BootError::Kvm)?
            .as_slice()
            .to_vec();
        Ok(CpuTemplate { cpuid, msr_indices })
    }

    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }
}

/// Sets CPUID, MSRs, FPU and LAPIC LINTs of vCPU `cpu` of `count`; the boot
/// vCPU also gets the 64-bit entry state. Needs the in-kernel irqchip.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    template: &CpuTemplate,
    cpu: u8,
    count: u8,
    boot: Option<&BootInfo>,
) -> Result<(), BootError> {
    vcpu.set_cpuid2(&cpuid::for_vcpu(&template.cpuid, cpu, count))
        .map_err(BootError::Vcpu)?;
    msr::set_boot_msrs(vcpu, &template.msr_indices)?;
    cpu::set_fpu(vcpu)?;
    lapic::set_lints(vcpu)?;
    if let Some(boot) = boot {
        cpu::set_entry_state(
            vcpu,
            &EntryState {
                entry: boot.kernel.entry.0,
                zero_page: boot.zero_page.0,
                cr3: boot.cr3,
            },
        )?;
    }
    Ok(())
}
