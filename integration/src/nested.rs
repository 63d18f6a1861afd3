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

pub const MODEL_IDS: &str =
    "the vfio-pci model over the kernel backend shows edu's ids, its MSI capability (disabled) and a 1 MiB BAR0";
pub const MODEL_MMAP: &str =
    "the model's BAR0 is a RAM-device region: the id register reads 0x010000ed through its host mapping without a trap";
pub const MODEL_TRAP: &str =
    "with the mmap switched off BAR0 traps: the id register and the liveness register work through the forwarded path";
pub const MODEL_MSI: &str =
    "an edu interrupt arrives on the eventfd of the model's MSI vector, whose GSI route carries the guest's address and data";
pub const MODEL_INTX: &str =
    "with MSI off the model's INTx arrives on its trigger eventfd, stays masked until the resample eventfd is written, then arrives again";
pub const MODEL_RESET: &str =
    "after a machine reset the model is at power-on (BAR0 unmapped, MSI off) and the device answers through BAR0 again";
/// The model's checks, in order.
pub const MODEL_CHECKS: [&str; 6] = [
    MODEL_IDS,
    MODEL_MMAP,
    MODEL_TRAP,
    MODEL_MSI,
    MODEL_INTX,
    MODEL_RESET,
];

pub const BUDGET: &str =
    "a transaction needing more DMA mappings than the kernel's dma_entry_limit fails with ENOSPC named as the budget and rolls back";
/// What the guest script lowers vfio_iommu_type1's dma_entry_limit to.
pub const DMA_ENTRY_LIMIT: u32 = 16;

/// Every check, in the order the program runs them.
pub const CHECKS: [&str; 15] = [
    ID_REGION_READ,
    ID_MMAP,
    ROUND_TRIP,
    HOT_ADDED,
    REMOVED,
    DMAR_FAULT,
    ROLLBACK,
    MSI,
    MODEL_IDS,
    MODEL_MMAP,
    MODEL_TRAP,
    MODEL_MSI,
    MODEL_INTX,
    MODEL_RESET,
    BUDGET,
];

/// The program's last line.
pub const DONE: &str = "vfio-nested: done";
