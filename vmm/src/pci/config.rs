//! A function's 256-byte configuration space with per-byte write masks.
//! Guest writes only change writable bits; write-1-to-clear bits clear.
//! Accesses are clipped to the space, so no offset or size can panic.

pub const SIZE: usize = 256;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const ROM_BAR: usize = 0x30;
pub const CAPABILITIES: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;

/// Command register bits.
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// The ROM BAR's address decode enable.
pub const ROM_ENABLE: u32 = 1;
/// Status: a capability list is present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; SIZE],
    writable: [u8; SIZE],
    w1c: [u8; SIZE],
    /// Offset of the last capability, for linking the next one.
    last_cap: Option<usize>,
    /// (offset, body length) of each capability.
    caps_len: Vec<(usize, usize)>,
}

impl ConfigSpace {
    /// A type-0 header with the given identity; command (I/O, memory, bus
    /// master, INTx disable) and the interrupt line are writable.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; SIZE],
            writable: [0; SIZE],
            w1c: [0; SIZE],
            last_cap: None,
            caps_len: Vec::new(),
        };
        c.set_u16(VENDOR_ID, vendor);
        c.set_u16(DEVICE_ID, device);
        c.set_u8(REVISION, revision);
        c.set_u8(CLASS_PROG, class as u8);
        c.set_u16(CLASS_PROG + 1, (class >> 8) as u16);
        let cmd = CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;
        c.set_writable(COMMAND, &cmd.to_le_bytes());
        c.set_writable(INTERRUPT_LINE, &[0xff]);
        c
    }

    pub fn u8(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.u8(off), self.u8(off + 1)])
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.u8(off),
            self.u8(off + 1),
            self.u8(off + 2),
            self.u8(off + 3),
        ])
    }

    /// Sets bytes as the device (not the guest): masks do not apply.
    pub fn set(&mut self, off: usize, v: &[u8]) {
        for (i, b) in v.iter().enumerate() {
            if let Some(x) = self.bytes.get_mut(off + i) {
                *x = *b;
            }
        }
    }
    pub fn set_u8(&mut self, off: usize, v: u8) {
        self.set(off, &[v]);
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.set(off, &v.to_le_bytes());
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.set(off, &v.to_le_bytes());
    }

    /// Which bits of each byte from `off` the guest may write.
    pub fn set_writable(&mut self, off: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(x) = self.writable.get_mut(off + i) {
                *x = *m;
            }
        }
    }

    /// Bits the guest clears by writing 1.
    pub fn set_w1c(&mut self, off: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(x) = self.w1c.get_mut(off + i) {
                *x = *m;
            }
        }
    }

    /// Appends a capability with `id` and `body` (the bytes after the
    /// id/next pair); returns its offset, or None when there is no room.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Option<usize> {
        let start = match self.last_cap {
            None => 0x40,
            Some(last) => (last + 2 + self.cap_len(last)).next_multiple_of(4),
        };
        if start + 2 + body.len() > SIZE {
            return None;
        }
        match self.last_cap {
            None => {
                self.set_u8(CAPABILITIES, start as u8);
                let st = self.u16(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, st);
            }
            Some(last) => self.set_u8(last + 1, start as u8),
        }
        self.set(start, &[id, 0]);
        self.set(start + 2, body);
        self.caps_len.push((start, body.len()));
        self.last_cap = Some(start);
        Some(start)
    }

    fn cap_len(&self, at: usize) -> usize {
        self.caps_len
            .iter()
            .find(|(s, _)| *s == at)
            .map_or(0, |(_, l)| *l)
    }

    /// A guest read: bytes past the end read as zero.
    pub fn read(&self, off: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.u8(off + i);
        }
    }

    /// A guest write through the masks; returns whether anything changed.
    pub fn write(&mut self, off: usize, data: &[u8]) -> bool {
        let mut changed = false;
        for (i, &v) in data.iter().enumerate() {
            let at = off + i;
            if at >= SIZE {
                break;
            }
            let (w, c) = (self.writable[at], self.w1c[at]);
            let old = self.bytes[at];
            let new = (old & !w) | (v & w);
            let new = new & !(v & c);
            changed |= new != old;
            self.bytes[at] = new;
        }
        changed
    }
}
