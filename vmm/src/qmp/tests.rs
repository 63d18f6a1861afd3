//! Command dispatch against a fake machine.

use serde_json::{json, Value};

use super::control::*;
use super::dispatch::{After, Session};
use super::fake::Fake;
use super::splitter::{Item, Splitter};
use crate::memory::MemoryRegion;

pub(super) fn ask(s: &mut Session, f: &Fake, msg: &str) -> Value {
    s.handle(f, msg.as_bytes()).0
}

pub(super) fn negotiated(f: &Fake) -> Session {
    let mut s = Session::new();
    let (r, after) = s.handle(f, br#"{"execute":"qmp_capabilities"}"#);
    assert_eq!((r, after), (json!({"return": {}}), After::Negotiated));
    s
}

pub(super) fn error(v: &Value) -> (&str, &str) {
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
