//! Builds a VM from a validated [`VmConfig`] and runs it to the end: KVM set-up, guest memory, kernel
//! and boot structures, devices, vCPU threads, and the main thread's event loop.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use devices::acpi_pm::{self, AcpiPm};
use devices::boot_marker::BootMarker;
use devices::bus::Bus;
use devices::i8042::I8042;
use devices::serial::{self, SerialConsole};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::acpi::{write_acpi_tables, AcpiConfig};
use crate::arch::x86_64::boot_params::{initrd_addr_max, write_zero_page, ZeroPageConfig};
use crate::arch::x86_64::cpuid::{physical_address_bits, CpuProfile};
use crate::arch::x86_64::layout;
use crate::arch::x86_64::memory_map::{memory_map, ram_end, ram_ranges};
use crate::arch::x86_64::pvh::write_start_info;
use crate::arch::x86_64::regs::EntryMode;
use crate::config::{CpuProfileChoice, SerialMode, VmConfig, DEFAULT_CMDLINE};
use crate::console::ConsoleInput;
use crate::exit::{ExitController, VmOutcome};
use crate::loader::{load_initrd, load_kernel};
use crate::pci::PciSystem;
use crate::seccomp::{Sandbox, StartGate, ThreadClass};
use crate::vcpu::{self, BootEntry, VcpuRunContext};
use crate::volume::VolumeConfig;
use crate::{host, signals, terminal};
use devices::nvme::pci::NvmePci;
use devices::nvme::NvmeConfig;
use devices::worker::WorkerSpawner;

/// Runs the VM described by `config` until it stops, and says why it stopped.
pub fn run(config: &VmConfig, process_start: Instant) -> anyhow::Result<VmOutcome> {
    // -- seccomp sandbox (issue 6): compiled now, installed by each thread (src/seccomp/) --
    let sandbox = if config.seccomp {
        Sandbox::new()?
    } else {
        log::info!("seccomp: off (--no-seccomp)");
        Sandbox::disabled()
    };
    let sandbox = Arc::new(sandbox.with_forbidden_call_in(config.debug_forbidden_syscall));
    // -- end seccomp sandbox --
    let profile = resolve_cpu_profile(config.cpu_profile);
    let kvm = Kvm::new().context("cannot open /dev/kvm (is KVM available and accessible?)")?;
    check_kvm(&kvm, config.cpus)?;
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    check_address_width(
        config.memory,
        physical_address_bits(supported_cpuid.as_slice()),
    )?;

    // Shared with the PCI root (ioeventfds) and the MSI routing table, which use it from vCPU threads.
    let vm = Arc::new(kvm.create_vm().context("cannot create a KVM VM")?);
    // Guest RAM is registered before the irqchip and PIT exist: afterwards each memory-slot change
    // waits for KVM to synchronise with them, which costs 4-8 ms on PVM hosts (docs/benchmarks.md).
    let mem = create_guest_memory(config.memory)?;
    register_guest_memory(&vm, &mem)?;
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .context("KVM_SET_TSS_ADDR")?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .context("KVM_SET_IDENTITY_MAP_ADDR")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .context("KVM_CREATE_PIT2")?;

    let kernel = load_kernel(&mem, &config.kernel)?;
    let cmdline = guest_cmdline(config, profile, kernel.is_linux);
    let cmdline_len = write_cmdline(&mem, &cmdline)?;
    let low_ram_end = config.memory.min(layout::MMIO_HOLE_START);
    let initrd = match &config.initrd {
        Some(path) => {
            let limit = match kernel.mode {
                EntryMode::Linux64 => {
                    low_ram_end.min(initrd_addr_max(kernel.setup_header.as_ref()) + 1)
                }
                EntryMode::Pvh => low_ram_end,
            };
            Some(load_initrd(&mem, path, kernel.end, limit)?)
        }
        None => None,
    };
    let pci_mmio64 = crate::pci::mmio64_window(
        config.memory,
        physical_address_bits(supported_cpuid.as_slice()),
    );
    let rsdp = write_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: config.cpus,
            pci_mmio64,
        },
    )
    .context("cannot build the ACPI tables")?;
    let map = memory_map(config.memory);
    match kernel.mode {
        EntryMode::Linux64 => write_zero_page(
            &mem,
            &ZeroPageConfig {
                setup_header: kernel.setup_header,
                cmdline: (GuestAddress(layout::CMDLINE_ADDR), cmdline_len),
                initrd,
                memory_map: &map,
                rsdp,
            },
        )?,
        EntryMode::Pvh => {
            write_start_info(&mem, GuestAddress(layout::CMDLINE_ADDR), &map, initrd, rsdp)?
        }
    }
    log::info!(
        "guest: {} vCPU(s), {} MiB, {:?} entry at {:#x}, CPU profile {profile}, cmdline \"{cmdline}\"",
        config.cpus,
        config.memory >> 20,
        kernel.mode,
        kernel.entry.0,
    );

    let exit = Arc::new(ExitController::new().context("cannot create the exit eventfd")?);
    // Device workers are created by this sandboxed thread, never by the vCPU that starts a device.
    let spawner = crate::seccomp::spawner::start(sandbox.clone(), exit.clone())?;
    let platform = create_platform_devices(&vm, config, exit.clone(), process_start)?;

    let boot = BootEntry {
        mode: kernel.mode,
        entry: kernel.entry,
    };
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    for index in 0..config.cpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .with_context(|| format!("cannot create vCPU {index}"))?;
        vcpu::configure(
            &fd,
            index,
            config.cpus,
            &supported_cpuid,
            profile,
            &mem,
            (index == 0).then_some(boot),
        )?;
        vcpus.push(fd);
    }

    signals::install(&exit).context("cannot install signal handlers")?;
    let console_is_stdio = config.serial == SerialMode::Stdio;
    let raw_mode = if console_is_stdio {
        terminal::enter_raw_mode().context("cannot put the terminal in raw mode")?
    } else {
        None
    };
    let mut event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().context("cannot create the event loop")?;
    event_manager.add_subscriber(Arc::new(Mutex::new(WakeOnExit(exit.clone()))));
    if console_is_stdio {
        event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            platform.serial.clone(),
            platform.serial_input_space,
            exit.clone(),
            raw_mode.is_some(),
        ))));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let pio = Arc::new(platform.pio);
    let mmio = Arc::new(platform.mmio);
    // PCI bus 0: host bridge, 0xCF8/0xCFC, ECAM; then one NVMe controller per volume. Everything
    // attached lives until `run` returns (dropping an NVMe device stops its worker thread).
    let pci = PciSystem::new(vm.clone(), &pio, &mmio, config.memory, pci_mmio64)?;
    // -- EBS rate limits (issue 5): the instance's EBS cap, shared by every volume --
    let ebs = crate::volume::instance_ebs_limiter(&config.instance, config.ebs_burst)?;
    for (index, volume) in config.volumes.iter().enumerate() {
        attach_volume(&pci, &mem, &spawner, index, volume, &ebs)?;
    }
    // -- end EBS rate limits --
    // -- virtio-blk disks (issue 4): one virtio-pci device each, after the volumes --
    for (index, disk) in config.disks.iter().enumerate() {
        attach_disk(&pci, &mem, &spawner, index, disk)?;
    }
    // -- end virtio-blk disks --
    // -- virtio-net (issue 4): one virtio-pci device per --net, after the disks --
    let net_limits = if config.nets.is_empty() {
        devices::virtio_net::NetRateLimits::default()
    } else {
        crate::net::instance_net_limits(&config.net_cap, config.net_burst)?
    };
    for (index, net) in config.nets.iter().enumerate() {
        attach_net(&pci, &mem, &spawner, index, net, config.cpus, &net_limits)?;
    }
    // -- end virtio-net --
    let mut threads = Vec::with_capacity(vcpus.len());
    let start_gate = Arc::new(StartGate::new());
    for (index, fd) in vcpus.into_iter().enumerate() {
        let ctx = VcpuRunContext {
            pio: pio.clone(),
            mmio: mmio.clone(),
            exit: exit.clone(),
            stop: stop.clone(),
            process_start,
            sandbox: sandbox.clone(),
            start_gate: start_gate.clone(),
        };
        let index = index as u32;
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu::run(index, fd, ctx));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                // Stop the vCPUs already running before guest RAM goes away with this frame.
                exit.stop(VmOutcome::Error(format!(
                    "cannot start the thread of vCPU {index}: {e}"
                )));
                break;
            }
        }
    }
    // The vCPU threads are sandboxed and wait at the gate; the main thread sandboxes itself (it
    // creates no thread from here on) and only then lets the guest run.
    if let Err(e) = sandbox.install(ThreadClass::Main) {
        exit.stop(VmOutcome::Error(e.to_string()));
    }
    if exit.outcome().is_some() {
        stop.store(true, Ordering::Release);
    }
    start_gate.open();

    while exit.outcome().is_none() {
        if let Err(e) = event_manager.run() {
            exit.stop(VmOutcome::Error(format!("event loop failed: {e:?}")));
        }
        if let Some(signum) = signals::received_stop_signal() {
            exit.stop(VmOutcome::Signal(signum));
        }
    }
    stop_vcpus(&stop, threads);
    drop(raw_mode);
    // Leave nothing unwritten behind the guest's last line.
    let _ = std::io::stdout().flush();
    Ok(exit
        .outcome()
        .unwrap_or_else(|| VmOutcome::Error("VM stopped without a reason".into())))
}

/// Opens `volume` and attaches it as an NVMe controller, its I/O limited by its own caps and the
/// instance's shared EBS cap `ebs`.
fn attach_volume(
    pci: &PciSystem,
    mem: &GuestMemoryMmap,
    spawner: &WorkerSpawner,
    index: usize,
    volume: &VolumeConfig,
    ebs: &devices::rate_limiter::SharedRateLimiter,
) -> anyhow::Result<()> {
    let mut nvme = NvmeConfig::new(&volume.path);
    nvme.read_only = volume.read_only;
    nvme.block_size = volume.block_size;
    nvme.volume_id = volume.id.clone();
    nvme.device_name = volume
        .name
        .clone()
        .or_else(|| devices::nvme::default_device_name(index));
    let device =
        NvmePci::with_worker_spawner(&nvme, mem.clone(), Some(volume.limiter(ebs)?), spawner)
            .map_err(|e| anyhow::anyhow!("--volume path={}: {e}", volume.path.display()))?;
    let slot = pci.attach_pci_device(Arc::new(Mutex::new(device)))?;
    log::info!(
        "volume {} is NVMe controller {index} at PCI 00:{slot:02x}.0",
        volume.path.display()
    );
    Ok(())
}

// -- virtio-blk disks (issue 4) --
/// Opens `disk` and attaches it as a virtio-blk device.
fn attach_disk(
    pci: &PciSystem,
    mem: &GuestMemoryMmap,
    spawner: &WorkerSpawner,
    index: usize,
    disk: &crate::disk::DiskConfig,
) -> anyhow::Result<()> {
    use devices::virtio::VirtioPciDevice;
    use devices::virtio_blk::{VirtioBlk, VirtioBlkConfig};
    let context =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("--disk path={}: {e}", disk.path.display());
    let mut config = VirtioBlkConfig::new(&disk.path);
    config.read_only = disk.read_only;
    config.id = disk.id.clone();
    config.queues = disk.queues;
    let mut blk = VirtioBlk::new(&config).map_err(|e| context(&e))?;
    blk.set_rate_limiter(disk.limiter()?);
    let (sectors, id) = (blk.sectors(), blk.id());
    let mut device = VirtioPciDevice::new(Box::new(blk), mem.clone()).map_err(|e| context(&e))?;
    device.set_worker_spawner(spawner.clone());
    let slot = pci.attach_pci_device(Arc::new(Mutex::new(device)))?;
    log::info!(
        "disk {} is virtio-blk device {index} at PCI 00:{slot:02x}.0 ({sectors} sectors, id {id}{})",
        disk.path.display(),
        if disk.read_only { ", read-only" } else { "" }
    );
    Ok(())
}
// -- end virtio-blk disks --

// -- virtio-net (issue 4) --
/// Opens the TAP `net` names (one queue per queue pair) and attaches a virtio-net device on it.
fn attach_net(
    pci: &PciSystem,
    mem: &GuestMemoryMmap,
    spawner: &WorkerSpawner,
    index: usize,
    net: &crate::net::NetConfig,
    cpus: u32,
    limits: &devices::virtio_net::NetRateLimits,
) -> anyhow::Result<()> {
    use devices::virtio::VirtioPciDevice;
    use devices::virtio_net::VirtioNet;
    let context = |e: &dyn std::fmt::Display| anyhow::anyhow!("--net tap={}: {e}", net.tap);
    let pairs = net.queue_pairs(cpus);
    let taps = match crate::net::open_tap(&net.tap, pairs) {
        // A single-queue TAP made by someone else refuses IFF_MULTI_QUEUE: without an explicit
        // queues=, fall back to one pair rather than fail.
        Err(e) if net.queues.is_none() && pairs > 1 => {
            let taps = crate::net::open_tap(&net.tap, 1).map_err(|_| context(&e))?;
            log::warn!("--net tap={}: {e}; using one queue pair", net.tap);
            taps
        }
        opened => opened.map_err(|e| context(&e))?,
    };
    let mac = net.mac();
    // The device sets the TAP's offloads and attaches queues as the guest's driver asks.
    let control = crate::net::TapQueues::new(&taps).map_err(|e| context(&e))?;
    let pairs = taps.len();
    let device = VirtioNet::new(taps, mac)
        .map_err(|e| context(&e))?
        .with_tap_control(Box::new(control))
        .with_rate_limits(limits.clone());
    let mut device =
        VirtioPciDevice::new(Box::new(device), mem.clone()).map_err(|e| context(&e))?;
    device.set_worker_spawner(spawner.clone());
    let slot = pci.attach_pci_device(Arc::new(Mutex::new(device)))?;
    log::info!(
        "TAP {} is virtio-net device {index} at PCI 00:{slot:02x}.0 (MAC {}, {pairs} queue pair{})",
        net.tap,
        crate::net::format_mac(&mac),
        if pairs == 1 { "" } else { "s" }
    );
    Ok(())
}
// -- end virtio-net --

fn resolve_cpu_profile(choice: CpuProfileChoice) -> CpuProfile {
    match choice {
        CpuProfileChoice::Fixed(profile) => profile,
        CpuProfileChoice::Auto if host::is_pvm_host() => {
            log::info!(
                "PVM host detected (/sys/module/kvm_pvm): using the pvm-compat CPU profile; \
                 --cpu-profile host overrides"
            );
            CpuProfile::PvmCompat
        }
        CpuProfileChoice::Auto => CpuProfile::Host,
    }
}

fn check_kvm(kvm: &Kvm, cpus: u32) -> anyhow::Result<()> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
    ] {
        if !kvm.check_extension(cap) {
            bail!("this host's KVM lacks {name}, which flint needs");
        }
    }
    let max = kvm.get_max_vcpus();
    if cpus as usize > max {
        bail!("--cpus {cpus}: this host's KVM allows at most {max} vCPUs per VM");
    }
    Ok(())
}

fn check_address_width(memory: u64, bits: Option<u32>) -> anyhow::Result<()> {
    let end = ram_end(memory);
    // Without the leaf, assume the 36 bits every x86_64 CPU has.
    let bits = bits.unwrap_or(36);
    let limit = 1u128 << bits;
    if u128::from(end) > limit {
        bail!(
            "--memory {}: guest RAM would end at {end:#x}, beyond the {bits}-bit physical \
             address space ({}) of this host's CPUs",
            crate::config::format_size(memory),
            crate::config::format_size(u64::try_from(limit).unwrap_or(u64::MAX))
        );
    }
    Ok(())
}

fn create_guest_memory(memory: u64) -> anyhow::Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(memory)
        .into_iter()
        .map(|(start, len)| Ok((GuestAddress(start), usize::try_from(len)?)))
        .collect::<Result<_, std::num::TryFromIntError>>()
        .context("guest RAM does not fit in this host's address space")?;
    GuestMemoryMmap::from_ranges(&ranges)
        .with_context(|| format!("cannot map {} MiB of guest RAM", memory >> 20))
}

fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> anyhow::Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .context("guest RAM region has no host mapping")?;
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // Why this is sound: `host_addr` and `len` are the start and exact length of a live mapping
        // owned by `mem` (vm-memory's regions are disjoint, so slots never overlap), and KVM touches a
        // slot only while a vCPU runs: `run` joins every vCPU thread before `mem` is dropped.
        // SAFETY: the slot describes memory that stays mapped for as long as any vCPU can use it.
        unsafe { vm.set_user_memory_region(region_desc) }
            .with_context(|| format!("KVM_SET_USER_MEMORY_REGION for slot {slot}"))?;
    }
    Ok(())
}

fn guest_cmdline(config: &VmConfig, profile: CpuProfile, is_linux: bool) -> String {
    let base = config.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    if profile == CpuProfile::PvmCompat && is_linux {
        host::append_missing_params(base, host::PVM_LINUX_PARAMS)
    } else {
        base.trim().to_string()
    }
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> anyhow::Result<usize> {
    let bytes = cmdline.as_bytes();
    if bytes.contains(&0) {
        bail!("--cmdline: the command line contains a NUL byte");
    }
    if bytes.len() >= layout::CMDLINE_MAX_SIZE {
        bail!(
            "--cmdline: {} bytes is too long (at most {})",
            bytes.len(),
            layout::CMDLINE_MAX_SIZE - 1
        );
    }
    let addr = GuestAddress(layout::CMDLINE_ADDR);
    mem.write_slice(bytes, addr)
        .and_then(|_| mem.write_obj(0u8, GuestAddress(layout::CMDLINE_ADDR + bytes.len() as u64)))
        .context("cannot write the command line into guest memory")?;
    Ok(bytes.len())
}

/// The legacy platform devices and the buses that reach them.
struct PlatformDevices {
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialConsole>>,
    serial_input_space: EventFd,
}

fn create_platform_devices(
    vm: &VmFd,
    config: &VmConfig,
    exit: Arc<ExitController>,
    process_start: Instant,
) -> anyhow::Result<PlatformDevices> {
    let serial_out: Box<dyn Write + Send> = match &config.serial {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::Off => Box::new(std::io::sink()),
        SerialMode::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--serial file={}", path.display()))?,
        ),
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?;
    vm.register_irqfd(&serial_irq, layout::COM1_IRQ)
        .context("cannot connect the serial port's interrupt (KVM_IRQFD)")?;
    let input_space = EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        serial_irq,
        input_space.try_clone().context("eventfd")?,
        serial_out,
    )));

    let pio = Bus::new();
    pio.insert(
        serial.clone(),
        u64::from(layout::COM1_PORT),
        serial::REGISTER_SPACE_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(layout::I8042_PORT),
        5,
    )?;
    pio.insert(
        Arc::new(Mutex::new(AcpiPm::new(exit))),
        u64::from(layout::ACPI_PM_PORT),
        acpi_pm::REGISTER_SPACE_LEN,
    )?;

    let mmio = Bus::new();
    mmio.insert(
        Arc::new(Mutex::new(BootMarker::new(process_start))),
        layout::BOOT_MARKER_ADDR,
        0x1000,
    )?;
    Ok(PlatformDevices {
        pio,
        mmio,
        serial,
        serial_input_space: input_space,
    })
}

/// Drains the exit eventfd so the event loop returns and the main loop can look at the outcome.
struct WakeOnExit(Arc<ExitController>);

impl MutEventSubscriber for WakeOnExit {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.wake_fd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.wake_fd(), EventSet::IN)) {
            self.0.stop(VmOutcome::Error(format!(
                "cannot watch the exit eventfd: {e:?}"
            )));
        }
    }
}

/// Asks every vCPU thread to stop and waits for it, re-sending the kick signal until the thread has
/// left KVM_RUN (a kick that lands just before the thread enters KVM_RUN is otherwise lost).
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for handle in threads {
        while !handle.is_finished() {
            if let Err(e) = handle.kill(signals::vcpu_kick_signal()) {
                log::debug!("cannot kick a vCPU thread: {e}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_width_check() {
        assert!(check_address_width(144 << 30, Some(46)).is_ok());
        let err = check_address_width(1000 << 40, Some(46))
            .unwrap_err()
            .to_string();
        assert!(err.contains("46-bit"), "{err}");
        assert!(check_address_width(64 << 30, None).is_err());
    }
}
