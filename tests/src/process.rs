//! Running the `vmm` binary as a process.

use std::path::PathBuf;

/// The `vmm` binary of the current build profile (cargo builds it with the
/// workspace's tests).
pub fn vmm_binary() -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/<profile>/vmm
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("a target directory");
    dir.join("vmm")
}
