//! The debug-exit port (0x501): a write stops the machine with the value
//! written as the exit status. Unlike QEMU's isa-debug-exit, whose status is
//! `(value << 1) | 1`, the status is the value itself, so a test guest can
//! report "N checks failed" as N and success as 0.

use crate::machine::requests::{Request, Requests};
use crate::memory::RegionOps;

pub const PORT: u64 = 0x501;
pub const SIZE: u64 = 4;

pub struct DebugExit(pub Requests);

impl RegionOps for DebugExit {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        let at = (offset as usize).min(4);
        let n = data.len().min(4 - at);
        v[at..at + n].copy_from_slice(&data[..n]);
        self.0.raise(Request::Stop(u32::from_le_bytes(v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_written_is_the_status() {
        let r = Requests::new().unwrap();
        let d = DebugExit(r.clone());
        d.write(0, &7u32.to_le_bytes());
        assert_eq!(r.take(), Some(Request::Stop(7)));
        d.write(0, &[3]);
        assert_eq!(r.take(), Some(Request::Stop(3)));
        d.write(3, &[1, 2, 3, 4]);
        assert_eq!(r.take(), Some(Request::Stop(1 << 24)));
    }
}
