//! vhost-user-blk: serves a raw disk image to vhost-user frontends (this
//! project's VMM, QEMU) over a unix socket, one frontend at a time.
//!
//! usage: vhost-user-blk --socket PATH --image PATH [--readonly]
//!        [--num-queues N] [--queue-size N] [--serial S]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_backends::block::DiskImage;
use vmm_backends::vhost_user_blk::BlkBackend;

struct Opts {
    socket: PathBuf,
    image: PathBuf,
    readonly: bool,
    queues: u16,
    queue_size: u16,
    serial: String,
}

fn parse() -> anyhow::Result<Opts> {
    let mut socket = None;
    let mut image = None;
    let mut o = Opts {
        socket: PathBuf::new(),
        image: PathBuf::new(),
        readonly: false,
        queues: 1,
        queue_size: 256,
        serial: "vmm-vhost-user-blk".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--image" => image = Some(PathBuf::from(value("--image")?)),
            "--readonly" => o.readonly = true,
            "--serial" => o.serial = value("--serial")?,
            "--num-queues" => {
                let v = value("--num-queues")?;
                o.queues = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .with_context(|| format!("--num-queues: {v:?} is not a number from 1 to 64"))?;
            }
            "--queue-size" => {
                let v = value("--queue-size")?;
                o.queue_size = v
                    .parse()
                    .ok()
                    .filter(|n: &u16| n.is_power_of_two() && (2..=32768).contains(n))
                    .with_context(|| {
                        format!("--queue-size: {v:?} is not a power of two up to 32768")
                    })?;
            }
            _ => bail!("unknown option {a:?}"),
        }
    }
    o.socket = socket.context("--socket PATH is required")?;
    o.image = image.context("--image PATH is required")?;
    Ok(o)
}

fn run(o: Opts) -> anyhow::Result<()> {
    let disk = Arc::new(
        DiskImage::open(&o.image, o.readonly, &o.serial)
            .with_context(|| format!("--image {}", o.image.display()))?,
    );
    let mut listener = Listener::new(&o.socket, true)
        .with_context(|| format!("--socket {}", o.socket.display()))?;
    std::fs::set_permissions(&o.socket, std::fs::Permissions::from_mode(0o600))
        .context("making the socket 0600")?;
    log::info!(
        "serving {} ({} sectors) on {}",
        o.image.display(),
        disk.sectors(),
        o.socket.display()
    );
    loop {
        let backend = Arc::new(BlkBackend::new(disk.clone(), o.queues, o.queue_size)?);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("vhost-user-blk".into(), backend.clone(), mem)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if let Err(e) = daemon.start(&mut listener) {
            log::error!("accepting a frontend: {e:?}");
            continue;
        }
        match daemon.wait() {
            Ok(()) => log::info!("frontend left"),
            Err(e) => log::warn!("frontend connection ended: {e:?}"),
        }
        backend.stop_workers();
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vhost-user-blk: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-blk: {e:#}");
            ExitCode::from(1)
        }
    }
}
