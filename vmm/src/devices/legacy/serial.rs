//! COM1: a 16550 UART (vm-superio) at 0x3f8. Output goes to any writer
//! (stdout, a file); the interrupt line is an eventfd the machine binds to
//! GSI 4 with an irqfd.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::RegionOps;
use crate::ratelimit::RateLimit;
use crate::warn_limited;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_GSI: u32 = 4;
/// Ports of one UART.
pub const SIZE: u64 = 8;

/// Raises the UART's interrupt by writing an eventfd.
pub struct IrqLine(pub Arc<EventFd>);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

pub type Sink = Box<dyn Write + Send>;

pub struct Serial {
    uart: Mutex<Uart<IrqLine, vm_superio::serial::NoEvents, Sink>>,
    irq: Arc<EventFd>,
    limit: RateLimit,
}

impl Serial {
    pub fn new(out: Sink) -> std::io::Result<Serial> {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        Ok(Serial {
            uart: Mutex::new(Uart::new(IrqLine(irq.clone()), out)),
            irq,
            limit: RateLimit::new(3),
        })
    }

    /// The interrupt line, to bind to GSI 4.
    pub fn irq(&self) -> Arc<EventFd> {
        self.irq.clone()
    }
}

impl RegionOps for Serial {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in data.iter_mut().enumerate() {
            *b = uart.read((offset + i as u64) as u8);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &b) in data.iter().enumerate() {
            if let Err(e) = uart.write((offset + i as u64) as u8, b) {
                warn_limited!(self.limit, "serial output failed: {e:?}");
            }
        }
        if let Err(e) = uart.writer_mut().flush() {
            warn_limited!(self.limit, "serial output failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_sink_and_lsr_says_empty() {
        let buf = Buf::default();
        let s = Serial::new(Box::new(buf.clone())).unwrap();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THR and transmitter empty");
        assert_eq!(&*buf.0.lock().unwrap(), b"hi\n");
        // Enabling the THR-empty interrupt raises the line.
        s.write(1, &[0x02]);
        assert!(s.irq().read().is_ok());
    }
}
