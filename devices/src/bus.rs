//! Address-decoded buses that route a vCPU's port I/O or MMIO exit to the device model that owns the
//! address.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. The VMM keeps one bus for port I/O and one
//! for MMIO; a vCPU thread looks up the device for each exit and calls it with the offset into its range.
//! The map sits behind a read-write lock: every exit takes it shared (vCPUs contend only on the device
//! itself), and only a guest reprogramming a PCI BAR takes it exclusively to move a range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers register reads and writes on a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range. The caller zero-fills
    /// `data` first, so bytes the device leaves alone read as zero.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared, lockable device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors when adding a device to a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length range or one that wraps past the end of the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of devices, each owning a contiguous, non-overlapping address range.
#[derive(Default)]
pub struct Bus {
    // Keyed by the range's base address.
    devices: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.devices.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.devices.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut map = self.map_mut();
        // The closest range starting at or below `base`, and the first one starting after it.
        let below = map.range(..=base).next_back();
        let above = map.range(base..).next();
        let overlaps_below = below.is_some_and(|(b, e)| b + e.len > base);
        let overlaps_above = above.is_some_and(|(b, _)| *b < end);
        if overlaps_below || overlaps_above {
            return Err(BusError::Overlap { base, len });
        }
        map.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range starting exactly at `base`, returning its device.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        self.map_mut().remove(&base).map(|entry| entry.device)
    }

    /// Moves the range at `old_base` to `new_base` (same length). On an overlap the range stays where
    /// it was and the error is returned.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let entry = self
            .map_mut()
            .remove(&old_base)
            .ok_or(BusError::InvalidRange {
                base: old_base,
                len: 0,
            })?;
        let len = entry.len;
        match self.insert(entry.device.clone(), new_base, len) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.map_mut().insert(old_base, entry);
                Err(e)
            }
        }
    }

    /// The device owning `addr` and the offset of `addr` into its range.
    pub fn resolve(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let map = self.map();
        let (base, entry) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Forwards a read to the device at `addr`. Returns false (and leaves `data` alone) when nothing is
    /// there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(&device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a write to the device at `addr`. Returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if another thread panicked while holding it: a device's state stays usable (each
/// register access is self-contained) and one vCPU's panic must not wedge the others.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn routes_to_the_owner_with_its_offset() {
        let bus = Bus::new();
        let a = dev();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(dev(), 0x60, 1).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fd, &mut buf));
        assert_eq!(buf, [5]);
        assert!(bus.write(0x3f9, &[7, 8]));
        assert_eq!(a.lock().unwrap().last_write, Some((1, vec![7, 8])));
        assert!(!bus.read(0x400, &mut buf));
        assert!(!bus.read(0x3f7, &mut buf));
        assert!(!bus.write(0x61, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf8, 0x9),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x100, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(dev(), 0xf0, 0x10).unwrap();
        bus.insert(dev(), 0x110, 0x10).unwrap();
    }

    #[test]
    fn relocate_moves_or_keeps() {
        let bus = Bus::new();
        bus.insert(dev(), 0x1000, 0x100).unwrap();
        bus.insert(dev(), 0x3000, 0x100).unwrap();
        bus.relocate(0x1000, 0x2000).unwrap();
        assert!(bus.resolve(0x1000).is_none());
        assert_eq!(bus.resolve(0x2010).unwrap().1, 0x10);
        assert!(matches!(
            bus.relocate(0x2000, 0x2f80),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.resolve(0x2000).is_some());
        assert!(bus.relocate(0x5000, 0x6000).is_err());
        assert!(bus.remove(0x3000).is_some());
        assert!(bus.resolve(0x3000).is_none());
    }
}
