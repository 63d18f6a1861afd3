//! The nested guest's assets: the guest kit (kernel, busybox initramfs with
//! the vfio modules) and, appended to its initramfs as a second cpio
//! archive, the static `vfio-nested` program and the script that binds edu
//! to vfio-pci and runs it. The program is built in its own target
//! directory in the guest-kit cache (outside the repository), so only the
//! first run compiles it.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_SCRIPT: &[u8] = include_bytes!("guest.sh");

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMM_GUEST_KIT_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is set (the guest-kit cache is under it)");
    Path::new(&home).join(".cache/vmm-guest-kit")
}

/// Builds `vfio-nested` statically linked (glibc, `+crt-static`) and
/// returns its path.
pub fn build_program() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // One target directory per checkout: build scripts remember the paths
    // they were built in (vmm's builds the probe from its source tree), so
    // a directory shared by checkouts at different paths goes stale.
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        env!("CARGO_MANIFEST_DIR").hash(&mut h);
        h.finish()
    };
    let target_dir = cache_dir().join(format!("vfio-nested/target-{key:016x}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--quiet", "--locked", "-p", "integration"])
        .args(["--bin", "vfio-nested", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // What an outer cargo passes down is meant for its own build.
    testkit::process::clear_outer_cargo_env(&mut cmd);
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Ctarget-feature=+crt-static\x1f-Cstrip=debuginfo",
    );
    let out = cmd.output().expect("running cargo to build vfio-nested");
    assert!(
        out.status.success(),
        "building the static vfio-nested program failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = target_dir.join(TARGET).join("debug/vfio-nested");
    let elf = std::fs::read(&exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    assert!(
        !has_interpreter(&elf),
        "{} is not statically linked (it has a PT_INTERP program header)",
        exe.display()
    );
    exe
}

/// Whether a 64-bit ELF names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// One newc cpio entry.
fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The kit's initramfs followed by an uncompressed cpio archive holding
/// /bin/vfio-nested and /tests/vfio-nested (the kernel unpacks
/// concatenated archives in order), written into `dir`.
pub fn initramfs(kit: &testkit::guest_kit::GuestKit, program: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(&kit.initramfs)
        .unwrap_or_else(|e| panic!("{}: {e}", kit.initramfs.display()));
    let exe = std::fs::read(program).unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    entry(&mut bytes, 900_001, "bin/vfio-nested", 0o100_755, &exe);
    entry(
        &mut bytes,
        900_002,
        "tests/vfio-nested",
        0o100_755,
        GUEST_SCRIPT,
    );
    entry(&mut bytes, 0, "TRAILER!!!", 0, &[]);
    let path = dir.join("initramfs-vfio-nested.cpio");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}
