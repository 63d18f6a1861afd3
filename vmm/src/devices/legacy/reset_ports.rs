//! Reset paths of the PC besides 0xcf9: the i8042 keyboard controller's
//! "pulse reset line" command (0xfe to port 0x64) and System Control Port A
//! (0x92, bit 0 fast reset; bit 1 is A20, kept).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::machine::requests::{Request, Requests};
use crate::memory::RegionOps;

/// Data port; the command/status port is 0x64.
pub const I8042_DATA: u64 = 0x60;
pub const I8042_COMMAND: u64 = 0x64;
pub const PORT_A: u64 = 0x92;

/// A minimal i8042 command/status port: no keyboard, buffers empty, reset
/// on command 0xfe. Mapped at 0x64; the data port (0x60) reads zero.
pub struct I8042(pub Requests);

/// The i8042 data port: nothing to read, writes ignored.
pub struct I8042Data;

impl RegionOps for I8042 {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // System flag set, input and output buffers empty.
        data.fill(0);
        data[0] = 0x04;
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&0xfe) {
            self.0.raise(Request::Reset);
        }
    }
}

impl RegionOps for I8042Data {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

pub struct PortA {
    requests: Requests,
    value: AtomicU8,
}

impl PortA {
    pub fn new(requests: Requests) -> Self {
        PortA {
            requests,
            // A20 enabled.
            value: AtomicU8::new(0x02),
        }
    }
}

impl RegionOps for PortA {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(self.value.load(Ordering::Relaxed));
    }
    fn write(&self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        self.value.store(v & 0x02, Ordering::Relaxed);
        if v & 1 != 0 {
            self.requests.raise(Request::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_commands_reset() {
        let r = Requests::new().unwrap();
        let k = I8042(r.clone());
        k.write(0, &[0xad]);
        I8042Data.write(0, &[0xfe]);
        assert_eq!(r.take(), None);
        k.write(0, &[0xfe]);
        assert_eq!(r.take(), Some(Request::Reset));
        let a = PortA::new(r.clone());
        a.write(0, &[0x02]);
        assert_eq!(r.take(), None);
        a.write(0, &[0x03]);
        assert_eq!(r.take(), Some(Request::Reset));
    }
}
