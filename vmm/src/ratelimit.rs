//! Rate limiting for log lines a guest can trigger: at most `burst` lines
//! per second per limiter; the number dropped is reported with the next
//! line that gets through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    burst: u32,
    window: Mutex<(Instant, u32)>,
    dropped: AtomicU64,
}

impl RateLimit {
    pub fn new(burst: u32) -> Self {
        RateLimit {
            burst,
            window: Mutex::new((Instant::now(), 0)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now; if so, also how many were dropped
    /// since the last one that was.
    pub fn allow(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        if w.1 >= self.burst {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        w.1 += 1;
        Some(self.dropped.swap(0, Ordering::Relaxed))
    }
}

/// Logs a warning through `$limit` (a [`RateLimit`]).
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limit.allow() {
            if dropped > 0 {
                log::warn!("({dropped} similar messages suppressed)");
            }
            log::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_not_logged() {
        let r = RateLimit::new(3);
        assert_eq!(r.allow(), Some(0));
        assert!(r.allow().is_some());
        assert!(r.allow().is_some());
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        assert_eq!(r.dropped.load(Ordering::Relaxed), 2);
    }
}
