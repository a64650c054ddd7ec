//! flint: a minimal, fast KVM virtual machine monitor.
//!
//! How a guest boots through this crate is told in docs/architecture.md.

pub mod arch;
pub mod cli;
pub mod config;
pub mod console;
pub mod disk;
pub mod exit;
pub mod host;
pub mod instance;
pub mod interrupts;
pub mod loader;
pub mod net;
pub mod pci;
pub mod seccomp;
pub mod signals;
pub mod terminal;
pub mod vcpu;
pub mod vmm;
pub mod volume;
