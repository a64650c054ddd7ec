//! What happens when a thread makes a system call its filter forbids.
//!
//! The filters answer a forbidden call with `SECCOMP_RET_TRAP`, not `KILL_PROCESS`: the call is not
//! made either way, but a trap lets flint say which thread class made which call, put the terminal
//! back in its original mode and exit with a status of its own, where a killed process would
//! leave a raw terminal and only a core dump or an audit record. A taken-over thread gains nothing
//! from the trap: it cannot install another handler (rt_sigaction is on no list), and a trap while
//! SIGSYS is blocked makes the kernel kill the process.

use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::signal::register_signal_handler;

use super::syscall_names::syscall_name;
use super::ThreadClass;

/// flint's exit status after a sandbox violation: 128 + SIGSYS, what a shell reports for a process
/// that SIGSYS killed.
pub const VIOLATION_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

/// The head of the kernel's `siginfo_t` for SIGSYS (x86_64): the `_sigsys` member of the union
/// starts at byte 16.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    /// For a seccomp trap: the data bits of the filter's return value (the thread class here).
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: usize,
    syscall: i32,
    arch: u32,
}

/// A fixed buffer that `core::fmt` writes into without allocating (the handler must not).
struct LineBuffer {
    bytes: [u8; 256],
    len: usize,
}

impl core::fmt::Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes the one-line message for a trap with data `class_id` on call `nr` (or any SIGSYS that
/// seccomp did not send, when `from_seccomp` is false) into `out`.
fn write_message(out: &mut LineBuffer, from_seccomp: bool, class_id: i32, nr: i64) {
    use core::fmt::Write;
    let class = u16::try_from(class_id)
        .ok()
        .and_then(ThreadClass::from_id)
        .map_or("unknown", ThreadClass::name);
    let _ = if !from_seccomp {
        write!(out, "flint: error: stopped by SIGSYS")
    } else if let Some(name) = syscall_name(nr) {
        write!(
            out,
            "flint: error: seccomp: the {class} thread made a forbidden system call, {name} ({nr}); the VMM is stopped (--no-seccomp turns the sandbox off)"
        )
    } else {
        write!(
            out,
            "flint: error: seccomp: the {class} thread made a forbidden system call, number {nr}; the VMM is stopped (--no-seccomp turns the sandbox off)"
        )
    };
    // Always end the line, even if the message was cut.
    out.len = out.len.min(out.bytes.len() - 1);
    out.bytes[out.len] = b'\n';
    out.len += 1;
}

/// Set by the first thread to trap: one message per process, even when several threads trap at once.
static REPORTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if REPORTED.swap(true, Ordering::SeqCst) {
        // Another thread is reporting and will end the process; wait for that.
        loop {
            let second = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // SAFETY: nanosleep(2) is async-signal-safe and only reads the valid local timespec.
            unsafe { libc::nanosleep(&second, std::ptr::null_mut()) };
        }
    }
    // SAFETY: the kernel calls an SA_SIGINFO handler with a pointer to a complete siginfo_t (128
    // bytes), valid for the handler's duration; SigsysInfo is a plain-integer prefix of it (32
    // bytes) with the kernel's layout, so reading it reads initialised memory of the right types.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let mut line = LineBuffer {
        bytes: [0; 256],
        len: 0,
    };
    write_message(
        &mut line,
        info.code == SYS_SECCOMP,
        info.errno,
        i64::from(info.syscall),
    );
    crate::terminal::restore_from_signal_handler();
    let mut written = 0;
    while written < line.len {
        // SAFETY: write(2) is async-signal-safe; the pointer and length describe initialised
        // bytes of `line`, a local that outlives the call.
        let n = unsafe {
            libc::write(
                libc::STDERR_FILENO,
                line.bytes[written..line.len].as_ptr().cast(),
                line.len - written,
            )
        };
        if n <= 0 {
            break;
        }
        written += n as usize;
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process without running any more of our
    // code (no atexit handlers, no unwinding).
    unsafe { libc::_exit(VIOLATION_EXIT_STATUS) };
}

/// Installs the SIGSYS handler (every thread shares it).
pub fn install_handler() -> std::io::Result<()> {
    register_signal_handler(libc::SIGSYS, on_sigsys).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from_seccomp: bool, class: i32, nr: i64) -> String {
        let mut line = LineBuffer {
            bytes: [0; 256],
            len: 0,
        };
        write_message(&mut line, from_seccomp, class, nr);
        String::from_utf8(line.bytes[..line.len].to_vec()).unwrap()
    }

    #[test]
    fn the_message_names_the_class_and_the_call() {
        let m = message(true, ThreadClass::Vcpu as i32, libc::SYS_socket);
        assert!(
            m.starts_with(
                "flint: error: seccomp: the vCPU thread made a forbidden system call, socket (41);"
            ),
            "{m}"
        );
        assert!(m.ends_with("--no-seccomp turns the sandbox off)\n"), "{m}");
        assert_eq!(m.lines().count(), 1);
        let m = message(true, ThreadClass::Device as i32, 400);
        assert!(m.contains("device I/O thread"), "{m}");
        assert!(m.contains("number 400;"), "{m}");
        assert!(message(true, 99, 0).contains("the unknown thread"));
        assert_eq!(message(false, 0, 0), "flint: error: stopped by SIGSYS\n");
    }

    #[test]
    fn the_siginfo_prefix_has_the_kernel_layout() {
        assert_eq!(std::mem::offset_of!(SigsysInfo, errno), 4);
        assert_eq!(std::mem::offset_of!(SigsysInfo, code), 8);
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(std::mem::offset_of!(SigsysInfo, arch), 28);
        assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());
    }
}
