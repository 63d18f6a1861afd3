//! QMP events: the machine (and the hotplug code) emits them through a
//! cloneable [`Events`] handle; every client that finished capabilities
//! negotiation gets each one, in QEMU's shape:
//! `{"event": NAME, "data": {...}, "timestamp": {"seconds": S,
//! "microseconds": U}}` (`data` left out when there is none, as QEMU
//! does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// What a connection's writer thread is handed: a line to send, or a
/// request to say when everything before it was sent.
pub(crate) enum Out {
    Line(String),
    Flush(std::sync::mpsc::SyncSender<()>),
}

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    subscribers: Mutex<Vec<(u64, SyncSender<Out>)>>,
}

/// The event sink. Emitting never blocks: each subscriber has a bounded
/// queue drained by its connection's writer; a client that lets its queue
/// fill up (it does not read) loses its subscription.
#[derive(Clone, Default)]
pub struct Events(Arc<Inner>);

/// The `timestamp` member, from the wall clock as QEMU takes it.
pub fn timestamp() -> Value {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    json!({"seconds": t.as_secs(), "microseconds": t.subsec_micros()})
}

impl Events {
    pub fn new() -> Self {
        Events::default()
    }

    /// Sends event `name` with `data` to every subscriber.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let mut ev = Map::new();
        ev.insert("event".into(), Value::String(name.into()));
        if let Some(d) = data {
            ev.insert("data".into(), d);
        }
        ev.insert("timestamp".into(), timestamp());
        let line = Value::Object(ev).to_string();
        log::debug!("qmp event: {line}");
        let mut subs = self.lock();
        subs.retain(|(id, tx)| match tx.try_send(Out::Line(line.clone())) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                log::warn!("qmp: client {id} does not read its events; no more events for it");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, SyncSender<Out>)>> {
        self.0.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self, tx: SyncSender<Out>) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, tx));
        id
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    pub fn stop(&self) {
        self.emit("STOP", None);
    }

    pub fn resume(&self) {
        self.emit("RESUME", None);
    }

    pub fn powerdown(&self) {
        self.emit("POWERDOWN", None);
    }

    /// RESET: `guest` says whether the guest asked for it; `reason` is
    /// QEMU's ShutdownCause (`guest-reset`, `host-qmp-system-reset`).
    pub fn reset(&self, guest: bool, reason: &str) {
        self.emit("RESET", Some(json!({"guest": guest, "reason": reason})));
    }

    /// SHUTDOWN: reasons `guest-shutdown`, `host-qmp-quit`, `host-signal`.
    pub fn shutdown(&self, guest: bool, reason: &str) {
        self.emit("SHUTDOWN", Some(json!({"guest": guest, "reason": reason})));
    }

    /// DEVICE_DELETED for a device that is gone (after `device_del` and
    /// the guest's eject): `device` is its id, `path` its QOM path
    /// (`/machine/peripheral/<id>`).
    pub fn device_deleted(&self, device: Option<&str>, path: &str) {
        let mut data = Map::new();
        if let Some(d) = device {
            data.insert("device".into(), Value::String(d.into()));
        }
        data.insert("path".into(), Value::String(path.into()));
        self.emit("DEVICE_DELETED", Some(Value::Object(data)));
    }

    /// ACPI_DEVICE_OST: the guest's _OST report for a hotplug slot.
    pub fn acpi_device_ost(&self, info: &AcpiOstInfo) {
        let mut i = Map::new();
        if let Some(d) = &info.device {
            i.insert("device".into(), Value::String(d.clone()));
        }
        i.insert("slot".into(), Value::String(info.slot.clone()));
        i.insert("slot-type".into(), Value::String(info.slot_type.into()));
        i.insert("source".into(), info.source.into());
        i.insert("status".into(), info.status.into());
        self.emit("ACPI_DEVICE_OST", Some(json!({ "info": Value::Object(i) })));
    }
}

/// QEMU's ACPIOSTInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiOstInfo {
    /// The device id, if the slot holds one.
    pub device: Option<String>,
    /// The slot number as text (`"0"`).
    pub slot: String,
    /// `DIMM` or `CPU`.
    pub slot_type: &'static str,
    /// The _OST source event (1: insertion, 3: eject request, ...).
    pub source: u32,
    /// The _OST status code (0: success).
    pub status: u32,
}
