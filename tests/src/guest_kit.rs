//! The Linux guest kit (tests/guest-kit/build.sh): kernel, uncompressed
//! vmlinux and initramfs from Debian packages, cached outside the repo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone, thiserror::Error)]
pub enum KitError {
    #[error("cannot run the guest-kit script: {0}")]
    Spawn(String),
    #[error("the guest-kit script failed ({status}); its last output:\n{tail}")]
    Build { status: String, tail: String },
}

#[derive(Debug, Clone)]
pub struct GuestKit {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The manifest: package names, versions, kernel release.
    pub manifest: String,
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-kit/build.sh")
}

/// The fio job of the kit test `fio` (/etc/kit/verify.fio in the guest),
/// for the host to verify an image with `--verify_only=1`.
pub fn fio_job() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-kit/verify.fio")
}

/// Builds (or finds in the cache) the kit, once per process.
pub fn assets() -> Result<GuestKit, KitError> {
    static KIT: OnceLock<Result<GuestKit, KitError>> = OnceLock::new();
    KIT.get_or_init(build).clone()
}

fn build() -> Result<GuestKit, KitError> {
    let out = Command::new("bash")
        .arg(script())
        .output()
        .map_err(|e| KitError::Spawn(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(KitError::Build {
            status: out.status.to_string(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    Ok(GuestKit {
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio.gz"),
        manifest: std::fs::read_to_string(dir.join("manifest.txt")).unwrap_or_default(),
        dir,
    })
}

/// Whether KVM here is PVM (nested, software-assisted): stock Linux runs
/// ring 0 about a hundred times slower and does not finish booting.
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Debian's QEMU under TCG (machine `machine`: `pc`, `q35`) booting
/// `kernel` with `initrd`: one vCPU, no display, NIC or reboot, and the
/// command line `append` plus what a kernel under TCG needs to boot in
/// time (the TSC frequency given, whose calibration is slow and erratic,
/// and no timer check, which a loaded host can fail). The caller adds
/// memory, devices and stdio.
pub fn qemu_tcg(machine: &str, kernel: &Path, initrd: &Path, append: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-M", machine, "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{append} tsc_early_khz=2000000 no_timer_check"));
    qemu
}
