//! ACPI memory hotplug as QEMU implements it (docs/specs/acpi_mem_hotplug):
//! a 24-byte I/O block at 0xa00 through which OSPM (the DSDT's MHPC
//! methods, or the probe guest directly) learns about DIMM slots.
//!
//! Write 0x0 selects a slot; reads of 0x0-0xf give the selected DIMM's base
//! and size, 0x10 its proximity domain, 0x14 its status (bit 0 enabled,
//! bit 1 insert event, bit 2 remove event). Writes to 0x4/0x8 report an OST
//! event and status; a write to 0x14 clears the insert (bit 1) or remove
//! (bit 2) event, or ejects the DIMM (bit 3). Registers of an unpopulated
//! or out-of-range slot read all ones, as in QEMU.
//!
//! The device only keeps slot state; what a slot's change means for the
//! memory map is the machine's business, told through [`HotplugEvents`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::memory::RegionOps;

pub const PORT: u64 = 0x0a00;
pub const SIZE: u64 = 24;

const ENABLED: u8 = 1;
const INSERT: u8 = 2;
const REMOVE: u8 = 4;
const EJECT: u8 = 8;

/// What the machine hears from the guest's side of the protocol.
pub trait HotplugEvents: Send + Sync {
    /// The guest ejected the DIMM in `slot` (after a remove request).
    fn eject(&self, slot: usize);
    /// The guest reported `_OST` for `slot`.
    fn ost(&self, slot: usize, event: u32, status: u32);
    /// Whether some slot now has an event for OSPM (insert or remove).
    fn pending(&self, _any: bool) {}
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub base: u64,
    pub size: u64,
    pub node: u32,
    pub status: u8,
}

impl Slot {
    pub fn is_enabled(&self) -> bool {
        self.status & ENABLED != 0
    }
}

struct State {
    slots: Vec<Slot>,
    selected: u32,
    ost_event: u32,
}

pub struct MemHotplug {
    state: Mutex<State>,
    events: Arc<dyn HotplugEvents>,
}

impl MemHotplug {
    pub fn new(slots: usize, events: Arc<dyn HotplugEvents>) -> Self {
        MemHotplug {
            state: Mutex::new(State {
                slots: vec![Slot::default(); slots],
                selected: 0,
                ost_event: 0,
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn slots(&self) -> Vec<Slot> {
        self.lock().slots.clone()
    }

    /// A free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.lock().slots.iter().position(|s| s.status == 0)
    }

    /// A DIMM is in `slot` now: enabled, with an insert event for OSPM.
    pub fn plug(&self, slot: usize, base: u64, size: u64, node: u32) {
        let any = {
            let mut st = self.lock();
            if let Some(s) = st.slots.get_mut(slot) {
                *s = Slot {
                    base,
                    size,
                    node,
                    status: ENABLED | INSERT,
                };
            }
            any_event(&st)
        };
        self.events.pending(any);
    }

    /// Asks OSPM to eject the DIMM in `slot`; false if the slot is empty.
    pub fn request_removal(&self, slot: usize) -> bool {
        let (ok, any) = {
            let mut st = self.lock();
            let ok = match st.slots.get_mut(slot) {
                Some(s) if s.is_enabled() => {
                    s.status |= REMOVE;
                    true
                }
                _ => false,
            };
            (ok, any_event(&st))
        };
        self.events.pending(any);
        ok
    }

    /// The slot is empty again (its DIMM is gone from the memory map).
    pub fn unplug(&self, slot: usize) {
        let any = {
            let mut st = self.lock();
            if let Some(s) = st.slots.get_mut(slot) {
                *s = Slot::default();
            }
            any_event(&st)
        };
        self.events.pending(any);
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let st = self.lock();
        let Some(s) = st.slots.get(st.selected as usize) else {
            return u32::MAX;
        };
        match offset {
            0x0 => s.base as u32,
            0x4 => (s.base >> 32) as u32,
            0x8 => s.size as u32,
            0xc => (s.size >> 32) as u32,
            0x10 => s.node,
            0x14 => u32::from(s.status),
            _ => u32::MAX,
        }
    }

    fn write_reg(&self, offset: u64, v: u32) {
        let mut st = self.lock();
        match offset {
            0x0 => st.selected = v,
            0x4 => st.ost_event = v,
            0x8 => {
                let (slot, event) = (st.selected as usize, st.ost_event);
                if slot < st.slots.len() {
                    drop(st);
                    self.events.ost(slot, event, v);
                }
            }
            0x14 => {
                let slot = st.selected as usize;
                let Some(s) = st.slots.get_mut(slot) else {
                    return;
                };
                let v = v as u8;
                if v & INSERT != 0 {
                    s.status &= !INSERT;
                }
                if v & REMOVE != 0 {
                    s.status &= !REMOVE;
                }
                let eject = v & EJECT != 0 && s.is_enabled();
                let any = any_event(&st);
                drop(st);
                self.events.pending(any);
                if eject {
                    self.events.eject(slot);
                }
            }
            _ => {}
        }
    }
}

fn any_event(st: &State) -> bool {
    st.slots.iter().any(|s| s.status & (INSERT | REMOVE) != 0)
}

impl RegionOps for MemHotplug {
    fn read(&self, offset: u64, data: &mut [u8]) {
        // Registers are 4 bytes (the status byte at 0x14 is one); an access
        // reads the bytes of the register it starts in.
        let reg = offset & !3;
        let bytes = self.read_reg(reg).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes
                .get((offset - reg) as usize + i)
                .copied()
                .unwrap_or(0xff);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset % 4 != 0 {
            return;
        }
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        self.write_reg(offset, u32::from_le_bytes(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ejects, OST reports and pending changes, in order.
    type Log = (Vec<usize>, Vec<(usize, u32, u32)>, Vec<bool>);

    #[derive(Default)]
    struct Seen(Mutex<Log>);
    impl HotplugEvents for Seen {
        fn eject(&self, slot: usize) {
            self.0.lock().unwrap().0.push(slot);
        }
        fn ost(&self, slot: usize, event: u32, status: u32) {
            self.0.lock().unwrap().1.push((slot, event, status));
        }
        fn pending(&self, any: bool) {
            self.0.lock().unwrap().2.push(any);
        }
    }

    fn r32(d: &MemHotplug, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w32(d: &MemHotplug, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    #[test]
    fn a_dimm_is_announced_ejected_and_gone_as_ospm_sees_it() {
        let seen = Arc::new(Seen::default());
        let d = MemHotplug::new(2, seen.clone());
        d.plug(1, 0x1_4000_0000, 128 << 20, 1);
        w32(&d, 0x0, 1);
        assert_eq!(r32(&d, 0x0), 0x4000_0000);
        assert_eq!(r32(&d, 0x4), 1);
        assert_eq!(r32(&d, 0x8), 128 << 20);
        assert_eq!(r32(&d, 0x10), 1);
        let mut st = [0u8];
        d.read(0x14, &mut st);
        assert_eq!(st[0], ENABLED | INSERT);
        w32(&d, 0x14, u32::from(INSERT));
        d.read(0x14, &mut st);
        assert_eq!(st[0], ENABLED, "insert event cleared");
        w32(&d, 0x4, 0x103);
        w32(&d, 0x8, 0);
        assert!(d.request_removal(1));
        assert!(!d.request_removal(0), "nothing to remove in slot 0");
        w32(&d, 0x14, u32::from(REMOVE | EJECT));
        let s = seen.0.lock().unwrap();
        assert_eq!(s.0, vec![1]);
        assert_eq!(s.1, vec![(1, 0x103, 0)]);
        assert_eq!(s.2, vec![true, false, true, true, false]);
    }

    #[test]
    fn bad_selectors_and_odd_accesses_read_ones_and_change_nothing() {
        let seen = Arc::new(Seen::default());
        let d = MemHotplug::new(1, seen.clone());
        w32(&d, 0x0, 7);
        assert_eq!(r32(&d, 0x0), u32::MAX);
        w32(&d, 0x14, 0xff);
        for off in 0..SIZE {
            for len in [1usize, 2, 4, 8] {
                let mut b = vec![0u8; len];
                d.read(off, &mut b);
                d.write(off, &b);
            }
        }
        w32(&d, 0x0, 0);
        assert_eq!(r32(&d, 0x14) & 0xff, 0, "slot 0 untouched");
        assert!(seen.0.lock().unwrap().0.is_empty(), "no eject");
    }
}
