//! The checks of `vfio-nested` (the VMM's memory model and `vfio` listener
//! over the guest kernel's VFIO and QEMU's emulated Intel IOMMU, proven with
//! the edu device's DMA engine). The program prints `ok - CHECK` or
//! `not ok - CHECK: why` for each, then `bench: ...` lines and
//! [`DONE`]; the host test asserts every `ok` line.

pub const ID_REGION_READ: &str = "edu id register reads 0x010000ed through the BAR0 region read";
pub const ID_MMAP: &str = "edu id register reads 0x010000ed through an mmap of BAR0";
pub const ROUND_TRIP: &str =
    "DMA round trip RAM to device to RAM through the vfio listener's mapping";
pub const HOT_ADDED: &str =
    "a region hot-added in a transaction is DMA-readable right after commit";
pub const REMOVED: &str = "after its removal a DMA from the region does not reach the device";
pub const DMAR_FAULT: &str = "the guest kernel logged a DMAR fault for the removed range";
pub const ROLLBACK: &str =
    "a refused DMA map rolls the transaction back: the error names the vfio listener and nothing stays mapped";
pub const MSI: &str = "the edu MSI arrives on the eventfd wired with VFIO_DEVICE_SET_IRQS";

/// Every check, in the order the program runs them.
pub const CHECKS: [&str; 8] = [
    ID_REGION_READ,
    ID_MMAP,
    ROUND_TRIP,
    HOT_ADDED,
    REMOVED,
    DMAR_FAULT,
    ROLLBACK,
    MSI,
];

/// The program's last line.
pub const DONE: &str = "vfio-nested: done";
