//! Output on the first 16550 UART (COM1), polled.

use core::fmt;

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;
const THR: u16 = COM1;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Gives up waiting for THR empty after this many polls, so a UART that
/// never reports ready cannot hang the probe (each poll is a VM exit).
const MAX_POLLS: u32 = 1000;

pub struct Serial;

impl Serial {
    pub fn write_byte(&mut self, byte: u8) {
        for _ in 0..MAX_POLLS {
            if inb(LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        outb(THR, byte);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}

/// `print!` to the serial port.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Serial, $($arg)*);
    }};
}

/// `println!` to the serial port.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
