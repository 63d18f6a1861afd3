//! Walks the descriptor chain of a head given by number, for requests a
//! restarted daemon submits again (they are no longer on the avail ring
//! where `virtio-queue` finds chains).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

const F_NEXT: u16 = 1;
const F_INDIRECT: u16 = 4;

/// The descriptors of the chain at `head` of the table at `table` (of
/// `size` entries), those of an indirect table in its place; None for a
/// chain that is broken (out of range, a loop, an unreadable table).
pub fn descriptors<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Option<Vec<Descriptor>> {
    let first = read(mem, table, size, head)?;
    if first.flags() & F_INDIRECT != 0 {
        let len = first.len();
        if len == 0 || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
            return None;
        }
        let n = u16::try_from(len / 16).ok()?;
        return walk(mem, first.addr(), n, 0);
    }
    walk(mem, table, size, head)
}

fn read<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    i: u16,
) -> Option<Descriptor> {
    if i >= size {
        return None;
    }
    mem.read_obj(table.checked_add(u64::from(i) * 16)?).ok()
}

fn walk<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    mut i: u16,
) -> Option<Vec<Descriptor>> {
    let mut out = Vec::new();
    loop {
        let d = read(mem, table, size, i)?;
        // An indirect descriptor is allowed only as a direct chain's head,
        // handled by the caller.
        if d.flags() & F_INDIRECT != 0 || out.len() >= usize::from(size) {
            return None;
        }
        out.push(d);
        if d.flags() & F_NEXT == 0 {
            return Some(out);
        }
        i = d.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn put(mem: &GuestMemoryMmap, at: u64, d: (u64, u32, u16, u16)) {
        mem.write_obj(Descriptor::new(d.0, d.1, d.2, d.3), GuestAddress(at))
            .unwrap();
    }

    #[test]
    fn direct_indirect_and_broken_chains() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // Head 2 -> 5 -> 1 in a table of 8 at 0x1000.
        put(&mem, 0x1000 + 2 * 16, (0x4000, 16, F_NEXT, 5));
        put(&mem, 0x1000 + 5 * 16, (0x5000, 512, F_NEXT | 2, 1));
        put(&mem, 0x1000 + 16, (0x6000, 1, 2, 0));
        let d = descriptors(&mem, GuestAddress(0x1000), 8, 2).unwrap();
        let addrs: Vec<u64> = d.iter().map(|d| d.addr().0).collect();
        assert_eq!(addrs, vec![0x4000, 0x5000, 0x6000]);
        // Head 3: an indirect table of two at 0x2000.
        put(&mem, 0x1000 + 3 * 16, (0x2000, 32, F_INDIRECT, 0));
        put(&mem, 0x2000, (0x7000, 16, F_NEXT, 1));
        put(&mem, 0x2010, (0x8000, 1, 2, 0));
        let d = descriptors(&mem, GuestAddress(0x1000), 8, 3).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].addr().0, 0x8000);
        // A loop (4 -> 4), a next out of range (6 -> 9), a head out of range.
        put(&mem, 0x1000 + 4 * 16, (0x4000, 16, F_NEXT, 4));
        put(&mem, 0x1000 + 6 * 16, (0x4000, 16, F_NEXT, 9));
        assert!(descriptors(&mem, GuestAddress(0x1000), 8, 4).is_none());
        assert!(descriptors(&mem, GuestAddress(0x1000), 8, 6).is_none());
        assert!(descriptors(&mem, GuestAddress(0x1000), 8, 8).is_none());
        // An indirect table outside guest memory.
        put(&mem, 0x1000 + 7 * 16, (0xffff_0000, 32, F_INDIRECT, 0));
        assert!(descriptors(&mem, GuestAddress(0x1000), 8, 7).is_none());
    }
}
