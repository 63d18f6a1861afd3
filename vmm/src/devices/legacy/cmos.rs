//! The RTC's CMOS at 0x70 (index, bit 7 disables NMI) and 0x71 (data): 128
//! bytes of RAM that survive machine resets, the time registers read from
//! the host clock (BCD or binary and 12/24-hour as register B says), and the
//! memory-size bytes QEMU fills for firmware. Status register A's
//! update-in-progress bit is never set: a read always sees a settled time.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::memory::RegionOps;

pub const PORT: u64 = 0x70;
pub const SIZE: u64 = 2;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;
/// Register B: binary (not BCD) and 24-hour mode bits.
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;

struct State {
    index: u8,
    ram: [u8; 128],
}

pub struct Cmos {
    state: Mutex<State>,
}

/// Days since 1970-01-01 to (year, month, day); civil calendar.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn bcd(v: u8) -> u8 {
    (v / 10) << 4 | (v % 10)
}

impl Cmos {
    /// CMOS for a machine with `below_4g` bytes of RAM under 4 GiB and
    /// `above_4g` above it.
    pub fn new(below_4g: u64, above_4g: u64) -> Cmos {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz base, 1024 Hz rate
        ram[REG_B] = B_24H;
        ram[REG_D] = 0x80; // valid RAM and time
                           // Base memory in KiB (640), extended memory 1-64 MiB in KiB,
                           // memory above 16 MiB in 64 KiB units, above 4 GiB in 64 KiB units.
        ram[0x15..0x17].copy_from_slice(&640u16.to_le_bytes());
        let ext = (below_4g.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        ram[0x17..0x19].copy_from_slice(&ext.to_le_bytes());
        ram[0x30..0x32].copy_from_slice(&ext.to_le_bytes());
        let above16 = (below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        ram[0x34..0x36].copy_from_slice(&above16.to_le_bytes());
        let high = above_4g >> 16;
        ram[0x5b] = high as u8;
        ram[0x5c] = (high >> 8) as u8;
        ram[0x5d] = (high >> 16) as u8;
        Cmos {
            state: Mutex::new(State { index: 0, ram }),
        }
    }

    fn time_register(reg: usize, b: u8) -> u8 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (days, secs) = (now.div_euclid(86_400), now.rem_euclid(86_400));
        let (year, month, day) = civil(days);
        let hour = (secs / 3600) as u8;
        let enc = |v: u8| if b & B_BINARY != 0 { v } else { bcd(v) };
        match reg {
            SECONDS => enc((secs % 60) as u8),
            MINUTES => enc((secs / 60 % 60) as u8),
            HOURS if b & B_24H != 0 => enc(hour),
            HOURS => {
                let h12 = match hour % 12 {
                    0 => 12,
                    h => h,
                };
                enc(h12) | if hour >= 12 { 0x80 } else { 0 }
            }
            WEEKDAY => ((days + 4).rem_euclid(7) + 1) as u8,
            DAY => enc(day as u8),
            MONTH => enc(month as u8),
            YEAR => enc((year % 100) as u8),
            CENTURY => enc((year / 100) as u8),
            _ => 0,
        }
    }

    fn read_reg(st: &State, reg: usize) -> u8 {
        match reg {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                Self::time_register(reg, st.ram[REG_B])
            }
            REG_A => st.ram[REG_A] & 0x7f,
            REG_C => 0,
            _ => st.ram[reg],
        }
    }
}

impl RegionOps for Cmos {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset + i as u64 {
                0 => st.index,
                1 => Self::read_reg(&st, usize::from(st.index & 0x7f)),
                _ => 0xff,
            };
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &v) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => st.index = v,
                1 => {
                    let reg = usize::from(st.index & 0x7f);
                    match reg {
                        // Time is the host's; C and D are read-only.
                        SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {}
                        REG_C | REG_D => {}
                        REG_A => st.ram[REG_A] = v & 0x7f,
                        _ => st.ram[reg] = v,
                    }
                }
                _ => {}
            }
        }
    }
}

impl crate::machine::Reset for Cmos {
    /// A reset keeps CMOS RAM (it is battery backed) and clears the index.
    fn reset(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).index = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Reset;

    fn rd(c: &Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn ram_survives_reset_and_time_is_bcd_and_consistent() {
        let c = Cmos::new(512 << 20, 0);
        c.write(0, &[0x80 | 0x7e]); // NMI-disable bit set: same register
        c.write(1, &[0xa5]);
        c.reset();
        assert_eq!(rd(&c, 0x7e), 0xa5);
        let (s, m, h) = (rd(&c, 0), rd(&c, 2), rd(&c, 4));
        for v in [s, m, h, rd(&c, 7), rd(&c, 8), rd(&c, 9)] {
            assert!(v >> 4 <= 9 && v & 0xf <= 9, "{v:#x} is BCD");
        }
        assert!(h <= 0x23 && m <= 0x59 && s <= 0x59);
        assert_eq!(rd(&c, 0x0a) & 0x80, 0, "UIP never set");
        assert_eq!(rd(&c, 0x32), 0x20, "21st century");
        // Binary mode.
        c.write(0, &[0x0b]);
        c.write(1, &[B_24H | B_BINARY]);
        assert!(rd(&c, 2) < 60);
    }

    #[test]
    fn memory_size_bytes_match_qemu() {
        let c = Cmos::new(512 << 20, 0);
        let above16 = u16::from_le_bytes([rd(&c, 0x34), rd(&c, 0x35)]);
        assert_eq!(u64::from(above16), ((512 - 16) << 20) >> 16);
        let c = Cmos::new(3 << 30, 3 << 30);
        let high = u32::from_le_bytes([rd(&c, 0x5b), rd(&c, 0x5c), rd(&c, 0x5d), 0]);
        assert_eq!(u64::from(high), (3u64 << 30) >> 16);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_513), (2026, 3, 1));
    }
}
