//! Builds the probe guest (tests/probe, its own cargo workspace) so the
//! `vmm` binary can boot it when no kernel is given: the first command in
//! the README runs a guest with nothing to download.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let probe = manifest.join("../tests/probe");
    for p in [
        "src",
        "Cargo.toml",
        "link.ld",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", probe.join(p).display());
    }
    let target_dir = out.join("probe-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The probe's .cargo/config.toml (target, code model) is found from
    // its own directory.
    cmd.current_dir(&probe)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().expect("cannot run cargo for the probe guest");
    if !output.status.success() {
        panic!(
            "building the probe guest failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/probe");
    std::fs::copy(&elf, out.join("probe.elf")).expect("the probe build made no ELF");
}
