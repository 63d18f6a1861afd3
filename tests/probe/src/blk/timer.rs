//! Bounded waiting on the ACPI PM timer (I/O port 0x608, 3,579,545 Hz; 24 or
//! 32 bits wide: only differences of the low 24 bits are used, sampled far
//! more often than the 4.7 s the 24-bit counter takes to wrap).

use crate::port::inl;

pub const PM_TIMER_PORT: u16 = 0x608;
pub const PM_HZ: u64 = 3_579_545;
const MASK: u32 = 0xff_ffff;
/// With a timer that never moves (not emulated), give up after this many
/// spins instead.
const MAX_SPINS_STUCK: u64 = 1 << 28;

pub fn pm_now() -> u32 {
    inl(PM_TIMER_PORT)
}

/// PM-timer ticks elapsed from `from` to `to`.
pub fn ticks(from: u32, to: u32) -> u64 {
    u64::from(to.wrapping_sub(from) & MASK)
}

pub struct Deadline {
    last: u32,
    elapsed: u64,
    limit: u64,
    spins: u64,
}

impl Deadline {
    pub fn after_ms(ms: u64) -> Deadline {
        Deadline {
            last: pm_now(),
            elapsed: 0,
            limit: PM_HZ * ms / 1000,
            spins: 0,
        }
    }

    /// Call once per polling spin; true once the time is up. The timer is
    /// read every 1024 spins (each read is a VM exit).
    pub fn expired(&mut self) -> bool {
        self.spins += 1;
        if self.spins & 0x3ff == 0 {
            let now = pm_now();
            self.elapsed += ticks(self.last, now);
            self.last = now;
        }
        self.elapsed >= self.limit || (self.elapsed == 0 && self.spins >= MAX_SPINS_STUCK)
    }
}
