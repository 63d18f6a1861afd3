//! MSI-X on a real VM: a device's eventfd write on an unmasked vector shows
//! up in the target LAPIC's IRR without the VMM; on a masked vector it waits
//! and arrives at unmask. Needs /dev/kvm.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use vmm::interrupt::{GsiRouter, KvmRouting, MsixConfig, MsixTable};

fn irr_has(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
    let lapic = vcpu.get_lapic().unwrap();
    // IRR: eight 32-bit registers at 0x200, 16 bytes apart.
    let reg = 0x200 + usize::from(vector / 32) * 16;
    let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
    let word = u32::from_le_bytes(bytes.try_into().unwrap());
    word & (1 << (vector % 32)) != 0
}

#[test]
fn an_eventfd_write_reaches_the_lapic_and_masking_defers_it() {
    let kvm = Kvm::new().expect("this test needs /dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    // Software-enable the LAPIC (SVR bit 8) so it accepts interrupts.
    let mut lapic = vcpu.get_lapic().unwrap();
    lapic.regs[0xf0] = 0xff_u8 as _;
    lapic.regs[0xf1] = 0x01;
    vcpu.set_lapic(&lapic).unwrap();

    let table = MsixTable::new(GsiRouter::new(KvmRouting::new(vm.clone())), 2).unwrap();
    let (ops, _pba) = table.regions();
    // Vector 0 -> APIC 0, vector 0x45, fixed, edge.
    ops.write(0, &0xfee0_0000u32.to_le_bytes());
    ops.write(8, &0x45u32.to_le_bytes());
    ops.write(12, &0u32.to_le_bytes());
    table.set_config(MsixConfig {
        enabled: true,
        function_mask: true,
    });
    table.vector_fd(0).unwrap().write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(
        !irr_has(&vcpu, 0x45),
        "a masked vector must not be delivered"
    );
    table.set_config(MsixConfig {
        enabled: true,
        function_mask: false,
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !irr_has(&vcpu, 0x45) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pending MSI never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
