//! A tiny limiter for log lines on paths a guest can trigger.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lets the first `BURST` events through, then one in every `EVERY`.
pub(crate) struct LogLimiter {
    count: AtomicU64,
}

const BURST: u64 = 10;
const EVERY: u64 = 1000;

impl LogLimiter {
    pub(crate) const fn new() -> Self {
        LogLimiter {
            count: AtomicU64::new(0),
        }
    }

    /// Returns true when this event should be logged.
    pub(crate) fn allow(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        n < BURST || n % EVERY == 0
    }
}
