//! vCPU set-up and the vCPU thread's run loop: KVM_RUN, then route each port-I/O and MMIO exit to the
//! device that owns the address, until the VM stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use devices::bus::Bus;
use devices::ExitReason;
use kvm_bindings::{
    kvm_run, CpuId, Msrs, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO_OUT, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::cpuid::{shape_cpuid, CpuProfile};
use crate::arch::x86_64::regs::{entry_regs, initial_fpu, setup_sregs, EntryMode};
use crate::arch::x86_64::{lapic, msr};
use crate::exit::{ExitController, VmOutcome};
use crate::seccomp::{Sandbox, StartGate, ThreadClass};

/// Reads from addresses no device claims return all ones, as on a real bus with nothing driving it.
const UNCLAIMED_READ_VALUE: u8 = 0xff;

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// Entry protocol.
    pub mode: EntryMode,
    /// Entry address.
    pub entry: GuestAddress,
}

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {index}: {what}: {error}")]
    Kvm {
        /// vCPU index.
        index: u32,
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        error: kvm_ioctls::Error,
    },
    /// Writing boot structures failed.
    #[error("vCPU {0}: {1}")]
    Boot(u32, String),
}

/// Configures vCPU `index` of `num_cpus`: CPUID, MSRs, LAPIC, and for the boot vCPU its entry state.
/// Application processors are left in KVM's wait-for-SIPI state.
pub fn configure(
    vcpu: &VcpuFd,
    index: u32,
    num_cpus: u32,
    supported_cpuid: &CpuId,
    profile: CpuProfile,
    mem: &GuestMemoryMmap,
    boot: Option<BootEntry>,
) -> Result<(), VcpuError> {
    let kvm_err = |what| move |error| VcpuError::Kvm { index, what, error };

    let mut entries = supported_cpuid.as_slice().to_vec();
    shape_cpuid(&mut entries, index, num_cpus, profile);
    let cpuid = CpuId::from_entries(&entries)
        .map_err(|e| VcpuError::Boot(index, format!("building CPUID: {e:?}")))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;

    let wanted = msr::boot_msrs();
    let msrs = Msrs::from_entries(&wanted)
        .map_err(|e| VcpuError::Boot(index, format!("building MSRs: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != wanted.len() {
        // Some hosts (PVM) refuse MSRs real hardware has; the guest copes with their reset values.
        if let Some(refused) = wanted.get(set) {
            log::debug!(
                "vCPU {index}: KVM accepted {set} of {} boot MSRs; first refused: {:#x}",
                wanted.len(),
                refused.index
            );
        }
    }

    let mut lapic_state = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    lapic::set_lint_delivery(&mut lapic_state);
    vcpu.set_lapic(&lapic_state)
        .map_err(kvm_err("KVM_SET_LAPIC"))?;

    if let Some(boot) = boot {
        let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let sregs = setup_sregs(mem, boot.mode, sregs)
            .map_err(|e| VcpuError::Boot(index, e.to_string()))?;
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&entry_regs(boot.mode, boot.entry.0))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        vcpu.set_fpu(&initial_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
    }
    Ok(())
}

/// What a vCPU thread needs to run.
pub struct VcpuRunContext {
    /// Port-I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where the vCPU reports that the VM must stop.
    pub exit: Arc<ExitController>,
    /// Set by the main thread when the vCPU must leave its loop.
    pub stop: Arc<AtomicBool>,
    /// When the VMM process started, for the start-up time log line.
    pub process_start: Instant,
    /// The seccomp filters the thread installs on itself before anything else.
    pub sandbox: Arc<Sandbox>,
    /// Opened by the main thread once it is sandboxed too; the guest runs only after that.
    pub start_gate: Arc<StartGate>,
}

/// The vCPU thread body: sandboxes itself, waits for the start gate, then runs until the VM stops.
pub fn run(index: u32, mut vcpu: VcpuFd, ctx: VcpuRunContext) {
    if let Err(e) = ctx.sandbox.install(ThreadClass::Vcpu) {
        ctx.exit
            .stop(VmOutcome::Error(format!("vCPU {index}: {e}")));
        return;
    }
    ctx.start_gate.wait();
    let mut first_run = index == 0;
    while !ctx.stop.load(Ordering::Acquire) {
        if first_run {
            first_run = false;
            log::info!(
                "VMM start-up: {:.3} ms from process start to first KVM_RUN",
                ctx.process_start.elapsed().as_secs_f64() * 1e3
            );
        }
        let exit = vcpu.run();
        // Port I/O is handled from kvm_run itself: the exit may carry several elements of a string
        // instruction, and only kvm_run says how big each one is.
        if matches!(exit, Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..))) {
            handle_port_io(&mut vcpu, &ctx.pio);
            continue;
        }
        let outcome = match exit {
            Ok(exit) => handle_exit(index, exit, &ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmOutcome::Error(format!(
                "vCPU {index}: KVM_RUN failed: {e}"
            ))),
        };
        if let Some(outcome) = outcome {
            let outcome = match outcome {
                VmOutcome::Error(msg) if msg.contains("KVM_EXIT_INTERNAL_ERROR") => {
                    VmOutcome::Error(describe_internal_error(&mut vcpu, msg))
                }
                other => other,
            };
            ctx.exit.stop(outcome);
            break;
        }
    }
}

/// A port-I/O exit (KVM_EXIT_IO), which `run` has just returned: its elements go to the bus one by
/// one. KVM hands a string instruction's elements to the VMM several at a time (`rep ins` reads
/// ahead), and kvm-ioctls passes them as one slice without the element size, which only kvm_run has.
fn handle_port_io(vcpu: &mut VcpuFd, bus: &Bus) {
    let run = vcpu.get_kvm_run();
    // SAFETY: KVM_RUN has just returned KVM_EXIT_IO (kvm-ioctls decoded it as IoIn or IoOut), so
    // `io` is the member of the exit union the kernel filled in; it is plain integers.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size);
    let len = size * io.count as usize;
    let base = (run as *mut kvm_run).cast::<u8>();
    // The kernel put the data at `data_offset` bytes into this vCPU's kvm_run mapping (the PIO
    // data page), inside the KVM_GET_VCPU_MMAP_SIZE bytes kvm-ioctls keeps mapped for the VcpuFd's
    // lifetime; kvm-ioctls builds the very same slice for VcpuExit::IoIn/IoOut.
    // SAFETY: in bounds of that live mapping (above); `run` is not used again, so this slice is
    // the only reference to those bytes while it lives.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
    port_io(
        bus,
        io.port,
        data,
        size,
        u32::from(io.direction) == KVM_EXIT_IO_OUT,
    );
}

/// Runs `data.len() / size` accesses of `size` bytes each to `port`, as the guest's instruction
/// would have made them one at a time: writes in order, reads each filling its own element
/// (unclaimed ports read all ones).
fn port_io(bus: &Bus, port: u16, data: &mut [u8], size: usize, write: bool) {
    for element in data.chunks_mut(size.max(1)) {
        if write {
            bus.write(u64::from(port), element);
        } else {
            element.fill(0);
            if !bus.read(u64::from(port), element) {
                element.fill(UNCLAIMED_READ_VALUE);
            }
        }
    }
}

/// Handles one exit other than port I/O ([`handle_port_io`]). Returns Some when the VM must stop.
fn handle_exit(index: u32, exit: VcpuExit, ctx: &VcpuRunContext) -> Option<VmOutcome> {
    match exit {
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0);
            if !ctx.mmio.read(addr, data) {
                log::debug!("vCPU {index}: read from unclaimed MMIO {addr:#x}");
                data.fill(UNCLAIMED_READ_VALUE);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                log::debug!("vCPU {index}: write to unclaimed MMIO {addr:#x}");
            }
            None
        }
        // A triple fault: the CPU resets, so does the machine.
        VcpuExit::Shutdown => Some(VmOutcome::Guest(ExitReason::Reset)),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmOutcome::Guest(ExitReason::PowerOff)),
            KVM_SYSTEM_EVENT_RESET => Some(VmOutcome::Guest(ExitReason::Reset)),
            other => Some(VmOutcome::Error(format!(
                "vCPU {index}: unexpected KVM system event {other}"
            ))),
        },
        VcpuExit::InternalError => Some(VmOutcome::Error(format!(
            "vCPU {index}: KVM_EXIT_INTERNAL_ERROR"
        ))),
        VcpuExit::FailEntry(reason, cpu) => Some(VmOutcome::Error(format!(
            "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
        ))),
        // Signals and immediate exits come back as interrupted runs; the loop checks `stop`.
        VcpuExit::Intr => None,
        other => Some(VmOutcome::Error(format!(
            "vCPU {index}: unexpected KVM exit {other:?}"
        ))),
    }
}

/// Adds KVM's suberror and the guest's instruction pointer to an internal-error message.
fn describe_internal_error(vcpu: &mut VcpuFd, msg: String) -> String {
    let run = vcpu.get_kvm_run();
    let suberror = if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
        // SAFETY: `exit_reason` is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal` member of
        // the exit union; reading a u32 out of it reads initialised memory of the right type.
        Some(unsafe { run.__bindgen_anon_1.internal.suberror })
    } else {
        None
    };
    let rip = vcpu.get_regs().map(|r| r.rip).ok();
    let mut text = format!(
        "{msg}: KVM could not emulate a guest instruction (suberror {})",
        suberror.map_or("unknown".to_string(), |s| s.to_string())
    );
    if let Some(rip) = rip {
        text.push_str(&format!(" at guest rip {rip:#x}"));
    }
    if crate::host::is_pvm_host() {
        text.push_str("; this PVM host's emulator lacks some instructions, see docs/pvm.md");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A device that answers each read with an increasing counter byte and records every access.
    #[derive(Default)]
    struct Recorder {
        accesses: Vec<(bool, u64, Vec<u8>)>,
        next: u8,
    }

    impl devices::bus::BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.next += 1;
            data.fill(self.next);
            self.accesses.push((false, offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.accesses.push((true, offset, data.to_vec()));
        }
    }

    fn bus_with_recorder() -> (Bus, Arc<Mutex<Recorder>>) {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        (bus, dev)
    }

    #[test]
    fn a_string_read_is_one_device_access_per_element() {
        let (bus, dev) = bus_with_recorder();
        // `rep insb` with 4 elements read ahead at once: 4 one-byte reads, each its own value.
        let mut data = [0u8; 4];
        port_io(&bus, 0x3fd, &mut data, 1, false);
        assert_eq!(data, [1, 2, 3, 4]);
        // `rep insw` of 2 elements: two 2-byte reads.
        let mut data = [0u8; 4];
        port_io(&bus, 0x3f8, &mut data, 2, false);
        assert_eq!(data, [5, 5, 6, 6]);
        let d = dev.lock().unwrap();
        assert_eq!(d.accesses.len(), 6);
        assert!(d.accesses[..4]
            .iter()
            .all(|(w, off, bytes)| !w && *off == 5 && bytes.len() == 1));
        assert!(d.accesses[4..]
            .iter()
            .all(|(w, off, bytes)| !w && *off == 0 && bytes.len() == 2));
    }

    #[test]
    fn a_string_write_is_one_device_access_per_element_in_order() {
        let (bus, dev) = bus_with_recorder();
        let mut data = *b"hi!\n";
        port_io(&bus, 0x3f8, &mut data, 1, true);
        let mut dwords = [1, 0, 0, 0, 2, 0, 0, 0];
        port_io(&bus, 0x3f8, &mut dwords, 4, true);
        let d = dev.lock().unwrap();
        let bytes: Vec<u8> = d.accesses[..4].iter().map(|(_, _, b)| b[0]).collect();
        assert_eq!(bytes, b"hi!\n");
        assert_eq!(d.accesses[4].2, vec![1, 0, 0, 0]);
        assert_eq!(d.accesses[5].2, vec![2, 0, 0, 0]);
        assert!(d.accesses.iter().all(|(w, _, _)| *w));
    }

    #[test]
    fn unclaimed_ports_read_all_ones_in_every_element() {
        let (bus, _) = bus_with_recorder();
        let mut data = [0u8; 8];
        port_io(&bus, 0x80, &mut data, 4, false);
        assert_eq!(data, [0xff; 8]);
        // A single access is the one-element case.
        let mut one = [0u8; 1];
        port_io(&bus, 0x3fd, &mut one, 1, false);
        assert_eq!(one, [1]);
    }
}
