//! The accept loop: one frontend at a time, the next after a disconnect.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use log::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::BlkBackend;
use crate::block::{BlockEngine, BlockLimits, DiskImage, ImageError, ImageOptions};

/// Errors that stop the daemon. vhost-user-backend's errors are kept as
/// text: they may carry a thread's panic payload, which is not `Sync`.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("Cannot open the image")]
    Image(#[source] ImageError),
    #[error("Cannot listen on {0}")]
    Listen(String, #[source] vhost::vhost_user::Error),
    #[error("Cannot set the socket mode")]
    Chmod(#[source] io::Error),
    #[error("Cannot create the vhost-user daemon: {0}")]
    Daemon(String),
    #[error("Cannot accept a frontend: {0}")]
    Accept(String),
}

/// What the daemon serves and how.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub socket: PathBuf,
    pub image: PathBuf,
    pub image_options: ImageOptions,
    pub num_queues: u16,
    pub queue_size: u16,
    /// Memory-table regions the backend accepts.
    pub max_mem_slots: usize,
}

/// Opens the image and the engine the daemon serves.
pub fn open_engine(options: &ServerOptions) -> Result<Arc<BlockEngine>, ServerError> {
    let image =
        DiskImage::open(&options.image, &options.image_options).map_err(ServerError::Image)?;
    Ok(Arc::new(BlockEngine::new(image, BlockLimits::default())))
}

/// Listens on the socket (mode 0600) and serves frontends one after the
/// other until the process is stopped.
pub fn serve(options: &ServerOptions, engine: Arc<BlockEngine>) -> Result<(), ServerError> {
    let path = options.socket.display().to_string();
    // SAFETY: umask only changes this process's file creation mask; it
    // makes the socket 0600 from its creation on, with no window.
    let old = unsafe { libc::umask(0o177) };
    let listener = Listener::new(&options.socket, true);
    // SAFETY: as above, restores the previous mask.
    unsafe { libc::umask(old) };
    let mut listener = listener.map_err(|e| ServerError::Listen(path.clone(), e))?;
    std::fs::set_permissions(&options.socket, Permissions::from_mode(0o600))
        .map_err(ServerError::Chmod)?;
    info!("vhost-user-blk listening on {path}");
    loop {
        let backend = Arc::new(
            BlkBackend::new(engine.clone(), options.num_queues, options.queue_size, 0)
                .with_max_regions(options.max_mem_slots),
        );
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::<BitmapMmapRegion>::new());
        let mut daemon = VhostUserDaemon::new("blk0-main".into(), backend.clone(), memory)
            .map_err(|e| ServerError::Daemon(e.to_string()))?;
        daemon
            .start(&mut listener)
            .map_err(|e| ServerError::Accept(e.to_string()))?;
        info!("Frontend connected");
        match daemon.wait() {
            Ok(()) => info!("Frontend disconnected"),
            Err(e) => warn!("Frontend connection ended: {e}"),
        }
        backend.stop_workers();
    }
}
