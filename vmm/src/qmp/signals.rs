//! SIGTERM and SIGINT as a clean quit: [`block`] them in every thread
//! (call it before any thread starts), then [`quit_on_signals`] waits for
//! them on a thread of its own.

use std::io;

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGTERM);
        libc::sigaddset(&mut s, libc::SIGINT);
        s
    }
}

/// Blocks SIGTERM and SIGINT in this thread and the threads it starts.
pub fn block() -> io::Result<()> {
    let s = set();
    // SAFETY: pthread_sigmask with a valid set and no old-set pointer.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Calls `quit` with the signal's name whenever SIGTERM or SIGINT arrives.
pub fn quit_on_signals<F: Fn(&'static str) + Send + 'static>(quit: F) -> io::Result<()> {
    let s = set();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait with a valid set and a place for the number.
            let r = unsafe { libc::sigwait(&s, &mut sig) };
            if r != 0 {
                log::warn!("sigwait failed: error {r}");
                return;
            }
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            log::info!("{name}: quitting");
            quit(name);
        })?;
    Ok(())
}
