//! vhost-user-blk daemon: serves a raw disk image to vhost-user frontends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use log::{error, info};
use vmm_backends::block::{BlockEngine, ImageOptions};
use vmm_backends::vhost_user_blk::{open_engine, serve_late, ServerOptions};

const USAGE: &str = "usage: vhost-user-blk --socket PATH --image PATH [--readonly] \
[--num-queues N] [--queue-size N] [--direct] [--serial S] [--max-mem-slots N] \
[--complete-late US]

--max-mem-slots N    refuse a memory table of more than N regions (default
                     509, the protocol's limit): a backend out of slots.
--complete-late US   test aid: complete each batch of requests last first,
                     US microseconds apart (a backend that completes out of
                     order, for crash-recovery tests).";

fn parse_args(args: &[String]) -> Result<(ServerOptions, Option<Duration>)> {
    let mut socket = None;
    let mut image = None;
    let mut image_options = ImageOptions::default();
    let mut num_queues: u16 = 1;
    let mut queue_size: u16 = 256;
    let mut max_mem_slots: usize = 509;
    let mut late = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("option {name} needs a value"))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--image" => image = Some(PathBuf::from(value("--image")?)),
            "--serial" => image_options.serial = value("--serial")?,
            "--readonly" => image_options.read_only = true,
            "--direct" => image_options.direct = true,
            "--num-queues" => {
                let v = value("--num-queues")?;
                num_queues = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| anyhow!("option --num-queues: {v:?} is not in 1..=64"))?;
            }
            "--queue-size" => {
                let v = value("--queue-size")?;
                queue_size = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| n.is_power_of_two())
                    .ok_or_else(|| {
                        anyhow!("option --queue-size: {v:?} is not a power of two up to 32768")
                    })?;
            }
            "--max-mem-slots" => {
                let v = value("--max-mem-slots")?;
                max_mem_slots = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=509).contains(n))
                    .ok_or_else(|| anyhow!("option --max-mem-slots: {v:?} is not in 1..=509"))?;
            }
            "--complete-late" => {
                let v = value("--complete-late")?;
                let us: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| {
                        anyhow!("option --complete-late: {v:?} is not in 1..=1000000")
                    })?;
                late = Some(Duration::from_micros(us));
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}"),
        }
    }
    let options = ServerOptions {
        max_mem_slots,
        socket: socket.ok_or_else(|| anyhow!("option --socket is required"))?,
        image: image.ok_or_else(|| anyhow!("option --image is required"))?,
        image_options,
        num_queues,
        queue_size,
    };
    Ok((options, late))
}

/// Blocks SIGTERM and SIGINT in every thread (threads inherit the mask)
/// and returns the set for `sigwait`.
fn block_stop_signals() -> Result<libc::sigset_t> {
    // SAFETY: an all-zero sigset_t is a valid value that sigemptyset then
    // initialises; the set lives on our stack for the calls.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the
    // functions only write to it and to this thread's signal mask.
    let ret = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if ret != 0 {
        bail!("cannot block SIGTERM/SIGINT: error {ret}");
    }
    Ok(set)
}

/// Waits for SIGTERM or SIGINT, then flushes the image, removes the socket
/// and exits with status 0.
fn spawn_signal_thread(
    set: libc::sigset_t,
    socket: PathBuf,
    engine: Arc<BlockEngine>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("blk0-signal".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset_t and `signal` a valid
            // out-pointer, both alive for the call.
            let ret = unsafe { libc::sigwait(&set, &mut signal) };
            if ret != 0 {
                error!("sigwait failed: error {ret}");
            }
            info!("Signal {signal}: shutting down");
            if let Err(e) = engine.image().flush() {
                error!("Final flush failed: {e}");
            }
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("vhost-user-blk: {e:#}");
        eprintln!("{USAGE}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let (options, late) = parse_args(args)?;
    let set = block_stop_signals()?;
    let engine = open_engine(&options)
        .with_context(|| format!("option --image {}", options.image.display()))?;
    spawn_signal_thread(set, options.socket.clone(), engine.clone())?;
    serve_late(&options, engine, late)?;
    Ok(())
}
