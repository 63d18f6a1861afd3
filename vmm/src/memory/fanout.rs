//! One commit round over the listeners of one or more address spaces, and
//! its undo when a listener refuses.
//!
//! Each listener's share of the round is journalled (`Told`), so that on a
//! failure every listener can be taken back exactly to the old view, keeping
//! the priority order: deletes descending, adds ascending.

use super::flatview::{FlatRange, FlatView};
use super::listener::{HookError, HookResult, ListenerId, MemoryListener};
use super::MemoryError;

pub(crate) struct Registered {
    pub id: ListenerId,
    pub listener: Box<dyn MemoryListener>,
}

/// One address space's part of a round.
pub(crate) struct SpaceRound<'a> {
    pub name: &'a str,
    pub old: &'a FlatView,
    pub new: &'a FlatView,
    /// Sorted by ascending priority.
    pub listeners: &'a mut [Registered],
}

enum Step {
    Add(usize),
    Nop(usize, usize),
}

/// The difference between two views, in address order.
struct Diff {
    dels: Vec<usize>,
    steps: Vec<Step>,
    ev_dels: Vec<usize>,
    ev_adds: Vec<usize>,
}

fn diff(old: &FlatView, new: &FlatView) -> Diff {
    let (o, n) = (old.ranges(), new.ranges());
    let (mut i, mut j) = (0, 0);
    let mut d = Diff {
        dels: Vec::new(),
        steps: Vec::new(),
        ev_dels: Vec::new(),
        ev_adds: Vec::new(),
    };
    while i < o.len() || j < n.len() {
        if i < o.len()
            && (j >= n.len()
                || o[i].addr < n[j].addr
                || (o[i].addr == n[j].addr && !o[i].same_mapping(&n[j])))
        {
            d.dels.push(i);
            i += 1;
        } else if i < o.len() && j < n.len() && o[i].same_mapping(&n[j]) {
            d.steps.push(Step::Nop(i, j));
            i += 1;
            j += 1;
        } else {
            d.steps.push(Step::Add(j));
            j += 1;
        }
    }
    let (oe, ne) = (old.ioeventfds(), new.ioeventfds());
    let (mut i, mut j) = (0, 0);
    while i < oe.len() || j < ne.len() {
        if j >= ne.len() || (i < oe.len() && oe[i].sort_key() < ne[j].sort_key()) {
            d.ev_dels.push(i);
            i += 1;
        } else if i >= oe.len() || ne[j].sort_key() < oe[i].sort_key() {
            d.ev_adds.push(j);
            j += 1;
        } else {
            i += 1;
            j += 1;
        }
    }
    d
}

/// What one listener was told in the round so far.
struct Told {
    committed: bool,
    adds: Vec<usize>,
    dels: Vec<usize>,
    nopped: Vec<bool>,
    /// (old index, from mask, to mask) for unchanged ranges whose mask moved.
    logs: Vec<(usize, u8, u8)>,
    ev_adds: Vec<usize>,
    ev_dels: Vec<usize>,
}

impl Told {
    fn new(old_len: usize) -> Self {
        Told {
            committed: false,
            adds: Vec::new(),
            dels: Vec::new(),
            nopped: vec![false; old_len],
            logs: Vec::new(),
            ev_adds: Vec::new(),
            ev_dels: Vec::new(),
        }
    }
}

struct Failure {
    space: usize,
    listener: usize,
    hook: &'static str,
    what: String,
    source: HookError,
}

/// Runs one round. On a refusal every listener is taken back to `old` and
/// the refusal is returned.
pub(crate) fn run(spaces: &mut [SpaceRound<'_>]) -> Result<(), MemoryError> {
    let diffs: Vec<Diff> = spaces.iter().map(|s| diff(s.old, s.new)).collect();
    let mut told: Vec<Vec<Told>> = spaces
        .iter()
        .map(|s| {
            s.listeners
                .iter()
                .map(|_| Told::new(s.old.ranges().len()))
                .collect()
        })
        .collect();
    let Err(f) = forward(spaces, &diffs, &mut told) else {
        return Ok(());
    };
    let sp = &spaces[f.space];
    let err = MemoryError::Listener {
        address_space: sp.name.to_string(),
        listener: sp.listeners[f.listener].listener.name().to_string(),
        hook: f.hook,
        what: f.what,
        source: f.source,
    };
    log::warn!("memory transaction refused, rolling back: {err}");
    rollback(spaces, &told);
    Err(err)
}

fn forward(
    spaces: &mut [SpaceRound<'_>],
    diffs: &[Diff],
    told: &mut [Vec<Told>],
) -> Result<(), Failure> {
    for sp in spaces.iter_mut() {
        for r in sp.listeners.iter_mut() {
            r.listener.begin();
        }
    }
    for (s, sp) in spaces.iter_mut().enumerate() {
        let (d, t) = (&diffs[s], &mut told[s]);
        let (old, new) = (sp.old.ranges(), sp.new.ranges());
        for &i in &d.dels {
            for (k, r) in sp.listeners.iter_mut().enumerate().rev() {
                del_unit(r.listener.as_mut(), &old[i]);
                t[k].dels.push(i);
            }
        }
        for step in &d.steps {
            for (k, r) in sp.listeners.iter_mut().enumerate() {
                let l = r.listener.as_mut();
                match *step {
                    Step::Add(j) => {
                        add_unit(l, &new[j]).map_err(|(hook, source)| Failure {
                            space: s,
                            listener: k,
                            hook,
                            what: describe(&new[j]),
                            source,
                        })?;
                        t[k].adds.push(j);
                    }
                    Step::Nop(i, j) => {
                        l.region_nop(&new[j]);
                        t[k].nopped[i] = true;
                        let (from, to) = (old[i].dirty_log_mask, new[j].dirty_log_mask);
                        if from != to {
                            change_log(l, &new[j], from, to).map_err(|source| Failure {
                                space: s,
                                listener: k,
                                hook: "log_start",
                                what: describe(&new[j]),
                                source,
                            })?;
                            t[k].logs.push((i, from, to));
                        }
                    }
                }
            }
        }
        let (oe, ne) = (sp.old.ioeventfds(), sp.new.ioeventfds());
        for &i in &d.ev_dels {
            for (k, r) in sp.listeners.iter_mut().enumerate().rev() {
                r.listener.eventfd_del(&oe[i]);
                t[k].ev_dels.push(i);
            }
        }
        for &j in &d.ev_adds {
            for (k, r) in sp.listeners.iter_mut().enumerate() {
                r.listener.eventfd_add(&ne[j]).map_err(|source| Failure {
                    space: s,
                    listener: k,
                    hook: "eventfd_add",
                    what: format!("ioeventfd at {:#x}", ne[j].addr),
                    source,
                })?;
                t[k].ev_adds.push(j);
            }
        }
    }
    for (s, sp) in spaces.iter_mut().enumerate() {
        for (k, r) in sp.listeners.iter_mut().enumerate() {
            r.listener.commit().map_err(|source| Failure {
                space: s,
                listener: k,
                hook: "commit",
                what: String::from("commit"),
                source,
            })?;
            told[s][k].committed = true;
        }
    }
    Ok(())
}

fn rollback(spaces: &mut [SpaceRound<'_>], told: &[Vec<Told>]) {
    for (s, sp) in spaces.iter_mut().enumerate() {
        for (k, r) in sp.listeners.iter_mut().enumerate() {
            if told[s][k].committed {
                r.listener.begin();
            }
        }
    }
    for (s, sp) in spaces.iter_mut().enumerate() {
        let (old, new) = (sp.old.ranges(), sp.new.ranges());
        let (oe, ne) = (sp.old.ioeventfds(), sp.new.ioeventfds());
        for (k, r) in sp.listeners.iter_mut().enumerate().rev() {
            for &j in told[s][k].adds.iter().rev() {
                del_unit(r.listener.as_mut(), &new[j]);
            }
        }
        for (k, r) in sp.listeners.iter_mut().enumerate() {
            let (t, l) = (&told[s][k], r.listener.as_mut());
            for (i, range) in old.iter().enumerate() {
                if t.dels.contains(&i) {
                    if let Err((hook, e)) = add_unit(l, range) {
                        rollback_failed(sp.name, l.name(), hook, range, &e);
                    }
                    continue;
                }
                if t.committed || !t.nopped[i] {
                    l.region_nop(range);
                }
                if let Some(&(_, from, to)) = t.logs.iter().find(|x| x.0 == i) {
                    if let Err(e) = change_log(l, range, to, from) {
                        rollback_failed(sp.name, l.name(), "log_start", range, &e);
                    }
                }
            }
        }
        for (k, r) in sp.listeners.iter_mut().enumerate().rev() {
            for &j in told[s][k].ev_adds.iter().rev() {
                r.listener.eventfd_del(&ne[j]);
            }
        }
        for (k, r) in sp.listeners.iter_mut().enumerate() {
            for &i in &told[s][k].ev_dels {
                if let Err(e) = r.listener.eventfd_add(&oe[i]) {
                    log::error!(
                        "rollback: listener {} could not restore ioeventfd at {:#x}: {e}",
                        r.listener.name(),
                        oe[i].addr
                    );
                }
            }
        }
    }
    for sp in spaces.iter_mut() {
        for r in sp.listeners.iter_mut() {
            if let Err(e) = r.listener.commit() {
                log::error!(
                    "rollback: listener {} failed commit: {e}",
                    r.listener.name()
                );
            }
        }
    }
}

/// `region_add`, then coalesced ranges, then `log_start` for a logged range.
/// On failure nothing of it remains.
fn add_unit(l: &mut dyn MemoryListener, r: &FlatRange) -> Result<(), (&'static str, HookError)> {
    l.region_add(r).map_err(|e| ("region_add", e))?;
    let co = r.coalesced();
    for &(a, s) in &co {
        l.coalesced_io_add(r, a, s);
    }
    if r.dirty_log_mask != 0 {
        if let Err(e) = l.log_start(r, 0, r.dirty_log_mask) {
            for &(a, s) in &co {
                l.coalesced_io_del(r, a, s);
            }
            l.region_del(r);
            return Err(("log_start", e));
        }
    }
    Ok(())
}

/// The inverse of [`add_unit`].
fn del_unit(l: &mut dyn MemoryListener, r: &FlatRange) {
    if r.dirty_log_mask != 0 {
        l.log_stop(r, r.dirty_log_mask, 0);
    }
    for (a, s) in r.coalesced() {
        l.coalesced_io_del(r, a, s);
    }
    l.region_del(r);
}

/// Moves logging of `r` from the clients in `from` to those in `to`; the
/// fallible start goes first so a refusal leaves nothing changed.
fn change_log(l: &mut dyn MemoryListener, r: &FlatRange, from: u8, to: u8) -> HookResult {
    if to & !from != 0 {
        l.log_start(r, from, to)?;
    }
    if from & !to != 0 {
        l.log_stop(r, from, to);
    }
    Ok(())
}

fn describe(r: &FlatRange) -> String {
    format!(
        "{} at {:#x}-{:#x}",
        r.region.name(),
        r.addr,
        r.end().wrapping_sub(1)
    )
}

fn rollback_failed(space: &str, listener: &str, hook: &str, r: &FlatRange, e: &HookError) {
    log::error!(
        "rollback in {space}: listener {listener} refused {hook} of {}: {e}; it no longer matches the view",
        describe(r)
    );
}
