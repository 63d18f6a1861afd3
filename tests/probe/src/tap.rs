//! Test Anything Protocol output: one `ok N - name` or `not ok N - name: detail`
//! line per check, `# ...` for diagnostics, the plan `1..N` at the end.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::port::outl;

/// The VMM ends the run with the 32-bit value written here as its status.
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// Status when the probe panics (CPU exceptions report 0x100 | vector).
pub const PANIC_STATUS: u32 = 0x1ff;

static CHECKS: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Records one check; `detail` is printed either way (after the name).
pub fn check(name: &str, passed: bool, detail: fmt::Arguments) {
    let number = CHECKS.fetch_add(1, Ordering::Relaxed) + 1;
    if passed {
        crate::println!("ok {number} - {name}{}", Detail(detail));
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
        crate::println!("not ok {number} - {name}{}", Detail(detail));
    }
}

/// Formats a detail as `: detail`, or nothing when it is empty.
struct Detail<'a>(fmt::Arguments<'a>);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0.as_str() {
            Some("") => Ok(()),
            _ => write!(f, ": {}", self.0),
        }
    }
}

/// `check!(name, condition)` or `check!(name, condition, "detail {}", x)`.
#[macro_export]
macro_rules! check {
    ($name:expr, $passed:expr) => {
        $crate::tap::check($name, $passed, format_args!(""))
    };
    ($name:expr, $passed:expr, $($detail:tt)+) => {
        $crate::tap::check($name, $passed, format_args!($($detail)+))
    };
}

/// `# ...` diagnostic line.
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => {{
        $crate::print!("# ");
        $crate::println!($($arg)*);
    }};
}

pub fn failed() -> u32 {
    FAILED.load(Ordering::Relaxed)
}

/// Prints the plan line `1..N`.
pub fn plan() {
    crate::println!("1..{}", CHECKS.load(Ordering::Relaxed));
}

/// Prints the plan and leaves through the debug-exit port with the number
/// of failed checks.
pub fn finish() -> ! {
    plan();
    exit(failed())
}

pub fn exit(status: u32) -> ! {
    outl(DEBUG_EXIT_PORT, status);
    // The VMM stops the vCPU on the write; should it not, stay put in ring 3.
    loop {
        core::hint::spin_loop();
    }
}
