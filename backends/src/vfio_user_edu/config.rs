//! The edu function's PCI configuration space as the server presents it:
//! ids, BAR0 (1 MiB, 32-bit memory), BAR1 (4 KiB, MSI-X table and PBA) and
//! an MSI-X capability with two vectors. A client such as our VMM
//! virtualises the BARs and MSI-X itself; the server keeps what is written
//! so a plain client sees a coherent device.

use super::regs::BAR0_SIZE;

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x11e8;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: usize = 0x40;
/// Number of MSI-X vectors.
pub const MSIX_VECTORS: u16 = 2;
/// Size of BAR1, which holds the MSI-X table at 0 and the PBA at 0x800.
pub const BAR1_SIZE: u64 = 0x1000;
pub const MSIX_PBA_OFFSET: u32 = 0x800;
pub const CONFIG_SIZE: usize = 256;

/// Sizes of the BARs, by BAR number.
const BAR_SIZES: [u64; 2] = [BAR0_SIZE, BAR1_SIZE];

pub struct EduConfig {
    bytes: [u8; CONFIG_SIZE],
}

impl Default for EduConfig {
    fn default() -> Self {
        let mut bytes = [0; CONFIG_SIZE];
        let mut put = |offset: usize, value: &[u8]| {
            bytes[offset..offset + value.len()].copy_from_slice(value);
        };
        put(0x00, &VENDOR_ID.to_le_bytes());
        put(0x02, &DEVICE_ID.to_le_bytes());
        put(0x06, &0x0010u16.to_le_bytes()); // status: capability list
        put(0x08, &[0x10, 0x00, 0xff, 0x00]); // revision 0x10, class 0x00ff00
        put(0x2c, &0x1af4u16.to_le_bytes()); // subsystem vendor (QEMU's)
        put(0x2e, &0x1100u16.to_le_bytes());
        put(0x34, &[MSIX_CAP as u8]);
        put(0x3d, &[1]); // INTx on pin A
                         // MSI-X: id 0x11, end of list, table size N-1, table and PBA in BAR1.
        put(MSIX_CAP, &[0x11, 0x00]);
        put(MSIX_CAP + 2, &(MSIX_VECTORS - 1).to_le_bytes());
        put(MSIX_CAP + 4, &1u32.to_le_bytes());
        put(MSIX_CAP + 8, &(MSIX_PBA_OFFSET | 1).to_le_bytes());
        EduConfig { bytes }
    }
}

impl EduConfig {
    /// Reads bytes at `offset`; bytes past the end read as all ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| self.bytes.get(o.checked_add(i)?))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes the writable fields: command, BAR addresses (with their size
    /// masks), the MSI-X enable and mask bits. Everything else is kept.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|&at| at < CONFIG_SIZE)
            else {
                return;
            };
            if let Some(mask) = writable_mask(at) {
                self.bytes[at] = (self.bytes[at] & !mask) | (value & mask);
            }
        }
    }
}

/// Which bits of byte `at` a write may change.
fn writable_mask(at: usize) -> Option<u8> {
    match at {
        0x04 => Some(0x06), // memory space, bus master
        0x05 => Some(0x04), // INTx disable
        0x3c => Some(0xff), // interrupt line
        0x10..=0x17 => {
            let bar = (at - 0x10) / 4;
            let mask = !(BAR_SIZES[bar] - 1) as u32 & !0xf;
            Some(mask.to_le_bytes()[(at - 0x10) % 4])
        }
        a if a == MSIX_CAP + 3 => Some(0xc0), // MSI-X enable, function mask
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(config: &EduConfig, offset: u64) -> u32 {
        let mut b = [0; 4];
        config.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_capability_and_bar_sizing() {
        let mut config = EduConfig::default();
        assert_eq!(read32(&config, 0), 0x11e8_1234);
        assert_eq!(read32(&config, 0x34) & 0xff, 0x40);
        assert_eq!(read32(&config, 0x40), 0x0001_0011);
        config.write(0x10, &u32::MAX.to_le_bytes());
        config.write(0x14, &u32::MAX.to_le_bytes());
        config.write(0x18, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&config, 0x10), 0xfff0_0000);
        assert_eq!(read32(&config, 0x14), 0xffff_f000);
        assert_eq!(read32(&config, 0x18), 0);
        config.write(0x00, &[0xff; 4]);
        assert_eq!(read32(&config, 0), 0x11e8_1234, "ids are read-only");
        assert_eq!(
            read32(&config, 0xfe),
            0xffff_0000,
            "past the end reads ones"
        );
    }
}
