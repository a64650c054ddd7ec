//! A minimal i8042 (PS/2) controller: just enough for guests to find it and to reset the machine.
//!
//! Linux's i8042 driver probes the controller at boot and uses "pulse the reset line" (command 0xFE to
//! port 0x64) as a reboot method; probe guests use the same command to end a run. There is no keyboard
//! or mouse behind it: the command byte reports both ports disabled and reads of data return 0.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::{ExitReason, ExitSink};

/// The data port (0x60) offset when the device is registered at 0x60 with length 5.
pub const DATA_OFFSET: u64 = 0;
/// The status/command port (0x64) offset when the device is registered at 0x60 with length 5.
pub const COMMAND_OFFSET: u64 = 4;

const CMD_READ_COMMAND_BYTE: u8 = 0x20;
const CMD_WRITE_COMMAND_BYTE: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xA7;
const CMD_ENABLE_AUX: u8 = 0xA8;
const CMD_TEST_AUX: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_TEST_KBD: u8 = 0xAB;
const CMD_DISABLE_KBD: u8 = 0xAD;
const CMD_ENABLE_KBD: u8 = 0xAE;
const CMD_READ_OUTPUT_PORT: u8 = 0xD0;
const CMD_PULSE_RESET: u8 = 0xFE;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
/// Command byte: system flag set, translation on, both ports' clocks disabled, no interrupts.
const DEFAULT_COMMAND_BYTE: u8 = 0x74;

/// The i8042 controller at ports 0x60-0x64.
pub struct I8042 {
    exit: Arc<dyn ExitSink>,
    command_byte: u8,
    status: u8,
    output: Option<u8>,
    // The controller command whose parameter byte the next data-port write carries.
    pending_command: Option<u8>,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            exit,
            command_byte: DEFAULT_COMMAND_BYTE,
            status: STATUS_SYSTEM_FLAG,
            output: None,
            pending_command: None,
        }
    }

    fn push_output(&mut self, byte: u8) {
        self.output = Some(byte);
        self.status |= STATUS_OUTPUT_FULL;
    }

    fn command(&mut self, command: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match command {
            CMD_READ_COMMAND_BYTE => self.push_output(self.command_byte),
            CMD_WRITE_COMMAND_BYTE => self.pending_command = Some(command),
            CMD_SELF_TEST => self.push_output(SELF_TEST_PASSED),
            CMD_TEST_KBD | CMD_TEST_AUX => self.push_output(PORT_TEST_PASSED),
            CMD_READ_OUTPUT_PORT => self.push_output(0x01),
            CMD_DISABLE_KBD | CMD_ENABLE_KBD | CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_PULSE_RESET => self.exit.request_exit(ExitReason::Reset),
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => {
                self.status &= !STATUS_OUTPUT_FULL;
                self.output.take().unwrap_or(0)
            }
            COMMAND_OFFSET => self.status,
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET => {
                self.status &= !STATUS_LAST_WAS_COMMAND;
                if self.pending_command.take() == Some(CMD_WRITE_COMMAND_BYTE) {
                    self.command_byte = byte;
                }
                // Bytes for a keyboard that isn't there are dropped.
            }
            COMMAND_OFFSET => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An exit sink that records what it was asked.
    #[derive(Default)]
    pub struct RecordingExit(pub Mutex<Vec<ExitReason>>);

    impl ExitSink for RecordingExit {
        fn request_exit(&self, reason: ExitReason) {
            self.0.lock().unwrap().push(reason);
        }
    }

    #[test]
    fn pulse_reset_requests_a_reset() {
        let exit = Arc::new(RecordingExit::default());
        let mut dev = I8042::new(exit.clone());
        dev.write(COMMAND_OFFSET, &[0xFE]);
        assert_eq!(*exit.0.lock().unwrap(), vec![ExitReason::Reset]);
    }

    #[test]
    fn self_test_and_command_byte_round_trip() {
        let exit = Arc::new(RecordingExit::default());
        let mut dev = I8042::new(exit.clone());
        let mut b = [0u8];
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        dev.read(COMMAND_OFFSET, &mut b);
        assert_ne!(b[0] & STATUS_OUTPUT_FULL, 0);
        dev.read(DATA_OFFSET, &mut b);
        assert_eq!(b[0], SELF_TEST_PASSED);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_COMMAND_BYTE]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_COMMAND_BYTE]);
        dev.read(DATA_OFFSET, &mut b);
        assert_eq!(b[0], 0x47);
        // Empty accesses and unknown offsets are ignored.
        dev.write(1, &[0xFE]);
        dev.write(COMMAND_OFFSET, &[]);
        dev.read(COMMAND_OFFSET, &mut []);
        assert!(exit.0.lock().unwrap().is_empty());
    }
}
