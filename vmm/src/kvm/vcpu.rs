//! vCPU threads: the run loop, and the owner's controls (kick, pause,
//! resume, run_on_cpu, stop).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, ThreadId};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::os::unix::thread::JoinHandleExt;

use super::exit::{ExitAction, ExitHandler, VcpuEvent, VcpuStop};
use super::kick::{self, ImmediateExit};
use super::{dump, KvmError, Vm};

/// Work run on a vCPU thread between two KVM_RUNs.
type Work = Box<dyn FnOnce(&mut VcpuFd) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Run,
    Pause,
    Stop,
}

struct ControlState {
    wanted: Wanted,
    /// The thread is parked in `service` (paused).
    paused: bool,
    /// The thread has left its run loop; nothing more will run there.
    exited: bool,
    work: VecDeque<Work>,
    /// `None` once the thread has exited and its kvm_run is going away.
    immediate_exit: Option<ImmediateExit>,
}

/// One vCPU's mailbox, shared by its thread and the owner.
struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
    /// Set (before `immediate_exit`) whenever there is something to look at.
    pending: AtomicBool,
    /// The thread is in (or about to enter) KVM_RUN.
    in_run: AtomicBool,
    /// The thread's Linux thread id, once it has started (0 before).
    tid: AtomicI32,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // A panic while holding the lock leaves plain data behind; go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, ControlState>) -> MutexGuard<'a, ControlState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
}

struct VcpuThread {
    control: Arc<Control>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// For signalling the thread; valid while `handle` is joinable.
    pthread: libc::pthread_t,
    thread_id: ThreadId,
}

/// The running vCPUs of one VM, one named thread each (`vcpu0`, ...).
pub struct VcpuSet {
    vcpus: Vec<VcpuThread>,
    /// Outstanding `pause` calls: the vCPUs run again when the last one
    /// is matched by a `resume`.
    pauses: Mutex<u32>,
    /// Keeps the VM and its memory alive while any vCPU can run.
    _vm: Arc<Vm>,
}

impl VcpuSet {
    /// Starts one thread per vCPU, running at once. Each thread sends one
    /// `VcpuEvent` on `events` when it stops, whatever the reason.
    pub fn spawn(
        vm: Arc<Vm>,
        vcpus: Vec<VcpuFd>,
        handler: Arc<dyn ExitHandler>,
        events: Sender<VcpuEvent>,
    ) -> Result<VcpuSet, KvmError> {
        kick::install_handler()?;
        let mut set = VcpuSet {
            vcpus: Vec::with_capacity(vcpus.len()),
            pauses: Mutex::new(0),
            _vm: vm,
        };
        for (cpu, mut fd) in vcpus.into_iter().enumerate() {
            let flag = &mut fd.get_kvm_run().immediate_exit as *mut u8;
            // SAFETY: the flag is in `fd`'s kvm_run mapping; the thread owning
            // `fd` takes it out of the control state before dropping `fd`.
            let immediate_exit = unsafe { ImmediateExit::new(flag) };
            let control = Arc::new(Control {
                state: Mutex::new(ControlState {
                    wanted: Wanted::Run,
                    paused: false,
                    exited: false,
                    work: VecDeque::new(),
                    immediate_exit: Some(immediate_exit),
                }),
                changed: Condvar::new(),
                pending: AtomicBool::new(false),
                in_run: AtomicBool::new(false),
                tid: AtomicI32::new(0),
            });
            let runner = Runner {
                cpu,
                fd,
                control: control.clone(),
                handler: handler.clone(),
            };
            let events = events.clone();
            let handle = thread::Builder::new()
                .name(format!("vcpu{cpu}"))
                .spawn(move || runner.run(events))
                .map_err(|e| KvmError::SpawnThread(cpu, e))?;
            set.vcpus.push(VcpuThread {
                control,
                thread_id: handle.thread().id(),
                pthread: handle.as_pthread_t(),
                handle: Mutex::new(Some(handle)),
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.vcpus.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vcpus.is_empty()
    }

    fn vcpu(&self, cpu: usize) -> Result<&VcpuThread, KvmError> {
        self.vcpus.get(cpu).ok_or(KvmError::NoSuchVcpu(cpu))
    }

    /// Makes vCPU `cpu` leave KVM_RUN and look at its requests.
    fn kick_locked(vcpu: &VcpuThread, state: &ControlState) {
        vcpu.control.pending.store(true, Ordering::SeqCst);
        let Some(flag) = &state.immediate_exit else {
            return;
        };
        flag.set();
        // `immediate_exit` is Some only while the thread runs its loop, so
        // the pthread is alive here (the thread clears it before exiting,
        // under this same lock).
        // SAFETY: pthread_kill on a live thread of this process with a
        // signal whose handler is installed.
        let ret = unsafe { libc::pthread_kill(vcpu.pthread, kick::kick_signal()) };
        if ret != 0 {
            log::warn!("cannot signal a vCPU thread: error {ret}");
        }
    }

    /// Knocks vCPU `cpu` out of KVM_RUN once; it then carries on.
    pub fn kick(&self, cpu: usize) -> Result<(), KvmError> {
        let vcpu = self.vcpu(cpu)?;
        let state = vcpu.control.lock();
        Self::kick_locked(vcpu, &state);
        Ok(())
    }

    /// Returns once no vCPU is inside KVM_RUN, and none will enter it
    /// until `resume`. A vCPU that is handling an exit may still be doing so
    /// (even blocked on a lock the caller holds, such as the memory
    /// transaction); it parks before its next KVM_RUN. So this may be called
    /// from a vCPU's own exit handler, and while holding locks handlers
    /// take. Work from `run_on_cpu` still runs while paused.
    ///
    /// Pauses nest: each `pause` needs its own `resume`, so a memslot
    /// update's pause/resume inside a monitor's stop leaves the guest
    /// stopped.
    pub fn pause(&self) {
        {
            let mut pauses = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
            *pauses = pauses.saturating_add(1);
            for vcpu in &self.vcpus {
                let mut state = vcpu.control.lock();
                if state.wanted == Wanted::Run {
                    state.wanted = Wanted::Pause;
                }
                Self::kick_locked(vcpu, &state);
            }
        }
        for vcpu in &self.vcpus {
            let mut state = vcpu.control.lock();
            while !state.paused
                && !state.exited
                && state.wanted == Wanted::Pause
                && vcpu.control.in_run.load(Ordering::SeqCst)
            {
                state = vcpu.control.wait(state);
            }
        }
    }

    /// Like `pause`, and also waits until every vCPU is parked (or gone):
    /// none is running an exit handler. Must not be called from a vCPU
    /// thread or while holding a lock an exit handler may wait for.
    pub fn pause_parked(&self) {
        self.pause();
        for vcpu in &self.vcpus {
            let mut state = vcpu.control.lock();
            while !state.paused && !state.exited && state.wanted == Wanted::Pause {
                state = vcpu.control.wait(state);
            }
        }
    }

    /// Matches one `pause`; the last one lets the vCPUs run again. A
    /// `resume` without a `pause` does nothing.
    pub fn resume(&self) {
        let mut pauses = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        match *pauses {
            0 => return,
            1 => *pauses = 0,
            n => {
                *pauses = n - 1;
                return;
            }
        }
        for vcpu in &self.vcpus {
            let mut state = vcpu.control.lock();
            if state.wanted == Wanted::Pause {
                state.wanted = Wanted::Run;
            }
            vcpu.control.changed.notify_all();
        }
    }

    /// The Linux thread ids of the vCPU threads, by index (0 for one that
    /// has not started yet).
    pub fn thread_ids(&self) -> Vec<i32> {
        self.vcpus
            .iter()
            .map(|v| v.control.tid.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether vCPU `cpu` is held by `pause`.
    pub fn is_paused(&self, cpu: usize) -> Result<bool, KvmError> {
        Ok(self.vcpu(cpu)?.control.lock().paused)
    }

    /// Runs `work` on vCPU `cpu`'s thread between two KVM_RUNs (kicking it
    /// out of the guest if needed) and returns its result. Works on paused
    /// vCPUs too. Must not be called from that vCPU's own thread.
    pub fn run_on_cpu<R, F>(&self, cpu: usize, work: F) -> Result<R, KvmError>
    where
        R: Send + 'static,
        F: FnOnce(&mut VcpuFd) -> R + Send + 'static,
    {
        let vcpu = self.vcpu(cpu)?;
        if thread::current().id() == vcpu.thread_id {
            return Err(KvmError::OnOwnThread(cpu));
        }
        let (done, result) = mpsc::sync_channel(1);
        {
            let mut state = vcpu.control.lock();
            if state.exited {
                return Err(KvmError::VcpuGone(cpu));
            }
            state.work.push_back(Box::new(move |fd: &mut VcpuFd| {
                // The caller may have given up waiting; nothing to do then.
                let _ = done.send(work(fd));
            }));
            Self::kick_locked(vcpu, &state);
            vcpu.control.changed.notify_all();
        }
        // The sender is dropped unrun if the thread exits first.
        result.recv().map_err(|_| KvmError::VcpuGone(cpu))
    }

    /// Stops every vCPU and waits for their threads to end. Must not be
    /// called from a vCPU thread.
    pub fn stop(&self) {
        for vcpu in &self.vcpus {
            let mut state = vcpu.control.lock();
            state.wanted = Wanted::Stop;
            Self::kick_locked(vcpu, &state);
            vcpu.control.changed.notify_all();
        }
        for vcpu in &self.vcpus {
            let handle = vcpu.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(handle) = handle {
                if handle.join().is_err() {
                    log::error!("a vCPU thread panicked");
                }
            }
        }
    }
}

impl Drop for VcpuSet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What runs on a vCPU thread.
struct Runner {
    cpu: usize,
    fd: VcpuFd,
    control: Arc<Control>,
    handler: Arc<dyn ExitHandler>,
}

enum Serviced {
    Run,
    Stop,
}

impl Runner {
    fn run(mut self, events: Sender<VcpuEvent>) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.control.tid.store(tid, Ordering::Relaxed);
        kick::unblock_on_this_thread();
        let stop = self.run_loop();
        match &stop {
            VcpuStop::Requested => log::debug!("vcpu{} stopped on request", self.cpu),
            other => log::info!("vcpu{} stopped: {other:?}", self.cpu),
        }
        {
            let mut state = self.control.lock();
            state.exited = true;
            state.paused = false;
            state.immediate_exit = None;
            // Dropping queued work wakes its waiters with VcpuGone.
            state.work.clear();
            self.control.changed.notify_all();
        }
        let _ = events.send(VcpuEvent {
            cpu: self.cpu,
            stop,
        });
    }

    fn run_loop(&mut self) -> VcpuStop {
        loop {
            // Announce the run before looking for requests: a pauser that
            // sets `pending` after this load sees `in_run` and waits for the
            // kick to bring this thread out.
            self.control.in_run.store(true, Ordering::SeqCst);
            if self.control.pending.load(Ordering::SeqCst) {
                self.control.in_run.store(false, Ordering::SeqCst);
                if let Serviced::Stop = self.service() {
                    return VcpuStop::Requested;
                }
                continue;
            }
            let run = self.fd.get_kvm_run() as *mut kvm_run;
            let result = self.fd.run();
            self.control.in_run.store(false, Ordering::SeqCst);
            if self.control.pending.load(Ordering::SeqCst) {
                // Someone may be waiting for this thread to leave KVM_RUN.
                let _state = self.control.lock();
                self.control.changed.notify_all();
            }
            let stop = match result {
                Ok(exit) => dispatch(self.handler.as_ref(), run, exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(VcpuStop::Error(format!("KVM_RUN failed: {e}"))),
            };
            if let Some(stop) = stop {
                return self.with_registers(stop);
            }
        }
    }

    /// Fills in register dumps for stops that carry them.
    fn with_registers(&mut self, stop: VcpuStop) -> VcpuStop {
        match stop {
            VcpuStop::InternalError { suberror, data, .. } => VcpuStop::InternalError {
                suberror,
                data,
                registers: dump::registers(&self.fd),
            },
            VcpuStop::FailEntry { reason, .. } => VcpuStop::FailEntry {
                reason,
                registers: dump::registers(&self.fd),
            },
            other => other,
        }
    }

    /// Handles requests: runs queued work, parks while paused.
    fn service(&mut self) -> Serviced {
        let mut state = self.control.lock();
        // Clear the kick before reading requests: a kick after this point
        // sets `pending` again and is seen on the next pass.
        if let Some(flag) = &state.immediate_exit {
            flag.clear();
        }
        self.control.pending.store(false, Ordering::SeqCst);
        loop {
            if let Some(work) = state.work.pop_front() {
                drop(state);
                work(&mut self.fd);
                state = self.control.lock();
                continue;
            }
            match state.wanted {
                Wanted::Stop => return Serviced::Stop,
                Wanted::Run => {
                    if state.paused {
                        state.paused = false;
                        self.control.changed.notify_all();
                    }
                    return Serviced::Run;
                }
                Wanted::Pause => {
                    if !state.paused {
                        state.paused = true;
                        self.control.changed.notify_all();
                    }
                    state = self.control.wait(state);
                }
            }
        }
    }
}

/// Hands one exit to the machine; `Some` ends the run loop.
fn dispatch(handler: &dyn ExitHandler, run: *mut kvm_run, exit: VcpuExit) -> Option<VcpuStop> {
    let action = match exit {
        VcpuExit::IoIn(port, data) => {
            let unit = pio_unit(run, data.len());
            data.chunks_mut(unit)
                .for_each(|chunk| handler.pio_read(port, chunk));
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            let unit = pio_unit(run, data.len());
            data.chunks(unit)
                .map(|chunk| handler.pio_write(port, chunk))
                .find(|action| *action != ExitAction::Continue)
                .unwrap_or(ExitAction::Continue)
        }
        VcpuExit::MmioRead(addr, data) => {
            handler.mmio_read(addr, data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => handler.mmio_write(addr, data),
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Shutdown => return Some(VcpuStop::Shutdown),
        VcpuExit::SystemEvent(kind, data) => {
            return Some(VcpuStop::SystemEvent {
                kind,
                data: data.to_vec(),
            })
        }
        VcpuExit::InternalError => {
            let (suberror, data) = internal_error(run);
            return Some(VcpuStop::InternalError {
                suberror,
                data,
                registers: String::new(),
            });
        }
        VcpuExit::FailEntry(reason, _cpu) => {
            return Some(VcpuStop::FailEntry {
                reason,
                registers: String::new(),
            })
        }
        other => return Some(VcpuStop::Error(format!("unhandled exit {other:?}"))),
    };
    match action {
        ExitAction::Continue => None,
        ExitAction::Poweroff => Some(VcpuStop::Poweroff),
        ExitAction::Reset => Some(VcpuStop::Reset),
    }
}

/// The size of one port access of a (possibly string) I/O exit.
fn pio_unit(run: *mut kvm_run, total: usize) -> usize {
    // SAFETY: `run` is this vCPU's kvm_run mapping, live for the exit being
    // handled; after an IO exit the kernel filled in the `io` member.
    let size = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() };
    match usize::from(size) {
        unit @ (1 | 2 | 4) if total % unit == 0 => unit,
        _ => total.max(1),
    }
}

/// Suberror and data words of KVM_EXIT_INTERNAL_ERROR.
fn internal_error(run: *mut kvm_run) -> (u32, Vec<u64>) {
    // SAFETY: as in `pio_unit`; after an internal-error exit the kernel
    // filled in the `internal` member.
    let internal = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.internal).read() };
    let count = (internal.ndata as usize).min(internal.data.len());
    (internal.suberror, internal.data[..count].to_vec())
}
