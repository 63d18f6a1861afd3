//! The edu register file behind BAR0 (QEMU's `edu` device, docs/specs/edu.rst),
//! with the DMA engine and interrupt raising behind the [`EduHost`] trait so
//! the logic is tested without a socket.

/// Value of the identification register at 0x00.
pub const EDU_ID: u32 = 0x0100_00ed;
/// Status bit: the last DMA was refused (address not mapped, or outside the
/// device buffer); nothing was transferred. Ours, not QEMU's.
pub const STATUS_DMA_ERROR: u32 = 1 << 8;
/// Status bit: raise interrupt 0x001 after each factorial (QEMU's bit 7).
pub const STATUS_IRQ_FACT: u32 = 0x80;
/// Interrupt status bit set when a DMA with [`DMA_CMD_IRQ`] completes.
pub const IRQ_DMA: u32 = 0x100;
/// Interrupt status bit set by a factorial with [`STATUS_IRQ_FACT`].
pub const IRQ_FACT: u32 = 0x001;
/// DMA command bits.
pub const DMA_CMD_START: u64 = 1;
/// Direction, as in QEMU's edu: 0 = RAM to device buffer, 1 = device buffer to RAM.
pub const DMA_CMD_TO_RAM: u64 = 2;
/// Raise [`IRQ_DMA`] when the transfer is done.
pub const DMA_CMD_IRQ: u64 = 4;
/// Device-side address of the DMA buffer, and its size.
pub const DMA_BUF_ADDR: u64 = 0x4_0000;
pub const DMA_BUF_SIZE: usize = 4096;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 1 << 20;

/// What the registers need from the world: memory of the client by IOVA,
/// and the interrupt line.
pub trait EduHost {
    /// Reads guest memory at `iova`; false (and `data` untouched in meaning)
    /// if the range is not entirely covered by one DMA mapping.
    fn dma_read(&mut self, iova: u64, data: &mut [u8]) -> bool;
    /// Writes guest memory at `iova`; false and nothing written if the range
    /// is not entirely covered by one DMA mapping.
    fn dma_write(&mut self, iova: u64, data: &[u8]) -> bool;
    /// Signals the device's interrupt (MSI-X vector 0).
    fn raise_irq(&mut self);
}

/// Register state; `Default` is the power-on state.
pub struct EduRegs {
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_cnt: u64,
    dma_cmd: u64,
    buf: Vec<u8>,
}

impl Default for EduRegs {
    fn default() -> Self {
        EduRegs {
            liveness: 0,
            factorial: 1,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_cnt: 0,
            dma_cmd: 0,
            buf: vec![0; DMA_BUF_SIZE],
        }
    }
}

/// The byte range `[offset, offset + len)` of the buffer window, if entirely in it.
fn buf_range(addr: u64, len: u64) -> Option<std::ops::Range<usize>> {
    let start = addr.checked_sub(DMA_BUF_ADDR)?;
    let end = start.checked_add(len)?;
    (end <= DMA_BUF_SIZE as u64).then_some(start as usize..end as usize)
}

impl EduRegs {
    /// Reads `data.len()` bytes at `offset` in BAR0. Offsets nothing decodes
    /// read as all ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if let Some(range) = buf_range(offset, data.len() as u64) {
            data.copy_from_slice(&self.buf[range]);
            return;
        }
        let (base, value) = match self.reg(offset) {
            Some(reg) => reg,
            None => return data.fill(0xff),
        };
        let shift = offset - base;
        let bytes = value.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = bytes.get(shift as usize + i).copied().unwrap_or(0xff);
        }
    }

    /// The interrupt status register: nonzero while an interrupt is raised
    /// and not acknowledged.
    pub fn irq_status(&self) -> u32 {
        self.irq_status
    }

    /// The register containing `offset`: its base and value.
    fn reg(&self, offset: u64) -> Option<(u64, u64)> {
        let base = if offset >= 0x80 {
            offset & !7
        } else {
            offset & !3
        };
        let value = match base {
            0x00 => u64::from(EDU_ID),
            0x04 => u64::from(!self.liveness),
            0x08 => u64::from(self.factorial),
            0x20 => u64::from(self.status),
            0x24 => u64::from(self.irq_status),
            // Write-only: raise and acknowledge.
            0x60 | 0x64 => 0,
            0x80 => self.dma_src,
            0x88 => self.dma_dst,
            0x90 => self.dma_cnt,
            0x98 => self.dma_cmd,
            _ => return None,
        };
        Some((base, value))
    }

    /// Writes `data` at `offset` in BAR0; the effects (factorial, DMA,
    /// interrupts) happen before this returns. Writes nothing decodes are
    /// ignored.
    pub fn write(&mut self, offset: u64, data: &[u8], host: &mut dyn EduHost) {
        if let Some(range) = buf_range(offset, data.len() as u64) {
            self.buf[range].copy_from_slice(data);
            return;
        }
        let Some((base, old)) = self.reg(offset) else {
            return;
        };
        let shift = (offset - base) as usize;
        let width = if base >= 0x80 { 8 } else { 4 };
        if shift + data.len() > width {
            return;
        }
        let mut bytes = old.to_le_bytes();
        bytes[shift..shift + data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let low = value as u32;
        match base {
            0x04 => self.liveness = low,
            0x08 => {
                self.factorial = (1..=low).fold(1u32, |acc, n| acc.wrapping_mul(n));
                if self.status & STATUS_IRQ_FACT != 0 {
                    self.raise(IRQ_FACT, host);
                }
            }
            0x20 => self.status = (self.status & STATUS_DMA_ERROR) | (low & STATUS_IRQ_FACT),
            0x60 => self.raise(low, host),
            0x64 => self.irq_status &= !low,
            0x80 => self.dma_src = value,
            0x88 => self.dma_dst = value,
            0x90 => self.dma_cnt = value,
            0x98 => {
                self.dma_cmd = value;
                if value & DMA_CMD_START != 0 {
                    self.run_dma(host);
                }
            }
            _ => {}
        }
    }

    fn raise(&mut self, bits: u32, host: &mut dyn EduHost) {
        self.irq_status |= bits;
        host.raise_irq();
    }

    /// Runs the programmed transfer at once. A refused transfer sets
    /// [`STATUS_DMA_ERROR`], moves no byte and raises no interrupt.
    fn run_dma(&mut self, host: &mut dyn EduHost) {
        self.status &= !STATUS_DMA_ERROR;
        let to_ram = self.dma_cmd & DMA_CMD_TO_RAM != 0;
        let (ram, dev) = if to_ram {
            (self.dma_dst, self.dma_src)
        } else {
            (self.dma_src, self.dma_dst)
        };
        let done = match buf_range(dev, self.dma_cnt) {
            Some(range) if to_ram => host.dma_write(ram, &self.buf[range]),
            Some(range) => {
                let mut staging = vec![0; range.len()];
                let ok = host.dma_read(ram, &mut staging);
                if ok {
                    self.buf[range].copy_from_slice(&staging);
                }
                ok
            }
            None => false,
        };
        self.dma_cmd &= !DMA_CMD_START;
        if !done {
            log::warn!(
                "edu: DMA refused: ram={ram:#x} device={dev:#x} count={:#x}",
                self.dma_cnt
            );
            self.status |= STATUS_DMA_ERROR;
            return;
        }
        if self.dma_cmd & DMA_CMD_IRQ != 0 {
            self.raise(IRQ_DMA, host);
        }
    }
}

#[cfg(test)]
#[path = "regs_tests.rs"]
mod tests;
