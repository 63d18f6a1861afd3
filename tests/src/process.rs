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
