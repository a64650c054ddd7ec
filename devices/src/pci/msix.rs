//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, the enable and
//! function-mask bits of its capability, and delivery through an [`MsiInterruptGroup`].

use std::sync::{Arc, Mutex, MutexGuard};

use super::{MsiMessage, PciError, SharedMsiGroup, PCI_NUM_BARS};

/// Bytes per MSI-X table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors an MSI-X capability can declare.
const MAX_VECTORS: u16 = 2048;
/// Vector control: the per-vector mask bit (the only writable bit).
const VECTOR_MASKED: u32 = 1;

/// Where a device puts its MSI-X table and PBA, and how many vectors it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors, 1–2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Size of the table in bytes.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.addr_lo.to_le_bytes());
        b[4..8].copy_from_slice(&self.addr_hi.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: [u8; 16]) -> Self {
        let dword = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            addr_lo: dword(0),
            addr_hi: dword(4),
            data: dword(8),
            control: dword(12) & VECTOR_MASKED,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

struct State {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    bus_master: bool,
    group: Option<SharedMsiGroup>,
    /// What the group was last told per vector, so unchanged state is not re-sent.
    reported: Vec<Option<(MsiMessage, bool)>>,
    /// A group error was logged at warning level already (the guest can provoke them: later ones
    /// go to debug).
    error_logged: bool,
}

impl State {
    fn masked(&self, vector: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[vector].control & VECTOR_MASKED != 0
    }

    fn is_pending(&self, vector: usize) -> bool {
        self.pending[vector / 64] & (1 << (vector % 64)) != 0
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        let bit = 1u64 << (vector % 64);
        if pending {
            self.pending[vector / 64] |= bit;
        } else {
            self.pending[vector / 64] &= !bit;
        }
    }

    /// Tells the group about `vector` if its message or mask changed, and delivers a pending message
    /// the vector was waiting to send when it became unmasked.
    fn log_error(&mut self, what: &str, vector: usize, e: std::io::Error) {
        let level = if self.error_logged {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        self.error_logged = true;
        log::log!(level, "MSI-X vector {vector}: cannot {what}: {e}");
    }

    fn sync(&mut self, vector: usize) {
        let Some(group) = self.group.clone() else {
            return;
        };
        let masked = self.masked(vector);
        let now = (self.entries[vector].message(), masked);
        if self.reported[vector] != Some(now) {
            if let Err(e) = group.update(vector as u16, now.0, masked) {
                self.log_error("update its route", vector, e);
            }
            self.reported[vector] = Some(now);
        }
        if !masked && self.bus_master && self.is_pending(vector) {
            self.set_pending(vector, false);
            if let Err(e) = group.trigger(vector as u16) {
                self.log_error("deliver", vector, e);
            }
        }
    }

    fn sync_all(&mut self) {
        for vector in 0..self.entries.len() {
            self.sync(vector);
        }
    }
}

/// A device's MSI-X state, shared between the device model (which calls [`Msix::notify`], from any
/// thread), its configuration space (enable, function mask, bus master) and the root (which routes the
/// guest's table and PBA accesses here). Cloning gives another handle to the same state.
///
/// Semantics (PCI 3.0 §6.8.2): all vectors start masked; a vector is delivered only when MSI-X is
/// enabled, the function is not masked, the vector is not masked and bus mastering is on. An event on
/// a masked vector sets its pending bit, and unmasking delivers it and clears the bit. With MSI-X
/// disabled or bus mastering off an event is dropped (flint has no INTx).
#[derive(Clone)]
pub struct Msix {
    layout: MsixLayout,
    state: Arc<Mutex<State>>,
}

impl Msix {
    /// MSI-X state for `layout`, with no interrupt group yet (events only set pending bits until the
    /// VMM calls [`Msix::set_group`]).
    pub fn new(layout: MsixLayout) -> Result<Self, PciError> {
        if layout.vectors == 0 || layout.vectors > MAX_VECTORS {
            return Err(PciError::MsixLayout("vector count must be 1-2048"));
        }
        if layout.table_bar >= PCI_NUM_BARS || layout.pba_bar >= PCI_NUM_BARS {
            return Err(PciError::MsixLayout("BAR index past 5"));
        }
        if layout.table_offset % 8 != 0 || layout.pba_offset % 8 != 0 {
            return Err(PciError::MsixLayout("table and PBA must be 8-byte aligned"));
        }
        if layout.table_bar == layout.pba_bar {
            let table =
                u64::from(layout.table_offset)..u64::from(layout.table_offset) + layout.table_len();
            let pba = u64::from(layout.pba_offset)..u64::from(layout.pba_offset) + layout.pba_len();
            if table.start < pba.end && pba.start < table.end {
                return Err(PciError::MsixLayout("table and PBA overlap"));
            }
        }
        let n = usize::from(layout.vectors);
        Ok(Self {
            layout,
            state: Arc::new(Mutex::new(State {
                entries: vec![
                    Entry {
                        addr_lo: 0,
                        addr_hi: 0,
                        data: 0,
                        control: VECTOR_MASKED,
                    };
                    n
                ],
                pending: vec![0; n.div_ceil(64)],
                enabled: false,
                function_masked: false,
                bus_master: false,
                group: None,
                reported: vec![None; n],
                error_logged: false,
            })),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table and PBA layout.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.layout.vectors
    }

    /// Connects the vectors to `group` and tells it every vector's current message and mask.
    pub fn set_group(&self, group: SharedMsiGroup) {
        let mut state = self.state();
        state.group = Some(group);
        state.reported.iter_mut().for_each(|r| *r = None);
        state.sync_all();
    }

    /// The device signals `vector`: delivered now if allowed, else left pending (see the type's doc).
    /// A vector past the table is ignored.
    pub fn notify(&self, vector: u16) {
        let mut state = self.state();
        let v = usize::from(vector);
        if v >= state.entries.len() || !state.enabled || !state.bus_master {
            return;
        }
        if state.masked(v) {
            state.set_pending(v, true);
            return;
        }
        if let Some(group) = state.group.clone() {
            if let Err(e) = group.trigger(vector) {
                state.log_error("deliver", v, e);
            }
        } else {
            state.set_pending(v, true);
        }
    }

    /// Whether MSI-X is enabled (message control bit 15).
    pub fn enabled(&self) -> bool {
        self.state().enabled
    }

    /// Whether the whole function is masked (message control bit 14).
    pub fn function_masked(&self) -> bool {
        self.state().function_masked
    }

    /// Whether `vector`'s own mask bit is set (true for a vector past the table).
    pub fn vector_masked(&self, vector: u16) -> bool {
        self.state()
            .entries
            .get(usize::from(vector))
            .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// Whether `vector` has a pending message.
    pub fn pending(&self, vector: u16) -> bool {
        let state = self.state();
        usize::from(vector) < state.entries.len() && state.is_pending(usize::from(vector))
    }

    /// The message in `vector`'s table entry.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.state()
            .entries
            .get(usize::from(vector))
            .map(Entry::message)
    }

    /// The configuration space's message control was written.
    pub(crate) fn set_control(&self, enabled: bool, function_masked: bool) {
        let mut state = self.state();
        if state.enabled != enabled || state.function_masked != function_masked {
            state.enabled = enabled;
            state.function_masked = function_masked;
            state.sync_all();
        }
    }

    /// The configuration space's bus-master bit changed.
    pub(crate) fn set_bus_master(&self, bus_master: bool) {
        let mut state = self.state();
        if state.bus_master != bus_master {
            state.bus_master = bus_master;
            state.sync_all();
        }
    }

    /// The guest reads the table at `offset` (any length; bytes past the table are left alone).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let state = self.state();
        let len = self.layout.table_len();
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(o) = offset.checked_add(i as u64).filter(|o| *o < len) else {
                break;
            };
            let entry = &state.entries[(o / MSIX_ENTRY_SIZE) as usize];
            *byte = entry.bytes()[(o % MSIX_ENTRY_SIZE) as usize];
        }
    }

    /// The guest writes the table at `offset` (any length; bytes past the table are ignored). Changed
    /// entries are re-sent to the group; an unmasked vector with a pending message fires.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        let mut state = self.state();
        let len = self.layout.table_len();
        let mut touched: Vec<usize> = Vec::new();
        for (i, byte) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64).filter(|o| *o < len) else {
                break;
            };
            let vector = (o / MSIX_ENTRY_SIZE) as usize;
            let mut bytes = state.entries[vector].bytes();
            bytes[(o % MSIX_ENTRY_SIZE) as usize] = *byte;
            state.entries[vector] = Entry::from_bytes(bytes);
            if touched.last() != Some(&vector) {
                touched.push(vector);
            }
        }
        for vector in touched {
            state.sync(vector);
        }
    }

    /// The guest reads the PBA at `offset` (any length; bytes past it are left alone).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let state = self.state();
        let len = self.layout.pba_len();
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(o) = offset.checked_add(i as u64).filter(|o| *o < len) else {
                break;
            };
            *byte = state.pending[(o / 8) as usize].to_le_bytes()[(o % 8) as usize];
        }
    }

    /// The guest writes the PBA: it is read-only, so nothing happens.
    pub fn write_pba(&self, _offset: u64, _data: &[u8]) {}

    /// Which MSI-X structure an access at `offset` into BAR `bar` falls in, if any: the table or the
    /// PBA, with the offset into it.
    pub fn region(&self, bar: u8, offset: u64) -> Option<MsixRegion> {
        let l = &self.layout;
        let inside = |b: u8, start: u32, len: u64| {
            (b == bar)
                .then(|| offset.checked_sub(u64::from(start)))
                .flatten()
                .filter(|o| *o < len)
        };
        if let Some(o) = inside(l.table_bar, l.table_offset, l.table_len()) {
            return Some(MsixRegion::Table(o));
        }
        inside(l.pba_bar, l.pba_offset, l.pba_len()).map(MsixRegion::Pba)
    }
}

/// Where in the MSI-X structures a BAR access lands (see [`Msix::region`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixRegion {
    /// At this offset into the table.
    Table(u64),
    /// At this offset into the PBA.
    Pba(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::MsiInterruptGroup;
    use std::io;

    #[derive(Default)]
    pub(crate) struct Recorder {
        pub updates: Mutex<Vec<(u16, MsiMessage, bool)>>,
        pub triggers: Mutex<Vec<u16>>,
    }

    impl MsiInterruptGroup for Recorder {
        fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
            self.updates.lock().unwrap().push((vector, msg, masked));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.triggers.lock().unwrap().push(vector);
            Ok(())
        }
    }

    fn layout(vectors: u16) -> MsixLayout {
        MsixLayout {
            vectors,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        }
    }

    fn setup(vectors: u16) -> (Msix, Arc<Recorder>) {
        let msix = Msix::new(layout(vectors)).unwrap();
        let rec = Arc::new(Recorder::default());
        msix.set_group(rec.clone());
        (msix, rec)
    }

    fn program(msix: &Msix, vector: u64, addr: u64, data: u32) {
        let base = vector * MSIX_ENTRY_SIZE;
        msix.write_table(base, &addr.to_le_bytes());
        msix.write_table(base + 8, &data.to_le_bytes());
    }

    fn unmask(msix: &Msix, vector: u64) {
        msix.write_table(vector * MSIX_ENTRY_SIZE + 12, &0u32.to_le_bytes());
    }

    fn triggers(rec: &Recorder) -> Vec<u16> {
        std::mem::take(&mut *rec.triggers.lock().unwrap())
    }

    #[test]
    fn layout_validation() {
        assert!(Msix::new(layout(0)).is_err());
        assert!(Msix::new(layout(2049)).is_err());
        assert!(Msix::new(MsixLayout {
            table_offset: 4,
            ..layout(1)
        })
        .is_err());
        assert!(Msix::new(MsixLayout {
            pba_bar: 6,
            ..layout(1)
        })
        .is_err());
        // 512 vectors * 16 = 0x2000 bytes: the table would run into the PBA.
        assert!(Msix::new(layout(512)).is_err());
        assert!(Msix::new(layout(256)).is_ok());
        assert_eq!(layout(65).pba_len(), 16);
    }

    #[test]
    fn table_at_every_width() {
        let (msix, _) = setup(4);
        // Initial state: zero message, masked.
        let mut d = [0u8; 4];
        msix.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        // qword write of the address, dword data.
        program(&msix, 1, 0xfee0_1000, 0x4041);
        let mut q = [0u8; 8];
        msix.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        // byte and word writes.
        msix.write_table(2 * 16, &[0x00, 0x20]);
        msix.write_table(2 * 16 + 2, &[0xe0]);
        msix.write_table(2 * 16 + 3, &[0xfe]);
        msix.write_table(2 * 16 + 8, &[0x33]);
        assert_eq!(
            msix.message(2),
            Some(MsiMessage {
                addr: 0xfee0_2000,
                data: 0x33
            })
        );
        let mut w = [0u8; 2];
        msix.read_table(2 * 16 + 2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0xfee0);
        // A whole entry in one 16-byte access.
        let mut e = [0u8; 16];
        msix.read_table(16, &mut e);
        assert_eq!(&e[0..4], &0xfee0_1000u32.to_le_bytes());
        assert_eq!(&e[8..12], &0x4041u32.to_le_bytes());
        // Reserved vector-control bits read 0.
        msix.write_table(3 * 16 + 12, &0xffff_fffeu32.to_le_bytes());
        msix.read_table(3 * 16 + 12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
        assert!(!msix.vector_masked(3));
    }

    #[test]
    fn garbage_table_and_pba_accesses() {
        let (msix, _) = setup(3);
        for offset in [0u64, 7, 15, 47, 48, 49, 100, u64::MAX - 2, u64::MAX] {
            for len in [0usize, 1, 3, 8, 17, 64] {
                let mut buf = vec![0x5au8; len];
                msix.read_table(offset, &mut buf);
                msix.write_table(offset, &buf);
                msix.read_pba(offset, &mut buf);
                msix.write_pba(offset, &buf);
            }
        }
        let mut buf = [0xaau8; 4];
        msix.read_table(46, &mut buf);
        assert_eq!(&buf[2..], &[0xaa, 0xaa]);
        msix.notify(3);
        msix.notify(u16::MAX);
    }

    #[test]
    fn delivery_needs_enable_bus_master_and_unmask() {
        let (msix, rec) = setup(2);
        program(&msix, 0, 0xfee0_0000, 0x30);
        // Disabled: dropped, not pending.
        msix.notify(0);
        assert!(!msix.pending(0));
        msix.set_control(true, false);
        msix.notify(0);
        assert!(triggers(&rec).is_empty());
        assert!(!msix.pending(0), "bus master off drops the event");
        msix.set_bus_master(true);
        // Still vector-masked: pending.
        msix.notify(0);
        assert!(msix.pending(0));
        assert!(triggers(&rec).is_empty());
        let mut pba = [0u8; 8];
        msix.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1);
        // Unmask: fires and clears.
        unmask(&msix, 0);
        assert_eq!(triggers(&rec), vec![0]);
        assert!(!msix.pending(0));
        msix.notify(0);
        assert_eq!(triggers(&rec), vec![0]);
        // The group saw the route unmasked with the message.
        let updates = rec.updates.lock().unwrap().clone();
        assert_eq!(
            updates.last(),
            Some(&(
                0,
                MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x30
                },
                false
            ))
        );
    }

    #[test]
    fn function_mask_holds_and_releases_every_vector() {
        let (msix, rec) = setup(70);
        msix.set_bus_master(true);
        msix.set_control(true, true);
        for v in [0u64, 5, 69] {
            program(&msix, v, 0xfee0_0000, v as u32);
            unmask(&msix, v);
        }
        assert!(!msix.vector_masked(69));
        msix.notify(5);
        msix.notify(69);
        assert!(msix.pending(5) && msix.pending(69));
        let mut pba = [0u8; 16];
        msix.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba[8..].try_into().unwrap()), 1 << 5);
        assert!(triggers(&rec).is_empty());
        msix.set_control(true, false);
        let mut fired = triggers(&rec);
        fired.sort();
        assert_eq!(fired, vec![5, 69]);
        assert!(!msix.pending(5) && !msix.pending(69));
        // Re-masking a vector reports it masked to the group.
        msix.write_table(5 * 16 + 12, &[1]);
        let last = *rec.updates.lock().unwrap().last().unwrap();
        assert_eq!((last.0, last.2), (5, true));
        msix.notify(5);
        assert!(msix.pending(5));
        assert!(triggers(&rec).is_empty());
    }

    #[test]
    fn unchanged_state_is_not_resent() {
        let (msix, rec) = setup(1);
        let n = rec.updates.lock().unwrap().len();
        msix.write_table(12, &[1]);
        msix.set_bus_master(true);
        assert_eq!(rec.updates.lock().unwrap().len(), n);
        program(&msix, 0, 0xfee0_0000, 7);
        assert!(rec.updates.lock().unwrap().len() > n);
    }

    #[test]
    fn events_before_a_group_stay_pending() {
        let msix = Msix::new(layout(1)).unwrap();
        msix.set_bus_master(true);
        msix.set_control(true, false);
        unmask(&msix, 0);
        msix.notify(0);
        assert!(msix.pending(0));
        let rec = Arc::new(Recorder::default());
        msix.set_group(rec.clone());
        assert_eq!(triggers(&rec), vec![0]);
    }

    #[test]
    fn region_decode() {
        let msix = Msix::new(MsixLayout {
            vectors: 4,
            table_bar: 0,
            table_offset: 0x1000,
            pba_bar: 2,
            pba_offset: 0,
        })
        .unwrap();
        assert_eq!(msix.region(0, 0x1000), Some(MsixRegion::Table(0)));
        assert_eq!(msix.region(0, 0x103f), Some(MsixRegion::Table(0x3f)));
        assert_eq!(msix.region(0, 0x1040), None);
        assert_eq!(msix.region(0, 0xfff), None);
        assert_eq!(msix.region(2, 7), Some(MsixRegion::Pba(7)));
        assert_eq!(msix.region(2, 8), None);
        assert_eq!(msix.region(1, 0x1000), None);
        assert_eq!(msix.region(0, u64::MAX), None);
    }
}
