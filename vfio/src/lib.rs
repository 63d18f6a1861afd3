//! The host side of VFIO: container, group and device through vfio-ioctls,
//! and the DMA mapping rules the `vfio` memory listener follows. Knows nothing
//! of the `vmm` crate: everything is plain addresses, sizes and file handles.

pub mod backend;
pub mod container;
pub mod dma;
pub mod kernel;
#[cfg(any(test, feature = "test-utils"))]
pub mod recorder;
pub mod user;

pub use backend::{BackendError, RegionInfo, RegionMmap, VfioBackend};
pub use container::ContainerMapper;
pub use dma::{DmaError, DmaMapper, DmaRequest, DmaRules};
pub use kernel::{KernelDevice, KernelError};
pub use user::{UserClient, UserDma, UserError};
/// The container kernel devices share (and `ContainerMapper` maps through).
pub use vfio_ioctls::VfioContainer;
