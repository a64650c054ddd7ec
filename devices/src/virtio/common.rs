//! The common configuration structure of the virtio-pci transport (virtio 1.2 §4.1.4.3): feature
//! negotiation, the device status state machine and the per-queue registers. Pure state: the
//! transport ([`super::VirtioPciDevice`]) performs the [`Action`] a write asks for.

use super::{
    has_feature, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR,
};

/// Length of the common configuration structure (virtio 1.0 fields; the 1.2 additions need
/// features flint does not offer).
pub const COMMON_CONFIG_LEN: u64 = 0x38;

/// Register offsets.
pub mod offsets {
    /// le32 RW: which 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32 RO: 32 of the device's feature bits.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32 RW: which 32 feature bits `DRIVER_FEATURE` sets.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32 RW: 32 of the driver's feature bits.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16 RW: MSI-X vector for configuration changes.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// le16 RO: number of queues.
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8 RW: device status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8 RO: configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16 RW: which queue the queue registers below show.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16 RW: queue size (0: no such queue).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16 RW: the queue's MSI-X vector.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16 RW: 1 once the driver enabled the queue.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16 RO: the queue's notification offset (in units of the notify multiplier).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64 RW: descriptor table address.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64 RW: driver (available) ring address.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64 RW: device (used) ring address.
    pub const QUEUE_DEVICE: u64 = 0x30;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    QueueDesc,
    QueueDriver,
    QueueDevice,
}

/// Every field: offset, width, which.
const FIELDS: [(u64, u64, Field); 16] = [
    (
        offsets::DEVICE_FEATURE_SELECT,
        4,
        Field::DeviceFeatureSelect,
    ),
    (offsets::DEVICE_FEATURE, 4, Field::DeviceFeature),
    (
        offsets::DRIVER_FEATURE_SELECT,
        4,
        Field::DriverFeatureSelect,
    ),
    (offsets::DRIVER_FEATURE, 4, Field::DriverFeature),
    (offsets::CONFIG_MSIX_VECTOR, 2, Field::ConfigMsixVector),
    (offsets::NUM_QUEUES, 2, Field::NumQueues),
    (offsets::DEVICE_STATUS, 1, Field::DeviceStatus),
    (offsets::CONFIG_GENERATION, 1, Field::ConfigGeneration),
    (offsets::QUEUE_SELECT, 2, Field::QueueSelect),
    (offsets::QUEUE_SIZE, 2, Field::QueueSize),
    (offsets::QUEUE_MSIX_VECTOR, 2, Field::QueueMsixVector),
    (offsets::QUEUE_ENABLE, 2, Field::QueueEnable),
    (offsets::QUEUE_NOTIFY_OFF, 2, Field::QueueNotifyOff),
    (offsets::QUEUE_DESC, 8, Field::QueueDesc),
    (offsets::QUEUE_DRIVER, 8, Field::QueueDriver),
    (offsets::QUEUE_DEVICE, 8, Field::QueueDevice),
];

/// The driver's configuration of one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRegisters {
    /// Largest size the device supports (a power of two).
    pub max_size: u16,
    /// Size the driver chose (a power of two, at most `max_size`).
    pub size: u16,
    /// MSI-X vector, or [`VIRTIO_MSI_NO_VECTOR`].
    pub vector: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
}

impl QueueRegisters {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What the transport must do after a write to the common configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// The driver wrote 0 to the status: reset the device, then [`CommonConfig::reset`].
    Reset,
    /// The driver set DRIVER_OK (after FEATURES_OK was accepted): start the device.
    Activate,
    /// An MSI-X vector assignment changed: push the vectors to the interrupt state.
    VectorsChanged,
}

/// The common configuration registers of one device.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    status: u8,
    config_generation: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<QueueRegisters>,
    msix_vectors: u16,
}

impl CommonConfig {
    /// A device offering `device_features` (VERSION_1 must be among them), with one queue per entry
    /// of `queue_max_sizes` and `msix_vectors` MSI-X vectors, in the reset state.
    pub fn new(device_features: u64, queue_max_sizes: &[u16], msix_vectors: u16) -> Self {
        Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            status: 0,
            config_generation: 0,
            config_vector: VIRTIO_MSI_NO_VECTOR,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|m| QueueRegisters::new(*m))
                .collect(),
            msix_vectors,
        }
    }

    /// Back to the reset state: no features, status 0, queues disabled at their largest size with
    /// no addresses and no vectors. The offered features and the queue count stay.
    pub fn reset(&mut self) {
        let max_sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = Self {
            config_generation: self.config_generation,
            ..Self::new(self.device_features, &max_sizes, self.msix_vectors)
        };
    }

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The features the driver wrote (accepted once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The device status as stored (the transport adds DEVICE_NEEDS_RESET when the device asks).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Sets DEVICE_NEEDS_RESET in the stored status.
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
    }

    /// The configuration MSI-X vector.
    pub fn config_vector(&self) -> u16 {
        self.config_vector
    }

    /// The queues' registers.
    pub fn queues(&self) -> &[QueueRegisters] {
        &self.queues
    }

    /// Marks the device configuration as changed (drivers re-read it when this moves).
    pub fn bump_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn selected(&self) -> Option<&QueueRegisters> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn read_field(&self, field: Field) -> u64 {
        let queue = self.selected();
        match field {
            Field::DeviceFeatureSelect => u64::from(self.device_feature_select),
            Field::DeviceFeature => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            Field::DriverFeatureSelect => u64::from(self.driver_feature_select),
            Field::DriverFeature => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            Field::ConfigMsixVector => u64::from(self.config_vector),
            Field::NumQueues => self.queues.len() as u64,
            Field::DeviceStatus => u64::from(self.status),
            Field::ConfigGeneration => u64::from(self.config_generation),
            Field::QueueSelect => u64::from(self.queue_select),
            Field::QueueSize => queue.map_or(0, |q| u64::from(q.size)),
            Field::QueueMsixVector => {
                queue.map_or(u64::from(VIRTIO_MSI_NO_VECTOR), |q| u64::from(q.vector))
            }
            Field::QueueEnable => queue.map_or(0, |q| u64::from(q.enabled)),
            Field::QueueNotifyOff => {
                if queue.is_some() {
                    u64::from(self.queue_select)
                } else {
                    0
                }
            }
            Field::QueueDesc => queue.map_or(0, |q| q.desc),
            Field::QueueDriver => queue.map_or(0, |q| q.driver),
            Field::QueueDevice => queue.map_or(0, |q| q.device),
        }
    }

    /// The driver reads `data.len()` bytes at `offset` (any offset and width; bytes outside every
    /// field read as zero).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (start, width, field) in FIELDS {
            let value = self.read_field(field).to_le_bytes();
            for (i, byte) in data.iter_mut().enumerate() {
                let Some(o) = offset.checked_add(i as u64) else {
                    break;
                };
                if o >= start && o < start + width {
                    *byte = value[(o - start) as usize];
                }
            }
        }
    }

    /// The driver writes `data` at `offset` (any width: the written bytes are merged into each
    /// field they touch, so 64-bit addresses may be written as two dwords). Returns what the
    /// transport must do.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let mut action = Action::None;
        for (start, width, field) in FIELDS {
            let mut value = self.read_field(field).to_le_bytes();
            let mut touched = false;
            for (i, byte) in data.iter().enumerate() {
                let Some(o) = offset.checked_add(i as u64) else {
                    break;
                };
                if o >= start && o < start + width {
                    value[(o - start) as usize] = *byte;
                    touched = true;
                }
            }
            if touched {
                let a = self.write_field(field, u64::from_le_bytes(value));
                if a != Action::None {
                    action = a;
                }
            }
        }
        action
    }

    /// Whether queue registers may still change: not once the driver is done (DRIVER_OK) or the
    /// queue is enabled.
    fn queue_writable(&self) -> Option<usize> {
        let index = usize::from(self.queue_select);
        let q = self.queues.get(index)?;
        (!q.enabled && self.status & STATUS_DRIVER_OK == 0).then_some(index)
    }

    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            // Includes VIRTIO_MSI_NO_VECTOR itself; an unmappable vector reads back as "none".
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn write_field(&mut self, field: Field, value: u64) -> Action {
        match field {
            Field::DeviceFeatureSelect => self.device_feature_select = value as u32,
            Field::DriverFeatureSelect => self.driver_feature_select = value as u32,
            Field::DriverFeature => {
                // Features are frozen once FEATURES_OK is set (or before the driver is there).
                if self.status & STATUS_FEATURES_OK == 0 {
                    let v = value & 0xffff_ffff;
                    match self.driver_feature_select {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                        1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                        _ => {}
                    }
                }
            }
            Field::ConfigMsixVector => {
                self.config_vector = self.valid_vector(value as u16);
                return Action::VectorsChanged;
            }
            Field::DeviceStatus => return self.write_status(value as u8),
            Field::QueueSelect => self.queue_select = value as u16,
            Field::QueueSize => {
                if let Some(i) = self.queue_writable() {
                    let size = value as u16;
                    let q = &mut self.queues[i];
                    if size.is_power_of_two() && size <= q.max_size {
                        q.size = size;
                    } else {
                        log::debug!(
                            "virtio: queue {i}: size {size} refused (max {})",
                            q.max_size
                        );
                    }
                }
            }
            Field::QueueMsixVector => {
                let vector = self.valid_vector(value as u16);
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    q.vector = vector;
                    return Action::VectorsChanged;
                }
            }
            Field::QueueEnable => {
                // Only 1 means something; the driver must not write 0 (it resets the device).
                if value == 1 {
                    if let Some(i) = self.queue_writable() {
                        self.queues[i].enabled = true;
                    }
                }
            }
            Field::QueueDesc => {
                if let Some(i) = self.queue_writable() {
                    self.queues[i].desc = value;
                }
            }
            Field::QueueDriver => {
                if let Some(i) = self.queue_writable() {
                    self.queues[i].driver = value;
                }
            }
            Field::QueueDevice => {
                if let Some(i) = self.queue_writable() {
                    self.queues[i].device = value;
                }
            }
            Field::DeviceFeature
            | Field::NumQueues
            | Field::ConfigGeneration
            | Field::QueueNotifyOff => {}
        }
        Action::None
    }

    /// Whether the driver's features can be accepted: a subset of the offered ones, VERSION_1
    /// among them.
    pub fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && has_feature(self.driver_features, VIRTIO_F_VERSION_1)
    }

    fn write_status(&mut self, value: u8) -> Action {
        if value == 0 {
            return Action::Reset;
        }
        let old = self.status;
        // DEVICE_NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
        let mut new = (value & !STATUS_DEVICE_NEEDS_RESET) | (old & STATUS_DEVICE_NEEDS_RESET);
        // The driver only ever adds bits; clearing one takes a reset.
        if old & !new != 0 {
            log::debug!("virtio: status {old:#x} -> {value:#x} clears bits: ignored");
            return Action::None;
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            let ready = new & (STATUS_ACKNOWLEDGE | STATUS_DRIVER)
                == STATUS_ACKNOWLEDGE | STATUS_DRIVER
                && old & STATUS_DRIVER_OK == 0;
            if !ready || !self.features_acceptable() {
                log::debug!(
                    "virtio: FEATURES_OK refused (status {value:#x}, driver features {:#x}, offered {:#x})",
                    self.driver_features,
                    self.device_features
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        let mut action = Action::None;
        if new & !old & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 || new & STATUS_FAILED != 0 {
                new &= !STATUS_DRIVER_OK;
            } else {
                action = Action::Activate;
            }
        }
        self.status = new;
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::TRANSPORT_FEATURES;

    const BLK_FLUSH: u64 = 1 << 9;

    fn cfg() -> CommonConfig {
        CommonConfig::new(TRANSPORT_FEATURES | BLK_FLUSH, &[256, 64], 3)
    }

    fn r(c: &CommonConfig, offset: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(offset, &mut b[..width]);
        u64::from_le_bytes(b)
    }

    fn w(c: &mut CommonConfig, offset: u64, width: usize, value: u64) -> Action {
        c.write(offset, &value.to_le_bytes()[..width])
    }

    fn negotiate(c: &mut CommonConfig, features: u64) -> u8 {
        w(c, offsets::DEVICE_STATUS, 1, 1);
        w(c, offsets::DEVICE_STATUS, 1, 3);
        w(c, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        w(c, offsets::DRIVER_FEATURE, 4, features & 0xffff_ffff);
        w(c, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        w(c, offsets::DRIVER_FEATURE, 4, features >> 32);
        w(c, offsets::DEVICE_STATUS, 1, 0xb);
        r(c, offsets::DEVICE_STATUS, 1) as u8
    }

    #[test]
    fn device_features_by_select() {
        let mut c = cfg();
        assert_eq!(
            r(&c, offsets::DEVICE_FEATURE, 4),
            (TRANSPORT_FEATURES | BLK_FLUSH) & 0xffff_ffff
        );
        w(&mut c, offsets::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&c, offsets::DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
        w(&mut c, offsets::DEVICE_FEATURE_SELECT, 4, 7);
        assert_eq!(r(&c, offsets::DEVICE_FEATURE, 4), 0);
        // Read-only registers ignore writes.
        w(&mut c, offsets::DEVICE_FEATURE, 4, 0xffff_ffff);
        w(&mut c, offsets::NUM_QUEUES, 2, 9);
        assert_eq!(r(&c, offsets::DEVICE_FEATURE, 4), 0);
        assert_eq!(r(&c, offsets::NUM_QUEUES, 2), 2);
    }

    #[test]
    fn feature_negotiation_accepts_a_subset_with_version_1() {
        let mut c = cfg();
        let s = negotiate(&mut c, 1 << 32 | BLK_FLUSH);
        assert_eq!(s, 0xb, "FEATURES_OK accepted");
        assert_eq!(c.driver_features(), 1 << 32 | BLK_FLUSH);
        // Frozen after FEATURES_OK.
        w(&mut c, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut c, offsets::DRIVER_FEATURE, 4, 0);
        assert_eq!(c.driver_features(), 1 << 32 | BLK_FLUSH);
    }

    #[test]
    fn feature_negotiation_refuses_legacy_and_unoffered_bits() {
        let mut c = cfg();
        assert_eq!(negotiate(&mut c, BLK_FLUSH), 3, "no VERSION_1");
        let mut c = cfg();
        assert_eq!(negotiate(&mut c, 1 << 32 | 1 << 5), 3, "bit 5 not offered");
        // DRIVER_OK without FEATURES_OK does nothing.
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 7), Action::None);
        assert_eq!(c.status(), 3);
    }

    #[test]
    fn status_machine() {
        let mut c = cfg();
        // FEATURES_OK before DRIVER is refused.
        w(&mut c, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut c, offsets::DRIVER_FEATURE, 4, 1);
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 9), Action::None);
        assert_eq!(c.status(), 1);
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 3), Action::None);
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0xb), Action::None);
        assert_eq!(c.status(), 0xb);
        // Clearing a bit is ignored.
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0x9), Action::None);
        assert_eq!(c.status(), 0xb);
        // The driver cannot set DEVICE_NEEDS_RESET.
        w(&mut c, offsets::DEVICE_STATUS, 1, 0x4b);
        assert_eq!(c.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0xf), Action::Activate);
        assert_eq!(c.status(), 0xf);
        // Setting DRIVER_OK again does not re-activate.
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0xf), Action::None);
        c.set_needs_reset();
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0x8f), Action::None);
        assert_eq!(c.status(), 0xcf, "FAILED added, NEEDS_RESET kept");
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0), Action::Reset);
    }

    #[test]
    fn failed_blocks_driver_ok() {
        let mut c = cfg();
        negotiate(&mut c, 1 << 32);
        w(&mut c, offsets::DEVICE_STATUS, 1, 0x8b);
        assert_eq!(w(&mut c, offsets::DEVICE_STATUS, 1, 0x8f), Action::None);
        assert_eq!(c.status(), 0x8b);
    }

    #[test]
    fn queue_registers_and_validation() {
        let mut c = cfg();
        assert_eq!(r(&c, offsets::QUEUE_SIZE, 2), 256);
        assert_eq!(r(&c, offsets::QUEUE_MSIX_VECTOR, 2), 0xffff);
        // Not a power of two, zero, above the maximum: refused, the old size stays.
        for bad in [100u64, 0, 512, 0xffff] {
            w(&mut c, offsets::QUEUE_SIZE, 2, bad);
            assert_eq!(r(&c, offsets::QUEUE_SIZE, 2), 256, "size {bad}");
        }
        w(&mut c, offsets::QUEUE_SIZE, 2, 16);
        assert_eq!(r(&c, offsets::QUEUE_SIZE, 2), 16);
        // 64-bit addresses as two dwords or one qword.
        w(&mut c, offsets::QUEUE_DESC, 4, 0x1000);
        w(&mut c, offsets::QUEUE_DESC + 4, 4, 0x1);
        w(&mut c, offsets::QUEUE_DRIVER, 8, 0x2000);
        w(&mut c, offsets::QUEUE_DEVICE, 8, 0x3000);
        assert_eq!(r(&c, offsets::QUEUE_DESC, 8), 0x1_0000_1000);
        assert_eq!(c.queues()[0].driver, 0x2000);
        // Vectors: valid ones stick, others read back as NO_VECTOR.
        assert_eq!(
            w(&mut c, offsets::QUEUE_MSIX_VECTOR, 2, 2),
            Action::VectorsChanged
        );
        assert_eq!(r(&c, offsets::QUEUE_MSIX_VECTOR, 2), 2);
        w(&mut c, offsets::QUEUE_MSIX_VECTOR, 2, 3);
        assert_eq!(r(&c, offsets::QUEUE_MSIX_VECTOR, 2), 0xffff);
        w(&mut c, offsets::CONFIG_MSIX_VECTOR, 2, 0);
        assert_eq!(c.config_vector(), 0);
        // Enable, then the queue's registers are frozen.
        w(&mut c, offsets::QUEUE_ENABLE, 2, 1);
        w(&mut c, offsets::QUEUE_SIZE, 2, 32);
        w(&mut c, offsets::QUEUE_DESC, 8, 0x5000);
        w(&mut c, offsets::QUEUE_ENABLE, 2, 0);
        assert_eq!(c.queues()[0].size, 16);
        assert_eq!(c.queues()[0].desc, 0x1_0000_1000);
        assert!(c.queues()[0].enabled);
        // Queue 1, then a queue that does not exist.
        w(&mut c, offsets::QUEUE_SELECT, 2, 1);
        assert_eq!(r(&c, offsets::QUEUE_SIZE, 2), 64);
        assert_eq!(r(&c, offsets::QUEUE_NOTIFY_OFF, 2), 1);
        w(&mut c, offsets::QUEUE_SELECT, 2, 2);
        assert_eq!(r(&c, offsets::QUEUE_SIZE, 2), 0);
        w(&mut c, offsets::QUEUE_SIZE, 2, 4);
        w(&mut c, offsets::QUEUE_ENABLE, 2, 1);
        assert_eq!(r(&c, offsets::QUEUE_ENABLE, 2), 0);
    }

    #[test]
    fn reset_clears_everything_but_the_offer() {
        let mut c = cfg();
        negotiate(&mut c, 1 << 32 | BLK_FLUSH);
        w(&mut c, offsets::QUEUE_SIZE, 2, 8);
        w(&mut c, offsets::QUEUE_DESC, 8, 0x1000);
        w(&mut c, offsets::QUEUE_MSIX_VECTOR, 2, 1);
        w(&mut c, offsets::QUEUE_ENABLE, 2, 1);
        w(&mut c, offsets::CONFIG_MSIX_VECTOR, 2, 0);
        w(&mut c, offsets::QUEUE_SELECT, 2, 1);
        c.reset();
        assert_eq!(c.status(), 0);
        assert_eq!(c.driver_features(), 0);
        assert_eq!(c.config_vector(), VIRTIO_MSI_NO_VECTOR);
        assert_eq!(r(&c, offsets::QUEUE_SELECT, 2), 0);
        assert_eq!(c.queues()[0], QueueRegisters::new(256));
        assert_eq!(c.device_features(), TRANSPORT_FEATURES | BLK_FLUSH);
        assert_eq!(negotiate(&mut c, 1 << 32), 0xb, "usable again");
    }

    #[test]
    fn garbage_offsets_and_widths() {
        let mut c = cfg();
        for offset in [0u64, 3, 0x13, 0x37, 0x38, 0x100, u64::MAX - 1, u64::MAX] {
            for len in [0usize, 1, 3, 8, 17] {
                let mut buf = vec![0xa5u8; len];
                c.read(offset, &mut buf);
                c.write(offset, &buf);
            }
        }
        let mut b = [0xffu8; 4];
        c.read(0x38, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
