//! The host side of VFIO: container, group and device through vfio-ioctls,
//! and the DMA mapping rules the `vfio` memory listener follows. Knows nothing
//! of the `vmm` crate: everything is plain addresses, sizes and file handles.
