//! KVM: the VM with its in-kernel irqchip and PIT, the vCPU threads with
//! their run loop, kick, pause/resume and `run_on_cpu`, and the memory
//! listeners that follow the memory model (`kvm-memory`, `kvm-io`).
//!
//! Lock order: a vCPU's control mutex is never held while taking another
//! vCPU's, nor while running guest code or an exit handler.

mod dump;
mod exit;
pub mod ioevents;
mod kick;
pub mod memslots;
mod vcpu;
mod vm;

#[cfg(test)]
mod listener_tests;

pub use exit::{ExitAction, ExitHandler, VcpuEvent, VcpuStop};
pub use vcpu::VcpuSet;
pub use vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({0})")]
    SetupVm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    #[error("cannot add a memory slot for {addr:#x}+{size:#x}")]
    MemorySlot {
        addr: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot install the vCPU kick signal handler")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start the thread for vCPU {0}")]
    SpawnThread(usize, #[source] std::io::Error),
    #[error("no vCPU {0}")]
    NoSuchVcpu(usize),
    #[error("vCPU {0} has stopped")]
    VcpuGone(usize),
    #[error("run_on_cpu called on vCPU {0}'s own thread")]
    OnOwnThread(usize),
}
