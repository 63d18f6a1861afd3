//! Arbitrary bytes as a split virtqueue full of virtio-blk requests, served
//! by the block engine over a small memfd-backed image.
//!
//! Input layout (missing bytes read as zero):
//! - byte 0: bit 0 read-only image, bit 1 EVENT_IDX, bit 2 serve the queue
//!   with `queue::serve` (else chain by chain with `BlockEngine::process`),
//!   bits 3..6 log2 of the queue size (1..16);
//! - the avail index (u16, taken modulo `size + 1` unless bit 7 of byte 0 is
//!   set), then one head index (u16) per ring slot;
//! - per descriptor-table entry: a mode byte (bits 0-1 == 3: any 64-bit
//!   address, else 16 bits; bit 2: any 32-bit length, else 13 bits;
//!   bits 3-5: NEXT, WRITE, INDIRECT), the address, the length, `next` (u8);
//! - everything left is copied into guest memory at `DATA` (headers,
//!   indirect tables, discard segments, OUT data).

#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_backends::block::queue::serve;
use vmm_backends::block::{BlockEngine, BlockLimits, DiskImage, ImageOptions, SECTOR_SIZE};

const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x400;
const USED: u64 = 0x800;
/// Where the input's tail goes: request headers, data, indirect tables.
const DATA: u64 = 0x1000;
/// Guest memory: [0, 16 KiB) and [32 KiB, 36 KiB), with a hole between.
const LOW_END: u64 = 0x4000;
const HIGH: u64 = 0x8000;
const HIGH_LEN: u64 = 0x1000;
const IMAGE_SECTORS: u64 = 16;

fn memfd_image(read_only: bool) -> (DiskImage, File) {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create takes
    // no other pointers.
    let fd = unsafe { libc::memfd_create(c"fuzz-image".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let pattern: Vec<u8> = (0..IMAGE_SECTORS * SECTOR_SIZE)
        .map(|i| (i % 251) as u8 | 1)
        .collect();
    file.write_all(&pattern).expect("writing the image pattern");
    let check = file.try_clone().expect("dup of the image memfd");
    let options = ImageOptions {
        read_only,
        direct: false,
        serial: "fuzz-serial".into(),
    };
    let image = DiskImage::from_file(file, &options).expect("opening the memfd image");
    (image, check)
}

/// What the device may write for a chain: the status byte's address (as
/// `layout::split` finds it) and the writable byte count.
fn expected_status(chain: &virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> (Option<u64>, u64) {
    let descs: Vec<_> = chain.clone().collect();
    let writable = descs
        .iter()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum();
    let status = descs
        .last()
        .filter(|d| d.is_write_only() && d.len() > 0)
        .and_then(|d| d.addr().0.checked_add(u64::from(d.len()) - 1));
    (status, writable)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let ctl: u8 = u.arbitrary().unwrap_or(0);
    let read_only = ctl & 1 != 0;
    let event_idx = ctl & 2 != 0;
    let use_serve = ctl & 4 != 0;
    let size: u16 = 1 << ((ctl >> 3) % 5);
    let raw_avail: u16 = u.arbitrary().unwrap_or(0);
    let avail_idx = if ctl & 0x80 != 0 {
        raw_avail
    } else {
        raw_avail % (size + 1)
    };

    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH), HIGH_LEN as usize),
    ])
    .unwrap();

    // Avail ring: flags, idx, ring[size], used_event.
    let mut heads = Vec::with_capacity(size as usize);
    for _ in 0..size {
        heads.push(u.arbitrary::<u16>().unwrap_or(0));
    }
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
    for (i, h) in heads.iter().enumerate() {
        mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    // Descriptor table.
    for i in 0..u64::from(size) {
        let mode: u8 = u.arbitrary().unwrap_or(0);
        let addr: u64 = if mode & 3 == 3 {
            u.arbitrary().unwrap_or(0)
        } else {
            u64::from(u.arbitrary::<u16>().unwrap_or(0))
        };
        let len: u32 = if mode & 4 != 0 {
            u.arbitrary().unwrap_or(0)
        } else {
            u32::from(u.arbitrary::<u16>().unwrap_or(0) & 0x1fff)
        };
        let mut flags = 0u16;
        if mode & 0x08 != 0 {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        if mode & 0x10 != 0 {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if mode & 0x20 != 0 {
            flags |= VRING_DESC_F_INDIRECT as u16;
        }
        let next = u16::from(u.arbitrary::<u8>().unwrap_or(0));
        let at = DESC_TABLE + 16 * i;
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    let tail = u.take_rest();
    let n = tail.len().min((LOW_END - DATA) as usize);
    mem.write_slice(&tail[..n], GuestAddress(DATA)).unwrap();

    let mut queue = Queue::new(16).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    assert!(queue.is_valid(&mem), "the queue layout is valid");

    let (image, image_file) = memfd_image(read_only);
    let before = if read_only {
        let mut b = vec![0u8; (IMAGE_SECTORS * SECTOR_SIZE) as usize];
        image_file.read_exact_at(&mut b, 0).unwrap();
        Some(b)
    } else {
        None
    };
    let engine = BlockEngine::new(image, BlockLimits::default());

    let served = if use_serve {
        serve(&engine, &mut queue, &mem).map(|s| s.requests)
    } else {
        by_chain(&engine, &mut queue, &mem)
    };

    if let Ok(requests) = served {
        // Every available chain was popped and got a used entry. (Guest
        // memory may hold anything by now: requests can write over the
        // rings, so the used ring itself is checked in `by_chain`, right
        // after each entry is added.)
        assert_eq!(requests, u64::from(avail_idx), "chains served");
        assert_eq!(queue.next_avail(), avail_idx, "next_avail");
        assert_eq!(queue.next_used(), avail_idx, "next_used");
    }
    // Writes never land outside the image; a read-only image is untouched.
    let size_after = image_file.metadata().unwrap().len();
    assert_eq!(size_after, IMAGE_SECTORS * SECTOR_SIZE, "image size");
    if let Some(before) = before {
        let mut after = vec![0u8; before.len()];
        image_file.read_exact_at(&mut after, 0).unwrap();
        assert!(before == after, "a read-only image changed");
    }
});

/// Like `queue::serve` without EVENT_IDX re-checks, but looks at each
/// chain's status byte right after the engine wrote it.
fn by_chain(
    engine: &BlockEngine,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<u64, virtio_queue::Error> {
    let chains: Vec<_> = queue.iter(mem)?.collect();
    let mut requests = 0;
    for chain in chains {
        let head = chain.head_index();
        let (status_addr, writable) = expected_status(&chain);
        let len = match engine.process(chain) {
            Ok(len) => {
                let addr = status_addr.expect("a status byte was written without a writable tail");
                let status: u8 = mem
                    .read_obj(GuestAddress(addr))
                    .expect("the status byte lies in guest memory");
                assert!(status <= 2, "status byte {status}");
                assert!(len >= 1, "used length counts the status byte");
                assert!(
                    u64::from(len) <= writable,
                    "used length {len} exceeds the {writable} writable bytes"
                );
                len
            }
            Err(_) => 0,
        };
        queue.add_used(mem, head, len)?;
        requests += 1;
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, queue.next_used(), "used ring index");
        let slot = u64::from(used_idx.wrapping_sub(1) % queue.size());
        let id: u32 = mem.read_obj(GuestAddress(USED + 4 + 8 * slot)).unwrap();
        let used_len: u32 = mem.read_obj(GuestAddress(USED + 8 + 8 * slot)).unwrap();
        assert_eq!((id, used_len), (u32::from(head), len), "used entry {slot}");
    }
    Ok(requests)
}
