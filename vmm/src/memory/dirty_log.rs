//! Per-RAM-block dirty bitmaps: one bit per 4 KiB page, set by whoever
//! collects dirty information (KVM's log on `log_sync`, later a vhost-user
//! log) and taken by whoever consumes it (a migration, `calc-dirty-rate`).
//! Words are exchanged atomically, so a bit set while the consumer takes
//! the map is either in what it took or still in the map: never lost.

use std::sync::atomic::{AtomicU64, Ordering};

pub const PAGE: u64 = 4096;

#[derive(Debug)]
pub struct DirtyBitmap {
    words: Box<[AtomicU64]>,
    pages: u64,
}

impl DirtyBitmap {
    /// A clean map for `size` bytes.
    pub fn new(size: u64) -> Self {
        let pages = size.div_ceil(PAGE);
        DirtyBitmap {
            words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks the pages of `[offset, offset + len)`.
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = (offset.saturating_add(len) - 1) / PAGE;
        for page in offset / PAGE..=last.min(self.pages.saturating_sub(1)) {
            self.words[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
    }

    /// ORs `bits` (bit i = page `first + i`, KVM's layout) into the map;
    /// bits past the end are ignored.
    pub fn merge(&self, first: u64, bits: &[u64]) {
        for (i, &w) in bits.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let base = first + 64 * i as u64;
            let (word, shift) = ((base / 64) as usize, base % 64);
            let put = |at: usize, v: u64| {
                if let Some(slot) = self.words.get(at) {
                    slot.fetch_or(v, Ordering::AcqRel);
                }
            };
            put(word, w << shift);
            if shift != 0 {
                put(word + 1, w >> (64 - shift));
            }
        }
        // Clear bits beyond the last page that a merge may have set.
        if self.pages % 64 != 0 {
            if let Some(last) = self.words.last() {
                last.fetch_and((1u64 << (self.pages % 64)) - 1, Ordering::AcqRel);
            }
        }
    }

    /// Whether the page holding byte `offset` is dirty.
    pub fn is_dirty(&self, offset: u64) -> bool {
        let page = offset / PAGE;
        self.words
            .get((page / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) >> (page % 64) & 1 == 1)
    }

    /// The dirty page numbers, leaving the map clean.
    pub fn take(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            let mut v = w.swap(0, Ordering::AcqRel);
            while v != 0 {
                let b = v.trailing_zeros() as u64;
                out.push(64 * i as u64 + b);
                v &= v - 1;
            }
        }
        out
    }

    /// How many pages are dirty, without clearing.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_merges_at_any_page_and_takes_once() {
        let d = DirtyBitmap::new(200 * PAGE);
        d.mark(PAGE + 1, 2 * PAGE);
        assert_eq!(d.count(), 3, "pages 1, 2 and 3");
        d.merge(70, &[0b101, 1 << 63]);
        d.merge(190, &[u64::MAX]);
        let pages = d.take();
        assert_eq!(&pages[..5], &[1, 2, 3, 70, 72]);
        assert!(pages.contains(&(70 + 127)));
        assert_eq!(*pages.last().unwrap(), 199, "nothing past the end");
        assert_eq!(pages.iter().filter(|&&p| p >= 190).count(), 10);
        assert_eq!(d.count(), 0);
        assert!(d.take().is_empty());
    }
}
