//! `blk-stream=P`: a long write stream for the host's backend-restart
//! test. The first disk's sectors [1024, C/4) are written P times, pass p
//! with the pattern of seed `STREAM_SEED + p`, 8 sectors per request and
//! 8 requests in flight; then the last pass is read back and verified.
//! The host may kill and restart a vhost-user backend meanwhile: requests
//! must all complete (the device reconnects) and every sector verify.

use super::dev::{alloc, Dev, S_OK, T_IN, T_OUT};
use super::pattern::{self, SECTOR};
use super::req::Io;
use crate::pci::Bdf;

pub const STREAM_SEED: u64 = 0x500;
const START: u64 = 1024;
const PER: u64 = 8;
const DEPTH: usize = 8;

pub fn run(bdf: Bdf, d: &mut Dev, passes: u64) {
    let end = pattern::scratch(d.config.capacity);
    let Some(buf) = alloc(DEPTH as u64 * PER * SECTOR, 4096) else {
        crate::blk_check!(bdf, "stream buffers allocated", false);
        return;
    };
    crate::diag!("blk-stream: started, {passes} passes over sectors {START}..{end}");
    let mut bad = 0u64;
    let strays_before = d.strays;
    let mut requests = 0u64;
    for pass in 0..passes {
        let seed = STREAM_SEED + pass;
        let mut at = START;
        while at < end {
            let mut ios = [Io::new(0, T_OUT, 0); DEPTH];
            let mut n = 0;
            while n < DEPTH && at < end {
                let slot = buf + n as u64 * PER * SECTOR;
                for s in 0..PER {
                    pattern::fill(slot + s * SECTOR, seed, at + s);
                }
                ios[n] = Io::new(0, T_OUT, at).buf(slot, (PER * SECTOR) as u32);
                n += 1;
                at += PER;
            }
            let mut st = [0u8; DEPTH];
            d.batch(&ios[..n], &mut st[..n]);
            bad += st[..n].iter().filter(|&&s| s != S_OK).count() as u64;
            requests += n as u64;
        }
        crate::diag!("blk-stream: pass {pass} done");
    }
    // A completion of a request not pending is a request done twice (a
    // restarted backend that took again one its predecessor completed).
    let strays = d.strays - strays_before;
    crate::blk_check!(
        bdf,
        "stream of writes completes",
        bad == 0 && strays == 0,
        "{passes} passes, {requests} requests, {bad} failed, {strays} completed twice"
    );
    let last = STREAM_SEED + passes.saturating_sub(1);
    let mut wrong = 0u64;
    let mut at = START;
    while at < end {
        let s = d.request(Io::new(0, T_IN, at).buf(buf, (PER * SECTOR) as u32));
        for k in 0..PER {
            if s != S_OK || !pattern::matches(buf + k * SECTOR, last, at + k) {
                wrong += 1;
            }
        }
        at += PER;
    }
    crate::blk_check!(
        bdf,
        "stream verifies",
        wrong == 0,
        "seed {last:#x}: {wrong} of {} sectors wrong",
        end - START
    );
}
