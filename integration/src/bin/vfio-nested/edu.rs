//! QEMU's edu device (1234:11e8) through a VFIO device: BAR0 registers by
//! region reads and writes, its DMA engine, and BAR0 mapped into memory.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::VfioDevice;

pub const ID: u64 = 0x00;
pub const IRQ_STATUS: u64 = 0x24;
pub const IRQ_ACK: u64 = 0x64;
const DMA_SRC: u64 = 0x80;
const DMA_DST: u64 = 0x88;
const DMA_COUNT: u64 = 0x90;
const DMA_CMD: u64 = 0x98;
const CMD_START: u32 = 1;
/// QEMU's `EDU_DMA_TO_PCI`... named from the bus: set = device buffer to
/// RAM (`pci_dma_write`), clear = RAM into the device buffer.
const CMD_TO_RAM: u32 = 2;
const CMD_IRQ: u32 = 4;
/// The device's DMA buffer, in its own address space.
pub const BUFFER: u64 = 0x40000;
pub const BUFFER_SIZE: u32 = 4096;
/// The interrupt status bit of a finished DMA.
pub const DMA_IRQ: u32 = 0x100;

pub struct Edu {
    pub dev: VfioDevice,
}

impl Edu {
    pub fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, &mut b, off);
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, off: u64, v: u32) {
        self.dev
            .region_write(VFIO_PCI_BAR0_REGION_INDEX, &v.to_le_bytes(), off);
    }

    /// Sets memory space and bus master in the command register.
    pub fn enable(&self) {
        let mut cmd = [0u8; 2];
        self.dev
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, 4);
        let v = u16::from_le_bytes(cmd) | 0x6;
        self.dev
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &v.to_le_bytes(), 4);
    }

    /// Copies `len` bytes from RAM at `iova` into the device buffer.
    pub fn ram_to_device(&self, iova: u64, len: u32) -> Result<(), String> {
        self.dma(iova, BUFFER, len, 0)
    }

    /// Copies `len` bytes of the device buffer to RAM at `iova`, raising
    /// the DMA interrupt at the end if `irq`.
    pub fn device_to_ram(&self, iova: u64, len: u32, irq: bool) -> Result<(), String> {
        let flags = CMD_TO_RAM | if irq { CMD_IRQ } else { 0 };
        self.dma(BUFFER, iova, len, flags)
    }

    fn dma(&self, src: u64, dst: u64, len: u32, flags: u32) -> Result<(), String> {
        assert!(
            len <= BUFFER_SIZE,
            "edu DMA of {len} bytes exceeds its buffer"
        );
        if self.read32(DMA_CMD) & CMD_START != 0 {
            return Err("a DMA is still running on edu".into());
        }
        // Addresses fit 32 bits here; edu takes 4-byte writes of its
        // 64-bit DMA registers as the whole value.
        let src = u32::try_from(src).map_err(|_| format!("DMA source {src:#x} above 4 GiB"))?;
        let dst = u32::try_from(dst).map_err(|_| format!("DMA target {dst:#x} above 4 GiB"))?;
        self.write32(DMA_SRC, src);
        self.write32(DMA_DST, dst);
        self.write32(DMA_COUNT, len);
        self.write32(DMA_CMD, CMD_START | flags);
        let t = Instant::now();
        while self.read32(DMA_CMD) & CMD_START != 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "edu DMA {src:#x} -> {dst:#x} ({len} bytes) did not finish in 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Reads the id register through an mmap of BAR0; `Ok(None)` if the
    /// region does not support mmap.
    pub fn id_by_mmap(&self) -> Result<Option<u32>, String> {
        let index = VFIO_PCI_BAR0_REGION_INDEX;
        if self.dev.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Ok(None);
        }
        let size = self.dev.get_region_size(index) as usize;
        let offset = self.dev.get_region_offset(index) as libc::off_t;
        // SAFETY: a fresh shared mapping of the device fd at the region's
        // offset; nothing else is placed at the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.dev.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of BAR0 ({size:#x} bytes at {offset:#x}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `p` maps all of BAR0 (edu's is 1 MiB), the id register is
        // its first word; MMIO is read with one aligned volatile load.
        let id = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(ID as usize).cast::<u32>()) };
        // SAFETY: unmaps exactly the mapping made above, no longer used.
        unsafe { libc::munmap(p, size) };
        Ok(Some(id))
    }
}
