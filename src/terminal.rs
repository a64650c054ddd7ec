//! Puts an interactive stdin into raw mode for the guest console and guarantees it is restored: on
//! normal exit (guard drop), on error paths (the guard lives in `main`'s scope), and on panic (a panic
//! hook restores before the message prints).

use std::sync::{Mutex, OnceLock};

/// The terminal settings to restore, shared with the panic hook.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// The same settings for a signal handler, which must not take a lock (the seccomp SIGSYS handler).
static ORIGINAL_FOR_SIGNAL_HANDLERS: OnceLock<libc::termios> = OnceLock::new();

/// Restores stdin's original terminal mode when dropped.
pub struct RawModeGuard {
    _private: (),
}

fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor number; it has no memory-safety preconditions.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Switches stdin to raw mode if it is a terminal. Returns None (and changes nothing) otherwise.
pub fn enter_raw_mode() -> std::io::Result<Option<RawModeGuard>> {
    if !stdin_is_terminal() {
        return Ok(None);
    }
    let mut original = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr writes a complete termios into the pointed-to buffer, which is valid and
    // properly aligned for a termios; we read it only after checking that the call succeeded.
    let original = unsafe {
        if libc::tcgetattr(libc::STDIN_FILENO, original.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        original.assume_init()
    };
    let mut raw = original;
    // SAFETY: cfmakeraw only modifies the termios struct it is given, which is a valid local.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so the host's "\n" still returns the carriage for VMM log lines.
    raw.c_oflag = original.c_oflag;
    *SAVED_TERMIOS.lock().unwrap_or_else(|p| p.into_inner()) = Some(original);
    let _ = ORIGINAL_FOR_SIGNAL_HANDLERS.set(original);
    install_panic_hook();
    // SAFETY: tcsetattr reads the valid termios we pass; it changes only the terminal's settings.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some(RawModeGuard { _private: () }))
}

/// Restores the saved terminal mode, if any. Safe to call more than once.
pub fn restore() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(termios) = saved {
        // SAFETY: tcsetattr reads the valid termios saved by enter_raw_mode.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) };
    }
}

/// Restores the original terminal mode from a signal handler: no lock, no allocation, and
/// harmless if the mode was restored already.
pub fn restore_from_signal_handler() {
    if let Some(original) = ORIGINAL_FOR_SIGNAL_HANDLERS.get() {
        // SAFETY: tcsetattr is async-signal-safe (POSIX) and only reads the termios, which was
        // fully initialised by enter_raw_mode before it was stored and is never modified after.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore();
    }
}
