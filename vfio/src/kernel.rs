//! The kernel's VFIO as a [`VfioBackend`]: a device opened through its
//! IOMMU group in a legacy container (vfio-ioctls' `VfioDevice`), with
//! region reads and writes, mmap-able areas (sparse-mmap aware), IRQ
//! eventfds for INTx, MSI and MSI-X, INTx unmask by eventfd, and reset.
//!
//! Region accesses and SET_IRQS are issued here rather than through
//! vfio-ioctls' helpers, which log and drop the kernel's error: a device
//! model must know that an access failed.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr};
use vmm_sys_util::ioctl_io_nr;

use crate::backend::{BackendError, RegionInfo, RegionMmap, VfioBackend};

const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);

const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0:?} is not a PCI address (DDDD:BB:DD.F)")]
    BadAddress(String),
    #[error("{} is not a device bound to vfio-pci (no {})", .0.display(), .1)]
    NotBound(PathBuf, &'static str),
    #[error("cannot open the VFIO device {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: VfioError,
    },
    #[error("cannot duplicate the VFIO device descriptor")]
    Dup(#[source] std::io::Error),
    #[error("{what} of region {index} at {offset:#x}+{len:#x} is outside it")]
    Bounds {
        what: &'static str,
        index: u32,
        offset: u64,
        len: usize,
    },
    #[error("{what} of region {index} at {offset:#x}+{len:#x} failed")]
    Io {
        what: &'static str,
        index: u32,
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("VFIO_DEVICE_SET_IRQS ({action}) of IRQ index {index} with {count} vector(s) failed")]
    SetIrqs {
        action: &'static str,
        index: u32,
        count: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("VFIO_DEVICE_GET_INFO failed")]
    Info(#[source] std::io::Error),
    #[error("{0} is not a PCI device (VFIO device flags {1:#x})")]
    NotPci(String, u32),
    #[error("VFIO_DEVICE_RESET failed")]
    Reset(#[source] std::io::Error),
}

/// `host=DDDD:BB:DD.F` (or `BB:DD.F`, domain 0) as its sysfs directory.
pub fn sysfs_path(host: &str) -> Result<PathBuf, KernelError> {
    let bad = || KernelError::BadAddress(host.into());
    let full = match host.matches(':').count() {
        1 => format!("0000:{host}"),
        2 => host.to_owned(),
        _ => return Err(bad()),
    };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let shape = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]);
    let slot_ok = u8::from_str_radix(&full[8..10], 16).is_ok_and(|d| d < 32);
    if !shape || !slot_ok {
        return Err(bad());
    }
    Ok(Path::new("/sys/bus/pci/devices").join(full.to_ascii_lowercase()))
}

/// Whether `sysfs` is a device in an IOMMU group with a driver: what can
/// be checked before a container is opened.
pub fn check_bound(sysfs: &Path) -> Result<(), KernelError> {
    for needed in ["iommu_group", "driver"] {
        if !sysfs.join(needed).exists() {
            return Err(KernelError::NotBound(sysfs.into(), needed));
        }
    }
    Ok(())
}

/// One device of the kernel's VFIO.
pub struct KernelDevice {
    name: String,
    /// A duplicate of the device descriptor for reads, writes and mmaps;
    /// declared before `dev` so it is closed first (the group is released
    /// only when no descriptor of its devices is open).
    file: File,
    dev: VfioDevice,
    /// `VFIO_DEVICE_FLAGS_*`.
    flags: u32,
}

impl KernelDevice {
    /// Opens the device at `sysfs` (bound to vfio-pci), attaching its group
    /// to `container` (the first group sets the container's IOMMU).
    pub fn open(sysfs: &Path, container: Arc<VfioContainer>) -> Result<Self, KernelError> {
        check_bound(sysfs)?;
        let ops: Arc<dyn VfioOps> = container;
        let dev = VfioDevice::new(sysfs, ops, false).map_err(|source| KernelError::Open {
            path: sysfs.into(),
            source,
        })?;
        // SAFETY: the descriptor belongs to `dev`, alive for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(dev.as_raw_fd()) };
        let file = File::from(borrowed.try_clone_to_owned().map_err(KernelError::Dup)?);
        let name = sysfs.file_name().map_or_else(
            || sysfs.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most `argsz` bytes into `info`.
        let ret = unsafe { ioctl_with_mut_ref(&file, VFIO_DEVICE_GET_INFO(), &mut info) };
        if ret < 0 {
            return Err(KernelError::Info(std::io::Error::last_os_error()));
        }
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(KernelError::NotPci(name, info.flags));
        }
        Ok(KernelDevice {
            name,
            file,
            dev,
            flags: info.flags,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the kernel can reset the device (VFIO_DEVICE_FLAGS_RESET);
    /// without it a reset is a no-op here.
    pub fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// The vfio-ioctls device, for what this backend does not cover.
    pub fn device(&self) -> &VfioDevice {
        &self.dev
    }

    fn bounds(
        &self,
        what: &'static str,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<u64, KernelError> {
        let size = self.region(index).map_or(0, |r| r.size);
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(self.dev.get_region_offset(index) + offset),
            _ => Err(KernelError::Bounds {
                what,
                index,
                offset,
                len,
            }),
        }
    }

    /// VFIO_DEVICE_SET_IRQS with eventfd data (`fds`, -1 to clear one) or,
    /// with none, DATA_NONE and count 0 (disable the index).
    fn set_irqs(&self, action: u32, index: u32, fds: &[RawFd]) -> Result<(), KernelError> {
        let data = if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD
        };
        // struct vfio_irq_set is five u32 words followed by the data (here
        // one s32 descriptor per vector), so a u32 buffer has its layout.
        let mut words = vec![0u32, data | action, index, 0, fds.len() as u32];
        words.extend(fds.iter().map(|&fd| fd as u32));
        words[0] = (words.len() * 4) as u32;
        // SAFETY: the kernel reads `argsz` bytes of the buffer, which holds
        // exactly that many; the descriptors are the caller's and valid or -1.
        let ret = unsafe { ioctl_with_ptr(&self.file, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) };
        if ret < 0 {
            return Err(KernelError::SetIrqs {
                action: if action == VFIO_IRQ_SET_ACTION_UNMASK {
                    "unmask"
                } else {
                    "trigger"
                },
                index,
                count: fds.len(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl VfioBackend for KernelDevice {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        if index >= VFIO_PCI_NUM_REGIONS {
            return None;
        }
        Some(RegionInfo {
            index,
            flags: self.dev.get_region_flags(index),
            size: self.dev.get_region_size(index),
        })
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.dev.get_irq_info(index).map_or(0, |i| i.count)
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        let at = self.bounds("read", index, offset, data.len())?;
        self.file.read_exact_at(data, at).map_err(|source| {
            KernelError::Io {
                what: "read",
                index,
                offset,
                len: data.len(),
                source,
            }
            .into()
        })
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let at = self.bounds("write", index, offset, data.len())?;
        self.file.write_all_at(data, at).map_err(|source| {
            KernelError::Io {
                what: "write",
                index,
                offset,
                len: data.len(),
                source,
            }
            .into()
        })
    }

    fn set_irq_eventfds(&mut self, index: u32, fds: &[RawFd]) -> Result<(), BackendError> {
        Ok(self.set_irqs(VFIO_IRQ_SET_ACTION_TRIGGER, index, fds)?)
    }

    fn set_irq_unmask_eventfd(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
    ) -> Result<(), BackendError> {
        Ok(self.set_irqs(VFIO_IRQ_SET_ACTION_UNMASK, index, &[fd.unwrap_or(-1)])?)
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        if !self.can_reset() {
            log::debug!(
                "{}: no device reset (VFIO_DEVICE_FLAGS_RESET clear)",
                self.name
            );
            return Ok(());
        }
        // SAFETY: an ioctl without argument on the device descriptor.
        let ret = unsafe { ioctl(&self.file, VFIO_DEVICE_RESET()) };
        if ret < 0 {
            return Err(KernelError::Reset(std::io::Error::last_os_error()).into());
        }
        Ok(())
    }

    fn region_mmap(&self, index: u32) -> Option<RegionMmap> {
        let info = self.region(index)?;
        if info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || info.size == 0 {
            return None;
        }
        let sparse = self
            .dev
            .get_region_caps(index)
            .into_iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                _ => None,
            });
        let areas: Vec<(u64, u64)> = match sparse {
            Some(areas) => areas.iter().map(|a| (a.offset, a.size)).collect(),
            None => vec![(0, info.size)],
        };
        let areas = valid_areas(&self.name, index, info.size, areas);
        if areas.is_empty() {
            return None;
        }
        match self.file.try_clone() {
            Ok(file) => Some(RegionMmap {
                file,
                offset: self.dev.get_region_offset(index),
                areas,
            }),
            Err(e) => {
                log::warn!("{}: region {index} is trapped: {e}", self.name);
                None
            }
        }
    }
}

/// The areas that are whole pages inside the region; the others are left
/// to traps, with a warning.
fn valid_areas(name: &str, index: u32, size: u64, areas: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    areas
        .into_iter()
        .filter(|&(off, len)| {
            let ok = len > 0
                && off % PAGE == 0
                && len % PAGE == 0
                && off.checked_add(len).is_some_and(|end| end <= size);
            if !ok {
                log::warn!("{name}: region {index}: mmap area {off:#x}+{len:#x} ignored");
            }
            ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_become_sysfs_paths_and_bad_ones_are_refused() {
        assert_eq!(
            sysfs_path("0000:01:00.0").unwrap(),
            Path::new("/sys/bus/pci/devices/0000:01:00.0")
        );
        assert_eq!(
            sysfs_path("00:1F.7").unwrap(),
            Path::new("/sys/bus/pci/devices/0000:00:1f.7")
        );
        for bad in [
            "",
            "01:00",
            "0000:01:00.8",
            "0000:01:20.0",
            "x000:01:00.0",
            "0000:01:00.0.1",
        ] {
            assert!(sysfs_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mmap_areas_must_be_whole_pages_inside_the_region() {
        let areas = vec![
            (0, 0x1000),
            (0x1800, 0x1000),
            (0x3000, 0),
            (0x3000, 0x2000),
            (0x4000, 0x1000),
        ];
        assert_eq!(
            valid_areas("t", 0, 0x5000, areas),
            [(0, 0x1000), (0x3000, 0x2000), (0x4000, 0x1000)]
        );
    }
}
