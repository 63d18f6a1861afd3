//! Builds the probe guest (tests/probe, its own cargo workspace) so the
//! `vmm` binary can boot it when no kernel is given: the first command in
//! the README runs a guest with nothing to download.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let probe = testkit::probe::source_dir();
    for p in [
        "src",
        "Cargo.toml",
        "link.ld",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", probe.join(p).display());
    }
    let elf = testkit::probe::build_in(&out.join("probe-target"))
        .unwrap_or_else(|e| panic!("building the probe guest failed: {e}"));
    std::fs::copy(&elf, out.join("probe.elf")).expect("copying the probe ELF");
}
