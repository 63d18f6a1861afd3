//! Guest RAM as vm-memory sees it, for the boot loader and device DMA: a
//! second shared mapping of the RAM block's memfd at guest-physical
//! addresses (RAM below the PCI hole at 0, the rest at 4 GiB).

use std::fs::File;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::layout::{PcMemory, FOUR_GIB};

#[derive(Debug, thiserror::Error)]
pub enum GuestRamError {
    #[error("the RAM region has no RAM block")]
    NoBlock,
    #[error("cannot duplicate the RAM file")]
    Dup(#[source] std::io::Error),
    #[error("cannot map guest RAM for the loader")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

pub fn guest_memory(pc: &PcMemory) -> Result<GuestMemoryMmap, GuestRamError> {
    let block = pc.ram.ram_block().ok_or(GuestRamError::NoBlock)?;
    let file = |offset| -> Result<FileOffset, GuestRamError> {
        let f: File = block.file().try_clone().map_err(GuestRamError::Dup)?;
        Ok(FileOffset::new(f, offset))
    };
    let mut ranges = vec![(GuestAddress(0), pc.below_4g as usize, Some(file(0)?))];
    if pc.above_4g > 0 {
        ranges.push((
            GuestAddress(FOUR_GIB),
            pc.above_4g as usize,
            Some(file(pc.below_4g)?),
        ));
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(GuestRamError::Map)
}
