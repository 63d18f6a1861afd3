//! The vhost-user-blk device against testkit's scripted backend, which
//! offers inflight tracking and records every request: the region is
//! handed over before the rings on the first start and again on the
//! replay after the backend dies, the replay counts what the region holds
//! in flight and kicks the rings, and a reset gets a fresh region.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::vhost_script::{
    inode, Log, Reply, ScriptedBackend, GET_INFLIGHT_FD, SET_INFLIGHT_FD, SET_VRING_KICK,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_vhost::frontend::F_VERSION_1;

use super::blk::{Placement, VhostUserBlk};
use crate::machine::PcMemory;
use crate::memory::dma::DmaView;
use crate::memory::Memory;
use crate::virtio::device::{Activation, ActiveQueue, Signal, VirtioDevice};

/// libvhost-user's region for 2 queues of 128.
const REGION: u64 = 2 * 2112;
const DESC: u64 = 0x10000;
const USED: u64 = 0x12000;

fn activation(dma: &DmaView, kick: &Arc<EventFd>) -> Activation {
    let mut q = Queue::new(128).expect("queue");
    q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(0x11000)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    Activation {
        features: F_VERSION_1,
        mem: dma.clone(),
        queues: vec![ActiveQueue {
            index: 0,
            queue: q,
            kick: kick.clone(),
            call: Signal {
                fd: Some(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
                isr: Arc::default(),
                bit: 1,
            },
        }],
        broken: Arc::default(),
    }
}

/// Positions of `code` among connection `conn`'s requests.
fn at(l: &Log, conn: usize, code: u32) -> Vec<usize> {
    let mine: Vec<_> = l.seen.iter().filter(|s| s.conn == conn).collect();
    (0..mine.len()).filter(|&i| mine[i].code == code).collect()
}

#[test]
fn the_replay_hands_a_restarted_backend_the_region_before_its_rings() {
    let b = ScriptedBackend::start("blk-replay", Reply::Region(REGION));
    let mem = Arc::new(Memory::new());
    let pc = PcMemory::new(&mem, 64 << 20).expect("the PC map");
    let dma = DmaView::default();
    mem.register_listener(&pc.memory, Box::new(dma.listener()))
        .expect("the DMA view");
    let at_ = Placement {
        memory: mem.clone(),
        space: pc.memory.clone(),
        dma: dma.clone(),
    };
    let t = Duration::from_secs(10);
    let mut dev = VhostUserBlk::connect(b.path(), 2, 128, t, t, at_).expect("connect");
    let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());

    // The driver starts the device: GET, SET, then the ring.
    dev.activate(activation(&dma, &kick)).expect("activate");
    {
        let l = b.log();
        assert_eq!(at(&l, 0, GET_INFLIGHT_FD).len(), 1, "{:?}", l.codes());
        let set = at(&l, 0, SET_INFLIGHT_FD);
        let kicked = at(&l, 0, SET_VRING_KICK);
        assert!(set.len() == 1 && kicked.len() == 1 && set[0] < kicked[0]);
        assert_eq!(l.sets()[0].inflight(), Some((REGION, 0, 2, 128)));
        // The backend takes head 5 of queue 0 (version 1, 128 states) and
        // dies before completing it.
        l.given[0]
            .write_all_at(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 128, 0], 0)
            .unwrap();
        l.given[0].write_all_at(&[1], 16 + 5 * 16).unwrap();
    }
    while kick.read().is_ok() {}
    b.hang_up();

    // The watcher reconnects and replays: SET_INFLIGHT_FD of the same
    // region before the ring, the request counted, the ring kicked.
    let until = Instant::now() + t;
    while dev.reconnects() == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dev.reconnects(), 1, "{}", dev.stats());
    {
        let l = b.log();
        let set = at(&l, 1, SET_INFLIGHT_FD);
        let kicked = at(&l, 1, SET_VRING_KICK);
        assert!(
            set.len() == 1 && kicked.len() == 1 && set[0] < kicked[0],
            "{:?}",
            l.codes()
        );
        let replayed = l.sets()[1];
        assert_eq!(replayed.conn, 1);
        assert_eq!(inode(&replayed.files[0]), inode(&l.given[0]));
        assert_eq!(l.given.len(), 1, "no second GET_INFLIGHT_FD on a replay");
    }
    let stats = dev.stats();
    assert!(
        stats.contains("reconnects=1 inflight=on inflight_replays=1 resubmitted=1"),
        "{stats}"
    );
    assert!(
        kick.read().is_ok_and(|n| n >= 1),
        "the replay kicks the ring"
    );

    // A reset and a new driver: a fresh region.
    dev.reset();
    dev.activate(activation(&dma, &kick))
        .expect("activate again");
    let l = b.log();
    assert_eq!(l.given.len(), 2, "GET_INFLIGHT_FD again after the reset");
    let last = l.sets().last().map(|s| inode(&s.files[0]));
    assert_eq!(last, Some(inode(&l.given[1])));
    drop(l);
    dev.shutdown();
}
