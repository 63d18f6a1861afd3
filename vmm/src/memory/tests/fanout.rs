//! The listener fan-out: call order, replay, rollback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::{io, system};
use crate::memory::listener::{HookResult, MemoryListener};
use crate::memory::testing::{held_of, CallLog, Recorder, Refuse};
use crate::memory::{dirty, mtree, FlatRange, Ioeventfd, MemoryError, MemoryRegion};

struct Rig {
    mem: crate::memory::Memory,
    root: MemoryRegion,
    space: Arc<crate::memory::AddressSpace>,
    log: CallLog,
    refuse: Vec<Arc<Mutex<Option<Refuse>>>>,
    held: Vec<Arc<Mutex<std::collections::BTreeMap<u64, crate::memory::testing::Held>>>>,
}

impl Rig {
    /// vfio (0), vhost (5), kvm (10), registered out of order on purpose.
    fn new() -> Rig {
        let (mem, root, space) = system(1 << 40);
        let log: CallLog = Arc::default();
        let mut refuse = Vec::new();
        let mut held = Vec::new();
        for (name, prio) in [("kvm", 10), ("vfio", 0), ("vhost", 5)] {
            let r = Recorder::new(name, prio, &log);
            refuse.push(r.refuse.clone());
            held.push(r.held.clone());
            mem.register_listener(&space, Box::new(r)).unwrap();
        }
        log.lock().unwrap().clear();
        Rig {
            mem,
            root,
            space,
            log,
            refuse,
            held,
        }
    }

    /// Maps `region` at `addr` in the root in a transaction of its own and
    /// forgets the calls it made.
    fn map(&self, addr: u64, region: &MemoryRegion) {
        let tx = self.mem.begin();
        tx.add_subregion(&self.root, addr, region).unwrap();
        tx.commit().unwrap();
        self.take();
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Takes the calls so far and keeps those that mention `what`.
    fn take_with(&self, what: &str) -> Vec<String> {
        self.take()
            .into_iter()
            .filter(|c| c.contains(what))
            .collect()
    }

    fn refuse(&self, who: &str, hook: &'static str, region: Option<&str>) {
        self.refuse_at(who, hook, region, None);
    }

    fn refuse_at(&self, who: &str, hook: &'static str, region: Option<&str>, addr: Option<u64>) {
        let i = ["kvm", "vfio", "vhost"]
            .iter()
            .position(|n| *n == who)
            .unwrap();
        *self.refuse[i].lock().unwrap() = Some(Refuse {
            hook,
            region: region.map(String::from),
            addr,
            keep: None,
        });
    }

    /// Every recorder holds exactly what the view shows.
    fn assert_consistent(&self) {
        let want = held_of(&self.space.view());
        for h in &self.held {
            assert_eq!(*h.lock().unwrap(), want);
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn add_runs_in_ascending_priority_and_del_in_descending() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0, &ram).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        rig.take(),
        s(&[
            "vfio begin",
            "vhost begin",
            "kvm begin",
            "vfio add ram 0x0+0x1000",
            "vhost add ram 0x0+0x1000",
            "kvm add ram 0x0+0x1000",
            "vfio commit",
            "vhost commit",
            "kvm commit",
        ])
    );
    let tx = rig.mem.begin();
    tx.del_subregion(&rig.root, &ram).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        rig.take(),
        s(&[
            "vfio begin",
            "vhost begin",
            "kvm begin",
            "kvm del ram 0x0+0x1000",
            "vhost del ram 0x0+0x1000",
            "vfio del ram 0x0+0x1000",
            "vfio commit",
            "vhost commit",
            "kvm commit",
        ])
    );
    rig.assert_consistent();
}

#[test]
fn an_unchanged_range_gets_nop_and_a_split_gets_del_then_adds() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x4000).unwrap();
    let other = MemoryRegion::ram("other", 0x1000).unwrap();
    let hole = io("hole", 0x1000);
    rig.map(0, &ram);

    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0x10000, &other).unwrap();
    tx.commit().unwrap();
    let calls = rig.take();
    assert_eq!(
        calls[3..9],
        s(&[
            "vfio nop ram 0x0+0x4000",
            "vhost nop ram 0x0+0x4000",
            "kvm nop ram 0x0+0x4000",
            "vfio add other 0x10000+0x1000",
            "vhost add other 0x10000+0x1000",
            "kvm add other 0x10000+0x1000",
        ])
    );

    let tx = rig.mem.begin();
    tx.add_subregion_overlap(&rig.root, 0x1000, &hole, 1)
        .unwrap();
    tx.commit().unwrap();
    let calls = rig.take();
    assert_eq!(
        calls[3..6],
        s(&[
            "kvm del ram 0x0+0x4000",
            "vhost del ram 0x0+0x4000",
            "vfio del ram 0x0+0x4000",
        ])
    );
    assert_eq!(
        calls[6..18],
        s(&[
            "vfio add ram 0x0+0x1000",
            "vhost add ram 0x0+0x1000",
            "kvm add ram 0x0+0x1000",
            "vfio add hole 0x1000+0x1000",
            "vhost add hole 0x1000+0x1000",
            "kvm add hole 0x1000+0x1000",
            "vfio add ram 0x2000+0x2000@0x2000",
            "vhost add ram 0x2000+0x2000@0x2000",
            "kvm add ram 0x2000+0x2000@0x2000",
            "vfio nop other 0x10000+0x1000",
            "vhost nop other 0x10000+0x1000",
            "kvm nop other 0x10000+0x1000",
        ])
    );
    rig.assert_consistent();
}

#[test]
fn a_resize_is_a_del_then_an_add() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x4000).unwrap();
    rig.map(0, &ram);
    let tx = rig.mem.begin();
    tx.set_size(&ram, 0x2000);
    tx.commit().unwrap();
    let calls: Vec<String> = rig
        .take()
        .into_iter()
        .filter(|c| c.contains(" add ") || c.contains(" del "))
        .collect();
    assert_eq!(
        calls,
        s(&[
            "kvm del ram 0x0+0x4000",
            "vhost del ram 0x0+0x4000",
            "vfio del ram 0x0+0x4000",
            "vfio add ram 0x0+0x2000",
            "vhost add ram 0x0+0x2000",
            "kvm add ram 0x0+0x2000",
        ])
    );
    rig.assert_consistent();
}

#[test]
fn registration_replays_the_view_and_unregistration_its_removal() {
    let (mem, root, space) = system(1 << 32);
    let ram = MemoryRegion::ram("ram", 0x2000).unwrap();
    let dev = io("dev", 0x100);
    let fd = Arc::new(EventFd::new(0).unwrap());
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &ram).unwrap();
    tx.add_subregion(&root, 0x9000, &dev).unwrap();
    tx.set_dirty_log(&ram, dirty::VGA, true);
    tx.add_eventfd(
        &dev,
        Ioeventfd {
            addr: 0x10,
            size: 4,
            datamatch: Some(3),
            fd,
        },
    )
    .unwrap();
    tx.commit().unwrap();

    let log: CallLog = Arc::default();
    let id = mem
        .register_listener(&space, Box::new(Recorder::new("late", 3, &log)))
        .unwrap();
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        s(&[
            "late begin",
            "late add ram 0x0+0x2000",
            "late log_start ram 0x0+0x2000 0x0->0x1",
            "late add dev 0x9000+0x100",
            "late eventfd_add 0x9010 Some(3)",
            "late commit",
        ])
    );
    assert_eq!(space.listener_list(), vec![("late".to_string(), 3)]);
    let back = mem.unregister_listener(&space, id).unwrap();
    assert_eq!(back.name(), "late");
    assert_eq!(
        std::mem::take(&mut *log.lock().unwrap()),
        s(&[
            "late begin",
            "late log_stop ram 0x0+0x2000 0x1->0x0",
            "late del ram 0x0+0x2000",
            "late del dev 0x9000+0x100",
            "late eventfd_del 0x9010 Some(3)",
            "late commit",
        ])
    );
    assert!(space.listener_list().is_empty());
}

#[test]
fn a_refused_replay_leaves_the_listener_unregistered_and_empty() {
    let (mem, root, space) = system(1 << 32);
    let a = MemoryRegion::ram("a", 0x1000).unwrap();
    let b = MemoryRegion::ram("b", 0x1000).unwrap();
    let tx = mem.begin();
    tx.add_subregion(&root, 0, &a).unwrap();
    tx.add_subregion(&root, 0x1000 * 4, &b).unwrap();
    tx.commit().unwrap();
    let log: CallLog = Arc::default();
    let r = Recorder::new("picky", 0, &log);
    *r.refuse.lock().unwrap() = Some(Refuse {
        hook: "region_add",
        region: Some("b".into()),
        addr: None,
        keep: None,
    });
    let held = r.held.clone();
    let err = mem.register_listener(&space, Box::new(r)).unwrap_err();
    assert!(err.to_string().contains("picky"), "{err}");
    assert!(held.lock().unwrap().is_empty());
    assert!(space.listener_list().is_empty());
}

#[test]
fn a_second_listener_refusing_an_add_rolls_everyone_back() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    let dimm = MemoryRegion::ram("dimm", 0x1000).unwrap();
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0, &ram).unwrap();
    tx.commit().unwrap();
    let before = mtree::info_mtree(&rig.mem);
    rig.take();

    rig.refuse("vhost", "region_add", Some("dimm"));
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0x100000, &dimm).unwrap();
    let err = tx.commit().unwrap_err();
    match &err {
        MemoryError::Listener {
            listener,
            hook,
            what,
            ..
        } => {
            assert_eq!((listener.as_str(), *hook), ("vhost", "region_add"));
            assert!(what.contains("dimm"), "{what}");
        }
        e => panic!("unexpected {e}"),
    }
    assert_eq!(
        rig.take(),
        s(&[
            "vfio begin",
            "vhost begin",
            "kvm begin",
            "vfio nop ram 0x0+0x1000",
            "vhost nop ram 0x0+0x1000",
            "kvm nop ram 0x0+0x1000",
            "vfio add dimm 0x100000+0x1000",
            "vfio del dimm 0x100000+0x1000",
            "vfio commit",
            "vhost commit",
            "kvm commit",
        ])
    );
    assert!(!dimm.is_mapped(), "the tree change was undone");
    assert_eq!(mtree::info_mtree(&rig.mem), before);
    assert_eq!(rig.space.view().ranges().len(), 1);
    rig.assert_consistent();
}

#[test]
fn a_refused_commit_takes_committed_listeners_back_in_a_new_round() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    let dimm = MemoryRegion::ram("dimm", 0x1000).unwrap();
    rig.map(0, &ram);

    rig.refuse("kvm", "commit", None);
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0x100000, &dimm).unwrap();
    assert!(tx.commit().is_err());
    let calls = rig.take();
    assert_eq!(
        calls[9..],
        s(&[
            "vfio commit",
            "vhost commit",
            // kvm refused its commit; vfio and vhost start a new round.
            "vfio begin",
            "vhost begin",
            "kvm del dimm 0x100000+0x1000",
            "vhost del dimm 0x100000+0x1000",
            "vfio del dimm 0x100000+0x1000",
            "vfio nop ram 0x0+0x1000",
            "vhost nop ram 0x0+0x1000",
            "vfio commit",
            "vhost commit",
        ])
    );
    rig.assert_consistent();
    // Once kvm accepts again, the same change goes through.
    *rig.refuse[0].lock().unwrap() = None;
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0x100000, &dimm).unwrap();
    tx.commit().unwrap();
    rig.assert_consistent();
    assert_eq!(rig.space.view().ranges().len(), 2);
}

#[test]
fn a_refused_split_restores_the_whole_range_everywhere() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x4000).unwrap();
    let hole = io("hole", 0x1000);
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0, &ram).unwrap();
    tx.commit().unwrap();
    rig.refuse("kvm", "region_add", Some("hole"));
    let tx = rig.mem.begin();
    tx.add_subregion_overlap(&rig.root, 0x1000, &hole, 1)
        .unwrap();
    assert!(tx.commit().is_err());
    rig.assert_consistent();
    assert_eq!(rig.held[0].lock().unwrap().len(), 1, "kvm holds ram whole");
}

#[test]
fn eventfds_follow_their_region_and_are_rolled_back() {
    let rig = Rig::new();
    let dev = io("dev", 0x100);
    let fd = Arc::new(EventFd::new(0).unwrap());
    let e = Ioeventfd {
        addr: 0x10,
        size: 2,
        datamatch: None,
        fd,
    };
    let tx = rig.mem.begin();
    tx.add_subregion(&rig.root, 0x1000, &dev).unwrap();
    tx.add_eventfd(&dev, e.clone()).unwrap();
    assert!(matches!(
        tx.add_eventfd(&dev, e.clone()),
        Err(MemoryError::DuplicateIoeventfd { .. })
    ));
    tx.commit().unwrap();
    let ev: Vec<String> = rig.take_with("eventfd");
    assert_eq!(
        ev,
        s(&[
            "vfio eventfd_add 0x1010 None",
            "vhost eventfd_add 0x1010 None",
            "kvm eventfd_add 0x1010 None",
        ])
    );
    // Moving the region (a BAR move) moves the doorbell.
    let tx = rig.mem.begin();
    tx.set_address(&dev, 0x2000);
    tx.commit().unwrap();
    let ev: Vec<String> = rig.take_with("eventfd");
    assert_eq!(
        ev,
        s(&[
            "kvm eventfd_del 0x1010 None",
            "vhost eventfd_del 0x1010 None",
            "vfio eventfd_del 0x1010 None",
            "vfio eventfd_add 0x2010 None",
            "vhost eventfd_add 0x2010 None",
            "kvm eventfd_add 0x2010 None",
        ])
    );
    // kvm refuses the next move: everyone keeps the doorbell at 0x2010.
    rig.refuse_at("kvm", "eventfd_add", None, Some(0x3010));
    let tx = rig.mem.begin();
    tx.set_address(&dev, 0x3000);
    assert!(tx.commit().is_err());
    assert_eq!(dev.addr(), 0x2000);
    let calls = rig.take();
    let tail: Vec<&String> = calls.iter().filter(|c| c.contains("eventfd")).collect();
    assert_eq!(
        tail,
        [
            "kvm eventfd_del 0x2010 None",
            "vhost eventfd_del 0x2010 None",
            "vfio eventfd_del 0x2010 None",
            "vfio eventfd_add 0x3010 None",
            "vhost eventfd_add 0x3010 None",
            "vhost eventfd_del 0x3010 None",
            "vfio eventfd_del 0x3010 None",
            "vfio eventfd_add 0x2010 None",
            "vhost eventfd_add 0x2010 None",
            "kvm eventfd_add 0x2010 None",
        ]
    );
    rig.assert_consistent();
}

#[test]
fn dirty_mask_changes_start_and_stop_logging() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    rig.map(0, &ram);
    let tx = rig.mem.begin();
    tx.set_dirty_log(&ram, dirty::MIGRATION, true);
    tx.commit().unwrap();
    let logs: Vec<String> = rig.take_with("log_");
    assert_eq!(
        logs,
        s(&[
            "vfio log_start ram 0x0+0x1000 0x0->0x4",
            "vhost log_start ram 0x0+0x1000 0x0->0x4",
            "kvm log_start ram 0x0+0x1000 0x0->0x4",
        ])
    );
    rig.mem.log_sync(&rig.space);
    assert_eq!(
        rig.take(),
        s(&[
            "vfio log_sync ram 0x0+0x1000",
            "vhost log_sync ram 0x0+0x1000",
            "kvm log_sync ram 0x0+0x1000",
        ])
    );
    let tx = rig.mem.begin();
    tx.set_dirty_log(&ram, dirty::MIGRATION, false);
    tx.commit().unwrap();
    let logs: Vec<String> = rig.take_with("log_");
    assert_eq!(logs.len(), 3);
    assert!(logs[0].starts_with("vfio log_stop"), "{logs:?}");
}

#[test]
fn global_logging_stops_the_started_listeners_when_one_refuses() {
    let rig = Rig::new();
    let ram = MemoryRegion::ram("ram", 0x1000).unwrap();
    rig.map(0, &ram);
    rig.refuse("kvm", "log_global_start", None);
    assert!(rig.mem.log_global_start().is_err());
    assert!(!rig.mem.global_log());
    assert_eq!(
        rig.take(),
        s(&[
            "vfio log_global_start",
            "vhost log_global_start",
            "vhost log_global_stop",
            "vfio log_global_stop",
        ])
    );
    *rig.refuse[0].lock().unwrap() = None;
    rig.mem.log_global_start().unwrap();
    let calls = rig.take();
    assert!(
        calls.contains(&"kvm log_start ram 0x0+0x1000 0x0->0x4".to_string()),
        "{calls:?}"
    );
    rig.mem.log_global_stop().unwrap();
    let calls = rig.take();
    assert!(
        calls.contains(&"kvm log_stop ram 0x0+0x1000 0x4->0x0".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"kvm log_global_stop".to_string()),
        "{calls:?}"
    );
}

#[test]
fn coalesced_ranges_are_announced_with_their_region() {
    let rig = Rig::new();
    let dev = io("dev", 0x1000);
    let tx = rig.mem.begin();
    tx.add_coalescing(&dev, 0x100, 0x10);
    tx.add_subregion(&rig.root, 0x4000, &dev).unwrap();
    tx.commit().unwrap();
    let co: Vec<String> = rig.take_with("coalesced");
    assert_eq!(co.len(), 3);
    assert_eq!(co[0], "vfio coalesced_add 0x4100+0x10");
    let tx = rig.mem.begin();
    tx.clear_coalescing(&dev);
    tx.commit().unwrap();
    let co: Vec<String> = rig.take_with("coalesced");
    assert_eq!(co[0], "kvm coalesced_del 0x4100+0x10");
    assert_eq!(co.len(), 3);
}

#[test]
fn only_the_outermost_commit_notifies_and_an_abandoned_level_is_undone() {
    let rig = Rig::new();
    let a = MemoryRegion::ram("a", 0x1000).unwrap();
    let b = MemoryRegion::ram("b", 0x1000).unwrap();
    let outer = rig.mem.begin();
    outer.add_subregion(&rig.root, 0, &a).unwrap();
    {
        let inner = rig.mem.begin();
        inner.add_subregion(&rig.root, 0x1000, &b).unwrap();
        inner.commit().unwrap();
    }
    assert!(rig.take().is_empty(), "a nested commit notifies nobody");
    {
        let inner = rig.mem.begin();
        inner.set_enabled(&a, false);
        // dropped: undone
    }
    assert!(a.is_enabled());
    outer.commit().unwrap();
    let adds: Vec<String> = rig.take_with(" add ");
    assert_eq!(adds.len(), 6, "{adds:?}");
    rig.assert_consistent();
}

#[test]
fn another_thread_waits_for_the_outermost_commit() {
    let mem = Arc::new(crate::memory::Memory::new());
    let tx = mem.begin();
    let entered = Arc::new(AtomicBool::new(false));
    let t = {
        let (mem, entered) = (mem.clone(), entered.clone());
        std::thread::spawn(move || {
            let tx = mem.begin();
            entered.store(true, Ordering::SeqCst);
            tx.commit().unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(!entered.load(Ordering::SeqCst));
    tx.commit().unwrap();
    t.join().unwrap();
    assert!(entered.load(Ordering::SeqCst));
}

/// A device-side listener (prio 0) and a guest-side one (prio 10) share a
/// record of what each can reach. At every call the guest's set must be
/// within the device's: DMA always reaches what the guest can.
/// (addr, size) ranges the device side [0] and the guest side [1] reach.
type ReachSets = Arc<Mutex<[Vec<(u64, u64)>; 2]>>;
type Step<'a> = Box<dyn Fn(&crate::memory::Transaction<'_>) + 'a>;

struct Reach {
    name: &'static str,
    prio: i32,
    sets: ReachSets,
    idx: usize,
}

impl Reach {
    fn check(&self) {
        let sets = self.sets.lock().unwrap();
        for g in &sets[1] {
            assert!(sets[0].contains(g), "guest reaches {g:x?} that DMA cannot");
        }
    }
}

impl MemoryListener for Reach {
    fn name(&self) -> &str {
        self.name
    }
    fn priority(&self) -> i32 {
        self.prio
    }
    fn region_add(&mut self, r: &FlatRange) -> HookResult {
        self.sets.lock().unwrap()[self.idx].push((r.addr, r.size));
        self.check();
        Ok(())
    }
    fn region_del(&mut self, r: &FlatRange) {
        self.sets.lock().unwrap()[self.idx].retain(|x| *x != (r.addr, r.size));
        self.check();
    }
}

#[test]
fn dma_reach_stays_a_superset_of_guest_reach() {
    let (mem, root, space) = system(1 << 40);
    let sets = Arc::new(Mutex::new([Vec::new(), Vec::new()]));
    for (name, prio, idx) in [("kvm", 10, 1), ("vfio", 0, 0)] {
        let l = Reach {
            name,
            prio,
            sets: sets.clone(),
            idx,
        };
        mem.register_listener(&space, Box::new(l)).unwrap();
    }
    let ram = MemoryRegion::ram("ram", 0x100000).unwrap();
    let dimm = MemoryRegion::ram("dimm", 0x100000).unwrap();
    let hole = io("hole", 0x1000);
    let steps: Vec<Step> = vec![
        Box::new(|tx| tx.add_subregion(&root, 0, &ram).unwrap()),
        Box::new(|tx| tx.add_subregion(&root, 1 << 32, &dimm).unwrap()),
        Box::new(|tx| tx.add_subregion_overlap(&root, 0x8000, &hole, 1).unwrap()),
        Box::new(|tx| tx.set_address(&hole, 0x9000)),
        Box::new(|tx| tx.del_subregion(&root, &dimm).unwrap()),
        Box::new(|tx| tx.set_enabled(&hole, false)),
        Box::new(|tx| tx.del_subregion(&root, &ram).unwrap()),
    ];
    for step in steps {
        let tx = mem.begin();
        step(&tx);
        tx.commit().unwrap();
    }
    assert!(sets.lock().unwrap()[0].is_empty());
}
