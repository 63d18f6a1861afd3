//! The ACPI PM1 block (fixed hardware the FADT points at): PM1a event
//! status/enable, PM1a control, and the 32-bit PM timer at
//! 3.579545 MHz. SCI_EN reads as set (there is no SMM to hand over from).
//! Writing SLP_EN with the \_S5 sleep type powers the machine off.
//! The power button (`press_power_button`) sets PWRBTN_STS; while it is
//! set and the guest enabled it, PM1 holds up the shared SCI `with_sci`
//! gave (level, like GPE0's events, until the guest clears the status).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::acpi::S5_TYPE;
use crate::devices::sci::{SciLine, SciSource};
use crate::machine::requests::{Request, Requests};
use crate::memory::RegionOps;

pub const SIZE: u64 = 12;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
const PM_TIMER_HZ: u128 = 3_579_545;
/// PM1 status and enable: the power button (PWRBTN_STS, PWRBTN_EN).
pub const PWRBTN: u16 = 1 << 8;

pub struct Pm1 {
    requests: Requests,
    status: AtomicU16,
    enable: AtomicU16,
    control: AtomicU16,
    start: Instant,
    /// The shared SCI, if wired.
    sci: Option<Arc<SciLine>>,
}

impl Pm1 {
    pub fn new(requests: Requests) -> Self {
        Pm1 {
            requests,
            status: AtomicU16::new(0),
            enable: AtomicU16::new(0),
            control: AtomicU16::new(SCI_EN),
            start: Instant::now(),
            sci: None,
        }
    }

    /// Holds `sci` up while an enabled status bit is set.
    pub fn with_sci(mut self, sci: Arc<SciLine>) -> Self {
        self.sci = Some(sci);
        self
    }

    /// Presses the power button: PWRBTN_STS, and an SCI if PWRBTN_EN.
    pub fn press_power_button(&self) {
        self.status.fetch_or(PWRBTN, Ordering::AcqRel);
        self.update_sci();
    }

    /// The SCI level: an enabled event is pending.
    fn update_sci(&self) {
        let pending = self.status.load(Ordering::Acquire) & self.enable.load(Ordering::Acquire);
        if let Some(sci) = &self.sci {
            sci.set(SciSource::Pm1, pending & PWRBTN != 0);
        }
    }

    fn timer(&self) -> u32 {
        (self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000) as u32
    }
}

impl RegionOps for Pm1 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut block = [0u8; SIZE as usize];
        block[0..2].copy_from_slice(&self.status.load(Ordering::Relaxed).to_le_bytes());
        block[2..4].copy_from_slice(&self.enable.load(Ordering::Relaxed).to_le_bytes());
        block[4..6].copy_from_slice(&self.control.load(Ordering::Relaxed).to_le_bytes());
        block[8..12].copy_from_slice(&self.timer().to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = block.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 2];
        let n = data.len().min(2);
        v[..n].copy_from_slice(&data[..n]);
        let v = u16::from_le_bytes(v);
        match offset {
            // Status bits are write-1-to-clear.
            0 => {
                self.status.fetch_and(!v, Ordering::AcqRel);
                self.update_sci();
            }
            2 => {
                self.enable.store(v, Ordering::Release);
                self.update_sci();
            }
            4 => {
                self.control
                    .store((v & !SLP_EN) | SCI_EN, Ordering::Relaxed);
                let slp_typ = ((v >> 10) & 7) as u8;
                if v & SLP_EN != 0 && slp_typ == S5_TYPE {
                    log::info!("guest entered ACPI S5: power off");
                    self.requests.raise(Request::Stop(0));
                }
            }
            _ => {}
        }
    }
}

impl crate::machine::Reset for Pm1 {
    fn reset(&self) {
        self.status.store(0, Ordering::Relaxed);
        self.enable.store(0, Ordering::Relaxed);
        self.control.store(SCI_EN, Ordering::Relaxed);
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_the_timer_runs() {
        let r = Requests::new().unwrap();
        let pm = Pm1::new(r.clone());
        let mut c = [0u8; 2];
        pm.read(4, &mut c);
        assert_eq!(u16::from_le_bytes(c) & SCI_EN, SCI_EN);
        // S3-like type with SLP_EN: not a power-off.
        pm.write(4, &(3u16 << 10 | SLP_EN).to_le_bytes());
        assert_eq!(r.take(), None);
        pm.write(4, &(u16::from(S5_TYPE) << 10 | SLP_EN).to_le_bytes());
        assert_eq!(r.take(), Some(Request::Stop(0)));
        let mut t0 = [0u8; 4];
        pm.read(8, &mut t0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut t1 = [0u8; 4];
        pm.read(8, &mut t1);
        let d = u32::from_le_bytes(t1).wrapping_sub(u32::from_le_bytes(t0));
        assert!(d >= 7000, "2 ms is about 7159 ticks, got {d}");
    }

    #[test]
    fn the_power_button_sets_its_status_and_raises_the_sci_when_enabled() {
        let sci = Arc::new(SciLine::default());
        let pm = Pm1::new(Requests::new().unwrap()).with_sci(sci.clone());
        pm.press_power_button();
        let mut st = [0u8; 2];
        pm.read(0, &mut st);
        assert_eq!(u16::from_le_bytes(st) & PWRBTN, PWRBTN);
        assert!(!sci.is_raised(), "not enabled: no SCI");
        pm.write(2, &PWRBTN.to_le_bytes());
        assert!(sci.is_raised(), "enabling a pending event raises it");
        pm.write(0, &PWRBTN.to_le_bytes());
        pm.read(0, &mut st);
        assert_eq!(u16::from_le_bytes(st) & PWRBTN, 0, "write 1 to clear");
        assert!(!sci.is_raised(), "clearing the status drops the line");
        pm.press_power_button();
        assert!(sci.is_raised());
        sci.set(SciSource::Gpe0, true);
        crate::machine::Reset::reset(&pm);
        assert!(sci.is_raised(), "a reset of PM1 leaves GPE0's level alone");
    }
}
