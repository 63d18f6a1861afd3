//! `blkbench=`: the load generator (phase 2).

use crate::cmdline::Cmdline;
use crate::pci::Bdf;

pub struct Options;

impl Options {
    pub fn parse(_cmdline: &Cmdline) -> Option<Options> {
        None
    }
}

pub fn run(_bdf: Bdf, _opts: &Options) {}
