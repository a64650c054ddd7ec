//! The command line: `flint run ...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, MemorySize, RawConfig, VmConfig};

/// flint: a minimal, fast KVM virtual machine monitor.
#[derive(Debug, Parser)]
#[command(name = "flint", version, about)]
pub struct Cli {
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// flint's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest and run it until it resets or powers off.
    Run(Box<RunArgs>),
    /// List the EC2 instance types flint can shape a guest like.
    InstanceTypes {
        /// Which published figures: launch (November 2017) or current.
        #[arg(long, default_value = "launch", value_name = "GENERATION")]
        instance_generation: String,
    },
}

/// `flint run`'s settings. Every one may also come from `--config`; flags win.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Settings file (JSON, or TOML if it ends in .toml) with the same keys as these flags.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// EC2 instance type whose vCPUs, memory and I/O caps the guest gets [default: c5.large].
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Instance figures: launch (the C5 launch table, default) or current (today's EC2 figures).
    #[arg(long, value_name = "GENERATION")]
    pub instance_generation: Option<String>,
    /// Kernel: bzImage, 64-bit ELF vmlinux, or an ELF with a PVH entry note.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd / initramfs image.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Number of vCPUs, overriding the instance type's [default: the instance type's].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Guest RAM, e.g. 512M, 4G, 144G (a bare number is MiB), overriding the instance type's.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Console: stdio, file=PATH or off [default: stdio].
    #[arg(long, value_name = "MODE")]
    pub serial: Option<String>,
    /// An EBS-style volume as an NVMe controller (repeatable; nvme0n1, nvme1n1, ... in order):
    /// path=FILE[,id=vol-...][,readonly=on][,block_size=512|4096][,name=sdf]
    /// [,type=gp2|gp3|io2][,iops=N][,throughput=N[K|M|G]] (throughput in bytes/s, 125M = 125 MiB/s)
    #[arg(long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// Seconds a full EBS burst-credit balance lasts at the instance's maximum EBS bandwidth
    /// [default: 1800, EC2's 30 minutes; 0: no credits, baseline only].
    #[arg(long, value_name = "N")]
    pub ebs_burst_seconds: Option<u64>,
    // -- virtio-blk disks (issue 4) --
    /// A virtio-blk disk (repeatable; attached after the volumes):
    /// path=FILE[,readonly=on][,id=NAME][,queues=N]
    #[arg(long = "disk", value_name = "SPEC")]
    pub disks: Vec<String>,
    // -- end virtio-blk disks --
    // -- virtio-net (issue 4) --
    /// A virtio-net device on a host TAP (repeatable; attached after the disks):
    /// tap=NAME[,mac=02:..][,queues=N] (N queue pairs, default one per vCPU up to 8; the TAP is
    /// created when missing, which needs root)
    #[arg(long = "net", value_name = "SPEC")]
    pub nets: Vec<String>,
    /// The network cap all NICs share, each way, in Mbit/s: BASELINE[:MAXIMUM] (burst credits
    /// allow the maximum) [default: the instance type's, e.g. c5.large 750:10000].
    #[arg(long, value_name = "MBPS")]
    pub net_bandwidth: Option<String>,
    /// Seconds a full network burst-credit balance lasts at the maximum [default: 1800; 0: no
    /// credits, baseline only].
    #[arg(long, value_name = "N")]
    pub net_burst_seconds: Option<u64>,
    // -- end virtio-net --
    /// CPUID profile: auto (pvm-compat on PVM hosts), host or pvm-compat [default: auto].
    #[arg(long, value_name = "PROFILE")]
    pub cpu_profile: Option<String>,
    // -- seccomp sandbox (issue 6) --
    /// Run without the per-thread seccomp filters (for debugging; see docs/security.md).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Test hook, not for users: threads of THREAD (main, vcpu, device, spawner) make a forbidden
    /// system call right after their filter is installed.
    #[arg(long, hide = true, value_name = "THREAD", value_parser = parse_thread_class)]
    pub debug_forbidden_syscall: Option<crate::seccomp::ThreadClass>,
    // -- end seccomp sandbox --
}

fn parse_thread_class(text: &str) -> Result<crate::seccomp::ThreadClass, String> {
    crate::seccomp::ThreadClass::parse(text)
        .ok_or_else(|| format!("'{text}' is not one of main, vcpu, device, spawner"))
}

impl RunArgs {
    /// The validated configuration: the config file (if any) overridden by the flags.
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let flags = RawConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory: self.memory.clone().map(MemorySize::Text),
            serial: self.serial.clone(),
            cpu_profile: self.cpu_profile.clone(),
            instance_type: self.instance_type.clone(),
            instance_generation: self.instance_generation.clone(),
            volumes: (!self.volumes.is_empty()).then(|| self.volumes.clone()),
            ebs_burst_seconds: self.ebs_burst_seconds,
            disks: (!self.disks.is_empty()).then(|| self.disks.clone()),
            nets: (!self.nets.is_empty()).then(|| self.nets.clone()),
            net_burst_seconds: self.net_burst_seconds,
            net_bandwidth: self.net_bandwidth.clone(),
        };
        let base = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        let mut config = base.overridden_by(flags).validate()?;
        config.seccomp = !self.no_seccomp;
        config.debug_forbidden_syscall = self.debug_forbidden_syscall;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("flint").chain(args.iter().copied()))
    }

    #[test]
    fn run_flags() {
        let cli = parse(&[
            "run",
            "--kernel",
            "/k",
            "--cpus",
            "8",
            "--memory",
            "4G",
            "--cmdline",
            "-x a=b",
            "--serial",
            "off",
            "--log-level",
            "info",
        ])
        .unwrap();
        assert_eq!(cli.log_level, log::LevelFilter::Info);
        let Command::Run(args) = cli.command else {
            panic!("not a run command");
        };
        let c = args.to_config().unwrap();
        assert_eq!((c.cpus, c.memory), (8, 4 << 30));
        assert_eq!(c.cmdline.as_deref(), Some("-x a=b"));
    }

    #[test]
    fn unknown_flags_and_bad_values_are_errors() {
        assert!(parse(&["run", "--kernel", "/k", "--frobnicate"]).is_err());
        assert!(parse(&["run", "--cpus", "many"]).is_err());
        assert!(parse(&["run", "--log-level", "loud"]).is_err());
        let Command::Run(args) = parse(&["run", "--kernel", "/k", "--cpus", "0"])
            .unwrap()
            .command
        else {
            panic!("not a run command");
        };
        assert!(args.to_config().is_err());
    }

    #[test]
    fn seccomp_flags() {
        let config = |args: &[&str]| {
            let Command::Run(run) = parse(args).unwrap().command else {
                panic!("not a run command");
            };
            run.to_config().unwrap()
        };
        let c = config(&["run", "--kernel", "/k"]);
        assert!(c.seccomp);
        assert_eq!(c.debug_forbidden_syscall, None);
        let c = config(&[
            "run",
            "--kernel",
            "/k",
            "--no-seccomp",
            "--debug-forbidden-syscall",
            "vcpu",
        ]);
        assert!(!c.seccomp);
        assert_eq!(
            c.debug_forbidden_syscall,
            Some(crate::seccomp::ThreadClass::Vcpu)
        );
        assert!(parse(&["run", "--debug-forbidden-syscall", "gpu"]).is_err());
    }
}
