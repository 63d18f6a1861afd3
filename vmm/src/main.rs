//! `vmm`: boots a guest on KVM. See `vmm --help`.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmm::cli::{self, CliError, Options, Serial};
use vmm::machine::{Machine, MachineConfig};

/// The probe guest, built from tests/probe by build.rs.
static PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(CliError::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(status) => {
            if status > 255 {
                eprintln!("vmm: guest exit status {status:#x}");
            }
            ExitCode::from(u8::try_from(status).unwrap_or(255))
        }
        Err(e) => {
            eprintln!("vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Puts the built-in probe in a memfd; returns it and a path that opens it.
fn probe_file() -> anyhow::Result<(std::fs::File, PathBuf)> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd for the built-in probe");
    }
    // SAFETY: a new descriptor owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(PROBE).context("writing the built-in probe")?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    Ok((f, path))
}

fn run(opts: Options) -> anyhow::Result<u32> {
    // Before any thread starts, so that only the signal thread takes them.
    vmm::qmp::signals::block().context("blocking SIGTERM and SIGINT")?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("cannot open /dev/kvm (is KVM available and accessible?)")?;
    let mut _probe = None;
    let (kernel, default_cmdline) = match &opts.kernel {
        Some(k) => {
            std::fs::metadata(k).with_context(|| format!("--kernel {}", k.display()))?;
            (k.clone(), "console=ttyS0")
        }
        None => {
            let (f, path) = probe_file()?;
            _probe = Some(f);
            (path, "console=ttyS0 probe=none")
        }
    };
    if let Some(i) = &opts.initrd {
        std::fs::metadata(i).with_context(|| format!("--initrd {}", i.display()))?;
    }
    let cfg = MachineConfig {
        memory: opts.memory,
        cpus: opts.cpus,
        kernel,
        cmdline: opts
            .cmdline
            .clone()
            .unwrap_or_else(|| default_cmdline.into()),
        initrd: opts.initrd.clone(),
        atomic_memslots: true,
        // The built-in probe brings its CPUs up itself.
        aps_at_entry: opts.kernel.is_none(),
    };
    let out: Box<dyn Write + Send> = match &opts.serial {
        Serial::Stdout => Box::new(std::io::stdout()),
        Serial::File(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("--serial file={}", p.display()))?,
        ),
        Serial::None => Box::new(std::io::sink()),
    };
    let mut machine = Machine::new(cfg)?;
    machine.attach_console(out)?;
    if opts.hotplug_size > 0 {
        machine.enable_memory_hotplug(opts.hotplug_size, opts.slots)?;
    }
    for id in &opts.iothreads {
        machine.add_iothread(id)?;
    }
    for d in &opts.disks {
        machine.add_disk(d)?;
    }
    for v in &opts.vhost_user_blk {
        machine.add_vhost_user_blk(v)?;
    }
    for d in &opts.vfio_user {
        machine.add_vfio_user(d)?;
    }
    for d in &opts.vfio {
        machine.add_vfio(d)?;
    }
    let control = machine.control();
    let quitter = control.clone();
    vmm::qmp::signals::quit_on_signals(move |_| quitter.quit_with("host-signal"))
        .context("starting the signal thread")?;
    let qmp = match &opts.qmp {
        Some(path) => Some(vmm::qmp::QmpServer::start(
            path,
            std::sync::Arc::new(control),
            machine.events(),
        )?),
        None => None,
    };
    let status = machine.run();
    if let Some(q) = &qmp {
        // The last events (SHUTDOWN) reach the client before the exit.
        q.finish(std::time::Duration::from_secs(2));
    }
    if opts.exit_stats {
        eprint!("{}", machine.exit_report());
    }
    Ok(status?)
}
