//! What a vCPU's run loop hands to the machine, and what it reports back.

/// What the machine wants after a guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Resume the guest.
    Continue,
    /// The guest asked to power off: this vCPU stops and reports it.
    Poweroff,
    /// The guest asked to reset: this vCPU stops and reports it.
    Reset,
}

/// The machine's side of VM exits. Called on vCPU threads, concurrently.
/// Values come from the guest: implementations must not panic on them.
pub trait ExitHandler: Send + Sync {
    /// Port input of `data.len()` bytes (1, 2 or 4) from `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// Port output of `data.len()` bytes (1, 2 or 4) to `port`.
    fn pio_write(&self, port: u16, data: &[u8]) -> ExitAction;
    /// A read that missed every memory slot and in-kernel device.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A write that missed every memory slot and in-kernel device.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> ExitAction;
}

/// Why a vCPU thread stopped running its guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The exit handler returned `ExitAction::Poweroff`.
    Poweroff,
    /// The exit handler returned `ExitAction::Reset`.
    Reset,
    /// KVM_EXIT_SHUTDOWN: a triple fault, which a PC turns into a reset.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT (`KVM_SYSTEM_EVENT_*` kind and its data).
    SystemEvent { kind: u32, data: Vec<u64> },
    /// KVM_EXIT_INTERNAL_ERROR (for example an emulation failure), with the
    /// suberror, its data words and the vCPU registers.
    InternalError {
        suberror: u32,
        data: Vec<u64>,
        registers: String,
    },
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason and the registers.
    FailEntry { reason: u64, registers: String },
    /// KVM_RUN failed or returned an exit the loop does not handle.
    Error(String),
    /// The owner asked the vCPU to stop (`VcpuSet::stop`).
    Requested,
}

/// Sent once by each vCPU thread when it stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuEvent {
    pub cpu: usize,
    pub stop: VcpuStop,
}
