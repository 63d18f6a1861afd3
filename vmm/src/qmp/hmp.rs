//! `human-monitor-command`: the few HMP `info` commands this monitor has.
//! As in QEMU, an unknown command is answered with text, not a QMP error.

use super::control::Control;
use crate::memory::mtree;

/// The HMP commands understood, for the help text.
const KNOWN: &str = "info mtree [-f], info ramblock, info listeners, info status, info dirty-log";

pub fn run(ctl: &dyn Control, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["info", "mtree"] => mtree::info_mtree(&ctl.memory()),
        ["info", "mtree", "-f"] => mtree::info_mtree_flat(&ctl.memory()),
        ["info", "ramblock"] => mtree::info_ramblock(&ctl.memory()),
        ["info", "listeners"] => mtree::info_listeners(&ctl.memory()),
        ["info", "dirty-log"] => crate::memory::dirty_rate::info_dirty_log(&ctl.memory()),
        ["info", "status"] => format!("VM status: {}\r\n", ctl.status().as_str()),
        [] => String::new(),
        _ => {
            let shown: String = line.chars().take(80).collect();
            format!("unknown command: '{shown}' (this monitor has: {KNOWN})\r\n")
        }
    }
}
