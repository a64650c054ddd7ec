//! The modern virtio-pci transport: a [`VirtioDevice`] as a PCI function.
//!
//! BAR 0 (64-bit, 32 KiB) layout, each region page-aligned:
//!
//! | offset | region | capability |
//! |---|---|---|
//! | 0x0000 | common configuration (0x38 bytes) | `VIRTIO_PCI_CAP_COMMON_CFG` |
//! | 0x1000 | ISR status (1 byte, read clears) | `VIRTIO_PCI_CAP_ISR_CFG` |
//! | 0x2000 | device configuration | `VIRTIO_PCI_CAP_DEVICE_CFG` |
//! | 0x3000 | notifications, 4 bytes per queue (`notify_off_multiplier` 4) | `VIRTIO_PCI_CAP_NOTIFY_CFG` |
//! | 0x4000 | MSI-X table (one vector per queue plus one for configuration changes) | MSI-X |
//! | 0x6000 | MSI-X PBA | MSI-X |
//!
//! There is also a `VIRTIO_PCI_CAP_PCI_CFG` capability: a window in configuration space through
//! which the driver can reach the BAR without mapping it.
//!
//! Threads and locks: vCPU threads reach the transport through the PCI root, which holds its lock.
//! Notify writes land on each queue's eventfd (a KVM ioeventfd, or [`PciDevice::bar_write`] as a
//! fallback), never taking a device lock. The device's worker threads use [`VirtioInterrupt`] (atomics
//! plus the MSI-X state's own lock) and never take the transport's lock, so a reset, which waits for
//! the workers to stop, cannot deadlock with them.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::worker::WorkerSpawner;

use super::common::{Action, CommonConfig, COMMON_CONFIG_LEN};
use super::{
    has_feature, ActivateContext, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, TRANSPORT_FEATURES, VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_SUBSYSTEM_ID, VIRTIO_PCI_VENDOR_ID, VIRTIO_RING_F_EVENT_IDX,
};
use crate::pci::{
    Datamatch, Msix, MsixLayout, MsixRegion, PciBar, PciBarKind, PciConfigSpace, PciDevice,
    PciError, PciIds, PciIoEvent,
};

/// The BAR holding every virtio region and the MSI-X structures.
pub const VIRTIO_BAR: u8 = 0;
/// Largest queue size the virtio spec allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Offset of the notification region.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// Offset of the MSI-X PBA.
pub const MSIX_PBA_OFFSET: u32 = 0x6000;
/// Length of each region (one page).
const REGION_LEN: u64 = 0x1000;
/// Most queues a device may have: every notify address inside the notify page, one vector each
/// plus the configuration vector inside the MSI-X table's 8 KiB.
pub const MAX_QUEUES: usize = 511;

/// PCI capability ID of vendor-specific capabilities (every virtio structure).
const CAP_ID_VENDOR: u8 = 0x09;
/// `cfg_type` of the virtio capabilities.
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// Errors building the transport (a device model declaring something impossible; never the guest).
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The PCI layout was refused.
    #[error("virtio PCI layout: {0}")]
    Pci(#[from] PciError),
    /// Zero queues, too many, or a maximum size that is not a power of two up to 32768.
    #[error("virtio device declares invalid queues: {0}")]
    Queues(&'static str),
    /// The notification eventfds could not be created.
    #[error("cannot create a virtio notification eventfd: {0}")]
    EventFd(#[from] std::io::Error),
}

/// Where the `VIRTIO_PCI_CAP_PCI_CFG` window's fields sit in configuration space.
#[derive(Clone, Copy, Debug)]
struct PciCfgWindow {
    /// `cap.bar` (1 byte).
    bar: u16,
    /// `cap.offset` (le32).
    offset: u16,
    /// `cap.length` (le32).
    length: u16,
    /// `pci_cfg_data` (4 bytes).
    data: u16,
}

/// A virtio device on the PCI bus. Dropping it resets an active device (stopping its workers).
pub struct VirtioPciDevice {
    config: PciConfigSpace,
    msix: Msix,
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<VirtioInterrupt>,
    notify: Vec<EventFd>,
    mem: GuestMemoryMmap,
    pci_cfg: PciCfgWindow,
    device_config_len: u64,
    active: bool,
    spawner: WorkerSpawner,
}

fn cap_body(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // cap_vndr and cap_next are written by add_capability; the body starts at cap_len.
    let cap_len = (2 + 14 + extra.len()) as u8;
    let mut body = vec![cap_len, cfg_type, VIRTIO_BAR, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPciDevice {
    /// Puts `device` behind a virtio-pci function that reaches guest RAM through `mem`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::Queues("between 1 and 511 queues"));
        }
        if max_sizes
            .iter()
            .any(|s| !s.is_power_of_two() || *s > MAX_QUEUE_SIZE)
        {
            return Err(VirtioPciError::Queues(
                "sizes must be powers of two up to 32768",
            ));
        }
        let queues = max_sizes.len();
        let vectors = queues as u16 + 1;
        let msix = Msix::new(MsixLayout {
            vectors,
            table_bar: VIRTIO_BAR,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: VIRTIO_BAR,
            pba_offset: MSIX_PBA_OFFSET,
        })?;
        let device_type = device.device_type();
        let (class, subclass, prog_if) = device.pci_class();
        let mut config = PciConfigSpace::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR_ID,
            device: VIRTIO_PCI_DEVICE_ID_BASE + device_type,
            class,
            subclass,
            prog_if,
            // Non-transitional devices have revision 1.
            revision: 1,
            subsystem_vendor: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_bar(VIRTIO_BAR, BAR_SIZE, PciBarKind::Memory64, false)?;
        let device_config_len = device.config_len().min(REGION_LEN);
        config.add_capability(
            CAP_ID_VENDOR,
            &cap_body(CAP_COMMON_CFG, COMMON_OFFSET, COMMON_CONFIG_LEN, &[]),
            &[],
        )?;
        config.add_capability(
            CAP_ID_VENDOR,
            &cap_body(
                CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        config.add_capability(
            CAP_ID_VENDOR,
            &cap_body(CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
            &[],
        )?;
        if device_config_len > 0 {
            config.add_capability(
                CAP_ID_VENDOR,
                &cap_body(CAP_DEVICE_CFG, DEVICE_CONFIG_OFFSET, device_config_len, &[]),
                &[],
            )?;
        }
        // The PCI configuration access window: bar, offset, length and data are writable.
        let mut writable = vec![0u8; 18];
        writable[2] = 0xff;
        writable[6..18].fill(0xff);
        let mut body = cap_body(CAP_PCI_CFG, 0, 0, &[0; 4]);
        body[2] = 0;
        let cap = config.add_capability(CAP_ID_VENDOR, &body, &writable)?;
        let pci_cfg = PciCfgWindow {
            bar: cap + 4,
            offset: cap + 8,
            length: cap + 12,
            data: cap + 16,
        };
        config.add_msix(&msix)?;

        let notify = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(VirtioInterrupt::new(msix.clone(), queues));
        let common = CommonConfig::new(
            device.device_features() | TRANSPORT_FEATURES,
            &max_sizes,
            vectors,
        );
        Ok(Self {
            config,
            msix,
            common,
            device,
            interrupt,
            notify,
            mem,
            pci_cfg,
            device_config_len,
            active: false,
            spawner: WorkerSpawner::default(),
        })
    }

    /// Workers of the device are started through `spawner` (default: plain threads).
    pub fn set_worker_spawner(&mut self, spawner: WorkerSpawner) {
        self.spawner = spawner;
    }

    /// The common configuration (for tests and diagnostics).
    pub fn common_config(&self) -> &CommonConfig {
        &self.common
    }

    /// The interrupt state shared with the device's workers.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device status as the driver reads it.
    fn status(&self) -> u8 {
        let mut status = self.common.status();
        if self.interrupt.needs_reset() {
            status |= STATUS_DEVICE_NEEDS_RESET;
        }
        status
    }

    fn sync_vectors(&self) {
        self.interrupt
            .set_config_vector(self.common.config_vector());
        for (i, q) in self.common.queues().iter().enumerate() {
            self.interrupt.set_queue_vector(i, q.vector);
        }
    }

    /// Builds the enabled queues from the driver's registers.
    fn build_queues(&self) -> Result<Vec<ActiveQueue>, ActivateError> {
        let event_idx = has_feature(self.common.driver_features(), VIRTIO_RING_F_EVENT_IDX);
        let mut active = Vec::new();
        for (i, regs) in self.common.queues().iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let index = i as u16;
            let invalid = |_| ActivateError::InvalidQueue(index);
            let mut queue = Queue::new(regs.max_size).map_err(invalid)?;
            queue.try_set_size(regs.size).map_err(invalid)?;
            queue
                .try_set_desc_table_address(GuestAddress(regs.desc))
                .map_err(invalid)?;
            queue
                .try_set_avail_ring_address(GuestAddress(regs.driver))
                .map_err(invalid)?;
            queue
                .try_set_used_ring_address(GuestAddress(regs.device))
                .map_err(invalid)?;
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            if !super::queue::rings_in_ram(&queue, &self.mem) {
                return Err(ActivateError::InvalidQueue(index));
            }
            active.push(ActiveQueue {
                index,
                queue,
                notify: self.notify[i].try_clone()?,
            });
        }
        Ok(active)
    }

    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            self.device.activate(ActivateContext {
                mem: self.mem.clone(),
                acked_features: self.common.driver_features(),
                queues,
                interrupt: self.interrupt.clone(),
                spawner: self.spawner.clone(),
            })
        });
        match result {
            Ok(()) => {
                self.active = true;
                // Work the driver queued before DRIVER_OK is picked up now.
                self.kick_all();
            }
            Err(e) => {
                // The guest's mistake (a ring outside RAM, say), answered with DEVICE_NEEDS_RESET; at
                // debug level, so that a guest repeating it cannot flood the host's log.
                log::debug!(
                    "virtio device {:#06x}: cannot start: {e}",
                    VIRTIO_PCI_DEVICE_ID_BASE + self.device.device_type()
                );
                self.common.set_needs_reset();
                self.interrupt.signal_config();
            }
        }
    }

    /// A device reset (the driver wrote 0 to the status): stops the device, then returns the
    /// registers, interrupt state and notifications to their power-on state.
    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.common.reset();
        self.interrupt.reset();
        for fd in &self.notify {
            // Drop notifications nobody will handle (the fds are non-blocking).
            let _ = fd.read();
        }
    }

    fn kick_all(&self) {
        for fd in &self.notify {
            if let Err(e) = fd.write(1) {
                log::warn!("virtio: cannot signal a queue: {e}");
            }
        }
    }

    fn notify_queue(&self, offset: u64) {
        if offset % u64::from(NOTIFY_OFF_MULTIPLIER) != 0 {
            return;
        }
        let index = offset / u64::from(NOTIFY_OFF_MULTIPLIER);
        log::trace!("virtio: queue {index} notified through an MMIO exit");
        if let Some(fd) = usize::try_from(index).ok().and_then(|i| self.notify.get(i)) {
            if let Err(e) = fd.write(1) {
                log::warn!("virtio: cannot signal queue {index}: {e}");
            }
        }
    }

    fn region_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + REGION_LEN => {
                let o = o - COMMON_OFFSET;
                self.common.read(o, data);
                // The device status includes DEVICE_NEEDS_RESET raised by a worker.
                let status = super::common::offsets::DEVICE_STATUS;
                if o <= status && status < o + data.len() as u64 {
                    data[(status - o) as usize] = self.status();
                }
            }
            o if (ISR_OFFSET..ISR_OFFSET + REGION_LEN).contains(&o) => {
                data.fill(0);
                if o == ISR_OFFSET {
                    if let Some(b) = data.first_mut() {
                        *b = self.interrupt.read_isr();
                    }
                }
            }
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + REGION_LEN).contains(&o) => {
                data.fill(0);
                let o = o - DEVICE_CONFIG_OFFSET;
                if o < self.device_config_len {
                    let n = data.len().min((self.device_config_len - o) as usize);
                    self.device.read_config(o, &mut data[..n]);
                }
            }
            _ => data.fill(0),
        }
    }

    fn region_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + REGION_LEN => {
                match self.common.write(o - COMMON_OFFSET, data) {
                    Action::None => {}
                    Action::VectorsChanged => self.sync_vectors(),
                    Action::Reset => self.reset(),
                    Action::Activate => self.activate(),
                }
            }
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + REGION_LEN).contains(&o) => {
                let o = o - DEVICE_CONFIG_OFFSET;
                if o < self.device_config_len {
                    let n = data.len().min((self.device_config_len - o) as usize);
                    self.device.write_config(o, &data[..n]);
                }
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + REGION_LEN).contains(&o) => {
                self.notify_queue(o - NOTIFY_OFFSET)
            }
            _ => {}
        }
    }

    fn config_u32(&self, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        self.config.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The BAR access the `VIRTIO_PCI_CAP_PCI_CFG` window describes: (offset, length), if the
    /// window points at BAR 0 with a length of 1, 2 or 4 and an offset inside the BAR aligned to
    /// it.
    fn window_target(&self) -> Option<(u64, usize)> {
        let mut bar = [0u8];
        self.config.read(self.pci_cfg.bar, &mut bar);
        let offset = u64::from(self.config_u32(self.pci_cfg.offset));
        let length = self.config_u32(self.pci_cfg.length) as usize;
        (bar[0] == VIRTIO_BAR
            && matches!(length, 1 | 2 | 4)
            && offset % length as u64 == 0
            && offset + length as u64 <= BAR_SIZE)
            .then_some((offset, length))
    }

    /// A BAR read as the root would route it (MSI-X structures included).
    fn full_bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match self.msix.region(VIRTIO_BAR, offset) {
            Some(MsixRegion::Table(o)) => self.msix.read_table(o, data),
            Some(MsixRegion::Pba(o)) => self.msix.read_pba(o, data),
            None => self.bar_read(VIRTIO_BAR, offset, data),
        }
    }

    fn full_bar_write(&mut self, offset: u64, data: &[u8]) {
        match self.msix.region(VIRTIO_BAR, offset) {
            Some(MsixRegion::Table(o)) => self.msix.write_table(o, data),
            Some(MsixRegion::Pba(o)) => self.msix.write_pba(o, data),
            None => self.bar_write(VIRTIO_BAR, offset, data),
        }
    }

    fn touches_window_data(&self, offset: u16, len: usize) -> bool {
        let start = u32::from(offset);
        let data = u32::from(self.pci_cfg.data);
        start < data + 4 && data < start + len as u32
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
        if self.touches_window_data(offset, data.len()) {
            let mut window = [0u8; 4];
            if let Some((bar_offset, length)) = self.window_target() {
                self.full_bar_read(bar_offset, &mut window[..length]);
            }
            for (i, byte) in data.iter_mut().enumerate() {
                let o = u32::from(offset) + i as u32;
                if let Some(w) = o
                    .checked_sub(u32::from(self.pci_cfg.data))
                    .filter(|w| *w < 4)
                {
                    *byte = window[w as usize];
                }
            }
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let bus_master = self.config.bus_master_enabled();
        self.config.write(offset, data);
        let now = self.config.bus_master_enabled();
        if now != bus_master {
            self.interrupt.set_bus_master(now);
            if now && self.active {
                // Queues skipped while DMA was off get another look.
                self.kick_all();
            }
        }
        if self.touches_window_data(offset, data.len()) {
            if let Some((bar_offset, length)) = self.window_target() {
                let mut window = [0u8; 4];
                self.config.read(self.pci_cfg.data, &mut window);
                self.full_bar_write(bar_offset, &window[..length]);
            }
        }
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == VIRTIO_BAR && offset < BAR_SIZE {
            self.region_read(offset, data);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == VIRTIO_BAR && offset < BAR_SIZE {
            self.region_write(offset, data);
        }
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }

    fn ioeventfds(&self) -> Vec<PciIoEvent<'_>> {
        self.notify
            .iter()
            .enumerate()
            .map(|(i, fd)| PciIoEvent {
                bar: VIRTIO_BAR,
                offset: NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
                datamatch: Datamatch::Any,
                fd,
            })
            .collect()
    }

    fn msix(&self) -> Option<Msix> {
        Some(self.msix.clone())
    }

    fn reset(&mut self) {
        self.reset();
    }
}

impl VirtioPciDevice {
    /// True between a successful DRIVER_OK and the next reset.
    pub fn is_active(&self) -> bool {
        self.active && self.common.status() & STATUS_DRIVER_OK != 0
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::pci::{MsiInterruptGroup, MsiMessage};
    use crate::virtio::common::offsets;
    use crate::virtio::queue::testing::TestRing;

    /// Acked features and (index, size) of each queue of the last activation.
    type Activation = (u64, Vec<(u16, u16)>);

    /// A device with two queues that records what the transport asks of it.
    #[derive(Default)]
    struct Probe {
        activations: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        last: Arc<Mutex<Option<Activation>>>,
        config: [u8; 8],
        fail: bool,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u16 {
            2
        }
        fn pci_class(&self) -> (u8, u8, u8) {
            (1, 0, 0)
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 8]
        }
        fn device_features(&self) -> u64 {
            1 << 9
        }
        fn config_len(&self) -> u64 {
            8
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = self.config.get(offset as usize + i) {
                    *b = *v;
                }
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(v) = self.config.get_mut(offset as usize + i) {
                    *v = *b;
                }
            }
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::MissingQueue(1));
            }
            self.activations.fetch_add(1, Ordering::SeqCst);
            *self.last.lock().unwrap() = Some((
                ctx.acked_features,
                ctx.queues
                    .iter()
                    .map(|q| (q.index, q.queue.size()))
                    .collect(),
            ));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Default)]
    struct Triggers(Mutex<Vec<u16>>);

    impl MsiInterruptGroup for Triggers {
        fn update(&self, _vector: u16, _msg: MsiMessage, _masked: bool) -> io::Result<()> {
            Ok(())
        }
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.0.lock().unwrap().push(vector);
            Ok(())
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn cfg32(dev: &mut VirtioPciDevice, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        dev.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn bar_r(dev: &mut VirtioPciDevice, offset: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        dev.bar_read(0, offset, &mut b[..width]);
        u64::from_le_bytes(b)
    }

    fn bar_w(dev: &mut VirtioPciDevice, offset: u64, width: usize, value: u64) {
        dev.bar_write(0, offset, &value.to_le_bytes()[..width]);
    }

    /// Vendor capabilities: cfg_type -> (cap offset, bar, offset, length).
    fn virtio_caps(dev: &mut VirtioPciDevice) -> Vec<(u8, u16, u8, u32, u32)> {
        let mut caps = Vec::new();
        let mut ptr = cfg32(dev, 0x34) as u16 & 0xff;
        while ptr != 0 {
            let head = cfg32(dev, ptr);
            if head & 0xff == 0x09 {
                let b = cfg32(dev, ptr + 4);
                caps.push((
                    (head >> 24) as u8,
                    ptr,
                    b as u8,
                    cfg32(dev, ptr + 8),
                    cfg32(dev, ptr + 12),
                ));
            }
            ptr = (head >> 8) as u16 & 0xff;
        }
        caps
    }

    fn device(fail: bool) -> (VirtioPciDevice, Probe) {
        let probe = Probe {
            fail,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        };
        let shadow = Probe {
            activations: probe.activations.clone(),
            resets: probe.resets.clone(),
            last: probe.last.clone(),
            ..Default::default()
        };
        (
            VirtioPciDevice::new(Box::new(probe), mem()).unwrap(),
            shadow,
        )
    }

    fn setup_queue(dev: &mut VirtioPciDevice, index: u16, ring: &TestRing, vector: u16) {
        bar_w(dev, offsets::QUEUE_SELECT, 2, u64::from(index));
        bar_w(dev, offsets::QUEUE_SIZE, 2, u64::from(ring.size));
        bar_w(dev, offsets::QUEUE_DESC, 8, ring.desc);
        bar_w(dev, offsets::QUEUE_DRIVER, 8, ring.avail);
        bar_w(dev, offsets::QUEUE_DEVICE, 8, ring.used);
        bar_w(dev, offsets::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        bar_w(dev, offsets::QUEUE_ENABLE, 2, 1);
    }

    fn negotiate(dev: &mut VirtioPciDevice, high: u64, low: u64) -> u8 {
        bar_w(dev, offsets::DEVICE_STATUS, 1, 3);
        bar_w(dev, offsets::DRIVER_FEATURE_SELECT, 4, 0);
        bar_w(dev, offsets::DRIVER_FEATURE, 4, low);
        bar_w(dev, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        bar_w(dev, offsets::DRIVER_FEATURE, 4, high);
        bar_w(dev, offsets::DEVICE_STATUS, 1, 0xb);
        bar_r(dev, offsets::DEVICE_STATUS, 1) as u8
    }

    #[test]
    fn ids_capabilities_and_bar() {
        let (mut dev, _) = device(false);
        assert_eq!(cfg32(&mut dev, 0), 0x1042_1af4);
        assert_eq!(
            cfg32(&mut dev, 8),
            0x0100_0001,
            "class 01/00/00, revision 1"
        );
        assert_eq!(cfg32(&mut dev, 0x2c), 0x1100_1af4);
        assert_eq!(
            dev.bars(),
            vec![PciBar {
                index: 0,
                size: BAR_SIZE,
                kind: PciBarKind::Memory64,
                prefetchable: false
            }]
        );
        let caps = virtio_caps(&mut dev);
        let find = |t: u8| {
            let c = *caps.iter().find(|c| c.0 == t).unwrap();
            (c.2, c.3, c.4)
        };
        assert_eq!(find(1), (0, 0, 0x38), "common: BAR 0 + 0, 0x38 bytes");
        assert_eq!(find(2), (0, 0x3000, 8), "notify: 4 bytes per queue");
        assert_eq!(find(3), (0, 0x1000, 1), "ISR");
        assert_eq!(find(4), (0, 0x2000, 8), "device config");
        let notify = caps.iter().find(|c| c.0 == 2).unwrap().1;
        assert_eq!(cfg32(&mut dev, notify + 16), 4, "notify_off_multiplier");
        assert_eq!(cfg32(&mut dev, notify) >> 16 & 0xff, 20, "notify cap_len");
        assert!(caps.iter().any(|c| c.0 == 5), "PCI_CFG window present");
        // MSI-X: 3 vectors, table and PBA in BAR 0.
        let msix = dev.msix().unwrap();
        assert_eq!(msix.vectors(), 3);
        let io = dev.ioeventfds();
        assert_eq!(io.len(), 2);
        assert_eq!(
            (io[1].bar, io[1].offset, io[1].datamatch),
            (0, 0x3004, Datamatch::Any)
        );
    }

    #[test]
    fn activation_reset_and_reactivation() {
        let (mut dev, probe) = device(false);
        let m = dev.mem.clone();
        let ring = TestRing::new(&m, 0x10000, 16);
        assert_eq!(negotiate(&mut dev, 1, 1 << 9 | 1 << 29), 0xb);
        setup_queue(&mut dev, 0, &ring, 1);
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0xf);
        assert!(dev.is_active());
        assert_eq!(probe.activations.load(Ordering::SeqCst), 1);
        assert_eq!(
            *probe.last.lock().unwrap(),
            Some((1 << 32 | 1 << 29 | 1 << 9, vec![(0, 16)])),
            "only the enabled queue, with the negotiated features"
        );
        // Device configuration through BAR 0 + 0x2000, bounded by config_len.
        assert_eq!(bar_r(&mut dev, DEVICE_CONFIG_OFFSET + 6, 4), 0x0807);
        // Reset: the device stops, the registers go back to power-on values.
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0);
        assert!(!dev.is_active());
        assert_eq!(probe.resets.load(Ordering::SeqCst), 1);
        assert_eq!(bar_r(&mut dev, offsets::DEVICE_STATUS, 1), 0);
        assert_eq!(bar_r(&mut dev, offsets::QUEUE_ENABLE, 2), 0);
        assert_eq!(bar_r(&mut dev, offsets::QUEUE_MSIX_VECTOR, 2), 0xffff);
        assert_eq!(bar_r(&mut dev, offsets::QUEUE_SIZE, 2), 16);
        bar_w(&mut dev, offsets::DRIVER_FEATURE_SELECT, 4, 1);
        assert_eq!(bar_r(&mut dev, offsets::DRIVER_FEATURE, 4), 0);
        // A second reset of an inactive device does not reach the device.
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0);
        assert_eq!(probe.resets.load(Ordering::SeqCst), 1);
        // And it comes up again.
        assert_eq!(negotiate(&mut dev, 1, 0), 0xb);
        setup_queue(&mut dev, 1, &TestRing::new(&m, 0x20000, 8), 0xffff);
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0xf);
        assert_eq!(*probe.last.lock().unwrap(), Some((1 << 32, vec![(1, 8)])));
        drop(dev);
        assert_eq!(
            probe.resets.load(Ordering::SeqCst),
            2,
            "dropping stops an active device"
        );
    }

    #[test]
    fn invalid_queue_or_failed_activation_needs_reset() {
        let (mut dev, probe) = device(false);
        let m = dev.mem.clone();
        let triggers = Arc::new(Triggers::default());
        dev.msix.set_group(triggers.clone());
        negotiate(&mut dev, 1, 0);
        // Used ring outside guest RAM.
        let mut ring = TestRing::new(&m, 0x10000, 16);
        ring.used = 2 << 20;
        setup_queue(&mut dev, 0, &ring, 0xffff);
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0xf);
        assert!(!dev.is_active());
        assert_eq!(probe.activations.load(Ordering::SeqCst), 0);
        assert_eq!(bar_r(&mut dev, offsets::DEVICE_STATUS, 1), 0x4f);
        assert_eq!(
            bar_r(&mut dev, ISR_OFFSET, 1),
            2,
            "config change in the ISR"
        );
        assert_eq!(bar_r(&mut dev, ISR_OFFSET, 1), 0, "read clears");
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0);
        assert_eq!(bar_r(&mut dev, offsets::DEVICE_STATUS, 1), 0);

        let (mut dev, _) = device(true);
        negotiate(&mut dev, 1, 0);
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0xf);
        assert_eq!(bar_r(&mut dev, offsets::DEVICE_STATUS, 1), 0x4f);
    }

    #[test]
    fn notify_writes_and_interrupts() {
        let (mut dev, _) = device(false);
        let triggers = Arc::new(Triggers::default());
        dev.msix.set_group(triggers.clone());
        // MSI-X on, bus master on, every vector unmasked.
        let msix_cap = {
            let mut p = cfg32(&mut dev, 0x34) as u16 & 0xff;
            while cfg32(&mut dev, p) & 0xff != 0x11 {
                p = (cfg32(&mut dev, p) >> 8) as u16 & 0xff;
            }
            p
        };
        dev.config_write(0x04, &[0x06, 0x00]);
        dev.config_write(msix_cap + 3, &[0x80]);
        for v in 0..3u64 {
            dev.msix.write_table(v * 16 + 12, &[0; 4]);
        }
        assert!(dev.interrupt.dma_allowed());
        bar_w(&mut dev, offsets::QUEUE_SELECT, 2, 1);
        bar_w(&mut dev, offsets::QUEUE_MSIX_VECTOR, 2, 2);
        bar_w(&mut dev, offsets::CONFIG_MSIX_VECTOR, 2, 0);
        dev.interrupt.signal_queue(1);
        dev.interrupt.signal_queue(0); // no vector: ISR only
        dev.interrupt.signal_config();
        assert_eq!(*triggers.0.lock().unwrap(), vec![2, 0]);
        assert_eq!(bar_r(&mut dev, ISR_OFFSET, 4), 3);
        // Notify writes of any width reach the queue's eventfd; misaligned or past the queues: nothing.
        bar_w(&mut dev, NOTIFY_OFFSET + 4, 2, 1);
        assert_eq!(dev.notify[1].read().unwrap(), 1);
        bar_w(&mut dev, NOTIFY_OFFSET, 4, 0);
        assert_eq!(dev.notify[0].read().unwrap(), 1);
        bar_w(&mut dev, NOTIFY_OFFSET + 2, 2, 0);
        bar_w(&mut dev, NOTIFY_OFFSET + 8, 2, 2);
        assert!(dev.notify[0].read().is_err() && dev.notify[1].read().is_err());
        // Reset clears the vectors and the ISR.
        dev.interrupt.signal_queue(1);
        bar_w(&mut dev, offsets::DEVICE_STATUS, 1, 0);
        assert_eq!(bar_r(&mut dev, ISR_OFFSET, 1), 0);
        triggers.0.lock().unwrap().clear();
        dev.interrupt.signal_queue(1);
        assert!(triggers.0.lock().unwrap().is_empty());
    }

    #[test]
    fn pci_cfg_window_reaches_the_bar() {
        let (mut dev, _) = device(false);
        let caps = virtio_caps(&mut dev);
        let cap = caps.iter().find(|c| c.0 == 5).unwrap().1;
        // Read num_queues (BAR 0 + 0x12, 2 bytes) through the window.
        dev.config_write(cap + 4, &[0]);
        dev.config_write(cap + 8, &0x12u32.to_le_bytes());
        dev.config_write(cap + 12, &2u32.to_le_bytes());
        assert_eq!(cfg32(&mut dev, cap + 16) & 0xffff, 2);
        // Write the status through it.
        dev.config_write(cap + 8, &0x14u32.to_le_bytes());
        dev.config_write(cap + 12, &1u32.to_le_bytes());
        dev.config_write(cap + 16, &[1, 0, 0, 0]);
        assert_eq!(bar_r(&mut dev, offsets::DEVICE_STATUS, 1), 1);
        // MSI-X table entry 0's vector control (masked) through the window.
        dev.config_write(cap + 8, &(MSIX_TABLE_OFFSET + 12).to_le_bytes());
        dev.config_write(cap + 12, &4u32.to_le_bytes());
        assert_eq!(cfg32(&mut dev, cap + 16), 1);
        // Misaligned, a bad length or another BAR: nothing happens, the data reads as zero.
        for (bar, offset, length) in [
            (0u8, 0x13u32, 2u32),
            (0, 0x12, 3),
            (2, 0x12, 2),
            (0, 0x8000, 4),
        ] {
            dev.config_write(cap + 4, &[bar]);
            dev.config_write(cap + 8, &offset.to_le_bytes());
            dev.config_write(cap + 12, &length.to_le_bytes());
            assert_eq!(cfg32(&mut dev, cap + 16), 0, "{bar} {offset:#x} {length}");
            dev.config_write(cap + 16, &[0xff; 4]);
        }
        assert_eq!(bar_r(&mut dev, offsets::DEVICE_STATUS, 1), 1);
    }

    #[test]
    fn garbage_accesses() {
        let (mut dev, _) = device(false);
        for offset in [
            0u64,
            0x13,
            0x1001,
            0x2007,
            0x2fff,
            0x3003,
            0x4000,
            0x7fff,
            0x8000,
            u64::MAX,
        ] {
            for len in [0usize, 1, 2, 3, 4, 8, 16] {
                let mut buf = vec![0u8; len];
                dev.bar_read(0, offset, &mut buf);
                dev.bar_write(0, offset, &buf);
                dev.bar_read(3, offset, &mut buf);
                dev.bar_write(3, offset, &buf);
            }
        }
        for offset in (0u16..0x1000).step_by(3) {
            let mut b = [0u8; 4];
            dev.config_read(offset, &mut b);
        }
    }
}
