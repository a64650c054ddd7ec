//! The allow-lists: which system calls (and, where it is cheap, which arguments) each thread class
//! may make once its filter is installed. docs/security.md explains every entry; the lists were
//! built by running the whole test suite under `strace -f` and reading each thread's calls.
//!
//! Two filters per thread: the allow-list (anything else traps, [`super::sigsys`]) and a small
//! "fail quietly" filter for calls a library may make and copes with failing (see [`ErrnoRule`]);
//! the kernel applies the stricter verdict of the two.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompRule,
};

use super::ThreadClass;

/// Rules of one filter: system call number → conditions (empty: any arguments).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

// KVM and TUN ioctl request numbers (x86_64); a unit test recomputes them.
pub(super) const KVM_RUN: u64 = 0xae80;
pub(super) const KVM_GET_REGS: u64 = 0x8090_ae81;
pub(super) const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;
pub(super) const KVM_IRQFD: u64 = 0x4020_ae76;
pub(super) const KVM_IOEVENTFD: u64 = 0x4040_ae79;
pub(super) const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
pub(super) const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `TUNSETQUEUE`: attach or detach one queue of a multi-queue TAP (virtio-net queue pairs).
pub(super) const TUNSETQUEUE: u64 = 0x4004_54d9;

/// A call that fails with an error number instead of trapping.
pub struct ErrnoRule {
    /// The system call.
    pub syscall: i64,
    /// What it returns.
    pub errno: u32,
}

/// Calls of `class` that fail instead of killing the VMM, grouped by errno. glibc opens files
/// behind our back (`/sys/devices/system/cpu/online` when a thread's first malloc sizes the arena
/// pool, `/proc/sys/vm/overcommit_memory` the first time a thread heap shrinks) and copes with a
/// failed open; no thread of a running VMM has a reason to open a file, so every open fails with
/// EACCES. The spawner's pthread_create tries clone3 first and falls back to clone on ENOSYS: only
/// clone's flags are registers a filter can check (its rule insists on CLONE_THREAD).
pub fn errno_rules(class: ThreadClass) -> Vec<ErrnoRule> {
    let mut rules = vec![ErrnoRule {
        syscall: libc::SYS_openat,
        errno: libc::EACCES as u32,
    }];
    if class == ThreadClass::Spawner {
        rules.push(ErrnoRule {
            syscall: libc::SYS_clone3,
            errno: libc::ENOSYS as u32,
        });
    }
    rules
}

fn cond(arg: u8, op: Op, value: u64) -> Cond {
    // Only fails for an argument index above 5; every index here is a literal below that.
    Cond::new(arg, ArgLen::Qword, op, value).expect("argument index 0-5")
}

fn rule(conditions: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(conditions).expect("at least one condition")
}

fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// Adds `ioctl` on any descriptor with one of `requests`.
fn allow_ioctls(rules: &mut Rules, requests: &[u64]) {
    let entry = rules.entry(libc::SYS_ioctl).or_default();
    for &request in requests {
        entry.push(rule(vec![cond(1, Op::Eq, request)]));
    }
}

/// What every filtered thread may do: run Rust and glibc (memory, locks, time, its own signals),
/// write log lines and eventfds, close descriptors, end itself or the process; and restore the
/// terminal from the panic hook or the SIGSYS handler (TCSETS on stdin only).
fn common(pid: u32) -> Rules {
    let mut rules = Rules::new();
    allow(
        &mut rules,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // glibc's malloc falls back to this when the open below fails.
            libc::SYS_sched_getaffinity,
            // Allowed here only so that the errno filter's EACCES wins (errno beats allow).
            libc::SYS_openat,
        ],
    );
    // No executable mappings: a thread that is taken over cannot map new code.
    let no_exec = || vec![rule(vec![cond(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0)])];
    rules.insert(libc::SYS_mmap, no_exec());
    rules.insert(libc::SYS_mprotect, no_exec());
    // Signals only to threads of this process (the vCPU kick, abort()).
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, Op::Eq, u64::from(pid))])],
    );
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![
            cond(0, Op::Eq, libc::STDIN_FILENO as u64),
            cond(1, Op::Eq, libc::TCSETS),
        ])],
    );
    rules
}

/// The main thread once the guest runs: the event loop (stdin, the exit eventfd), kicking and
/// joining vCPU threads, and tearing the VM down (irqfds and ioeventfds are unregistered when the
/// devices drop; guest RAM is unmapped).
fn main_thread(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
        ],
    );
    allow_ioctls(rules, &[KVM_IRQFD, KVM_IOEVENTFD, libc::TCGETS]);
}

/// A vCPU thread: KVM_RUN and what device emulation does on an exit — PCI reconfiguration (MSI
/// routes, irqfds, ioeventfds when BARs move), virtio activation (the worker's epoll and eventfds;
/// the thread itself comes from the spawner), an NVMe shutdown's flush, the TAP offloads a
/// virtio-net driver negotiates, serial output, eventfd reads.
fn vcpu_thread(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_eventfd2,
            // A virtio-net worker's rate-limiter timer, made when the driver starts the device.
            libc::SYS_timerfd_create,
            libc::SYS_fdatasync,
        ],
    );
    // Duplicating an eventfd (EventFd::try_clone) and nothing else.
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![cond(1, Op::Eq, libc::F_DUPFD_CLOEXEC as u64)])],
    );
    allow_ioctls(
        rules,
        &[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_SIGNAL_MSI,
            TUNSETOFFLOAD,
            // Starting virtio-net detaches the TAP queues of all but the first pair.
            TUNSETQUEUE,
        ],
    );
}

/// A device worker: wait on its epoll, file I/O (positional, or at the file offset after `lseek`
/// for virtio-blk's direct I/O from guest memory), fdatasync, hole punching, the rate limiter's
/// timerfd, TAP reads and writes, interrupts through irqfds (writes).
fn device_thread(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_lseek,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
        ],
    );
    // virtio-net's control queue attaches and detaches TAP queues as the driver sets its pairs.
    allow_ioctls(rules, &[TUNSETQUEUE]);
    // Discard and write-zeroes punch a hole; no other fallocate mode.
    rules.insert(
        libc::SYS_fallocate,
        vec![rule(vec![cond(
            1,
            Op::Eq,
            (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64,
        )])],
    );
}

/// The spawner: a device worker's list (its workers inherit this filter) plus making threads —
/// `clone` only with CLONE_THREAD, so never a new process — and what a new thread does before
/// its own filter is in place: name itself, register with glibc, install the filter.
fn spawner_thread(rules: &mut Rules) {
    device_thread(rules);
    allow(
        rules,
        &[
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_seccomp,
            // Answered ENOSYS by the errno filter, so glibc falls back to clone.
            libc::SYS_clone3,
        ],
    );
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Op::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )])],
    );
    rules.insert(
        libc::SYS_prctl,
        vec![
            rule(vec![cond(0, Op::Eq, libc::PR_SET_NAME as u64)]),
            rule(vec![cond(0, Op::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)]),
        ],
    );
}

/// The allow-list of `class` in a process whose id is `pid`.
pub fn allowed(class: ThreadClass, pid: u32) -> Rules {
    let mut rules = common(pid);
    match class {
        ThreadClass::Main => main_thread(&mut rules),
        ThreadClass::Vcpu => vcpu_thread(&mut rules),
        ThreadClass::Device => device_thread(&mut rules),
        ThreadClass::Spawner => spawner_thread(&mut rules),
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::ioctl::ioctl_expr;
    use vmm_sys_util::ioctl::{_IOC_NONE, _IOC_READ, _IOC_WRITE};

    const KVMIO: u32 = 0xae;

    #[test]
    fn ioctl_numbers_match_their_definitions() {
        let size = |n: usize| n as u32;
        assert_eq!(KVM_RUN, ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0));
        assert_eq!(
            KVM_GET_REGS,
            ioctl_expr(
                _IOC_READ,
                KVMIO,
                0x81,
                size(std::mem::size_of::<kvm_bindings::kvm_regs>())
            )
        );
        assert_eq!(
            KVM_SET_GSI_ROUTING,
            ioctl_expr(
                _IOC_WRITE,
                KVMIO,
                0x6a,
                size(std::mem::size_of::<kvm_bindings::kvm_irq_routing>())
            )
        );
        assert_eq!(
            KVM_IRQFD,
            ioctl_expr(
                _IOC_WRITE,
                KVMIO,
                0x76,
                size(std::mem::size_of::<kvm_bindings::kvm_irqfd>())
            )
        );
        assert_eq!(
            KVM_IOEVENTFD,
            ioctl_expr(
                _IOC_WRITE,
                KVMIO,
                0x79,
                size(std::mem::size_of::<kvm_bindings::kvm_ioeventfd>())
            )
        );
        assert_eq!(
            KVM_SIGNAL_MSI,
            ioctl_expr(
                _IOC_WRITE,
                KVMIO,
                0xa5,
                size(std::mem::size_of::<kvm_bindings::kvm_msi>())
            )
        );
        assert_eq!(TUNSETOFFLOAD, libc::TUNSETOFFLOAD);
        assert_eq!(TUNSETQUEUE, libc::TUNSETQUEUE);
    }

    #[test]
    fn classes_get_only_what_they_need() {
        let vcpu = allowed(ThreadClass::Vcpu, 1);
        let device = allowed(ThreadClass::Device, 1);
        let main = allowed(ThreadClass::Main, 1);
        let spawner = allowed(ThreadClass::Spawner, 1);
        // Nobody may make sockets, run programs or trace.
        for rules in [&vcpu, &device, &main, &spawner] {
            for nr in [libc::SYS_socket, libc::SYS_execve, libc::SYS_ptrace] {
                assert!(!rules.contains_key(&nr), "syscall {nr} allowed");
            }
        }
        // Only the spawner makes threads; vCPUs do no file I/O.
        assert!(spawner.contains_key(&libc::SYS_clone));
        for rules in [&vcpu, &device, &main] {
            assert!(!rules.contains_key(&libc::SYS_clone));
        }
        assert!(!vcpu.contains_key(&libc::SYS_pwrite64));
        assert!(device.contains_key(&libc::SYS_pwrite64));
        // A worker inherits the spawner's filter, so the spawner must allow all it allows.
        for nr in device.keys() {
            assert!(spawner.contains_key(nr), "spawner lacks syscall {nr}");
        }
    }
}
