//! The expansion ROM the edu server offers (QEMU's edu has none): 2 KiB
//! with the PCI option ROM signature 0x55 0xAA, its length in 512-byte
//! units, then a pattern a guest can check byte by byte. Read-only.

/// Size of the ROM region.
pub const ROM_SIZE: u64 = 0x800;

/// Byte `at` of the ROM (all ones past its end).
pub fn rom_byte(at: u64) -> u8 {
    match at {
        0 => 0x55,
        1 => 0xaa,
        2 => (ROM_SIZE / 512) as u8,
        a if a < ROM_SIZE => (a as u8) ^ ((a >> 8) as u8) ^ 0xed,
        _ => 0xff,
    }
}

/// Fills `data` with the ROM's bytes from `offset`.
pub fn rom_read(offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset.checked_add(i as u64).map_or(0xff, rom_byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_length_pattern_and_ones_past_the_end() {
        let mut head = [0u8; 5];
        rom_read(0, &mut head);
        assert_eq!(head, [0x55, 0xaa, 4, 3 ^ 0xed, 4 ^ 0xed]);
        let mut tail = [0u8; 4];
        rom_read(ROM_SIZE - 2, &mut tail);
        assert_eq!(tail, [0xfe ^ 7 ^ 0xed, 0xff ^ 7 ^ 0xed, 0xff, 0xff]);
        rom_read(u64::MAX - 1, &mut tail);
        assert_eq!(tail, [0xff; 4], "no overflow at the top");
    }
}
