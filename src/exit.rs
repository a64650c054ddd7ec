//! How a running VM comes to an end: the first of the guest (reset, power-off), a VMM error, a signal
//! or the console escape wins; everything that can end the VM reports here, and the main loop wakes on
//! the eventfd.

use std::sync::Mutex;

use devices::{ExitReason, ExitSink};
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest reset or powered off the machine.
    Guest(ExitReason),
    /// A signal (SIGINT, SIGTERM, ...) asked flint to stop.
    Signal(i32),
    /// The user typed the console escape (Ctrl-A x).
    ConsoleEscape,
    /// Something went wrong in the VMM; the message names it.
    Error(String),
}

/// Collects the first reason the VM should stop and wakes the main loop.
pub struct ExitController {
    outcome: Mutex<Option<VmOutcome>>,
    wake: EventFd,
}

impl ExitController {
    /// A controller with its own non-blocking wake-up eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `outcome` unless an earlier one was recorded, and wakes the main loop.
    pub fn stop(&self, outcome: VmOutcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        drop(slot);
        // Failing to write means the counter is saturated: the loop is woken already.
        let _ = self.wake.write(1);
    }

    /// The outcome, once something stopped the VM.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable when the VM should stop.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }
}

impl ExitSink for ExitController {
    fn request_exit(&self, reason: ExitReason) {
        self.stop(VmOutcome::Guest(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outcome_wins_and_wakes() {
        let c = ExitController::new().unwrap();
        assert_eq!(c.outcome(), None);
        c.request_exit(ExitReason::PowerOff);
        c.stop(VmOutcome::Error("late".into()));
        assert_eq!(c.outcome(), Some(VmOutcome::Guest(ExitReason::PowerOff)));
        assert!(c.wake_fd().read().unwrap() >= 1);
    }
}
