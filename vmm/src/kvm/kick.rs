//! The signal that knocks a vCPU thread out of KVM_RUN.
//!
//! Kicking is race-free with `immediate_exit`: the kicker sets
//! `kvm_run.immediate_exit` and then signals the thread. A thread inside
//! KVM_RUN gets EINTR from the signal; one about to enter it returns at
//! once with EINTR because of the flag. The vCPU thread clears the flag
//! after EINTR, before it looks at its requests.
//!
//! The handler is installed without SA_RESTART (vmm-sys-util's helper), so
//! a kick that lands while the vCPU thread is in an exit handler's blocking
//! system call makes that call fail with EINTR; handlers retry (std's
//! `write_all`/`read_exact` do).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SIGRTMIN};

use super::KvmError;

/// Offset of the kick signal from SIGRTMIN.
const KICK_SIGNAL_OFFSET: c_int = 0;

pub fn kick_signal() -> c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {}

/// Installs the no-op handler once per process.
pub fn install_handler() -> Result<(), KvmError> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), on_kick)))
        .map_err(KvmError::KickSignal)
}

/// Makes sure the calling (vCPU) thread can receive the kick.
pub fn unblock_on_this_thread() {
    if let Err(e) = unblock_signal(kick_signal()) {
        log::warn!("cannot unblock the vCPU kick signal: {e}");
    }
}

/// `kvm_run.immediate_exit` of one vCPU, shared with the kicking threads.
pub struct ImmediateExit(*const AtomicU8);

// SAFETY: the pointer targets the vCPU's kvm_run mapping, which the kernel
// and every thread access byte-wise; all accesses go through AtomicU8, and
// `VcpuSet` clears its copy (under the control lock) before the mapping goes.
unsafe impl Send for ImmediateExit {}

impl ImmediateExit {
    /// # Safety
    ///
    /// `flag` must point to `immediate_exit` of a live `kvm_run` mapping and
    /// stay valid until this value is dropped.
    pub unsafe fn new(flag: *mut u8) -> Self {
        ImmediateExit(flag as *const AtomicU8)
    }

    fn atomic(&self) -> &AtomicU8 {
        // SAFETY: valid per `new`'s contract; AtomicU8 has u8's layout.
        unsafe { &*self.0 }
    }

    pub fn set(&self) {
        self.atomic().store(1, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.atomic().store(0, Ordering::SeqCst);
    }
}
