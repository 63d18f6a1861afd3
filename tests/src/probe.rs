//! Builds the probe guest (`tests/probe`, its own cargo workspace) and
//! returns the path of its ELF image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run cargo to build the probe: {0}")]
    Spawn(String),
    #[error("building the probe failed ({status}):\n{stderr}")]
    Build { status: String, stderr: String },
    #[error("the probe build produced no {0}")]
    Missing(PathBuf),
}

/// The probe's source tree.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("probe")
}

/// Where the probe is built: its own target directory, apart from the
/// VMM's (its flags differ, and it must not churn the workspace's cache).
pub fn target_dir() -> PathBuf {
    source_dir().join("target")
}

/// Builds the probe once per process (`cargo build --release` in its own
/// workspace) and returns the ELF path.
pub fn build() -> Result<PathBuf, ProbeError> {
    static BUILT: OnceLock<Result<PathBuf, ProbeError>> = OnceLock::new();
    BUILT.get_or_init(build_uncached).clone()
}

fn build_uncached() -> Result<PathBuf, ProbeError> {
    build_in(&target_dir())
}

/// Builds the probe with `target_dir` as its cargo target directory and
/// returns the ELF path. Also used by vmm's build script, so it clears what
/// an outer cargo (build, test or clippy) passes down.
pub fn build_in(target_dir: &Path) -> Result<PathBuf, ProbeError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(source_dir())
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(target_dir);
    // The probe's flags come from its own .cargo/config.toml; flags, a
    // target or a compiler wrapper (clippy's) meant for the outer build
    // would override them.
    crate::process::clear_outer_cargo_env(&mut command);
    let output = command
        .output()
        .map_err(|e| ProbeError::Spawn(e.to_string()))?;
    if !output.status.success() {
        return Err(ProbeError::Build {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/probe");
    if !elf.is_file() {
        return Err(ProbeError::Missing(elf));
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_static_elf_entered_at_1_mib() {
        let elf = build().unwrap();
        let bytes = std::fs::read(&elf).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(bytes[4], 2, "64-bit");
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 2, "ET_EXEC");
        let entry = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        assert_eq!(entry, 0x10_0000);
    }
}
