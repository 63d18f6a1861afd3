//! The `query-*` commands' answers, in QEMU's shapes.

use serde_json::{json, Value};

use super::control::Control;
use super::dispatch::COMMANDS;

pub fn commands() -> Value {
    Value::Array(COMMANDS.iter().map(|c| json!({ "name": c })).collect())
}

pub fn version() -> Value {
    json!({"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "vmm"})
}

pub fn status(ctl: &dyn Control) -> Value {
    let s = ctl.status();
    json!({
        "status": s.as_str(),
        "running": s == super::RunStatus::Running,
        "singlestep": false,
    })
}

pub fn cpus(ctl: &dyn Control) -> Value {
    let cpus = ctl.cpus().into_iter().map(|c| {
        json!({
            "cpu-index": c.index,
            "qom-path": format!("/machine/unattached/device[{}]", c.index),
            "thread-id": c.thread_id,
            "target": "x86_64",
            "props": {"socket-id": c.index, "die-id": 0, "core-id": 0, "thread-id": 0},
        })
    });
    Value::Array(cpus.collect())
}

pub fn block(ctl: &dyn Control) -> Value {
    let disks = ctl.block_devices().into_iter().map(|b| {
        json!({
            "device": b.device,
            "qdev": format!("/machine/peripheral/{}/virtio-backend", b.device),
            "locked": false,
            "removable": false,
            "type": "unknown",
            "inserted": {
                "file": b.file,
                "ro": b.read_only,
                "drv": b.driver,
                "encrypted": false,
                "detect_zeroes": "off",
            },
        })
    });
    Value::Array(disks.collect())
}

pub fn memory_devices(ctl: &dyn Control) -> Value {
    let devs = ctl.memory_devices().into_iter().map(|d| {
        let mut data = json!({
            "addr": d.addr,
            "size": d.size,
            "slot": d.slot,
            "node": d.node,
            "memdev": format!("/objects/{}", d.memdev),
            "hotplugged": d.hotplugged,
            "hotpluggable": d.hotpluggable,
        });
        if let (Some(id), Some(m)) = (d.id, data.as_object_mut()) {
            m.insert("id".into(), Value::String(id));
        }
        json!({"type": "dimm", "data": data})
    });
    Value::Array(devs.collect())
}

/// `query-dirty-rate`, QEMU's shape (dirty-bitmap mode).
pub fn dirty_rate(ctl: &dyn Control) -> Value {
    let d = ctl.query_dirty_rate();
    let mut v = json!({
        "status": d.status.as_str(),
        "start-time": d.start_time,
        "calc-time": d.calc_time_ms.div_ceil(1000),
        "calc-time-unit": "second",
        "sample-pages": 0,
        "mode": "dirty-bitmap",
    });
    if let Some(r) = d.rate {
        v["dirty-rate"] = json!(r);
    }
    v
}
