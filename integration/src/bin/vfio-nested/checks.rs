//! The checks, each proven with edu's DMA engine through the real IOMMU.

use std::time::Duration;

use integration::nested::*;
use vmm::memory::MemoryRegion;
use vmm_sys_util::eventfd::EventFd;

use crate::edu::{self, DMA_IRQ};
use crate::{kmsg, report, Rig, RAM_IOVA};

/// A hot-added region (like a DIMM): 2 MiB at 8 MiB.
const DIMM_IOVA: u64 = 0x80_0000;
/// The good half of the refused transaction: 2 MiB at 16 MiB.
const GOOD_IOVA: u64 = 0x100_0000;
/// Beyond the emulated IOMMU's 39-bit address width.
const BEYOND_IOVA: u64 = 1 << 40;
/// Bytes per DMA: QEMU 7.2's edu rejects (with a hardware error that stops
/// QEMU) a transfer ending exactly at the end of its 4 KiB buffer.
const LEN: usize = 2048;

fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn ram_region(name: &str, size: u64) -> Result<MemoryRegion, String> {
    MemoryRegion::ram(name, size).map_err(|e| format!("RAM region {name}: {e}"))
}

fn write(r: &MemoryRegion, offset: u64, data: &[u8]) {
    r.ram_block().expect("a RAM region").write(offset, data);
}

fn read(r: &MemoryRegion, offset: u64) -> Vec<u8> {
    let mut b = vec![0u8; LEN];
    r.ram_block().expect("a RAM region").read(offset, &mut b);
    b
}

/// DMAs `LEN` bytes from `iova` into the device, then back out into the
/// rig's RAM at `offset`, and returns what arrived there.
fn through_device(rig: &Rig, iova: u64, offset: u64) -> Result<Vec<u8>, String> {
    write(&rig.ram, offset, &[0u8; LEN]);
    rig.edu.ram_to_device(iova, LEN as u32)?;
    rig.edu
        .device_to_ram(RAM_IOVA + offset, LEN as u32, false)?;
    Ok(read(&rig.ram, offset))
}

fn id_region_read(rig: &Rig) -> Result<(), String> {
    match rig.edu.read32(edu::ID) {
        0x0100_00ed => Ok(()),
        id => Err(format!("read {id:#010x}")),
    }
}

fn id_mmap(rig: &Rig) -> Result<(), String> {
    match rig.edu.id_by_mmap()? {
        Some(0x0100_00ed) => Ok(()),
        Some(id) => Err(format!("read {id:#010x}")),
        None => Err("BAR0 region does not support mmap".into()),
    }
}

fn round_trip(rig: &Rig) -> Result<(), String> {
    let p = pattern(1);
    write(&rig.ram, 0, &p);
    if through_device(rig, RAM_IOVA, 0x1000)? != p {
        return Err("the copy back differs from the pattern".into());
    }
    Ok(())
}

fn hot_added(rig: &Rig, dimm: &MemoryRegion) -> Result<(), String> {
    let p = pattern(2);
    write(dimm, 0, &p);
    rig.add(DIMM_IOVA, dimm)?;
    if !rig.live.snapshot().contains_key(&DIMM_IOVA) {
        return Err(format!("no mapping at {DIMM_IOVA:#x} after commit"));
    }
    if through_device(rig, DIMM_IOVA, 0x2000)? != p {
        return Err("the device did not read the hot-added region's pattern".into());
    }
    Ok(())
}

fn removed(rig: &Rig, dimm: &MemoryRegion) -> Result<(), String> {
    rig.remove(dimm)?;
    if rig.live.snapshot().contains_key(&DIMM_IOVA) {
        return Err(format!("{DIMM_IOVA:#x} is still mapped after removal"));
    }
    let p = pattern(3);
    write(dimm, 0, &p);
    let got = through_device(rig, DIMM_IOVA, 0x3000)?;
    if got == p {
        return Err("the device read the new pattern from the removed region".into());
    }
    let zeros = got.iter().all(|&b| b == 0);
    println!(
        "removed region: the device read {}",
        if zeros { "zeros" } else { "other data" }
    );
    Ok(())
}

fn dmar_fault() -> Result<(), String> {
    let addr = format!("fault addr 0x{DIMM_IOVA:x}");
    let line = kmsg::find(&["DMAR", &addr], Duration::from_secs(3))?;
    println!("dmar: {line}");
    Ok(())
}

fn rollback(rig: &Rig) -> Result<(), String> {
    let before = rig.live.snapshot();
    let good = ram_region("rollback-good", 2 << 20)?;
    let beyond = ram_region("rollback-beyond", 2 << 20)?;
    let p = pattern(4);
    write(&good, 0, &p);
    let tx = rig.memory.begin();
    tx.add_subregion(&rig.root, GOOD_IOVA, &good)
        .map_err(|e| e.to_string())?;
    tx.add_subregion(&rig.root, BEYOND_IOVA, &beyond)
        .map_err(|e| e.to_string())?;
    let e = match tx.commit() {
        Ok(()) => {
            return Err(format!(
                "the IOMMU mapped {BEYOND_IOVA:#x}; nothing was refused"
            ))
        }
        Err(e) => e,
    };
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain += &format!(": {s}");
        source = s.source();
    }
    println!("refused: {chain}");
    let e = e.to_string();
    if !e.contains("listener \"vfio\"") {
        return Err(format!("the error does not name the vfio listener: {e}"));
    }
    let after = rig.live.snapshot();
    if after != before {
        return Err(format!("mappings before {before:x?}, after {after:x?}"));
    }
    if rig.space.lookup(GOOD_IOVA).is_some() || good.is_mapped() {
        return Err("the region of the refused transaction is in the view".into());
    }
    if through_device(rig, GOOD_IOVA, 0x4000)? == p {
        return Err(format!("the device still reads {GOOD_IOVA:#x}"));
    }
    Ok(())
}

fn msi(rig: &Rig) -> Result<(), String> {
    let efd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    rig.edu
        .dev
        .enable_msi(vec![&efd])
        .map_err(|e| format!("VFIO_DEVICE_SET_IRQS (MSI): {e}"))?;
    rig.edu.device_to_ram(RAM_IOVA + 0x5000, LEN as u32, true)?;
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&efd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 3000) };
    let status = rig.edu.read32(edu::IRQ_STATUS);
    rig.edu.write32(edu::IRQ_ACK, status);
    let _ = rig.edu.dev.disable_msi();
    if n != 1 {
        return Err(format!("no MSI within 3 s (irq status {status:#x})"));
    }
    let count = efd
        .read()
        .map_err(|e| format!("reading the eventfd: {e}"))?;
    if status & DMA_IRQ == 0 {
        return Err(format!("irq status {status:#x} lacks the DMA bit"));
    }
    println!("msi: eventfd count {count}, irq status {status:#x}");
    Ok(())
}

/// Runs every check; returns how many failed.
pub fn run(rig: &Rig) -> u32 {
    let mut failed = report(ID_REGION_READ, id_region_read(rig));
    failed += report(ID_MMAP, id_mmap(rig));
    failed += report(ROUND_TRIP, round_trip(rig));
    match ram_region("dimm0", 2 << 20) {
        Ok(dimm) => {
            failed += report(HOT_ADDED, hot_added(rig, &dimm));
            failed += report(REMOVED, removed(rig, &dimm));
        }
        Err(e) => failed += report(HOT_ADDED, Err(e)) + report(REMOVED, Err("no region".into())),
    }
    failed += report(DMAR_FAULT, dmar_fault());
    failed += report(ROLLBACK, rollback(rig));
    failed += report(MSI, msi(rig));
    failed
}
