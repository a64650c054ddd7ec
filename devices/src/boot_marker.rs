//! The boot-marker register: a guest writes [`BOOT_MARKER_VALUE`] once it has booted, and the VMM logs how
//! long that took since the VMM process started (the same idea as Firecracker's boot timer).

use std::time::Instant;

use crate::bus::BusDevice;

/// The byte a guest writes to say "booted".
pub const BOOT_MARKER_VALUE: u8 = 123;

/// The boot-marker register.
pub struct BootMarker {
    process_start: Instant,
    reported: bool,
}

impl BootMarker {
    /// A marker that measures from `process_start`.
    pub fn new(process_start: Instant) -> Self {
        Self {
            process_start,
            reported: false,
        }
    }

    /// Whether the guest has written the marker.
    pub fn reported(&self) -> bool {
        self.reported
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_MARKER_VALUE) && !self.reported {
            self.reported = true;
            let elapsed = self.process_start.elapsed();
            log::info!(
                "guest boot marker: {:.3} ms after VMM start",
                elapsed.as_secs_f64() * 1e3
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_marker_value_counts_once() {
        let mut m = BootMarker::new(Instant::now());
        m.write(0, &[1]);
        m.write(1, &[BOOT_MARKER_VALUE]);
        assert!(!m.reported());
        m.write(0, &[BOOT_MARKER_VALUE]);
        assert!(m.reported());
    }
}
