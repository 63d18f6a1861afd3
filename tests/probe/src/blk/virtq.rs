//! A split virtqueue (virtio 1.2, 2.7) in one 4 KiB page of the arena:
//! descriptor table at 0, driver (avail) ring at 2048, device (used) ring at
//! 2560, for at most 128 entries. Free descriptors are chained through their
//! `next` fields, as the device never writes the table.

use super::mmio::{fence, rd, wr};

pub const MAX_SIZE: u16 = 128;
pub const RING_BYTES: u64 = 4096;
const AVAIL_OFF: u64 = 2048;
const USED_OFF: u64 = 2560;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One buffer of a chain: address, length, whether the device writes it.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// Whether an event index `event` asks for a notification when the index
/// moves from `old` to `new` (the `vring_need_event` of the spec).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

pub struct Virtq {
    pub index: u16,
    pub size: u16,
    base: u64,
    notify: u64,
    free_head: u16,
    num_free: u16,
    avail_idx: u16,
    kicked_idx: u16,
    last_used: u16,
    event_idx: bool,
    /// Notifications written, and skipped because the device asked for none.
    pub notifies: u32,
    pub skipped: u32,
}

impl Virtq {
    pub const fn empty() -> Virtq {
        Virtq {
            index: 0,
            size: 0,
            base: 0,
            notify: 0,
            free_head: 0,
            num_free: 0,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx: false,
            notifies: 0,
            skipped: 0,
        }
    }

    /// (Re)initialises the queue in the page at `base`, zeroing the rings.
    pub fn setup(&mut self, index: u16, size: u16, base: u64, notify: u64, event_idx: bool) {
        let (notifies, skipped) = (self.notifies, self.skipped);
        *self = Virtq {
            index,
            size,
            base,
            notify,
            num_free: size,
            event_idx,
            notifies,
            skipped,
            ..Virtq::empty()
        };
        for off in (0..RING_BYTES).step_by(8) {
            wr::<u64>(base + off, 0);
        }
        for i in 0..size {
            wr::<u16>(self.desc(i) + 14, (i + 1) % size);
        }
        fence();
    }

    pub fn desc_addr(&self) -> u64 {
        self.base
    }
    pub fn avail_addr(&self) -> u64 {
        self.base + AVAIL_OFF
    }
    pub fn used_addr(&self) -> u64 {
        self.base + USED_OFF
    }

    fn desc(&self, i: u16) -> u64 {
        self.base + u64::from(i) * 16
    }

    /// The descriptor `add` will use as the head of its chain.
    pub fn next_head(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }

    pub fn free_descriptors(&self) -> u16 {
        self.num_free
    }

    /// Chains `bufs` and makes them available (no notification); returns
    /// the head descriptor, or `None` without enough free descriptors.
    pub fn add(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        for (n, b) in bufs.iter().enumerate() {
            let d = self.desc(i);
            let last = n + 1 == bufs.len();
            let next = rd::<u16>(d + 14);
            wr::<u64>(d, b.addr);
            wr::<u32>(d + 8, b.len);
            let flags = if last { 0 } else { F_NEXT } | if b.device_writes { F_WRITE } else { 0 };
            wr::<u16>(d + 12, flags);
            if last {
                self.free_head = next;
            } else {
                i = next;
            }
        }
        self.num_free -= bufs.len() as u16;
        let avail = self.avail_addr();
        wr::<u16>(avail + 4 + 2 * u64::from(self.avail_idx % self.size), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence();
        wr::<u16>(avail + 2, self.avail_idx);
        Some(head)
    }

    /// Notifies the device of what was added since the last call, unless
    /// it asked not to be (EVENT_IDX's avail_event, else NO_NOTIFY).
    pub fn kick(&mut self) {
        fence();
        if self.avail_idx == self.kicked_idx {
            return;
        }
        let used = self.used_addr();
        let need = if self.event_idx {
            let event = rd::<u16>(used + 4 + 8 * u64::from(self.size));
            need_event(event, self.avail_idx, self.kicked_idx)
        } else {
            rd::<u16>(used) & 1 == 0
        };
        self.kicked_idx = self.avail_idx;
        if need {
            wr::<u16>(self.notify, self.index);
            self.notifies += 1;
        } else {
            self.skipped += 1;
        }
    }

    /// Takes one used entry: (head descriptor, bytes written). A head out
    /// of range is returned as is (its chain cannot be freed).
    pub fn poll(&mut self) -> Option<(u16, u32)> {
        fence();
        let used = self.used_addr();
        if rd::<u16>(used + 2) == self.last_used {
            return None;
        }
        fence();
        let e = used + 4 + 8 * u64::from(self.last_used % self.size);
        let id = rd::<u32>(e);
        let len = rd::<u32>(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            wr::<u16>(self.avail_addr() + 4 + 2 * u64::from(self.size), self.last_used);
        }
        fence();
        if id < u32::from(self.size) {
            self.free_chain(id as u16);
        }
        Some((id as u16, len))
    }

    fn free_chain(&mut self, head: u16) {
        let mut i = head;
        let mut n = 1;
        while rd::<u16>(self.desc(i) + 12) & F_NEXT != 0 && n < self.size {
            i = rd::<u16>(self.desc(i) + 14);
            n += 1;
        }
        wr::<u16>(self.desc(i) + 14, self.free_head);
        self.free_head = head;
        self.num_free += n;
    }
}
