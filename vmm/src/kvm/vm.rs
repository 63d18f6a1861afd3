//! The VM: KVM_CREATE_VM with the in-kernel irqchip and PIT.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::KvmError;

/// Three pages KVM needs below 4 GiB on Intel hosts (identity map page,
/// then the real-mode TSS), just under the IOAPIC and BIOS, as QEMU has them.
const IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
const TSS_ADDR: usize = 0xfeff_d000;

pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    /// Memory given to `map_memory`, kept mapped while the VM can reach it.
    memory: Mutex<MappedMemory>,
}

#[derive(Default)]
struct MappedMemory {
    next_slot: u32,
    mappings: Vec<GuestMemoryMmap>,
}

impl Vm {
    /// Opens /dev/kvm and creates a VM with the in-kernel irqchip (PIC,
    /// IOAPIC, LAPICs) and PIT.
    pub fn new() -> Result<Vm, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(KvmError::CreateVm)?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDR)
            .map_err(|e| KvmError::SetupVm("identity map address", e))?;
        fd.set_tss_address(TSS_ADDR)
            .map_err(|e| KvmError::SetupVm("TSS address", e))?;
        fd.create_irq_chip()
            .map_err(|e| KvmError::SetupVm("irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| KvmError::SetupVm("PIT", e))?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory: Mutex::new(MappedMemory::default()),
        })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, KvmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(|e| KvmError::CreateVcpu(id, e))
    }

    /// Gives every region of `mem` to the guest as a memory slot at its
    /// guest address, numbering slots from 0. For simple machines and
    /// tests; the memory model's KVM listener manages slots itself, and the
    /// two must not be mixed on one VM.
    pub fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), KvmError> {
        let mut mapped = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        for region in mem.iter() {
            let addr = region.start_addr().0;
            let size = region.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| KvmError::MemorySlot {
                    addr,
                    size,
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                })?;
            let slot = kvm_userspace_memory_region {
                slot: mapped.next_slot,
                flags: 0,
                guest_phys_addr: addr,
                memory_size: size,
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host + size` is a live mapping owned by `mem`;
            // a clone of `mem` (sharing the mappings) is kept in `self` for
            // as long as the VM exists, so the guest never reaches memory
            // that was unmapped or reused.
            unsafe { self.fd.set_user_memory_region(slot) }
                .map_err(|source| KvmError::MemorySlot { addr, size, source })?;
            log::debug!("memory slot {} at {addr:#x}+{size:#x}", mapped.next_slot);
            mapped.next_slot += 1;
        }
        mapped.mappings.push(mem.clone());
        Ok(())
    }
}
