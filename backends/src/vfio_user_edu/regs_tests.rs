use super::*;

/// Client memory at 0x1000..0x3000, and a count of interrupts.
struct FakeHost {
    mem: Vec<u8>,
    irqs: u32,
}

const BASE: u64 = 0x1000;

impl FakeHost {
    fn new() -> Self {
        FakeHost {
            mem: (0..0x2000).map(|i| i as u8).collect(),
            irqs: 0,
        }
    }

    fn range(&self, iova: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = iova.checked_sub(BASE)? as usize;
        (start + len <= self.mem.len()).then_some(start..start + len)
    }
}

impl EduHost for FakeHost {
    fn dma_read(&mut self, iova: u64, data: &mut [u8]) -> bool {
        let Some(r) = self.range(iova, data.len()) else {
            return false;
        };
        data.copy_from_slice(&self.mem[r]);
        true
    }
    fn dma_write(&mut self, iova: u64, data: &[u8]) -> bool {
        let Some(r) = self.range(iova, data.len()) else {
            return false;
        };
        self.mem[r].copy_from_slice(data);
        true
    }
    fn raise_irq(&mut self) {
        self.irqs += 1;
    }
}

fn read32(regs: &EduRegs, offset: u64) -> u32 {
    let mut b = [0; 4];
    regs.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write(regs: &mut EduRegs, host: &mut FakeHost, offset: u64, value: u64, width: usize) {
    regs.write(offset, &value.to_le_bytes()[..width], host);
}

#[test]
fn id_liveness_and_factorial() {
    let (mut regs, mut host) = (EduRegs::default(), FakeHost::new());
    assert_eq!(read32(&regs, 0), EDU_ID);
    write(&mut regs, &mut host, 0x04, 0x1234_5678, 4);
    assert_eq!(read32(&regs, 0x04), !0x1234_5678);
    write(&mut regs, &mut host, 0x08, 5, 4);
    assert_eq!(read32(&regs, 0x08), 120);
    assert_eq!(host.irqs, 0);
    assert_eq!(
        read32(&regs, 0x10),
        0xffff_ffff,
        "undecoded offsets read all ones"
    );
}

#[test]
fn dma_round_trip_raises_interrupt() {
    let (mut regs, mut host) = (EduRegs::default(), FakeHost::new());
    write(&mut regs, &mut host, 0x80, 0x1100, 8);
    write(&mut regs, &mut host, 0x88, DMA_BUF_ADDR + 8, 8);
    write(&mut regs, &mut host, 0x90, 64, 8);
    write(&mut regs, &mut host, 0x98, DMA_CMD_START | DMA_CMD_IRQ, 8);
    assert_eq!(host.irqs, 1);
    assert_eq!(read32(&regs, 0x24), IRQ_DMA);
    assert_eq!(read32(&regs, 0x98) as u64 & DMA_CMD_START, 0);
    // Back to RAM at 0x2800 with 4-byte halves, as a 32-bit driver would.
    write(&mut regs, &mut host, 0x80, DMA_BUF_ADDR + 8, 4);
    write(&mut regs, &mut host, 0x88, 0x2800, 4);
    write(&mut regs, &mut host, 0x8c, 0, 4);
    write(
        &mut regs,
        &mut host,
        0x98,
        DMA_CMD_START | DMA_CMD_TO_RAM,
        4,
    );
    assert_eq!(host.mem[0x1800..0x1840], host.mem[0x100..0x140]);
    assert_eq!(host.irqs, 1, "no interrupt without the irq bit");
    write(&mut regs, &mut host, 0x64, u64::from(IRQ_DMA), 4);
    assert_eq!(read32(&regs, 0x24), 0);
}

#[test]
fn dma_outside_memory_or_buffer_is_refused_and_touches_nothing() {
    let (mut regs, mut host) = (EduRegs::default(), FakeHost::new());
    let before = host.mem.clone();
    for (src, dst, cnt, cmd) in [
        (0x2ff0, DMA_BUF_ADDR, 0x20, 0),           // RAM end crossed
        (DMA_BUF_ADDR, 0x9000, 4, DMA_CMD_TO_RAM), // RAM unmapped
        (DMA_BUF_ADDR + 0xff0, 0x1000, 0x20, DMA_CMD_TO_RAM), // buffer end crossed
        (0x1000, DMA_BUF_ADDR, u64::MAX, 0),       // count overflows
    ] {
        write(&mut regs, &mut host, 0x80, src, 8);
        write(&mut regs, &mut host, 0x88, dst, 8);
        write(&mut regs, &mut host, 0x90, cnt, 8);
        write(
            &mut regs,
            &mut host,
            0x98,
            DMA_CMD_START | DMA_CMD_IRQ | cmd,
            8,
        );
        assert_ne!(read32(&regs, 0x20) & STATUS_DMA_ERROR, 0);
    }
    assert_eq!(host.mem, before);
    assert_eq!(host.irqs, 0);
    let mut buf = [0xaa; 16];
    regs.read(DMA_BUF_ADDR, &mut buf);
    assert_eq!(buf, [0; 16], "the device buffer is untouched");
}

#[test]
fn raise_and_factorial_interrupts() {
    let (mut regs, mut host) = (EduRegs::default(), FakeHost::new());
    write(&mut regs, &mut host, 0x60, 0x10, 4);
    assert_eq!((host.irqs, read32(&regs, 0x24)), (1, 0x10));
    write(&mut regs, &mut host, 0x20, u64::from(STATUS_IRQ_FACT), 4);
    write(&mut regs, &mut host, 0x08, 3, 4);
    assert_eq!((host.irqs, read32(&regs, 0x24)), (2, 0x10 | IRQ_FACT));
}
