//! Splitting a descriptor chain into the parts of a virtio-blk request,
//! whatever the framing (VIRTIO_F_VERSION_1 implies ANY_LAYOUT): the first
//! 16 device-readable bytes are the header, the last device-writable byte
//! is the status, and what lies between is data.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// A guest buffer: address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u32,
}

/// A chain split into its parts.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// Device-readable buffers (header included until `take_header`).
    pub(crate) readable: Vec<Segment>,
    /// Device-writable buffers without the status byte.
    pub(crate) writable: Vec<Segment>,
    /// A device-readable buffer came after a device-writable one.
    pub(crate) misordered: bool,
}

/// Splits `descs`; returns the layout and the status byte's address, or
/// None when the chain ends in nothing device-writable.
pub(crate) fn split(descs: &[Descriptor]) -> Option<(Layout, GuestAddress)> {
    let mut layout = Layout::default();
    for d in descs {
        let seg = Segment {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            layout.writable.push(seg);
        } else {
            layout.misordered |= !layout.writable.is_empty();
            layout.readable.push(seg);
        }
    }
    let last = descs.last()?;
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let status = last.addr().checked_add(u64::from(last.len()) - 1)?;
    let tail = layout.writable.last_mut()?;
    tail.len -= 1;
    if tail.len == 0 {
        layout.writable.pop();
    }
    Some((layout, status))
}

impl Layout {
    /// Removes and reads the first `N` readable bytes; None if there are
    /// fewer or guest memory refuses them.
    pub(crate) fn take_header<const N: usize, G: GuestMemory + ?Sized>(
        &mut self,
        mem: &G,
    ) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        let mut have = 0usize;
        while have < N {
            let seg = self.readable.first_mut()?;
            let n = (seg.len as usize).min(N - have);
            mem.read_slice(&mut out[have..have + n], seg.addr).ok()?;
            have += n;
            if n == seg.len as usize {
                self.readable.remove(0);
            } else {
                seg.addr = seg.addr.checked_add(n as u64)?;
                seg.len -= n as u32;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        Descriptor::new(addr, len, if write { 2 } else { 0 }, 0)
    }

    #[test]
    fn header_and_data_in_one_descriptor() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[7u8; 16], GuestAddress(0x100)).unwrap();
        let (mut l, status) = split(&[d(0x100, 16 + 512, false), d(0x1000, 513, true)]).unwrap();
        assert_eq!(status, GuestAddress(0x1000 + 512));
        assert_eq!(l.take_header::<16, _>(&mem), Some([7u8; 16]));
        assert_eq!(
            l.readable,
            vec![Segment {
                addr: GuestAddress(0x110),
                len: 512
            }]
        );
        assert_eq!(
            l.writable,
            vec![Segment {
                addr: GuestAddress(0x1000),
                len: 512
            }]
        );
        assert!(!l.misordered);
    }

    #[test]
    fn header_split_over_descriptors_and_misorder() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let descs = [
            d(0x100, 4, false),
            d(0x200, 12, false),
            d(0x300, 8, true),
            d(0x400, 1, false),
            d(0x500, 1, true),
        ];
        let (mut l, _) = split(&descs).unwrap();
        assert!(l.misordered);
        assert!(l.take_header::<16, _>(&mem).is_some());
        assert!(split(&[d(0x100, 16, false)]).is_none());
        assert!(split(&[d(0x100, 0, true)]).is_none());
    }
}
