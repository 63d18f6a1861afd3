//! Request tests over virtio-queue's mock split queue and a temp image.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const IMAGE_SECTORS: u64 = 64;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x20_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// A descriptor as (address, length, flags).
type Desc = (u64, u32, u16);
/// A discard/write-zeroes segment as (sector, sectors, flags).
type Segment = (u64, u32, u32);

struct TempImage(PathBuf);

impl TempImage {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-blk-test-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let pattern: Vec<u8> = (0..IMAGE_SECTORS * SECTOR_SIZE)
            .map(|i| (i % 251) as u8 | 1)
            .collect();
        std::fs::write(&path, pattern).unwrap();
        TempImage(path)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    img: TempImage,
    engine: BlockEngine,
}

impl Rig {
    fn new(read_only: bool) -> Self {
        Self::with(ImageOptions {
            read_only,
            direct: false,
            serial: "serial-1234".into(),
        })
    }

    fn with(options: ImageOptions) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let img = TempImage::new();
        let image = DiskImage::open(&img.0, &options).unwrap();
        let engine = BlockEngine::new(image, BlockLimits::default());
        Rig { mem, img, engine }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs a chain of (addr, len, flags); returns (result, status byte).
    fn run(&self, descs: &[(u64, u32, u16)]) -> (Result<u32, RequestError>, u8) {
        let q = MockSplitQueue::new(&self.mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(SplitDescriptor::new(a, l, f, 0)))
            .collect();
        let chain = q.build_desc_chain(&raw).unwrap();
        let r = self.engine.process(chain);
        (r, self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    fn request(&self, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u32, u8) {
        self.header(kind, sector);
        let mut descs = vec![(HDR, 16, 0)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, W));
        let (r, s) = self.run(&descs);
        (r.unwrap(), s)
    }

    fn segments(&self, segs: &[(u64, u32, u32)]) -> u32 {
        let mut raw = Vec::new();
        for &(sector, n, flags) in segs {
            raw.extend_from_slice(&sector.to_le_bytes());
            raw.extend_from_slice(&n.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
        }
        self.mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
        raw.len() as u32
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn write_then_read_round_trips() {
    let rig = Rig::new(false);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    rig.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    // Two data descriptors of 512 bytes each.
    let out = [(DATA, 512, 0), (DATA + 512, 512, 0)];
    assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 3, &out), (1, OK));
    assert_eq!(&rig.img.bytes()[3 * 512..5 * 512], &data[..]);

    let back = 0x30_0000;
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 3, &[(back, 1024, W)]),
        (1025, OK)
    );
    let mut got = vec![0u8; 1024];
    rig.mem.read_slice(&mut got, GuestAddress(back)).unwrap();
    assert_eq!(got, data);
}

#[test]
fn direct_io_round_trips_or_is_unsupported_here() {
    let options = ImageOptions {
        read_only: false,
        direct: true,
        serial: String::new(),
    };
    let img = TempImage::new();
    let Ok(image) = DiskImage::open(&img.0, &options) else {
        eprintln!("O_DIRECT unsupported on the temp file system; checked open only");
        return;
    };
    let data = vec![0x5au8; 512];
    image.write_at(&data, 512 * 5).unwrap();
    let mut back = vec![0u8; 1536];
    image.read_at(&mut back, 512 * 4).unwrap();
    assert_eq!(&back[512..1024], &data[..]);
    assert_eq!(&img.bytes()[512 * 5..512 * 6], &data[..]);
    assert_eq!(back[0], img.bytes()[512 * 4]);
}

#[test]
fn get_id_returns_padded_serial() {
    let rig = Rig::new(true);
    rig.mem
        .write_slice(&[0xaa; 20], GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        rig.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, W)]),
        (21, OK)
    );
    let mut id = [0u8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-1234\0\0\0\0\0\0\0\0\0");
}

#[test]
fn flush_succeeds_even_read_only() {
    assert_eq!(Rig::new(false).request(VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
    assert_eq!(Rig::new(true).request(VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
}

#[test]
fn write_zeroes_and_discard_zero_the_range() {
    let rig = Rig::new(false);
    for (kind, flags) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 0),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        ),
        (VIRTIO_BLK_T_DISCARD, 0),
    ] {
        let len = rig.segments(&[(8, 8, flags), (40, 1, flags)]);
        assert_eq!(rig.request(kind, 0, &[(DATA, len, 0)]), (1, OK));
        let bytes = rig.img.bytes();
        assert_eq!(bytes.len() as u64, IMAGE_SECTORS * 512);
        assert!(bytes[8 * 512..16 * 512].iter().all(|&b| b == 0));
        assert!(bytes[40 * 512..41 * 512].iter().all(|&b| b == 0));
        assert_ne!(bytes[16 * 512], 0);
        assert_ne!(bytes[41 * 512], 0);
        // Refill for the next round.
        std::fs::write(&rig.img.0, TempImage::new().bytes()).unwrap();
    }
}

#[test]
fn read_only_refuses_writes() {
    let rig = Rig::new(true);
    let before = rig.img.bytes();
    rig.mem
        .write_slice(&[0u8; 512], GuestAddress(DATA))
        .unwrap();
    assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, 0)]).1, IOERR);
    let len = rig.segments(&[(0, 1, 0)]);
    assert_eq!(
        rig.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, len, 0)]).1,
        IOERR
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, len, 0)])
            .1,
        IOERR
    );
    assert_eq!(rig.img.bytes(), before);
}

#[test]
fn invalid_requests_get_status_and_leave_image_untouched() {
    let rig = Rig::new(false);
    let before = rig.img.bytes();
    let last = IMAGE_SECTORS - 1;
    let cases: Vec<(u32, u64, Vec<Desc>, u8)> = vec![
        // Wrong directions.
        (VIRTIO_BLK_T_OUT, 0, vec![(DATA, 512, W)], IOERR),
        (VIRTIO_BLK_T_IN, 0, vec![(DATA, 512, 0)], IOERR),
        (VIRTIO_BLK_T_GET_ID, 0, vec![(DATA, 20, 0)], IOERR),
        // Not a multiple of 512.
        (VIRTIO_BLK_T_OUT, 0, vec![(DATA, 100, 0)], IOERR),
        (VIRTIO_BLK_T_IN, 0, vec![(DATA, 513, W)], IOERR),
        // Past the end and overflowing.
        (VIRTIO_BLK_T_OUT, last, vec![(DATA, 1024, 0)], IOERR),
        (VIRTIO_BLK_T_IN, IMAGE_SECTORS, vec![(DATA, 512, W)], IOERR),
        (VIRTIO_BLK_T_OUT, u64::MAX, vec![(DATA, 512, 0)], IOERR),
        // Bad guest address.
        (VIRTIO_BLK_T_OUT, 0, vec![(0x4000_0000, 512, 0)], IOERR),
        // Unknown types.
        (VIRTIO_BLK_T_SCSI_CMD, 0, vec![], UNSUPP),
        (0xdead, 0, vec![], UNSUPP),
    ];
    for (kind, sector, data, want) in cases {
        assert_eq!(
            rig.request(kind, sector, &data).1,
            want,
            "{kind} {sector} {data:?}"
        );
    }
    let segment_cases: Vec<(u32, Vec<Segment>, u8)> = vec![
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 1)], UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, vec![(0, 1, 2)], UNSUPP),
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0), (last, 2, 0)], IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, vec![(u64::MAX, 1, 0)], IOERR),
        (VIRTIO_BLK_T_DISCARD, vec![(0, (1 << 22) + 1, 0)], IOERR),
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0); 33], IOERR),
    ];
    for (kind, segs, want) in segment_cases {
        let len = rig.segments(&segs);
        assert_eq!(rig.request(kind, 0, &[(DATA, len, 0)]).1, want, "{segs:?}");
    }
    // Segment list length not a multiple of 16, empty, or device-writable.
    let len = rig.segments(&[(0, 1, 0)]);
    for data in [vec![(DATA, len - 1, 0)], vec![], vec![(DATA, len, W)]] {
        assert_eq!(rig.request(VIRTIO_BLK_T_DISCARD, 0, &data).1, IOERR);
    }
    assert_eq!(rig.img.bytes(), before);
}

#[test]
fn malformed_headers_and_status() {
    let rig = Rig::new(false);
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    // Short header.
    let (r, s) = rig.run(&[(HDR, 8, 0), (STATUS, 1, W)]);
    assert_eq!((r.unwrap(), s), (1, IOERR));
    // Device-writable header.
    let (r, s) = rig.run(&[(HDR, 16, W), (STATUS, 1, W)]);
    assert_eq!((r.unwrap(), s), (1, IOERR));
    // Only a status descriptor.
    let (r, s) = rig.run(&[(STATUS, 1, W)]);
    assert_eq!((r.unwrap(), s), (1, IOERR));
    // Device-readable status: nothing can be answered.
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    let (r, s) = rig.run(&[(HDR, 16, 0), (STATUS, 1, 0)]);
    assert!(matches!(r, Err(RequestError::StatusNotWritable)));
    assert_eq!(s, 0xff);
    // Status outside guest memory.
    let (r, _) = rig.run(&[(HDR, 16, 0), (0x4000_0000, 1, W)]);
    assert!(matches!(r, Err(RequestError::StatusWrite(_))));
}

#[test]
fn config_space_layout() {
    let rig = Rig::new(false);
    let config = BlockConfig::new(rig.engine.image(), rig.engine.limits(), 2);
    let b = config.to_bytes();
    assert_eq!(
        u64::from_le_bytes(b[0..8].try_into().unwrap()),
        IMAGE_SECTORS
    );
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 126);
    assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 32);
    assert_eq!(b[56], 1);
    let mut tail = [0xffu8; 8];
    config.read(56, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0]);
    config.read(usize::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_chains_never_panic(
        kind in prop_oneof![0u32..30, any::<u32>()],
        sector in prop_oneof![0u64..80, any::<u64>()],
        descs in proptest::collection::vec(
            (prop_oneof![0x10_0000u64..0x30_0000, any::<u64>()],
             prop_oneof![0u32..4096, any::<u32>()],
             prop_oneof![Just(0u16), Just(W)]),
            0..8),
        seg in any::<[u8; 48]>(),
    ) {
        let rig = Rig::new(false);
        rig.header(kind, sector);
        rig.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        let mut chain = vec![(HDR, 16, 0)];
        chain.extend(descs);
        if chain.len() == 1 {
            chain.push((STATUS, 1, W));
        }
        let (r, _) = rig.run(&chain);
        let last = *chain.last().unwrap();
        if let Ok(n) = r {
            prop_assert!(n >= 1);
            let addr = last.0 + u64::from(last.1) - 1;
            // The engine may have seen a shorter chain (virtio-queue stops at
            // 4 GiB in total), so only check a status we can find.
            if let Ok(status) = rig.mem.read_obj::<u8>(GuestAddress(addr)) {
                prop_assert!(status <= UNSUPP || status == 0xff || addr != STATUS);
            }
        }
    }
}

#[test]
fn any_layout_header_with_data_and_status_with_data() {
    let rig = Rig::new(false);
    // OUT: header and 512 data bytes in one readable descriptor.
    let mut buf = vec![0u8; 16 + 512];
    buf[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    buf[8..16].copy_from_slice(&2u64.to_le_bytes());
    buf[16..].fill(0x42);
    rig.mem.write_slice(&buf, GuestAddress(HDR)).unwrap();
    let (r, s) = rig.run(&[(HDR, 16 + 512, 0), (STATUS, 1, W)]);
    assert_eq!((r.unwrap(), s), (1, OK));
    assert!(rig.img.bytes()[1024..1536].iter().all(|&b| b == 0x42));
    // IN: data and the status byte share the last descriptor.
    rig.header(VIRTIO_BLK_T_IN, 2);
    let (r, _) = rig.run(&[(HDR, 16, 0), (DATA, 513, W)]);
    assert_eq!(r.unwrap(), 513);
    let mut got = vec![0u8; 513];
    rig.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got[..512].iter().all(|&b| b == 0x42));
    assert_eq!(got[512], OK);
}
