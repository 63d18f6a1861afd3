//! The block engine against a temporary image and guest memory.

use std::io::Write;
use std::path::PathBuf;

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{process, BlkConfig, DiskImage, Limits, RequestError};

const WRITE: u16 = 2;
const NEXT: u16 = 1;
const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;
const HDR: u64 = 0x1000;
const BUF: u64 = 0x2000;
const STATUS: u64 = 0x9000;
const SEG: u64 = 0xa000;

struct Rig {
    mem: GuestMemoryMmap,
    path: PathBuf,
    disk: DiskImage,
}

fn rig(sectors: u64, readonly: bool) -> Rig {
    let path =
        std::env::temp_dir().join(format!("vmm-blk-{}-{}", std::process::id(), rand_suffix()));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&vec![0xee; (sectors * 512) as usize]).unwrap();
    let disk = DiskImage::open(&path, readonly, "vmm-disk-0").unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    Rig { mem, path, disk }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Rig {
    fn header(&self, kind: u32, sector: u64) -> Descriptor {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        Descriptor::new(HDR, 16, NEXT, 0)
    }
    fn status(&self) -> Descriptor {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        Descriptor::new(STATUS, 1, WRITE, 0)
    }
    fn run(&self, descs: &[Descriptor]) -> u8 {
        let c = process(&self.disk, &Limits::default(), &self.mem, descs).unwrap();
        let on_guest: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        assert_eq!(c.status, on_guest, "the status byte is what was reported");
        c.status
    }
    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

#[test]
fn out_then_in_round_trips_and_the_file_holds_the_data() {
    let r = rig(64, false);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
    r.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
    let h = r.header(1, 8);
    let d = Descriptor::new(BUF, 4096, NEXT, 0);
    assert_eq!(r.run(&[h, d, r.status()]), OK);
    assert_eq!(&r.file()[8 * 512..8 * 512 + 4096], &data[..]);
    // Read it back in two buffers.
    let h = r.header(0, 8);
    let a = Descriptor::new(0x20000, 1024, WRITE | NEXT, 0);
    let b = Descriptor::new(0x30000, 3072, WRITE | NEXT, 0);
    let c = process(&r.disk, &Limits::default(), &r.mem, &[h, a, b, r.status()]).unwrap();
    assert_eq!((c.status, c.used_len), (OK, 4096 + 1));
    let mut back = vec![0u8; 4096];
    r.mem
        .read_slice(&mut back[..1024], GuestAddress(0x20000))
        .unwrap();
    r.mem
        .read_slice(&mut back[1024..], GuestAddress(0x30000))
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn malformed_requests_get_ioerr_and_leave_the_image_alone() {
    let r = rig(16, false);
    let before = r.file();
    // (what, type, sector, descriptors after the header); the header is
    // written right before each run, as all share one buffer.
    let d = Descriptor::new;
    let cases: Vec<(&str, u32, u64, Vec<Descriptor>)> = vec![
        (
            "data buffer device-writable on OUT",
            1,
            0,
            vec![d(BUF, 512, WRITE | NEXT, 0)],
        ),
        ("not whole sectors", 1, 0, vec![d(BUF, 100, NEXT, 0)]),
        ("past the end", 1, 15, vec![d(BUF, 1024, NEXT, 0)]),
        ("sector overflows", 1, u64::MAX, vec![d(BUF, 512, NEXT, 0)]),
        (
            "buffer outside guest memory",
            1,
            0,
            vec![d(1 << 40, 512, NEXT, 0)],
        ),
        (
            "buffer address wraps",
            1,
            0,
            vec![d(u64::MAX - 100, 512, NEXT, 0)],
        ),
        ("huge transfer", 1, 0, vec![d(BUF, !511u32, NEXT, 0)]),
    ];
    for (what, kind, sector, descs) in cases {
        let mut chain = vec![r.header(kind, sector)];
        chain.extend(descs);
        chain.push(r.status());
        assert_eq!(r.run(&chain), IOERR, "{what}");
    }
    let short = [d(HDR, 8, NEXT, 0), d(BUF, 512, NEXT, 0), r.status()];
    assert_eq!(r.run(&short), IOERR, "short header");
    let writable_header = [d(HDR, 16, WRITE | NEXT, 0), r.status()];
    assert_eq!(r.run(&writable_header), IOERR, "device-writable header");
    // IN with a device-readable buffer must not write guest memory either.
    r.mem.write_slice(&[7u8; 512], GuestAddress(BUF)).unwrap();
    assert_eq!(
        r.run(&[
            r.header(0, 0),
            Descriptor::new(BUF, 512, NEXT, 0),
            r.status()
        ]),
        IOERR
    );
    let mut g = [0u8; 512];
    r.mem.read_slice(&mut g, GuestAddress(BUF)).unwrap();
    assert_eq!(g, [7u8; 512]);
    assert!(r.file() == before, "nothing reached the image");
    // Unknown types are UNSUPP.
    assert_eq!(r.run(&[r.header(99, 0), r.status()]), UNSUPP);
    // Without a writable status byte nothing can be answered.
    let res = process(
        &r.disk,
        &Limits::default(),
        &r.mem,
        &[r.header(0, 0), Descriptor::new(STATUS, 1, 0, 0)],
    );
    assert!(matches!(res, Err(RequestError::NoStatus)));
    assert!(matches!(
        process(&r.disk, &Limits::default(), &r.mem, &[]),
        Err(RequestError::NoStatus)
    ));
}

#[test]
fn a_read_only_image_refuses_writes_and_zeroing() {
    let r = rig(16, true);
    r.mem.write_slice(&[1u8; 512], GuestAddress(BUF)).unwrap();
    assert_eq!(
        r.run(&[
            r.header(1, 0),
            Descriptor::new(BUF, 512, NEXT, 0),
            r.status()
        ]),
        IOERR
    );
    r.mem.write_obj(0u64, GuestAddress(SEG)).unwrap();
    r.mem.write_obj(1u32, GuestAddress(SEG + 8)).unwrap();
    for kind in [11, 13] {
        assert_eq!(
            r.run(&[
                r.header(kind, 0),
                Descriptor::new(SEG, 16, NEXT, 0),
                r.status()
            ]),
            IOERR
        );
    }
    assert_eq!(
        r.run(&[
            r.header(0, 0),
            Descriptor::new(BUF, 512, WRITE | NEXT, 0),
            r.status()
        ]),
        OK
    );
    assert!(r.file().iter().all(|b| *b == 0xee));
}

#[test]
fn get_id_flush_discard_and_write_zeroes() {
    let r = rig(64, false);
    let c = process(
        &r.disk,
        &Limits::default(),
        &r.mem,
        &[
            r.header(8, 0),
            Descriptor::new(BUF, 20, WRITE | NEXT, 0),
            r.status(),
        ],
    )
    .unwrap();
    assert_eq!((c.status, c.used_len), (OK, 21));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
    assert_eq!(&id[..10], b"vmm-disk-0");
    assert!(id[10..].iter().all(|b| *b == 0));
    assert_eq!(r.run(&[r.header(4, 0), r.status()]), OK);
    for (kind, sector, flags) in [(11u32, 4u64, 0u32), (13, 20, 0), (13, 40, 1)] {
        r.mem.write_obj(sector, GuestAddress(SEG)).unwrap();
        r.mem.write_obj(8u32, GuestAddress(SEG + 8)).unwrap();
        r.mem.write_obj(flags, GuestAddress(SEG + 12)).unwrap();
        assert_eq!(
            r.run(&[
                r.header(kind, 0),
                Descriptor::new(SEG, 16, NEXT, 0),
                r.status()
            ]),
            OK
        );
        let f = r.file();
        let range = (sector * 512) as usize..((sector + 8) * 512) as usize;
        assert!(
            f[range.clone()].iter().all(|b| *b == 0),
            "type {kind} zeroed"
        );
        assert_eq!(f[range.end], 0xee, "and stopped at the segment's end");
    }
    // Discard does not take the unmap flag; two segments exceed the limit.
    r.mem.write_obj(1u32, GuestAddress(SEG + 12)).unwrap();
    assert_eq!(
        r.run(&[
            r.header(11, 0),
            Descriptor::new(SEG, 16, NEXT, 0),
            r.status()
        ]),
        UNSUPP
    );
    assert_eq!(
        r.run(&[
            r.header(13, 0),
            Descriptor::new(SEG, 32, NEXT, 0),
            r.status()
        ]),
        IOERR
    );
}

#[test]
fn the_config_bytes_carry_capacity_and_limits() {
    let cfg = BlkConfig {
        capacity: 2048,
        seg_max: 126,
        blk_size: 512,
        num_queues: 2,
        limits: Limits::default(),
    };
    let b = cfg.bytes();
    assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
    assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 2);
    assert_ne!(cfg.features(false) & (1 << 12), 0, "MQ with two queues");
    assert_ne!(cfg.features(true) & (1 << 5), 0, "RO");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any descriptor layout and header: no panic, and a valid status when
    /// one can be written.
    #[test]
    fn random_requests_never_panic(
        kind in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
        sector in prop_oneof![0u64..64, any::<u64>()],
        descs in prop::collection::vec((any::<u64>(), any::<u32>(), any::<bool>()), 0..6),
        near in prop::collection::vec((0u64..0x10_0000, 0u32..0x4000, any::<bool>()), 0..6),
    ) {
        let r = rig(64, false);
        let mut chain = vec![r.header(kind, sector)];
        for (a, l, w) in descs.iter().chain(near.iter()) {
            chain.push(Descriptor::new(*a, *l, if *w { WRITE | NEXT } else { NEXT }, 0));
        }
        chain.push(r.status());
        let c = process(&r.disk, &Limits::default(), &r.mem, &chain).unwrap();
        prop_assert!(c.status <= 2);
    }
}
