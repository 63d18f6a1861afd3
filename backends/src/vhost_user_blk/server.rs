//! The accept loop: one frontend at a time, the next after a disconnect.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use std::sync::Mutex;
use std::time::Duration;

use log::{info, warn};
use vhost::vhost_user::{BackendListener, Error as VhostUserError, Listener};

use super::backend::BlkBackend;
use super::handler::Handler;
use crate::block::ratelimit::LogLimiter;
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
    #[error("Cannot start the queue workers")]
    Workers(#[source] io::Error),
    #[error("Cannot accept a frontend: {0}")]
    Accept(String),
}

static LOG: LogLimiter = LogLimiter::new();

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
    serve_late(options, engine, None)
}

/// `serve`, with a test aid: `late` makes the workers complete each batch
/// of requests last first, `late` apart (a backend completing out of
/// order, for recovery tests).
pub fn serve_late(
    options: &ServerOptions,
    engine: Arc<BlockEngine>,
    late: Option<Duration>,
) -> Result<(), ServerError> {
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
        let handler = Arc::new(Mutex::new(
            Handler::new(backend, late).map_err(ServerError::Workers)?,
        ));
        serve_connection(&mut listener, handler)?;
    }
}

/// Accepts one frontend on `listener` and serves it with `handler` until
/// it leaves; the connection and the handler (its workers joined) are
/// dropped on return.
pub fn serve_connection(
    listener: &mut Listener,
    handler: Arc<Mutex<Handler>>,
) -> Result<(), ServerError> {
    let mut conn = loop {
        let mut accept = BackendListener::new(listener, handler.clone())
            .map_err(|e| ServerError::Accept(e.to_string()))?;
        match accept.accept() {
            Ok(Some(conn)) => break conn,
            Ok(None) => continue,
            Err(e) => return Err(ServerError::Accept(e.to_string())),
        }
    };
    info!("Frontend connected");
    let end = loop {
        let res = conn.handle_request();
        let replying = handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_replying();
        match res {
            Ok(()) => {}
            // A request the handler refused that expects no more than
            // an ack (a NACK under REPLY_ACK, such as a memory table
            // out of slots): the message was read whole, serving goes
            // on. Any other error may leave the frontend waiting for a
            // reply: the connection ends.
            Err(e @ VhostUserError::ReqHandlerError(_)) if !replying => {
                if LOG.allow() {
                    warn!("Refused a frontend request: {e}");
                }
            }
            Err(e) => break e,
        }
    };
    match end {
        VhostUserError::Disconnected
        | VhostUserError::SocketBroken(_)
        | VhostUserError::PartialMessage => info!("Frontend disconnected"),
        e => warn!("Frontend connection ended: {e}"),
    }
    drop(conn);
    Ok(())
}
