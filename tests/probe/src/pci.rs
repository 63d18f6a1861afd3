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
pub fn read_config(bdf: Bdf, offset: u8) -> u32 {
    let address = 0x8000_0000
        | u32::from(bdf.bus) << 16
        | u32::from(bdf.device & 0x1f) << 11
        | u32::from(bdf.function & 0x7) << 8
        | u32::from(offset & 0xfc);
    outl(CONFIG_ADDRESS, address);
    inl(CONFIG_DATA)
}

#[allow(dead_code)] // for the BAR checks to come
pub fn write_config(bdf: Bdf, offset: u8, value: u32) {
    let address = 0x8000_0000
        | u32::from(bdf.bus) << 16
        | u32::from(bdf.device & 0x1f) << 11
        | u32::from(bdf.function & 0x7) << 8
        | u32::from(offset & 0xfc);
    outl(CONFIG_ADDRESS, address);
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

pub fn run() {
    let count = scan_bus(0, |f| crate::diag!("pci {f}"));
    crate::check!("pci bus 0 scanned", true, "{count} functions");
}
