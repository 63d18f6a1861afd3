//! Running this project's binaries as processes.

use std::path::PathBuf;

/// A binary of this workspace in the current build profile (cargo builds
/// the workspace's binaries with its tests).
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("a target directory");
    dir.join(name)
}

/// The `vmm` binary.
pub fn vmm_binary() -> PathBuf {
    binary("vmm")
}

/// A writer that collects what a guest prints (COM1), shareable with the
/// test that reads it.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<String>>);

impl Captured {
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Removes from `cmd` what an outer cargo (a test run, clippy) passes down
/// for its own build: flags, a target, a target directory, a compiler
/// wrapper, jobserver flags. For an inner cargo build with settings of its
/// own (the probe's `.cargo/config.toml`, a static vfio-nested).
pub fn clear_outer_cargo_env(cmd: &mut std::process::Command) {
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
}
