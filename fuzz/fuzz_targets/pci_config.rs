//! PCI configuration space, BARs and MSI-X: bus 0 as flint builds it (host bridge, an NVMe
//! controller in slot 1, a virtio-blk disk in slot 2; virtio-net has the same transport and is
//! left out because each device costs file descriptors per input), reached the ways a guest can: the 0xCF8
//! address register and 0xCFC data window, the ECAM window, and MMIO on whatever the guest mapped
//! (BAR registers, MSI-X tables and PBAs, NVMe registers and doorbells, virtio common and device
//! configuration, notifications). Every access has any offset and width (0 to 8 bytes), so sizing
//! probes, BAR moves onto RAM or onto each other, capability-list walks, the virtio PCI_CFG window
//! and MSI-X masking are all reachable. The interrupt and ioeventfd sinks assert that every vector
//! exists and no ioeventfd lands on RAM or the APICs. The NVMe function runs without its worker
//! thread (its queues are run inline after each MMIO write); the virtio devices start their
//! workers if the fuzzer completes a driver handshake.
#![no_main]

use std::io;
use std::sync::{Arc, Mutex};

use devices::bus::{Bus, BusDevice};
use devices::nvme::pci::NvmePci;
use devices::nvme::NvmeConfig;
use devices::pci::{
    Datamatch, IoEventRegistrar, MsiInterruptGroup, MsiMessage, PciConfigIo, PciConfigMmio,
    PciRoot, PciRootConfig, SharedPciDevice,
};
use devices::virtio::VirtioPciDevice;
use devices::virtio_blk::{VirtioBlk, VirtioBlkConfig};
use flint_fuzz::{guest_memory, Input, MemDisk};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

const RAM: usize = 0x10_0000;
const MMIO32: (u64, u64) = (0xc000_0000, 0x2000_0000);
const MMIO64: (u64, u64) = (0x1_0000_0000, 0x4000_0000);
const ECAM: (u64, u64) = (0xe000_0000, 0x1000_0000);
const IOAPIC: (u64, u64) = (0xfec0_0000, 0x1000);
const LAPIC: (u64, u64) = (0xfee0_0000, 0x10_0000);
/// Largest BAR of the devices here (NVMe's BAR0 with 4 queue pairs is 16 KiB, virtio's 32 KiB).
/// Slot 3 has no device: accesses there must find nothing.
const BAR_SPAN: u64 = 0x8000;

/// Ioeventfds: each must be inside guest-physical space the root does not keep for RAM or APICs.
struct Ioevents;

impl IoEventRegistrar for Ioevents {
    fn register(&self, _fd: &EventFd, addr: u64, _d: Datamatch) -> io::Result<()> {
        let reserved = [(0, RAM as u64), IOAPIC, LAPIC];
        assert!(
            !reserved.iter().any(|(b, l)| (*b..b + l).contains(&addr)),
            "ioeventfd at {addr:#x} inside a reserved range"
        );
        Ok(())
    }
    fn unregister(&self, _fd: &EventFd, _addr: u64, _d: Datamatch) -> io::Result<()> {
        Ok(())
    }
}

/// MSI-X delivery: the vector must exist.
struct Vectors(u16);

impl MsiInterruptGroup for Vectors {
    fn update(&self, vector: u16, _msg: MsiMessage, _masked: bool) -> io::Result<()> {
        assert!(
            vector < self.0,
            "MSI-X update of vector {vector} of {}",
            self.0
        );
        Ok(())
    }
    fn trigger(&self, vector: u16) -> io::Result<()> {
        assert!(
            vector < self.0,
            "MSI-X trigger of vector {vector} of {}",
            self.0
        );
        Ok(())
    }
}

fn attach(root: &mut PciRoot, device: SharedPciDevice) {
    let msix = device.lock().unwrap().msix();
    if let Some(msix) = msix {
        msix.set_group(Arc::new(Vectors(msix.vectors())));
    }
    root.add_device(device).expect("attach");
}

/// The access width: 0 to 8 bytes, mostly the natural ones.
fn width(code: u8) -> usize {
    match code % 16 {
        0..=3 => 4,
        4..=6 => 2,
        7..=9 => 1,
        10 => 8,
        n => usize::from(n - 11), // 0, 1, 2, 3, 4 as odd cases
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = &guest_memory(RAM, 0x1_0000_0000 - 0x1000, 0x1000, &[]);
    let mmio = Arc::new(Bus::new());
    let mut root = PciRoot::new(
        PciRootConfig {
            mmio32: MMIO32,
            mmio64: Some(MMIO64),
            reserved: vec![(0, RAM as u64), IOAPIC, LAPIC],
        },
        mmio.clone(),
        Arc::new(Ioevents),
    )
    .expect("root");

    // The NVMe function without its worker thread: the harness runs the queues after each MMIO
    // write, on this thread, so a run is repeatable.
    let mut nvme = NvmeConfig::new("/fuzz/volume.img");
    nvme.max_queue_pairs = 4;
    nvme.volume_id = Some("vol-0123456789abcdef0".into());
    let disk = MemDisk::new(64 << 10, false, 4096 << nvme.mdts);
    let nvme = NvmePci::without_worker(&nvme, Box::new(disk), mem.clone()).expect("nvme");
    let nvme_controller = nvme.controller();
    attach(&mut root, Arc::new(Mutex::new(nvme)));

    let mut blk = VirtioBlkConfig::new("/fuzz/disk.img");
    blk.id = Some("fuzz".into());
    blk.queues = 2;
    let blk = VirtioBlk::with_backend(&blk, Box::new(MemDisk::new(64 << 10, false, 1 << 20)))
        .expect("virtio-blk");
    let blk = VirtioPciDevice::new(Box::new(blk), mem.clone()).expect("virtio-blk pci");
    attach(&mut root, Arc::new(Mutex::new(blk)));

    let root = Arc::new(Mutex::new(root));
    let mut cf8 = PciConfigIo::new(root.clone());
    let ecam = Arc::new(Mutex::new(PciConfigMmio::new(root.clone())));
    mmio.insert(ecam, ECAM.0, ECAM.1).expect("ECAM");

    let mut ops = 0;
    while !input.is_empty() && ops < 128 {
        ops += 1;
        let op = input.u8();
        let w = width(input.u8());
        let mut buf = [0u8; 8];
        match op % 8 {
            // The address register, and the data window at any port offset.
            0 => cf8.write(0, &input.u32().to_le_bytes()),
            1 => cf8.read(u64::from(input.u8() % 8), &mut buf[..w]),
            2 => {
                let port = u64::from(input.u8() % 8);
                buf = input.u64().to_le_bytes();
                cf8.write(port, &buf[..w]);
            }
            // ECAM: bus (mostly 0), device/function, register.
            3 | 4 => {
                let bus = u64::from(input.u8()).saturating_sub(0xf0);
                let devfn = u64::from(input.u8());
                let reg = u64::from(input.u16() % 0x1000);
                let addr = ECAM.0 + (bus << 20 | devfn << 12 | reg);
                if op % 8 == 3 {
                    mmio.read(addr, &mut buf[..w]);
                } else {
                    buf = input.u64().to_le_bytes();
                    mmio.write(addr, &buf[..w]);
                }
            }
            // MMIO inside a device's BAR 0 where the guest put it, or anywhere in the windows.
            _ => {
                let target = input.u8();
                let offset = u64::from(input.u16()) % BAR_SPAN;
                let slot = target % 4;
                let base = if slot == 0 {
                    let window = if target & 4 == 0 { MMIO32 } else { MMIO64 };
                    Some(window.0 + u64::from(input.u32()) % window.1)
                } else {
                    root.lock().unwrap().bar_mapping(slot, 0)
                };
                let Some(addr) = base.map(|b| b + if slot == 0 { 0 } else { offset }) else {
                    continue;
                };
                if op % 8 == 5 {
                    mmio.read(addr, &mut buf[..w]);
                } else {
                    buf = input.u64().to_le_bytes();
                    mmio.write(addr, &buf[..w]);
                    // What the NVMe worker would do after a doorbell.
                    nvme_controller.lock().unwrap().process_all();
                }
            }
        }
    }
    // Tear-down order of a VM: the buses go, then the devices (workers joined on drop).
    mmio.remove(ECAM.0);
    drop(cf8);
});
