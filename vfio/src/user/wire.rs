//! The vfio-user wire format: a 16-byte header, then the command's fields,
//! little-endian.

/// Commands.
pub const VERSION: u16 = 1;
pub const DMA_MAP: u16 = 2;
pub const DMA_UNMAP: u16 = 3;
pub const DEVICE_GET_INFO: u16 = 4;
pub const DEVICE_GET_REGION_INFO: u16 = 5;
pub const DEVICE_GET_IRQ_INFO: u16 = 7;
pub const DEVICE_SET_IRQS: u16 = 8;
pub const REGION_READ: u16 = 9;
pub const REGION_WRITE: u16 = 10;
pub const DEVICE_RESET: u16 = 13;

pub const HEADER_SIZE: usize = 16;
pub const FLAG_REPLY: u32 = 1;
pub const FLAG_ERROR: u32 = 1 << 5;
/// The largest reply body believed: a region read of the default maximum
/// transfer (1 MiB) plus its fields.
pub const MAX_BODY: usize = (1 << 20) + 4096;

pub fn name(command: u16) -> &'static str {
    match command {
        VERSION => "VERSION",
        DMA_MAP => "DMA_MAP",
        DMA_UNMAP => "DMA_UNMAP",
        DEVICE_GET_INFO => "DEVICE_GET_INFO",
        DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
        DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
        DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
        REGION_READ => "REGION_READ",
        REGION_WRITE => "REGION_WRITE",
        DEVICE_RESET => "DEVICE_RESET",
        _ => "unknown command",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub command: u16,
    pub size: u32,
    pub flags: u32,
    pub error: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0; HEADER_SIZE];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.command.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.error.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        let mut r = Reader(b);
        Header {
            id: r.u16().unwrap_or(0),
            command: r.u16().unwrap_or(0),
            size: r.u32().unwrap_or(0),
            flags: r.u32().unwrap_or(0),
            error: r.u32().unwrap_or(0),
        }
    }
}

/// Little-endian fields appended to a message body.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// Little-endian fields read from a reply body; `None` past its end.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}
