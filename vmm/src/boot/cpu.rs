//! The boot vCPU's registers for the Linux 64-bit entry: long mode, paging
//! on with the boot identity map, flat segments, RSI at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START};
use super::tables::{code_segment, data_segment, tss_segment, GDT};
use super::BootError;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// Entry point, zero page and page tables for the boot vCPU.
#[derive(Clone, Copy, Debug)]
pub struct EntryState {
    pub entry: u64,
    pub zero_page: u64,
    pub cr3: u64,
}

/// The special registers for 64-bit entry, on top of the vCPU's current ones.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    sregs.gdt.base = GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_START.0;
    sregs.idt.limit = 7;
    sregs.cs = code_segment();
    let data = data_segment();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss_segment();
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

pub fn entry_regs(state: &EntryState) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: state.entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: state.zero_page,
        ..Default::default()
    }
}

/// The x87 and SSE control words as after FNINIT and reset.
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Puts the vCPU at the 64-bit entry.
pub fn set_entry_state(vcpu: &VcpuFd, state: &EntryState) -> Result<(), BootError> {
    let sregs = vcpu.get_sregs().map_err(BootError::Vcpu)?;
    vcpu.set_sregs(&long_mode_sregs(sregs, state.cr3))
        .map_err(BootError::Vcpu)?;
    vcpu.set_regs(&entry_regs(state)).map_err(BootError::Vcpu)?;
    Ok(())
}

pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), BootError> {
    vcpu.set_fpu(&initial_fpu()).map_err(BootError::Vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_state() {
        let s = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!((s.cs.selector, s.cs.l), (0x10, 1));
        assert_eq!((s.ds.selector, s.ss.selector), (0x18, 0x18));
        assert_eq!(s.gdt.limit, 47);
        let r = entry_regs(&EntryState {
            entry: 0x10_0000,
            zero_page: 0x7000,
            cr3: 0x9000,
        });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x10_0000, 0x7000, 0x8ff0, 2)
        );
    }
}
