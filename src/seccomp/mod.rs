//! The seccomp sandbox: one filter per thread class, installed by each thread on itself before it
//! touches anything the guest controls. docs/security.md has the threat model, the allow-lists and
//! why each call is on them.
//!
//! Filters are per thread (no TSYNC) and can only be added to, never removed, and a new thread
//! inherits its creator's. So the order matters:
//! - the **spawner** thread starts first and filters itself; every device worker is created by
//!   it (never by the vCPU thread that activated the device), so a worker runs under the spawner's
//!   filter plus its own device filter;
//! - **vCPU** threads are created by the unfiltered main thread, filter themselves and wait at a
//!   start gate; the **main** thread filters itself and only then opens the gate, so no guest
//!   instruction runs before every thread is sandboxed.
//!
//! A forbidden call traps (`SECCOMP_RET_TRAP`): the [`sigsys`] handler restores the terminal,
//! prints one line naming the thread class and the call, and exits with status
//! [`VIOLATION_EXIT_STATUS`]. The class travels in the filter's return value, so the handler needs
//! no per-thread state.

mod rules;
mod sigsys;
pub mod spawner;
mod syscall_names;

use std::sync::{Condvar, Mutex};
use std::time::Instant;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use sigsys::VIOLATION_EXIT_STATUS;
pub use syscall_names::syscall_name;

/// The kinds of flint threads, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ThreadClass {
    /// The main thread: event loop and teardown.
    Main = 1,
    /// A vCPU thread.
    Vcpu = 2,
    /// A device worker (NVMe, virtio-blk, virtio-net).
    Device = 3,
    /// The thread that creates device workers.
    Spawner = 4,
}

impl ThreadClass {
    const ALL: [ThreadClass; 4] = [
        ThreadClass::Main,
        ThreadClass::Vcpu,
        ThreadClass::Device,
        ThreadClass::Spawner,
    ];

    /// How messages name the class.
    pub fn name(self) -> &'static str {
        match self {
            ThreadClass::Main => "main",
            ThreadClass::Vcpu => "vCPU",
            ThreadClass::Device => "device I/O",
            ThreadClass::Spawner => "worker spawner",
        }
    }

    fn from_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u16 == id)
    }

    /// Parses the name `--debug-forbidden-syscall` takes: main, vcpu, device, spawner.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "main" => Some(ThreadClass::Main),
            "vcpu" => Some(ThreadClass::Vcpu),
            "device" => Some(ThreadClass::Device),
            "spawner" => Some(ThreadClass::Spawner),
            _ => None,
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// seccompiler refused a rule set (a bug in the lists).
    #[error("cannot build the seccomp filter of the {class} thread: {error}")]
    Build {
        /// The class.
        class: &'static str,
        /// seccompiler's error.
        error: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter of the {class} thread: {error}")]
    Install {
        /// The class.
        class: &'static str,
        /// seccompiler's error.
        error: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The compiled programs of one class, in installation order: one per errno answer (calls that
/// fail instead of trapping), then the allow-list (anything else traps).
struct ClassFilters {
    programs: Vec<BpfProgram>,
}

/// The compiled filters of every class, or none when the sandbox is off (`--no-seccomp`).
pub struct Sandbox {
    filters: Option<Vec<(ThreadClass, ClassFilters)>>,
    /// Test hook (`--debug-forbidden-syscall`): the class whose threads make a forbidden call
    /// right after installing their filter.
    forbidden_call_in: Option<ThreadClass>,
}

/// `SECCOMP_RET_TRAP`: the action's bits in a filter's return value.
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
/// A BPF `ret` with a constant (`BPF_RET | BPF_K`).
const BPF_RET_K: u16 = 0x06;

/// Compiles `rules` into a program whose trap returns carry `class` (the kernel hands the data
/// bits of a trap to the SIGSYS handler as `si_errno`).
fn compile(
    class: ThreadClass,
    rules: rules::Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::Error> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)?;
    let mut program: BpfProgram = filter.try_into()?;
    for insn in program.iter_mut() {
        if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_TRAP {
            insn.k |= u32::from(class as u16);
        }
    }
    Ok(program)
}

impl Sandbox {
    /// No filters: every `install` does nothing.
    pub fn disabled() -> Self {
        Self {
            filters: None,
            forbidden_call_in: None,
        }
    }

    /// Compiles the filters of every class for this process and installs the SIGSYS handler.
    pub fn new() -> Result<Self, SandboxError> {
        let started = Instant::now();
        let pid = std::process::id();
        let mut filters = Vec::new();
        for class in ThreadClass::ALL {
            let build = |error| SandboxError::Build {
                class: class.name(),
                error,
            };
            let mut programs = Vec::new();
            // seccompiler gives a filter one match action, so one program per errno.
            let errno_rules = rules::errno_rules(class);
            let mut errnos: Vec<u32> = errno_rules.iter().map(|r| r.errno).collect();
            errnos.dedup();
            for errno in errnos {
                let calls: rules::Rules = errno_rules
                    .iter()
                    .filter(|r| r.errno == errno)
                    .map(|r| (r.syscall, Vec::new()))
                    .collect();
                programs.push(
                    compile(
                        class,
                        calls,
                        SeccompAction::Allow,
                        SeccompAction::Errno(errno),
                    )
                    .map_err(build)?,
                );
            }
            programs.push(
                compile(
                    class,
                    rules::allowed(class, pid),
                    SeccompAction::Trap,
                    SeccompAction::Allow,
                )
                .map_err(build)?,
            );
            filters.push((class, ClassFilters { programs }));
        }
        sigsys::install_handler().map_err(SandboxError::Handler)?;
        log::info!(
            "seccomp: {} filters compiled in {:.3} ms",
            filters.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(Self {
            filters: Some(filters),
            forbidden_call_in: None,
        })
    }

    /// Test hook: threads of `class` make a forbidden system call (socket) right after installing
    /// their filter.
    pub fn with_forbidden_call_in(mut self, class: Option<ThreadClass>) -> Self {
        self.forbidden_call_in = class;
        self
    }

    /// Whether filters are installed at all.
    pub fn enabled(&self) -> bool {
        self.filters.is_some()
    }

    /// Installs `class`'s filters on the calling thread (nothing when the sandbox is off).
    pub fn install(&self, class: ThreadClass) -> Result<(), SandboxError> {
        if let Some(filters) = &self.filters {
            let started = Instant::now();
            let Some((_, programs)) = filters.iter().find(|(c, _)| *c == class) else {
                return Ok(());
            };
            let fail = |error| SandboxError::Install {
                class: class.name(),
                error,
            };
            for program in &programs.programs {
                seccompiler::apply_filter(program).map_err(fail)?;
            }
            log::debug!(
                "seccomp: {} thread filtered in {:.1} us",
                class.name(),
                started.elapsed().as_secs_f64() * 1e6
            );
        }
        if self.forbidden_call_in == Some(class) {
            make_forbidden_call();
        }
        Ok(())
    }
}

/// Makes a system call no class allows. With the sandbox on this does not return: the SIGSYS
/// handler ends the process. With it off the socket is closed again and the VM runs on.
fn make_forbidden_call() {
    // SAFETY: socket(2) takes three integers and touches no memory of ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd >= 0 {
        log::warn!("--debug-forbidden-syscall: socket() succeeded: the sandbox is off");
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        unsafe { libc::close(fd) };
    }
}

/// Holds vCPU threads (already sandboxed) until the main thread has installed its own filter, so
/// that no guest instruction runs while any flint thread is still unfiltered.
#[derive(Default)]
pub struct StartGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl StartGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every waiting (and future) thread through.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Waits until the gate is open.
    pub fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_class_compiles_and_carries_its_id_in_traps() {
        for class in ThreadClass::ALL {
            let program = compile(
                class,
                rules::allowed(class, 1),
                SeccompAction::Trap,
                SeccompAction::Allow,
            )
            .unwrap();
            let traps: Vec<_> = program
                .iter()
                .filter(|i| i.code == BPF_RET_K && i.k & 0xffff_0000 == SECCOMP_RET_TRAP)
                .collect();
            assert!(!traps.is_empty(), "{class:?}");
            assert!(traps.iter().all(|i| i.k & 0xffff == class as u32));
            assert_eq!(ThreadClass::from_id(class as u16), Some(class));
        }
    }

    #[test]
    fn class_names_parse() {
        for (text, class) in [
            ("main", ThreadClass::Main),
            ("vcpu", ThreadClass::Vcpu),
            ("device", ThreadClass::Device),
            ("spawner", ThreadClass::Spawner),
        ] {
            assert_eq!(ThreadClass::parse(text), Some(class));
        }
        assert_eq!(ThreadClass::parse("gpu"), None);
    }

    #[test]
    fn the_gate_holds_threads_until_opened() {
        let gate = Arc::new(StartGate::new());
        let passed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (gate, passed) = (gate.clone(), passed.clone());
            std::thread::spawn(move || {
                gate.wait();
                passed.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!passed.load(std::sync::atomic::Ordering::SeqCst));
        gate.open();
        waiter.join().unwrap();
        assert!(passed.load(std::sync::atomic::Ordering::SeqCst));
        gate.wait(); // an open gate does not block
    }
}
