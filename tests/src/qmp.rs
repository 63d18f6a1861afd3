//! QEMU's own QMP client for the suites: the `qemu.qmp` package from PyPI
//! in a venv under ~/.cache/vmm-qmp-venv, created when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The venv's python, with qemu.qmp importable (installed once per process;
/// panics with the reason if that cannot be done).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install).clone()
}

fn importable(py: &Path) -> bool {
    Command::new(py)
        .args(["-c", "import qemu.qmp"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = Path::new(&home).join(".cache/vmm-qmp-venv");
    let python = venv.join("bin/python");
    if importable(&python) {
        return python;
    }
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 runs");
    assert!(st.success(), "python3 -m venv {} failed", venv.display());
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "qemu.qmp"])
        .status()
        .expect("pip runs");
    assert!(st.success(), "pip install qemu.qmp failed");
    assert!(
        importable(&python),
        "qemu.qmp is not importable after pip install"
    );
    python
}
