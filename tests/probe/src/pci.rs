//! PCI configuration mechanism 1 (ports 0xcf8/0xcfc) and a scan of bus 0.

use crate::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Reads the dword at `offset` (rounded down to 4) of a function's config space.
/// The CONFIG_ADDRESS value selecting `offset` (dword aligned) of `bdf`.
fn address(bdf: Bdf, offset: u8) -> u32 {
    0x8000_0000
        | u32::from(bdf.bus) << 16
        | u32::from(bdf.device & 0x1f) << 11
        | u32::from(bdf.function & 0x7) << 8
        | u32::from(offset & 0xfc)
}

pub fn read_config(bdf: Bdf, offset: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(bdf, offset));
    inl(CONFIG_DATA)
}

pub fn write_config(bdf: Bdf, offset: u8, value: u32) {
    outl(CONFIG_ADDRESS, address(bdf, offset));
    outl(CONFIG_DATA, value);
}

#[derive(Clone, Copy)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: [u8; 3],
    pub header_type: u8,
}

impl Function {
    /// Reads the function's identity; `None` when nothing answers (all ones).
    pub fn probe(bdf: Bdf) -> Option<Function> {
        let id = read_config(bdf, 0x00);
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class = read_config(bdf, 0x08);
        let header = read_config(bdf, 0x0c);
        Some(Function {
            bdf,
            vendor,
            device: (id >> 16) as u16,
            class: [(class >> 24) as u8, (class >> 16) as u8, (class >> 8) as u8],
            header_type: (header >> 16) as u8,
        })
    }

    pub fn is_multifunction(&self) -> bool {
        self.header_type & 0x80 != 0
    }
}

impl core::fmt::Display for Function {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x}.{:02x}",
            self.bdf, self.vendor, self.device, self.class[0], self.class[1], self.class[2]
        )
    }
}

/// Calls `found` for every function on `bus`, in order; returns how many.
pub fn scan_bus(bus: u8, mut found: impl FnMut(&Function)) -> usize {
    let mut count = 0;
    for device in 0..32 {
        let first = Bdf {
            bus,
            device,
            function: 0,
        };
        let Some(function0) = Function::probe(first) else {
            continue;
        };
        found(&function0);
        count += 1;
        if !function0.is_multifunction() {
            continue;
        }
        for function in 1..8 {
            if let Some(f) = Function::probe(Bdf {
                bus,
                device,
                function,
            }) {
                found(&f);
                count += 1;
            }
        }
    }
    count
}

/// The type-0 functions with this vendor and device ID on bus 0, into
/// `out` in scan order; returns how many (at most `out.len()`).
pub fn find(vendor: u16, device: u16, out: &mut [Bdf]) -> usize {
    let mut n = 0;
    scan_bus(0, |f| {
        if (f.vendor, f.device) == (vendor, device) && f.header_type & 0x7f == 0 && n < out.len() {
            out[n] = f.bdf;
            n += 1;
        }
    });
    n
}

/// The first such function.
pub fn find_first(vendor: u16, device: u16) -> Option<Bdf> {
    let mut one = [Bdf { bus: 0, device: 0, function: 0 }];
    (find(vendor, device, &mut one) == 1).then_some(one[0])
}

/// Sizes the six BARs of a type-0 function the way an OS does: decoding
/// off, all ones written, the mask read back, the old value and command
/// restored. Returns (BAR index, size, is I/O) of the implemented ones, and
/// whether every register was restored.
pub fn size_bars(bdf: Bdf) -> ([(u8, u64, bool); 6], usize, bool) {
    let mut found = [(0u8, 0u64, false); 6];
    let mut n = 0;
    let mut restored = true;
    let cmd = read_config(bdf, 0x04);
    write_config(bdf, 0x04, cmd & !0x3);
    let mut i = 0u8;
    while i < 6 {
        let off = 0x10 + i * 4;
        let old = read_config(bdf, off);
        write_config(bdf, off, u32::MAX);
        let mask = read_config(bdf, off);
        write_config(bdf, off, old);
        restored &= read_config(bdf, off) == old;
        let io = mask & 1 == 1;
        let wide = !io && (mask >> 1) & 3 == 2;
        let mut size_mask = u64::from(mask & if io { !3 } else { !0xf });
        if wide {
            let hi_old = read_config(bdf, off + 4);
            write_config(bdf, off + 4, u32::MAX);
            size_mask |= u64::from(read_config(bdf, off + 4)) << 32;
            write_config(bdf, off + 4, hi_old);
        } else if size_mask != 0 {
            size_mask |= 0xffff_ffff_0000_0000;
        }
        if size_mask != 0 {
            found[n] = (i, (!size_mask).wrapping_add(1), io);
            n += 1;
        }
        i += if wide { 2 } else { 1 };
    }
    write_config(bdf, 0x04, cmd);
    (found, n, restored)
}

pub fn run() {
    let mut host_and_isa = 0;
    let mut bars = 0;
    let mut restored = true;
    let count = scan_bus(0, |f| {
        crate::diag!("pci {f}");
        if (f.vendor, f.device) == (0x8086, 0x1237) || (f.vendor, f.device) == (0x8086, 0x7000) {
            host_and_isa += 1;
        }
        if f.header_type & 0x7f == 0 {
            let (found, n, ok) = size_bars(f.bdf);
            restored &= ok;
            bars += n;
            for (i, size, io) in &found[..n] {
                crate::diag!("pci {} BAR{i}: {size:#x} bytes of {}", f.bdf, if *io { "I/O" } else { "memory" });
            }
        }
    });
    crate::check!("pci bus 0 scanned", true, "{count} functions");
    if host_and_isa > 0 {
        crate::check!(
            "pci finds the i440FX host bridge and the PIIX3 ISA bridge",
            host_and_isa == 2,
            "{host_and_isa} of 2"
        );
    }
    crate::check!(
        "pci BARs sized and restored",
        restored,
        "{bars} BARs implemented"
    );
}
