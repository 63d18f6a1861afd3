//! vfio-user-edu: serves QEMU's edu test device over vfio-user.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

const USAGE: &str = "usage: vfio-user-edu --socket PATH\n\
  serves the edu device (1234:11e8) over vfio-user, one client at a time;\n\
  SIGUSR1 prints the DMA mappings as `dma iova=0x.. size=0x..` lines";

fn parse_args(args: &[String]) -> Result<PathBuf> {
    let mut socket = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--socket" => {
                let value = it
                    .next()
                    .ok_or_else(|| anyhow!("option --socket needs a value"))?;
                socket = Some(PathBuf::from(value));
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}"),
        }
    }
    socket.ok_or_else(|| anyhow!("option --socket is required"))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = match parse_args(&args) {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("vfio-user-edu: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = vmm_backends::vfio_user_edu::serve(&socket) {
        eprintln!("vfio-user-edu: {:#}", anyhow::Error::new(e));
        std::process::exit(1);
    }
}
