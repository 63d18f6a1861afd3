//! Command arguments: typed getters whose errors name the argument in
//! QEMU's words, and a check that nothing unexpected was passed.

use serde_json::{Map, Value};

use super::QmpError;

pub struct Args<'a> {
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

fn wrong_type(name: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

fn missing(name: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' is missing"))
}

impl<'a> Args<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Args {
            map,
            used: Vec::new(),
        }
    }

    /// The argument as it came, marked as expected.
    pub fn get_raw(&mut self, name: &'static str) -> Option<&'a Value> {
        self.used.push(name);
        self.map.get(name)
    }

    pub fn opt_str(&mut self, name: &'static str) -> Result<Option<&'a str>, QmpError> {
        match self.get_raw(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(name, "string")),
        }
    }

    pub fn str(&mut self, name: &'static str) -> Result<&'a str, QmpError> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    /// A QOM/qdev id: a letter, then letters, digits, `-`, `.`, `_`.
    pub fn id(&mut self, name: &'static str) -> Result<&'a str, QmpError> {
        let s = self.str(name)?;
        let ok = s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !ok {
            return Err(QmpError::generic(format!(
                "Parameter '{name}' expects an identifier"
            )));
        }
        Ok(s)
    }

    pub fn opt_u64(&mut self, name: &'static str) -> Result<Option<u64>, QmpError> {
        match self.get_raw(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "uint64")),
            Some(_) => Err(wrong_type(name, "integer")),
        }
    }

    pub fn u64(&mut self, name: &'static str) -> Result<u64, QmpError> {
        self.opt_u64(name)?.ok_or_else(|| missing(name))
    }

    pub fn opt_u32(&mut self, name: &'static str) -> Result<Option<u32>, QmpError> {
        match self.opt_u64(name)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| wrong_type(name, "uint32")),
        }
    }

    pub fn opt_bool(&mut self, name: &'static str) -> Result<Option<bool>, QmpError> {
        match self.get_raw(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong_type(name, "boolean")),
        }
    }

    /// Fails on the first argument no getter asked for.
    pub fn done(&self) -> Result<(), QmpError> {
        match self.map.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
            None => Ok(()),
        }
    }
}
