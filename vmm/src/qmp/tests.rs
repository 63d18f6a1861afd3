//! Command dispatch against a fake machine, and the event shapes.

use std::sync::{mpsc, Arc, Mutex};

use serde_json::{json, Value};

use super::control::*;
use super::dispatch::{After, Session};
use super::events::{AcpiOstInfo, Events, Out};
use super::splitter::{Item, Splitter};
use crate::memory::{Memory, MemoryRegion};

/// Records calls; `status` follows stop/cont.
#[derive(Default)]
pub(super) struct Fake {
    calls: Mutex<Vec<String>>,
    paused: Mutex<bool>,
    memory: Arc<Memory>,
}

impl Fake {
    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    pub(super) fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Control for Fake {
    fn status(&self) -> RunStatus {
        if *self.paused.lock().unwrap() {
            RunStatus::Paused
        } else {
            RunStatus::Running
        }
    }
    fn stop(&self) -> Result<(), ControlError> {
        *self.paused.lock().unwrap() = true;
        Ok(())
    }
    fn cont(&self) -> Result<(), ControlError> {
        *self.paused.lock().unwrap() = false;
        Ok(())
    }
    fn system_reset(&self) -> Result<(), ControlError> {
        self.call("reset".into());
        Ok(())
    }
    fn system_powerdown(&self) -> Result<(), ControlError> {
        self.call("powerdown".into());
        Ok(())
    }
    fn quit(&self) {
        self.call("quit".into());
    }
    fn cpus(&self) -> Vec<CpuInfo> {
        vec![CpuInfo {
            index: 0,
            thread_id: 42,
        }]
    }
    fn block_devices(&self) -> Vec<BlockInfo> {
        vec![BlockInfo {
            device: "virtio-blk0".into(),
            file: "/d.img".into(),
            read_only: true,
            driver: "raw",
        }]
    }
    fn memory(&self) -> Arc<Memory> {
        self.memory.clone()
    }
    fn object_add_memfd(&self, id: &str, size: u64, share: bool) -> Result<(), ControlError> {
        self.call(format!("object_add {id} {size} {share}"));
        Ok(())
    }
    fn object_del(&self, id: &str) -> Result<(), ControlError> {
        self.call(format!("object_del {id}"));
        Err(ControlError::HotplugUnavailable)
    }
    fn device_add_dimm(&self, id: &str, mem: &str, node: Option<u32>) -> Result<(), ControlError> {
        self.call(format!("device_add {id} {mem} {node:?}"));
        Ok(())
    }
    fn device_del(&self, id: &str) -> Result<(), ControlError> {
        self.call(format!("device_del {id}"));
        Ok(())
    }
    fn memory_devices(&self) -> Vec<MemoryDeviceInfo> {
        Vec::new()
    }
}

fn ask(s: &mut Session, f: &Fake, msg: &str) -> Value {
    s.handle(f, msg.as_bytes()).0
}

fn negotiated(f: &Fake) -> Session {
    let mut s = Session::new();
    let (r, after) = s.handle(f, br#"{"execute":"qmp_capabilities"}"#);
    assert_eq!((r, after), (json!({"return": {}}), After::Negotiated));
    s
}

fn error(v: &Value) -> (&str, &str) {
    let e = &v["error"];
    (
        e["class"].as_str().expect("an error class"),
        e["desc"].as_str().expect("an error desc"),
    )
}

#[test]
fn only_capabilities_before_negotiation_and_ids_are_echoed() {
    let f = Fake::default();
    let mut s = Session::new();
    let r = ask(&mut s, &f, r#"{"execute":"query-status","id":"a"}"#);
    assert_eq!(error(&r).0, "CommandNotFound");
    assert_eq!(r["id"], "a");
    let r = ask(
        &mut s,
        &f,
        r#"{"execute":"qmp_capabilities","id":{"n":[1]}}"#,
    );
    assert_eq!(r, json!({"return": {}, "id": {"n": [1]}}));
    let r = ask(&mut s, &f, r#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(error(&r).0, "CommandNotFound");
    let r = ask(&mut s, &f, r#"{"execute":"query-status","id":7}"#);
    assert_eq!(
        r,
        json!({"return": {"status": "running", "running": true, "singlestep": false}, "id": 7})
    );
}

#[test]
fn malformed_input_gets_errors_that_say_what_was_wrong() {
    let f = Fake::default();
    let mut s = negotiated(&f);
    for (msg, says) in [
        ("{bad", "JSON parse error"),
        ("[1,2]", "must be a JSON object"),
        (r#"{"arguments":{}}"#, "lacks member 'execute'"),
        (r#"{"execute":5}"#, "'execute' must be a string"),
        (
            r#"{"execute":"stop","arguments":[]}"#,
            "'arguments' must be an object",
        ),
        (
            r#"{"execute":"stop","colour":1}"#,
            "member 'colour' is unexpected",
        ),
        (
            r#"{"execute":"stop","arguments":{"x":1}}"#,
            "Parameter 'x' is unexpected",
        ),
        ("\u{0}\u{ff}", "JSON parse error"),
    ] {
        let r = ask(&mut s, &f, msg);
        assert_eq!(error(&r), ("GenericError", error(&r).1), "{msg}");
        assert!(error(&r).1.contains(says), "{msg}: {r}");
    }
    let r = ask(&mut s, &f, r#"{"execute":"no-such-thing"}"#);
    assert_eq!(
        error(&r),
        (
            "CommandNotFound",
            "The command no-such-thing has not been found"
        )
    );
    let (r, _) = s.handle_item(&f, Item::TooDeep);
    assert!(error(&r).1.contains("nesting"), "{r}");
    let (r, _) = s.handle_item(&f, Item::TooLarge);
    assert!(error(&r).1.contains("longer than"), "{r}");
    // Still serving.
    let r = ask(&mut s, &f, r#"{"execute":"query-version"}"#);
    assert_eq!(r["return"]["qemu"]["major"], 7);
}

#[test]
fn the_splitter_feeds_the_session_byte_by_byte() {
    let f = Fake::default();
    let mut s = Session::new();
    let mut sp = Splitter::new();
    let input = br#"{"execute":"qmp_capabilities"} {"execute": "stop", "id": 1}"#;
    let mut replies = Vec::new();
    for b in input {
        for item in sp.feed(std::slice::from_ref(b)) {
            replies.push(s.handle_item(&f, item).0);
        }
    }
    assert_eq!(
        replies,
        [json!({"return": {}}), json!({"return": {}, "id": 1})]
    );
    assert_eq!(f.status(), RunStatus::Paused);
}

#[test]
fn run_control_commands_reach_the_machine() {
    let f = Fake::default();
    let mut s = negotiated(&f);
    ask(&mut s, &f, r#"{"execute":"stop"}"#);
    assert_eq!(
        ask(&mut s, &f, r#"{"execute":"query-status"}"#)["return"]["status"],
        "paused"
    );
    ask(&mut s, &f, r#"{"execute":"cont"}"#);
    assert_eq!(
        ask(&mut s, &f, r#"{"execute":"query-status"}"#)["return"]["running"],
        true
    );
    ask(&mut s, &f, r#"{"execute":"system_reset"}"#);
    ask(&mut s, &f, r#"{"execute":"system_powerdown"}"#);
    assert_eq!(f.calls(), ["reset", "powerdown"]);
    let (r, after) = s.handle(&f, br#"{"execute":"quit"}"#);
    assert_eq!((r, after), (json!({"return": {}}), After::Quit));
    assert!(
        f.calls().is_empty(),
        "quit is left to the connection, after the reply"
    );
}

#[test]
fn queries_have_qemus_shapes() {
    let f = Fake::default();
    let mut s = negotiated(&f);
    let r = ask(&mut s, &f, r#"{"execute":"query-cpus-fast"}"#);
    assert_eq!(r["return"][0]["thread-id"], 42);
    assert_eq!(r["return"][0]["cpu-index"], 0);
    assert_eq!(r["return"][0]["target"], "x86_64");
    assert!(r["return"][0]["props"].is_object());
    let r = ask(&mut s, &f, r#"{"execute":"query-block"}"#);
    assert_eq!(r["return"][0]["device"], "virtio-blk0");
    assert_eq!(r["return"][0]["inserted"]["file"], "/d.img");
    assert_eq!(r["return"][0]["inserted"]["ro"], true);
    let r = ask(&mut s, &f, r#"{"execute":"query-memory-devices"}"#);
    assert_eq!(r, json!({"return": []}));
    let r = ask(&mut s, &f, r#"{"execute":"query-commands"}"#);
    let names: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in [
        "device_add",
        "human-monitor-command",
        "query-cpus-fast",
        "quit",
    ] {
        assert!(names.contains(&c), "{c} in {names:?}");
    }
}

#[test]
fn hmp_info_commands_render_the_memory_model() {
    let f = Fake::default();
    let system = MemoryRegion::container("system", u64::MAX);
    f.memory.add_address_space("memory", system.clone());
    let ram = MemoryRegion::ram("pc.ram", 1 << 20).unwrap();
    let tx = f.memory.begin();
    tx.add_subregion(&system, 0, &ram).unwrap();
    tx.commit().unwrap();
    let mut s = negotiated(&f);
    let hmp = |s: &mut Session, line: &str| {
        let msg = json!({"execute": "human-monitor-command", "arguments": {"command-line": line}});
        let r = ask(s, &f, &msg.to_string());
        r["return"].as_str().expect("text").to_string()
    };
    let flat = hmp(&mut s, "info mtree -f");
    assert!(
        flat.contains("0000000000000000-00000000000fffff (prio 0, ram): pc.ram"),
        "{flat}"
    );
    assert!(hmp(&mut s, "info mtree").contains("address-space: memory"));
    assert!(hmp(&mut s, "info ramblock").contains("pc.ram"));
    assert!(hmp(&mut s, "info listeners").contains("address-space: memory"));
    assert_eq!(hmp(&mut s, "info status"), "VM status: running\r\n");
    assert!(hmp(&mut s, "info frobs").starts_with("unknown command: 'info frobs'"));
    let r = ask(
        &mut s,
        &f,
        r#"{"execute":"human-monitor-command","arguments":{}}"#,
    );
    assert_eq!(error(&r).1, "Parameter 'command-line' is missing");
    let r = ask(
        &mut s,
        &f,
        r#"{"execute":"human-monitor-command","arguments":{"command-line":1}}"#,
    );
    assert_eq!(
        error(&r).1,
        "Invalid parameter type for 'command-line', expected: string"
    );
}

#[test]
fn hotplug_arguments_are_checked_before_the_machine_sees_them() {
    let f = Fake::default();
    let mut s = negotiated(&f);
    let obj = r#"{"execute":"object-add","arguments":{"qom-type":"memory-backend-memfd","id":"m1","size":1073741824}}"#;
    assert_eq!(ask(&mut s, &f, obj), json!({"return": {}}));
    let dev = r#"{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"d1","memdev":"m1","node":0}}"#;
    assert_eq!(ask(&mut s, &f, dev), json!({"return": {}}));
    ask(
        &mut s,
        &f,
        r#"{"execute":"device_del","arguments":{"id":"d1"}}"#,
    );
    let r = ask(
        &mut s,
        &f,
        r#"{"execute":"object-del","arguments":{"id":"m1"}}"#,
    );
    assert_eq!(
        error(&r),
        ("GenericError", "memory hotplug is not available yet")
    );
    assert_eq!(
        f.calls(),
        [
            "object_add m1 1073741824 true",
            "device_add d1 m1 Some(0)",
            "device_del d1",
            "object_del m1"
        ]
    );
    for (args, says) in [
        (
            json!({"qom-type": "memory-backend-memfd", "size": 1}),
            "Parameter 'id' is missing",
        ),
        (
            json!({"qom-type": "memory-backend-file", "id": "m", "size": 1}),
            "'qom-type' does not accept value 'memory-backend-file'",
        ),
        (
            json!({"qom-type": "memory-backend-memfd", "id": "m", "size": "1G"}),
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            json!({"qom-type": "memory-backend-memfd", "id": "m", "size": -1}),
            "Invalid parameter type for 'size', expected: uint64",
        ),
        (
            json!({"qom-type": "memory-backend-memfd", "id": "m", "size": 0}),
            "'size' must be more than 0",
        ),
        (
            json!({"qom-type": "memory-backend-memfd", "id": "m", "size": 1, "share": "on"}),
            "'share', expected: boolean",
        ),
        (
            json!({"qom-type": "memory-backend-memfd", "id": "9m", "size": 1}),
            "'id' expects an identifier",
        ),
        (
            json!({"qom-type": "memory-backend-memfd", "id": "m", "size": 1, "hugetlb": true}),
            "Parameter 'hugetlb' is unexpected",
        ),
    ] {
        let r = ask(
            &mut s,
            &f,
            &json!({"execute": "object-add", "arguments": args}).to_string(),
        );
        assert!(error(&r).1.contains(says), "{args}: {r}");
    }
    for (args, says) in [
        (
            json!({"driver": "virtio-net-pci", "id": "d"}),
            "'driver' does not accept value 'virtio-net-pci'",
        ),
        (
            json!({"driver": "pc-dimm", "memdev": "m"}),
            "Parameter 'id' is missing",
        ),
        (
            json!({"driver": "pc-dimm", "id": "d"}),
            "Parameter 'memdev' is missing",
        ),
        (
            json!({"driver": "pc-dimm", "id": "d", "memdev": "m", "node": 1u64 << 33}),
            "'node', expected: uint32",
        ),
        (json!({"id": "d"}), "Parameter 'driver' is missing"),
    ] {
        let r = ask(
            &mut s,
            &f,
            &json!({"execute": "device_add", "arguments": args}).to_string(),
        );
        assert!(error(&r).1.contains(says), "{args}: {r}");
    }
    let r = ask(
        &mut s,
        &f,
        r#"{"execute":"device_del","arguments":{"id":5}}"#,
    );
    assert!(error(&r).1.contains("'id', expected: string"), "{r}");
    assert!(f.calls().is_empty(), "no bad request reached the machine");
}

#[test]
fn events_have_qemus_shape_and_reach_subscribers() {
    let ev = Events::new();
    let (tx, rx) = mpsc::sync_channel(16);
    ev.emit("NOBODY", None);
    let id = ev.subscribe(tx);
    ev.stop();
    ev.shutdown(false, "host-qmp-quit");
    ev.device_deleted(Some("dimm1"), "/machine/peripheral/dimm1");
    ev.acpi_device_ost(&AcpiOstInfo {
        device: Some("dimm1".into()),
        slot: "0".into(),
        slot_type: "DIMM",
        source: 3,
        status: 0,
    });
    ev.unsubscribe(id);
    ev.resume();
    // A subscriber that does not drain its queue is dropped, not waited for.
    let (tx2, rx2) = mpsc::sync_channel(1);
    ev.subscribe(tx2);
    ev.powerdown();
    ev.powerdown();
    ev.powerdown();
    assert_eq!(rx2.try_iter().count(), 1);
    let got: Vec<Value> = rx
        .try_iter()
        .map(|o| match o {
            Out::Line(l) => serde_json::from_str(&l).unwrap(),
            Out::Flush(_) => panic!("no flush was asked for"),
        })
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0]["event"], "STOP");
    assert!(got[0].get("data").is_none());
    assert!(got[0]["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert!(got[0]["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);
    assert_eq!(
        got[1]["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(
        got[2]["data"],
        json!({"device": "dimm1", "path": "/machine/peripheral/dimm1"})
    );
    assert_eq!(
        got[3]["data"]["info"],
        json!({"device": "dimm1", "slot": "0", "slot-type": "DIMM", "source": 3, "status": 0})
    );
}
