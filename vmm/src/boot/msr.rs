//! The model-specific registers a booting vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::BootError;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// The boot values, as (index, value).
pub const BOOT_MSRS: [(u32, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
];

/// The boot MSRs among those KVM lists as saved/restored (`supported`, from
/// KVM_GET_MSR_INDEX_LIST); others are skipped with a debug line, since
/// nested hosts (PVM) do not offer every one.
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    BOOT_MSRS
        .iter()
        .filter(|(index, _)| {
            let known = supported.contains(index);
            if !known {
                log::debug!("MSR {index:#x} not supported by KVM, left alone");
            }
            known
        })
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

pub fn set_boot_msrs(vcpu: &VcpuFd, supported: &[u32]) -> Result<(), BootError> {
    let entries = boot_msrs(supported);
    let msrs = Msrs::from_entries(&entries).map_err(|_| BootError::TooManyMsrs)?;
    let written = vcpu.set_msrs(&msrs).map_err(BootError::Vcpu)?;
    if written != entries.len() {
        // KVM stops at the first MSR it refuses.
        let refused = entries.get(written).map_or(0, |e| e.index);
        return Err(BootError::MsrRefused(refused));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_supported() {
        let entries = boot_msrs(&[MSR_STAR, MSR_MTRR_DEF_TYPE, 0x1234]);
        let got: Vec<_> = entries.iter().map(|e| (e.index, e.data)).collect();
        assert_eq!(got, vec![(MSR_STAR, 0), (MSR_MTRR_DEF_TYPE, 0x806)]);
    }
}
