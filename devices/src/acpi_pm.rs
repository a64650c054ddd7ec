//! The ACPI power-management registers of flint's hardware-reduced platform: sleep control, sleep
//! status, reset, and a PM1a control block for guests that ignore the hardware-reduced flag.
//!
//! Register layout (offsets from the device base, I/O port 0x600 on x86_64; see docs/platform.md):
//! - 0: sleep control (8-bit): SLP_TYP in bits 2-4, SLP_EN in bit 5. S5 (SLP_TYP 5) powers off.
//! - 1: sleep status (8-bit): reads 0.
//! - 2: reset register (8-bit): writing [`RESET_VALUE`] resets the machine.
//! - 4: PM1a control (16-bit): SLP_TYP in bits 10-12, SLP_EN in bit 13.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::{ExitReason, ExitSink};

/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// Offset of the PM1a control block.
pub const PM1A_CONTROL_OFFSET: u64 = 4;
/// How many bytes of port space the device decodes.
pub const REGISTER_SPACE_LEN: u64 = 6;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x01;
/// The sleep type the DSDT's `_S5_` object declares.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
const PM1_CONTROL_SLP_EN: u16 = 1 << 13;

/// The ACPI power-management register block.
pub struct AcpiPm {
    exit: Arc<dyn ExitSink>,
    pm1a_control: u16,
}

impl AcpiPm {
    /// A register block that reports power-off and reset to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            exit,
            pm1a_control: 0,
        }
    }

    fn enter_sleep_state(&self, sleep_type: u8) {
        if sleep_type == S5_SLEEP_TYPE {
            self.exit.request_exit(ExitReason::PowerOff);
        } else {
            // S1-S4 would need the VMM to suspend and wake the guest; nothing declares them. Debug
            // level: a guest writing this in a loop must not flood the host's log.
            log::debug!("guest asked for unsupported ACPI sleep type {sleep_type}; ignored");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == PM1A_CONTROL_OFFSET {
            let value = self.pm1a_control.to_le_bytes();
            for (dst, src) in data.iter_mut().zip(value) {
                *dst = src;
            }
        }
        // Sleep control/status and the reset register read as zero.
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&first) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if first & SLEEP_CONTROL_SLP_EN != 0 => {
                self.enter_sleep_state((first >> 2) & 0x7)
            }
            RESET_OFFSET if first == RESET_VALUE => self.exit.request_exit(ExitReason::Reset),
            PM1A_CONTROL_OFFSET => {
                let high = data.get(1).copied().unwrap_or(0);
                let value = u16::from_le_bytes([first, high]);
                self.pm1a_control = value & !PM1_CONTROL_SLP_EN;
                if value & PM1_CONTROL_SLP_EN != 0 {
                    self.enter_sleep_state(((value >> 10) & 0x7) as u8);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i8042::tests::RecordingExit;

    fn device() -> (AcpiPm, Arc<RecordingExit>) {
        let exit = Arc::new(RecordingExit::default());
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_through_sleep_control_powers_off() {
        let (mut pm, exit) = device();
        pm.write(SLEEP_CONTROL_OFFSET, &[(5 << 2) | 0x20]);
        assert_eq!(*exit.0.lock().unwrap(), vec![ExitReason::PowerOff]);
    }

    #[test]
    fn s5_through_pm1a_powers_off_and_other_states_do_not() {
        let (mut pm, exit) = device();
        pm.write(PM1A_CONTROL_OFFSET, &(3u16 << 10 | 1 << 13).to_le_bytes());
        pm.write(PM1A_CONTROL_OFFSET, &(5u16 << 10).to_le_bytes());
        assert!(exit.0.lock().unwrap().is_empty());
        let mut b = [0u8; 2];
        pm.read(PM1A_CONTROL_OFFSET, &mut b);
        assert_eq!(u16::from_le_bytes(b), 5 << 10);
        pm.write(PM1A_CONTROL_OFFSET, &(5u16 << 10 | 1 << 13).to_le_bytes());
        assert_eq!(*exit.0.lock().unwrap(), vec![ExitReason::PowerOff]);
    }

    #[test]
    fn reset_register_needs_the_declared_value() {
        let (mut pm, exit) = device();
        pm.write(RESET_OFFSET, &[0x06]);
        pm.write(RESET_OFFSET, &[]);
        assert!(exit.0.lock().unwrap().is_empty());
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(*exit.0.lock().unwrap(), vec![ExitReason::Reset]);
    }
}
