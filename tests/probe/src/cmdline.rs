//! The kernel command line: NUL-terminated bytes at `cmd_line_ptr`, split
//! into words; `probe=a,b` words select optional checks.

/// Longest command line read; the Linux limit on x86 is 2048.
pub const MAX_LEN: usize = 4096;

pub struct Cmdline {
    text: &'static str,
}

impl Cmdline {
    /// Reads the string at `addr` (identity-mapped), up to NUL or `max`
    /// bytes. Returns `None` for a null pointer or bytes that are not UTF-8.
    pub fn read(addr: u64, max: usize) -> Option<Cmdline> {
        if addr == 0 {
            return None;
        }
        let max = max.min(MAX_LEN);
        // SAFETY: the command line lies in identity-mapped guest RAM that the
        // probe never writes; `max` bounds the read.
        let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, max) };
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(max);
        let text = core::str::from_utf8(&bytes[..len]).ok()?;
        Some(Cmdline { text })
    }

    pub fn empty() -> Cmdline {
        Cmdline { text: "" }
    }

    pub fn as_str(&self) -> &'static str {
        self.text
    }

    pub fn words(&self) -> impl Iterator<Item = &'static str> {
        self.text.split_ascii_whitespace()
    }

    /// The number in a `key=N` word (decimal), if present.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.words()
            .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .find_map(|v| v.parse().ok())
    }

    /// Whether `probe=` names `test` (`probe=spin,pci` selects both).
    pub fn selects(&self, test: &str) -> bool {
        self.words()
            .filter_map(|w| w.strip_prefix("probe="))
            .flat_map(|list| list.split(','))
            .any(|t| t == test)
    }
}
