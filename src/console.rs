//! Host stdin → guest UART. Runs on the main thread's event loop.
//!
//! The UART's receive FIFO holds 64 bytes. Input that does not fit waits in `pending`, and stdin is not
//! read again until the guest has drained the FIFO (the UART signals `input_space`), so a guest that
//! stops reading its console back-pressures the host side instead of losing input or growing a buffer.
//! On an interactive terminal, Ctrl-A x stops the VM (Ctrl-A Ctrl-A sends one Ctrl-A), as in QEMU.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::serial::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitController, VmOutcome};

const ESCAPE_PREFIX: u8 = 0x01; // Ctrl-A
const ESCAPE_QUIT: u8 = b'x';
const READ_CHUNK: usize = 4096;

/// Moves bytes from stdin into the guest's UART.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialConsole>>,
    input_space: EventFd,
    exit: Arc<ExitController>,
    pending: VecDeque<u8>,
    stdin_watched: bool,
    stdin_open: bool,
    escapes_enabled: bool,
    saw_escape_prefix: bool,
}

impl ConsoleInput {
    /// Feeds `serial` from stdin. `input_space` is the eventfd the UART signals when its FIFO empties;
    /// `escapes_enabled` turns on Ctrl-A x (only for an interactive terminal).
    pub fn new(
        serial: Arc<Mutex<SerialConsole>>,
        input_space: EventFd,
        exit: Arc<ExitController>,
        escapes_enabled: bool,
    ) -> Self {
        Self {
            serial,
            input_space,
            exit,
            pending: VecDeque::new(),
            stdin_watched: false,
            stdin_open: true,
            escapes_enabled,
            saw_escape_prefix: false,
        }
    }

    /// Filters the console escape out of `input`, appending what the guest should get to `pending`.
    /// Returns true if the user asked to quit.
    fn accept_input(&mut self, input: &[u8]) -> bool {
        for &byte in input {
            if !self.escapes_enabled {
                self.pending.push_back(byte);
            } else if self.saw_escape_prefix {
                self.saw_escape_prefix = false;
                match byte {
                    ESCAPE_QUIT => return true,
                    ESCAPE_PREFIX => self.pending.push_back(ESCAPE_PREFIX),
                    other => {
                        self.pending.push_back(ESCAPE_PREFIX);
                        self.pending.push_back(other);
                    }
                }
            } else if byte == ESCAPE_PREFIX {
                self.saw_escape_prefix = true;
            } else {
                self.pending.push_back(byte);
            }
        }
        false
    }

    /// Pushes as much pending input as fits into the UART.
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let (front, _) = self.pending.as_slices();
        let taken = serial.enqueue_input(front);
        drop(serial);
        self.pending.drain(..taken);
    }

    fn read_stdin(&mut self) -> usize {
        let mut buf = [0u8; READ_CHUNK];
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`, a valid, writable local buffer.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // EOF, or an error other than an interrupted read: stop listening to stdin.
            let interrupted =
                n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
            if !interrupted {
                self.stdin_open = false;
            }
            return 0;
        }
        let n = n as usize;
        if self.accept_input(&buf[..n]) {
            self.exit.stop(VmOutcome::ConsoleEscape);
        }
        n
    }

    /// Watch stdin only while nothing is pending: pending input waits for FIFO space first.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.stdin_open && self.pending.is_empty();
        if want != self.stdin_watched {
            let stdin = Events::new_raw(libc::STDIN_FILENO, EventSet::IN);
            let result = if want {
                ops.add(stdin)
            } else {
                ops.remove(stdin)
            };
            match result {
                Ok(()) => self.stdin_watched = want,
                Err(e) => {
                    // stdin that epoll can't watch (a regular file, say) is no console input.
                    log::debug!("console: cannot watch stdin: {e:?}");
                    self.stdin_open = false;
                    self.stdin_watched = false;
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_space.as_raw_fd() {
            let _ = self.input_space.read();
        } else if events.fd() == libc::STDIN_FILENO {
            if events.event_set().contains(EventSet::IN) {
                self.read_stdin();
            } else {
                // Hang-up or error with nothing to read.
                self.stdin_open = false;
            }
        }
        self.flush_pending();
        self.update_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_space, EventSet::IN)) {
            log::warn!("console: cannot watch the UART: {e:?}");
        }
        self.update_interest(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(escapes: bool) -> ConsoleInput {
        let serial = SerialConsole::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(std::io::sink()),
        );
        ConsoleInput::new(
            Arc::new(Mutex::new(serial)),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Arc::new(ExitController::new().unwrap()),
            escapes,
        )
    }

    #[test]
    fn escape_sequences() {
        let mut c = console(true);
        assert!(!c.accept_input(b"ab\x01\x01c\x01d"));
        assert_eq!(
            c.pending.iter().copied().collect::<Vec<_>>(),
            b"ab\x01c\x01d"
        );
        assert!(c.accept_input(b"\x01x"));
        let mut raw = console(false);
        assert!(!raw.accept_input(b"\x01x"));
        assert_eq!(raw.pending.len(), 2);
    }

    #[test]
    fn pending_input_waits_for_fifo_space() {
        let mut c = console(false);
        c.accept_input(&[b'a'; 100]);
        c.flush_pending();
        assert_eq!(c.pending.len(), 36);
        c.flush_pending();
        assert_eq!(c.pending.len(), 36);
    }
}
