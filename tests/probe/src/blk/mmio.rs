//! Volatile access to device registers and to memory shared with a device
//! (virtqueue rings, request headers and buffers), by physical address:
//! the probe identity-maps 0-4 GiB, so physical == virtual.

/// Reads a `T` at `addr`.
pub fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses inside a BAR the probe assigned or
    // inside the DMA arena (see `arena`), both identity-mapped and suitably
    // aligned for `T`; a volatile read has no other effect on the probe.
    unsafe { (addr as *const T).read_volatile() }
}

/// Writes a `T` at `addr`.
pub fn wr<T>(addr: u64, value: T) {
    // SAFETY: as for `rd`; the arena is used by nothing but this driver, so
    // writing it cannot corrupt the probe's own data.
    unsafe { (addr as *mut T).write_volatile(value) }
}

/// A full barrier between filling shared memory and telling the device,
/// and between seeing a used index and reading what it covers.
pub fn fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear, so ring 3 may).
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}
