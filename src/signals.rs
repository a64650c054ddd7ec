//! Signal handling: SIGINT, SIGTERM and SIGHUP stop the VM cleanly through the exit eventfd; a
//! real-time signal kicks vCPU threads out of KVM_RUN.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::exit::ExitController;

/// The eventfd the stop handler writes to, and the signal that arrived.
static STOP_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal sent to a vCPU thread to make KVM_RUN return.
pub fn vcpu_kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_stop_signal(signum: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(signum, Ordering::SeqCst);
    let fd = STOP_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer for the duration of the
        // call, and `fd` is the exit eventfd, which stays open for the life of the process (the
        // ExitController is never dropped before the process exits).
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

/// Routes the stop signals to `exit`'s eventfd and installs the vCPU kick handler.
pub fn install(exit: &ExitController) -> std::io::Result<()> {
    STOP_EVENT_FD.store(exit.wake_fd().as_raw_fd(), Ordering::SeqCst);
    for signum in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        register_signal_handler(signum, on_stop_signal).map_err(std::io::Error::other)?;
    }
    register_signal_handler(vcpu_kick_signal(), on_kick).map_err(std::io::Error::other)?;
    Ok(())
}

/// The stop signal that arrived, if any.
pub fn received_stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signum => Some(signum),
    }
}
