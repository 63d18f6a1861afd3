//! The accept loop: one client at a time, a client that breaks the protocol
//! is dropped and the next one accepted; SIGUSR1 dumps the DMA mappings,
//! SIGTERM and SIGINT remove the socket and exit.

use std::mem::size_of;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use log::{info, warn};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR1_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
    VFIO_PCI_ROM_REGION_INDEX, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{IrqInfo, Server, ServerRegion};

use super::backend::EduBackend;
use super::config::{BAR1_SIZE, CONFIG_SIZE, MSIX_VECTORS};
use super::regs::BAR0_SIZE;
use super::rom::ROM_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum EduServerError {
    #[error("creating the vfio-user socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: vfio_user::Error,
    },
    #[error("making the socket {path} private (0600)")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up signal handling")]
    Signals(#[source] std::io::Error),
}

fn regions() -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let size = match index {
                VFIO_PCI_BAR0_REGION_INDEX => BAR0_SIZE,
                VFIO_PCI_BAR1_REGION_INDEX => BAR1_SIZE,
                VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SIZE as u64,
                VFIO_PCI_ROM_REGION_INDEX => ROM_SIZE,
                _ => 0,
            };
            let flags = if size == 0 {
                0
            } else if index == VFIO_PCI_ROM_REGION_INDEX {
                VFIO_REGION_INFO_FLAG_READ
            } else {
                VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
            };
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: size_of::<vfio_region_info>() as u32,
                    index,
                    size,
                    flags,
                    ..Default::default()
                },
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

fn irqs() -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| match index {
            VFIO_PCI_MSIX_IRQ_INDEX => IrqInfo {
                index,
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                count: u32::from(MSIX_VECTORS),
            },
            VFIO_PCI_INTX_IRQ_INDEX => IrqInfo {
                index,
                flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE,
                count: 1,
            },
            _ => IrqInfo {
                index,
                flags: 0,
                count: 0,
            },
        })
        .collect()
}

/// Serves the edu device on `socket` until SIGTERM or SIGINT.
pub fn serve(socket: &Path) -> Result<(), EduServerError> {
    let signals = block_signals().map_err(EduServerError::Signals)?;
    // SAFETY: umask only changes this process's file creation mask; we are
    // single-threaded here, so nothing else creates files meanwhile.
    let old_mask = unsafe { libc::umask(0o177) };
    let server = Server::new(socket, true, irqs(), regions());
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old_mask) };
    let server = server.map_err(|source| EduServerError::Listen {
        path: socket.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        EduServerError::Permissions {
            path: socket.to_path_buf(),
            source,
        }
    })?;
    let backend = EduBackend::new();
    let dumper = backend.clone();
    let path = socket.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(signals, &dumper, &path))
        .map_err(EduServerError::Signals)?;
    info!("vfio-user-edu: listening on {}", socket.display());
    println!("listening on {}", socket.display());
    let mut backend = backend;
    loop {
        match catch_unwind(AssertUnwindSafe(|| server.run(&mut backend))) {
            Ok(Ok(())) => info!("vfio-user-edu: client disconnected"),
            Ok(Err(vfio_user::Error::SocketAccept(e))) => {
                warn!("vfio-user-edu: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Ok(Err(e)) => warn!("vfio-user-edu: client dropped: {e}"),
            Err(_) => warn!("vfio-user-edu: client dropped: its message broke the protocol"),
        }
        backend.disconnect();
    }
}

/// Blocks SIGUSR1, SIGTERM and SIGINT in this thread and every thread it
/// starts, and returns the set for `sigwait`.
fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: an all-zero sigset_t is valid storage that sigemptyset
    // initialises; it lives on our stack for the calls.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the calls
    // only write to it and to this thread's signal mask.
    let ret = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(std::io::Error::from_raw_os_error(ret));
    }
    Ok(set)
}

fn signal_loop(set: libc::sigset_t, backend: &EduBackend, socket: &Path) {
    loop {
        let mut signal = 0;
        // SAFETY: `set` is an initialised sigset_t and `signal` a valid out
        // pointer for the duration of the call.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        if signal == libc::SIGUSR1 {
            let lines = backend.lock().dma_lines();
            let count = lines.lines().count();
            println!("dma dump begin count={count}\n{lines}dma dump end");
        } else {
            let _ = std::fs::remove_file(socket);
            info!("vfio-user-edu: signal {signal}, exiting");
            std::process::exit(0);
        }
    }
}
