//! CPUID for each vCPU: what KVM supports, with the vCPU's APIC id.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;

/// Adapts KVM_GET_SUPPORTED_CPUID for vCPU `cpu` of `count`: initial APIC
/// id in leaf 1 EBX[31:24], logical count in EBX[23:16], x2APIC id in
/// leaves 0xb and 0x1f EDX, and the hypervisor bit.
pub fn for_vcpu(supported: &CpuId, cpu: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | u32::from(cpu) << 24 | u32::from(count) << 16;
                entry.ecx |= ECX_HYPERVISOR;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => entry.edx = u32::from(cpu),
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_ids() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                eax: 5,
                ..Default::default()
            },
        ];
        let supported = CpuId::from_entries(&entries).unwrap();
        let cpuid = for_vcpu(&supported, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0304_0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].eax, 5);
    }
}
