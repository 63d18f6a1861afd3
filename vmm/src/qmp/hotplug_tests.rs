//! Hotplug argument checks and the event shapes.

use std::sync::mpsc;

use serde_json::{json, Value};

use super::events::{AcpiOstInfo, Events, Out};
use super::fake::Fake;
use super::tests::{ask, error, negotiated};

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
