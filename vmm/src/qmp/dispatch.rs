//! One QMP session's command handling, independent of the socket: a
//! message in, a reply out, against a [`Control`].

use serde_json::{json, Map, Value};

use super::args::Args;
use super::control::{Control, ControlError};
use super::splitter::{Item, MAX_DEPTH, MAX_MESSAGE};
use super::{hmp, query, QmpError};

/// Every command this monitor knows, for `query-commands`.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-commands",
    "query-version",
    "query-status",
    "query-cpus-fast",
    "query-block",
    "query-memory-devices",
    "human-monitor-command",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "quit",
    "object-add",
    "object-del",
    "device_add",
    "device_del",
    "calc-dirty-rate",
    "query-dirty-rate",
];

/// What the connection does once the reply is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// Capabilities were negotiated: start sending events.
    Negotiated,
    /// Stop the machine (the reply must reach the client first).
    Quit,
}

/// A session: before `qmp_capabilities` only that command is accepted.
#[derive(Debug, Default)]
pub struct Session {
    negotiated: bool,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// Answers one item from the splitter.
    pub fn handle_item(&mut self, ctl: &dyn Control, item: Item) -> (Value, After) {
        match item {
            Item::Message(m) => self.handle(ctl, &m),
            Item::TooLarge => (
                reply_err(
                    None,
                    QmpError::generic(format!(
                        "JSON parse error, message longer than {MAX_MESSAGE} bytes"
                    )),
                ),
                After::Nothing,
            ),
            Item::TooDeep => (
                reply_err(
                    None,
                    QmpError::generic(format!(
                        "JSON parse error, nesting deeper than {MAX_DEPTH} levels"
                    )),
                ),
                After::Nothing,
            ),
        }
    }

    /// Answers one JSON message.
    pub fn handle(&mut self, ctl: &dyn Control, msg: &[u8]) -> (Value, After) {
        let v: Value = match serde_json::from_slice(msg) {
            Ok(v) => v,
            Err(e) => {
                let e = QmpError::generic(format!("JSON parse error, {e}"));
                return (reply_err(None, e), After::Nothing);
            }
        };
        let Value::Object(obj) = v else {
            let e = QmpError::generic("QMP input must be a JSON object");
            return (reply_err(None, e), After::Nothing);
        };
        let id = obj.get("id").cloned();
        match self.request(ctl, &obj) {
            Ok((ret, after)) => {
                if after == After::Negotiated {
                    self.negotiated = true;
                }
                (reply_ok(id, ret), after)
            }
            Err(e) => (reply_err(id, e), After::Nothing),
        }
    }

    fn request(
        &mut self,
        ctl: &dyn Control,
        obj: &Map<String, Value>,
    ) -> Result<(Value, After), QmpError> {
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "execute" | "arguments" | "id"))
        {
            if k == "exec-oob" {
                return Err(QmpError::generic(
                    "QMP input member 'exec-oob' is not supported (no out-of-band capability)",
                ));
            }
            return Err(QmpError::generic(format!(
                "QMP input member '{k}' is unexpected"
            )));
        }
        let name = match obj.get("execute") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(QmpError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
            None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
        };
        let empty = Map::new();
        let args = match obj.get("arguments") {
            None => &empty,
            Some(Value::Object(a)) => a,
            Some(_) => {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ))
            }
        };
        if !self.negotiated && name != "qmp_capabilities" {
            return Err(QmpError::not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        let mut a = Args::new(args);
        let (ret, after) = match name {
            "qmp_capabilities" => {
                if self.negotiated {
                    return Err(QmpError::not_found(
                        "Capabilities negotiation is already complete, command ignored",
                    ));
                }
                match a.get_raw("enable") {
                    None => {}
                    Some(Value::Array(e)) if e.is_empty() => {}
                    Some(Value::Array(e)) => {
                        return Err(QmpError::generic(format!(
                            "Capability {} not available",
                            e[0]
                        )))
                    }
                    Some(_) => {
                        return Err(QmpError::generic(
                            "Invalid parameter type for 'enable', expected: array",
                        ))
                    }
                }
                (json!({}), After::Negotiated)
            }
            "query-commands" => (query::commands(), After::Nothing),
            "query-version" => (query::version(), After::Nothing),
            "query-status" => (query::status(ctl), After::Nothing),
            "query-cpus-fast" => (query::cpus(ctl), After::Nothing),
            "query-block" => (query::block(ctl), After::Nothing),
            "query-memory-devices" => (query::memory_devices(ctl), After::Nothing),
            "human-monitor-command" => {
                let line = a.str("command-line")?;
                a.opt_u64("cpu-index")?;
                a.done()?;
                return Ok((Value::String(hmp::run(ctl, line)), After::Nothing));
            }
            "stop" => (unit(ctl.stop())?, After::Nothing),
            "cont" => (unit(ctl.cont())?, After::Nothing),
            "system_reset" => (unit(ctl.system_reset())?, After::Nothing),
            "system_powerdown" => (unit(ctl.system_powerdown())?, After::Nothing),
            "quit" => (json!({}), After::Quit),
            "object-add" => {
                let ty = a.str("qom-type")?;
                if ty != "memory-backend-memfd" {
                    return Err(QmpError::generic(format!(
                        "Parameter 'qom-type' does not accept value '{ty}' (only memory-backend-memfd)"
                    )));
                }
                let id = a.id("id")?;
                let size = a.u64("size")?;
                if size == 0 {
                    return Err(QmpError::generic("Parameter 'size' must be more than 0"));
                }
                let share = a.opt_bool("share")?.unwrap_or(true);
                a.done()?;
                (unit(ctl.object_add_memfd(id, size, share))?, After::Nothing)
            }
            "object-del" => {
                let id = a.str("id")?;
                a.done()?;
                (unit(ctl.object_del(id))?, After::Nothing)
            }
            "device_add" => {
                let driver = a.str("driver")?;
                if driver != "pc-dimm" {
                    return Err(QmpError::generic(format!(
                        "Parameter 'driver' does not accept value '{driver}' (only pc-dimm)"
                    )));
                }
                let id = a.id("id")?;
                let memdev = a.str("memdev")?;
                let node = a.opt_u32("node")?;
                a.done()?;
                let r = ctl.device_add_dimm(id, memdev, node);
                (unit(r)?, After::Nothing)
            }
            "device_del" => {
                let id = a.str("id")?;
                a.done()?;
                (unit(ctl.device_del(id))?, After::Nothing)
            }
            "calc-dirty-rate" => {
                let time = a.u64("calc-time")?;
                let unit_ms = match a.opt_str("calc-time-unit")? {
                    None | Some("second") => 1000,
                    Some("millisecond") => 1,
                    Some(u) => {
                        return Err(QmpError::generic(format!(
                            "Parameter 'calc-time-unit' does not accept value '{u}'"
                        )))
                    }
                };
                a.opt_u64("sample-pages")?;
                match a.opt_str("mode")? {
                    None | Some("dirty-bitmap") => {}
                    Some(m) => {
                        return Err(QmpError::generic(format!(
                            "mode '{m}' is not supported (only dirty-bitmap)"
                        )))
                    }
                }
                a.done()?;
                let ms = time.saturating_mul(unit_ms);
                if !(1..=60_000).contains(&ms) {
                    return Err(QmpError::generic(
                        "Parameter 'calc-time' must be from 1 ms to 60 s",
                    ));
                }
                (unit(ctl.calc_dirty_rate(ms))?, After::Nothing)
            }
            "query-dirty-rate" => {
                a.opt_str("calc-time-unit")?;
                a.done()?;
                (query::dirty_rate(ctl), After::Nothing)
            }
            _ => {
                return Err(QmpError::not_found(format!(
                    "The command {name} has not been found"
                )))
            }
        };
        a.done()?;
        Ok((ret, after))
    }
}

fn unit(r: Result<(), ControlError>) -> Result<Value, QmpError> {
    r.map(|()| json!({}))
        .map_err(|e| QmpError::generic(e.to_string()))
}

fn reply_ok(id: Option<Value>, ret: Value) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), ret);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// An error reply; `id` echoed when the request had one.
pub fn reply_err(id: Option<Value>, e: QmpError) -> Value {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        json!({"class": e.class.as_str(), "desc": e.desc}),
    );
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}
