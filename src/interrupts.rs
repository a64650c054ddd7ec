//! The KVM side of MSI-X: GSI allocation, the VM's GSI routing table, and one irqfd per vector.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, including the routes of the in-kernel PIC and IOAPIC
//! that KVM_CREATE_IRQCHIP installed. [`MsiRouting`] therefore keeps the complete table: the default
//! irqchip routes of GSIs 0–23 (re-created exactly as KVM's `default_routing`, so COM1's IRQ 4 keeps
//! working) plus one MSI route per unmasked vector, and re-sends it whenever a route changes.
//!
//! [`KvmMsiGroup`] implements the device side's [`MsiInterruptGroup`]: each vector owns a GSI (from
//! 24 up) and an irqfd registered on it. Unmasking a vector installs an MSI route with the vector's
//! address and data; masking removes the route. Triggering writes the irqfd, and KVM injects the
//! interrupt without the VMM (the device models only fire unmasked vectors).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::pci::{MsiInterruptGroup, MsiMessage};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

/// GSIs the IOAPIC's pins use; MSI GSIs start after them.
pub const IOAPIC_PINS: u32 = 24;
/// GSIs 0–15 are also wired to the two 8259 PICs.
const PIC_IRQS: u32 = 16;

/// What installs a routing table: KVM (a [`VmFd`]) or a test double.
pub trait GsiRouter: Send + Sync {
    /// KVM_SET_GSI_ROUTING with `entries`.
    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()>;
}

impl GsiRouter for VmFd {
    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()> {
        let table = KvmIrqRouting::from_entries(entries)
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        VmFd::set_gsi_routing(self, &table).map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

fn msi_route(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: msg.addr as u32,
                address_hi: (msg.addr >> 32) as u32,
                data: msg.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The routes KVM_CREATE_IRQCHIP installs on x86: GSI n → IOAPIC pin n for n < 24, and for n < 16
/// also → PIC master (n < 8) or slave pin n % 8.
pub fn default_irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < PIC_IRQS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push(irqchip_route(gsi, chip, gsi % 8));
        }
    }
    routes
}

struct RoutingState {
    gsis: IdAllocator,
    msi_routes: BTreeMap<u32, MsiMessage>,
}

/// The VM's GSI routing table and GSI allocator (one per VM).
pub struct MsiRouting {
    router: Arc<dyn GsiRouter>,
    state: Mutex<RoutingState>,
}

impl MsiRouting {
    /// Routing for the VM behind `router`. Nothing is sent to KVM until the first MSI route.
    pub fn new(router: Arc<dyn GsiRouter>) -> io::Result<Self> {
        let last = u32::try_from(KVM_MAX_IRQ_ROUTES - 1).unwrap_or(u32::MAX);
        let gsis = IdAllocator::new(IOAPIC_PINS, last)
            .map_err(|e| io::Error::other(format!("GSI allocator: {e}")))?;
        Ok(Self {
            router,
            state: Mutex::new(RoutingState {
                gsis,
                msi_routes: BTreeMap::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, RoutingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free GSI for an MSI vector.
    pub fn allocate_gsi(&self) -> io::Result<u32> {
        self.state()
            .gsis
            .allocate_id()
            .map_err(|e| io::Error::other(format!("no free GSI: {e}")))
    }

    /// Returns `gsi` to the pool and drops its route.
    pub fn free_gsi(&self, gsi: u32) {
        let mut state = self.state();
        let _ = state.gsis.free_id(gsi);
        if state.msi_routes.remove(&gsi).is_some() {
            if let Err(e) = self.commit(&state) {
                log::warn!("cannot drop the route of GSI {gsi}: {e}");
            }
        }
    }

    /// Routes `gsi` to `msg`, or removes its route with None; sends the new table to KVM when it
    /// changed. If KVM refuses the table, the previous route is kept and the error returned.
    pub fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut state = self.state();
        let previous = state.msi_routes.get(&gsi).copied();
        if previous == msg {
            return Ok(());
        }
        match msg {
            Some(m) => state.msi_routes.insert(gsi, m),
            None => state.msi_routes.remove(&gsi),
        };
        let result = self.commit(&state);
        if result.is_err() {
            match previous {
                Some(m) => state.msi_routes.insert(gsi, m),
                None => state.msi_routes.remove(&gsi),
            };
        }
        result
    }

    /// The MSI route of `gsi`, if it has one.
    pub fn route(&self, gsi: u32) -> Option<MsiMessage> {
        self.state().msi_routes.get(&gsi).copied()
    }

    fn commit(&self, state: &RoutingState) -> io::Result<()> {
        let mut entries = default_irqchip_routes();
        entries.extend(
            state
                .msi_routes
                .iter()
                .map(|(gsi, msg)| msi_route(*gsi, *msg)),
        );
        self.router.set_gsi_routing(&entries)
    }
}

/// What registers irqfds: KVM (a [`VmFd`]) or a test double.
pub trait IrqfdRegistrar: Send + Sync {
    /// KVM_IRQFD: `fd` injects `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// KVM_IRQFD with the deassign flag.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
}

impl IrqfdRegistrar for VmFd {
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        VmFd::register_irqfd(self, fd, gsi).map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        VmFd::unregister_irqfd(self, fd, gsi).map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
}

/// One device's MSI-X vectors on KVM: a GSI and an irqfd each.
pub struct KvmMsiGroup {
    routing: Arc<MsiRouting>,
    irqfds: Arc<dyn IrqfdRegistrar>,
    vectors: Vec<Vector>,
}

impl KvmMsiGroup {
    /// Allocates `count` GSIs and registers an irqfd on each. Every vector starts without a route
    /// (masked).
    pub fn new(
        routing: Arc<MsiRouting>,
        irqfds: Arc<dyn IrqfdRegistrar>,
        count: u16,
    ) -> io::Result<Self> {
        let mut group = Self {
            routing,
            irqfds,
            vectors: Vec::with_capacity(usize::from(count)),
        };
        for _ in 0..count {
            let gsi = group.routing.allocate_gsi()?;
            let irqfd = match EventFd::new(libc::EFD_NONBLOCK) {
                Ok(fd) => fd,
                Err(e) => {
                    group.routing.free_gsi(gsi);
                    return Err(e);
                }
            };
            if let Err(e) = group.irqfds.register_irqfd(&irqfd, gsi) {
                group.routing.free_gsi(gsi);
                return Err(e);
            }
            // Dropping `group` on a later error unregisters what is in `vectors`.
            group.vectors.push(Vector { gsi, irqfd });
        }
        Ok(group)
    }

    /// The GSI of each vector.
    pub fn gsis(&self) -> Vec<u32> {
        self.vectors.iter().map(|v| v.gsi).collect()
    }

    fn vector(&self, vector: u16) -> io::Result<&Vector> {
        self.vectors.get(usize::from(vector)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "MSI-X vector {vector} past the group's {}",
                    self.vectors.len()
                ),
            )
        })
    }
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
        let v = self.vector(vector)?;
        self.routing.set_route(v.gsi, (!masked).then_some(msg))
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        self.vector(vector)?.irqfd.write(1)
    }
}

impl Drop for KvmMsiGroup {
    fn drop(&mut self) {
        for v in &self.vectors {
            if let Err(e) = self.irqfds.unregister_irqfd(&v.irqfd, v.gsi) {
                log::debug!("cannot unregister the irqfd of GSI {}: {e}", v.gsi);
            }
            self.routing.free_gsi(v.gsi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeKvm {
        tables: Mutex<Vec<Vec<kvm_irq_routing_entry>>>,
        irqfds: Mutex<Vec<(bool, u32)>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl GsiRouter for FakeKvm {
        fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()> {
            if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.tables.lock().unwrap().push(entries.to_vec());
            Ok(())
        }
    }

    impl IrqfdRegistrar for FakeKvm {
        fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.irqfds.lock().unwrap().push((true, gsi));
            Ok(())
        }
        fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> io::Result<()> {
            self.irqfds.lock().unwrap().push((false, gsi));
            Ok(())
        }
    }

    /// (gsi, type, irqchip-or-address_lo, pin-or-data)
    fn decode(e: &kvm_irq_routing_entry) -> (u32, u32, u32, u32) {
        if e.type_ == KVM_IRQ_ROUTING_MSI {
            // SAFETY: the entry's type says the `msi` member is the one written.
            let msi = unsafe { e.u.msi };
            (e.gsi, e.type_, msi.address_lo, msi.data)
        } else {
            // SAFETY: the entry's type says the `irqchip` member is the one written.
            let chip = unsafe { e.u.irqchip };
            (e.gsi, e.type_, chip.irqchip, chip.pin)
        }
    }

    #[test]
    fn default_routes_match_kvm() {
        let routes: Vec<_> = default_irqchip_routes().iter().map(decode).collect();
        assert_eq!(routes.len(), 24 + 16);
        // COM1's IRQ 4: IOAPIC pin 4 and master PIC pin 4.
        assert!(routes.contains(&(4, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, 4)));
        assert!(routes.contains(&(4, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_PIC_MASTER, 4)));
        assert!(routes.contains(&(10, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_PIC_SLAVE, 2)));
        assert!(routes.contains(&(23, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!routes
            .iter()
            .any(|r| r.0 >= 16 && r.2 != KVM_IRQCHIP_IOAPIC));
    }

    #[test]
    fn group_routes_masks_and_triggers() {
        let kvm = Arc::new(FakeKvm::default());
        let routing = Arc::new(MsiRouting::new(kvm.clone()).unwrap());
        let group = KvmMsiGroup::new(routing.clone(), kvm.clone(), 3).unwrap();
        assert_eq!(group.gsis(), vec![24, 25, 26]);
        assert_eq!(kvm.irqfds.lock().unwrap().len(), 3);
        // No table sent until a route exists.
        assert!(kvm.tables.lock().unwrap().is_empty());
        let msg = MsiMessage {
            addr: 0xfee0_1000,
            data: 0x4041,
        };
        group.update(1, msg, false).unwrap();
        {
            let tables = kvm.tables.lock().unwrap();
            let table: Vec<_> = tables.last().unwrap().iter().map(decode).collect();
            assert_eq!(table.len(), 41);
            assert!(table.contains(&(4, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, 4)));
            assert_eq!(
                *table.last().unwrap(),
                (25, KVM_IRQ_ROUTING_MSI, 0xfee0_1000, 0x4041)
            );
        }
        // Same state again: no ioctl.
        group.update(1, msg, false).unwrap();
        assert_eq!(kvm.tables.lock().unwrap().len(), 1);
        // Mask: route removed.
        group.update(1, msg, true).unwrap();
        assert_eq!(routing.route(25), None);
        assert_eq!(kvm.tables.lock().unwrap().last().unwrap().len(), 40);
        // Trigger writes the irqfd.
        group.trigger(2).unwrap();
        assert_eq!(group.vectors[2].irqfd.read().unwrap(), 1);
        assert!(group.trigger(3).is_err());
        assert!(group.update(9, msg, false).is_err());
        // A refused table keeps the old route.
        group.update(0, msg, false).unwrap();
        kvm.refuse.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(group
            .update(0, MsiMessage { addr: 1, data: 2 }, false)
            .is_err());
        assert_eq!(routing.route(24), Some(msg));
        kvm.refuse
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // Dropping the group unregisters its irqfds and frees its GSIs.
        drop(group);
        assert_eq!(
            kvm.irqfds.lock().unwrap()[3..],
            [(false, 24), (false, 25), (false, 26)]
        );
        assert_eq!(routing.route(24), None);
        assert_eq!(routing.allocate_gsi().unwrap(), 24);
    }

    #[test]
    fn gsis_run_out_cleanly() {
        let kvm = Arc::new(FakeKvm::default());
        let routing = Arc::new(MsiRouting::new(kvm.clone()).unwrap());
        let big = KvmMsiGroup::new(routing.clone(), kvm.clone(), 4000).unwrap();
        assert!(KvmMsiGroup::new(routing.clone(), kvm.clone(), 2048).is_err());
        drop(big);
        assert!(KvmMsiGroup::new(routing, kvm, 2048).is_ok());
    }
}
