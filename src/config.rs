//! The VM's settings: parsed from flags and an optional JSON/TOML file (flags win), then validated so
//! that everything past this point can trust them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::arch::x86_64::cpuid::CpuProfile;
use crate::disk::DiskConfig;
use crate::instance::{find_instance_type, Generation, InstanceType, DEFAULT_INSTANCE_TYPE};
use crate::volume::VolumeConfig;

/// The most vCPUs flint gives a guest: xAPIC IDs are 8 bits and 0xFF is broadcast.
pub const MAX_VCPUS: u32 = 254;
/// The least guest RAM flint boots with: the low 1 MiB plus room for a kernel.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Where the guest's console output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// Host stdout (and host stdin to the guest).
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    Off,
}

impl std::str::FromStr for SerialMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(SerialMode::Stdio),
            "off" => Ok(SerialMode::Off),
            _ => match s.strip_prefix("file=") {
                Some(path) if !path.is_empty() => Ok(SerialMode::File(PathBuf::from(path))),
                _ => Err(format!(
                    "invalid serial mode '{s}': expected stdio, off or file=PATH"
                )),
            },
        }
    }
}

/// Which CPUID profile to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuProfileChoice {
    /// PVM-compatible on a PVM host, everything otherwise.
    #[default]
    Auto,
    /// A fixed profile.
    Fixed(CpuProfile),
}

impl std::str::FromStr for CpuProfileChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CpuProfileChoice::Auto),
            "host" => Ok(CpuProfileChoice::Fixed(CpuProfile::Host)),
            "pvm-compat" => Ok(CpuProfileChoice::Fixed(CpuProfile::PvmCompat)),
            _ => Err(format!(
                "invalid CPU profile '{s}': expected auto, host or pvm-compat"
            )),
        }
    }
}

/// A validated VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The kernel image.
    pub kernel: PathBuf,
    /// An initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// The kernel command line; None means [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// The instance type whose shape and I/O caps the VM has.
    pub instance: InstanceType,
    /// Number of vCPUs (the instance type's unless overridden).
    pub cpus: u32,
    /// Guest RAM in bytes (the instance type's unless overridden).
    pub memory: u64,
    /// Console output.
    pub serial: SerialMode,
    /// CPUID profile.
    pub cpu_profile: CpuProfileChoice,
    /// EBS-style volumes, each an NVMe controller, in PCI slot order.
    pub volumes: Vec<VolumeConfig>,
    // -- EBS rate limits (issue 5) --
    /// How long a full EBS burst-credit balance lasts at the instance's maximum EBS bandwidth
    /// (EC2: 30 minutes; zero: no credits, the baseline from the start).
    pub ebs_burst: Duration,
    // -- end EBS rate limits --
    // -- virtio-blk disks (issue 4) --
    /// virtio-blk disks, attached after the volumes, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    // -- end virtio-blk disks --
    // -- virtio-net (issue 4) --
    /// virtio-net devices, attached after the disks, in PCI slot order.
    pub nets: Vec<crate::net::NetConfig>,
    /// The network cap every NIC shares, each way: the instance type's unless `--net-bandwidth`.
    pub net_cap: crate::instance::Bandwidth,
    /// How long a full network burst-credit balance lasts at the cap's maximum (zero: no credits).
    pub net_burst: Duration,
    // -- end virtio-net --
    // -- seccomp sandbox (issue 6) --
    /// Install the per-thread seccomp filters (docs/security.md); `--no-seccomp` turns them off.
    pub seccomp: bool,
    /// Test hook (`--debug-forbidden-syscall`): threads of this class make a forbidden call once
    /// sandboxed.
    pub debug_forbidden_syscall: Option<crate::seccomp::ThreadClass>,
    // -- end seccomp sandbox --
}

/// The command line a guest gets when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Settings as given, before validation: each one optional so a file and flags can be layered.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RawConfig {
    /// Kernel image path.
    pub kernel: Option<PathBuf>,
    /// Initrd path.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// vCPU count.
    pub cpus: Option<u32>,
    /// Guest RAM, e.g. "512M", or a number of MiB.
    pub memory: Option<MemorySize>,
    /// stdio | off | file=PATH
    pub serial: Option<String>,
    /// auto | host | pvm-compat
    pub cpu_profile: Option<String>,
    /// EC2 instance type, e.g. "c5.large".
    pub instance_type: Option<String>,
    /// launch | current
    pub instance_generation: Option<String>,
    /// `--volume` specs, e.g. "path=root.img,id=vol-0123456789abcdef0".
    pub volumes: Option<Vec<String>>,
    /// Seconds a full EBS burst-credit balance lasts at the maximum (EC2: 1800).
    pub ebs_burst_seconds: Option<u64>,
    /// `--disk` specs, e.g. "path=scratch.img,readonly=on".
    pub disks: Option<Vec<String>>,
    /// `--net` specs, e.g. "tap=tap0,mac=02:00:00:00:00:01".
    pub nets: Option<Vec<String>>,
    /// Seconds a full network burst-credit balance lasts at the maximum.
    pub net_burst_seconds: Option<u64>,
    /// The network cap in Mbit/s, "BASELINE[:MAXIMUM]", instead of the instance type's.
    pub net_bandwidth: Option<String>,
}

/// A memory size as written in a config file: "4G" or a plain number of MiB.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MemorySize {
    /// A number of MiB.
    Mib(u64),
    /// A size with a unit suffix.
    Text(String),
}

/// Errors in the configuration. Each names the setting and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No kernel given.
    #[error("no kernel given: use --kernel PATH (or \"kernel\" in the config file)")]
    MissingKernel,
    /// Bad vCPU count.
    #[error("--cpus {0}: the guest needs between 1 and {MAX_VCPUS} vCPUs")]
    Cpus(u32),
    /// Unparsable memory size.
    #[error("--memory {0}: {1}")]
    Memory(String, String),
    /// Bad serial mode.
    #[error("--serial: {0}")]
    Serial(String),
    /// Bad CPU profile.
    #[error("--cpu-profile: {0}")]
    CpuProfile(String),
    /// The config file could not be read or parsed.
    #[error("config file {0}: {1}")]
    File(PathBuf, String),
    /// A malformed `--volume`.
    #[error("--volume {0}: {1}")]
    Volume(String, String),
    /// A malformed `--disk`.
    #[error("--disk {0}: {1}")]
    Disk(String, String),
    /// A malformed `--net`.
    #[error("--net {0}: {1}")]
    Net(String, String),
    /// Unknown instance type or generation.
    #[error("--instance-type: {0}")]
    InstanceType(String),
    /// Network burst duration out of range.
    #[error("--net-burst-seconds {0}: expected 0 to {MAX_EBS_BURST_SECONDS} seconds (0: no burst credits)")]
    NetBurst(u64),
    /// A malformed `--net-bandwidth`.
    #[error("--net-bandwidth {0}: {1}")]
    NetBandwidth(String, String),
    /// EBS burst duration out of range.
    #[error("--ebs-burst-seconds {0}: expected 0 to {MAX_EBS_BURST_SECONDS} seconds (EC2: 1800; 0: no burst credits)")]
    EbsBurst(u64),
}

/// The longest EBS burst `--ebs-burst-seconds` takes: a year.
pub const MAX_EBS_BURST_SECONDS: u64 = 365 * 24 * 3600;

/// A byte count as the user would write it: the largest unit that divides it exactly (4G, 1000T, 512M).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Parses a size such as `512M`, `4G`, `144G`, `1T`, `65536K` or `123456B`; a bare number is MiB.
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err("expected a size such as 512M, 4G or 144G".to_string());
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown unit '{unit}': use K, M, G or T")),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| "the size is too large".to_string())
}

fn validate_memory(text: &str, bytes: u64) -> Result<u64, ConfigError> {
    let err = |why: String| ConfigError::Memory(text.to_string(), why);
    if bytes < MIN_MEMORY {
        return Err(err(format!(
            "the guest needs at least {} MiB of RAM",
            MIN_MEMORY >> 20
        )));
    }
    if bytes % 4096 != 0 {
        return Err(err("RAM must be a multiple of 4 KiB".to_string()));
    }
    Ok(bytes)
}

impl RawConfig {
    /// Reads a config file: TOML if it ends in .toml, JSON otherwise.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_err = |why: String| ConfigError::File(path.to_path_buf(), why);
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let is_toml = path.extension().is_some_and(|ext| ext == "toml");
        Self::parse(&text, is_toml).map_err(file_err)
    }

    /// Parses the text of a config file: TOML if `is_toml`, JSON otherwise. The error says what is
    /// wrong (without the file name).
    pub fn parse(text: &str, is_toml: bool) -> Result<Self, String> {
        if is_toml {
            toml::from_str(text).map_err(|e| e.message().to_string())
        } else {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
    }

    /// `self` with every setting present in `flags` replaced by the flag's value.
    pub fn overridden_by(self, flags: RawConfig) -> RawConfig {
        RawConfig {
            kernel: flags.kernel.or(self.kernel),
            initrd: flags.initrd.or(self.initrd),
            cmdline: flags.cmdline.or(self.cmdline),
            cpus: flags.cpus.or(self.cpus),
            memory: flags.memory.or(self.memory),
            serial: flags.serial.or(self.serial),
            cpu_profile: flags.cpu_profile.or(self.cpu_profile),
            instance_type: flags.instance_type.or(self.instance_type),
            instance_generation: flags.instance_generation.or(self.instance_generation),
            volumes: flags.volumes.or(self.volumes),
            ebs_burst_seconds: flags.ebs_burst_seconds.or(self.ebs_burst_seconds),
            disks: flags.disks.or(self.disks),
            nets: flags.nets.or(self.nets),
            net_burst_seconds: flags.net_burst_seconds.or(self.net_burst_seconds),
            net_bandwidth: flags.net_bandwidth.or(self.net_bandwidth),
        }
    }

    /// Checks every setting and fills in defaults.
    pub fn validate(self) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.ok_or(ConfigError::MissingKernel)?;
        let generation: Generation = match &self.instance_generation {
            None => Generation::default(),
            Some(s) => s.parse().map_err(ConfigError::InstanceType)?,
        };
        let instance = find_instance_type(
            self.instance_type
                .as_deref()
                .unwrap_or(DEFAULT_INSTANCE_TYPE),
            generation,
        )
        .map_err(ConfigError::InstanceType)?;
        let cpus = self.cpus.unwrap_or(instance.vcpus);
        if cpus == 0 || cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(cpus));
        }
        if cpus != instance.vcpus {
            log::warn!(
                "--cpus {cpus} overrides the {} vCPUs of {}",
                instance.vcpus,
                instance.name
            );
        }
        let memory = match self.memory {
            None => instance.memory_bytes(),
            Some(MemorySize::Mib(mib)) => {
                let text = mib.to_string();
                let bytes = mib.checked_mul(1 << 20).ok_or_else(|| {
                    ConfigError::Memory(text.clone(), "the size is too large".into())
                })?;
                validate_memory(&text, bytes)?
            }
            Some(MemorySize::Text(text)) => {
                let bytes = parse_memory_size(&text)
                    .map_err(|why| ConfigError::Memory(text.clone(), why))?;
                validate_memory(&text, bytes)?
            }
        };
        let serial = match self.serial {
            None => SerialMode::Stdio,
            Some(s) => s.parse().map_err(ConfigError::Serial)?,
        };
        let cpu_profile = match self.cpu_profile {
            None => CpuProfileChoice::Auto,
            Some(s) => s.parse().map_err(ConfigError::CpuProfile)?,
        };
        if memory != instance.memory_bytes() {
            log::warn!(
                "--memory {} overrides the {} GiB of {}",
                format_size(memory),
                instance.memory_gib,
                instance.name
            );
        }
        let volumes = parse_specs(self.volumes, ConfigError::Volume)?;
        let ebs_burst = burst_duration(
            self.ebs_burst_seconds,
            devices::rate_limiter::EBS_BURST_DURATION,
            ConfigError::EbsBurst,
        )?;
        // -- virtio-blk disks (issue 4) --
        let disks = parse_specs(self.disks, ConfigError::Disk)?;
        // -- end virtio-blk disks --
        // -- virtio-net (issue 4) --
        let nets = parse_specs(self.nets, ConfigError::Net)?;
        let net_burst = burst_duration(
            self.net_burst_seconds,
            crate::net::NET_BURST_DURATION,
            ConfigError::NetBurst,
        )?;
        let net_cap = match &self.net_bandwidth {
            None => instance.network,
            Some(text) => {
                let cap = crate::net::parse_bandwidth(text)
                    .map_err(|why| ConfigError::NetBandwidth(text.clone(), why))?;
                log::warn!(
                    "--net-bandwidth {text} overrides the network cap of {}",
                    instance.name
                );
                cap
            }
        };
        // -- end virtio-net --
        Ok(VmConfig {
            disks,
            nets,
            net_cap,
            net_burst,
            ebs_burst,
            kernel,
            volumes,
            initrd: self.initrd,
            cmdline: self.cmdline,
            instance,
            cpus,
            memory,
            serial,
            cpu_profile,
            seccomp: true,
            debug_forbidden_syscall: None,
        })
    }
}

/// Parses each `--volume`, `--disk` or `--net` spec; `error` names the spec that is wrong.
fn parse_specs<T: std::str::FromStr<Err = String>>(
    specs: Option<Vec<String>>,
    error: fn(String, String) -> ConfigError,
) -> Result<Vec<T>, ConfigError> {
    specs
        .unwrap_or_default()
        .iter()
        .map(|spec| spec.parse().map_err(|why| error(spec.clone(), why)))
        .collect()
}

/// How long burst credits last at the maximum (`--ebs-burst-seconds`, `--net-burst-seconds`):
/// `default` when not given, at most [`MAX_EBS_BURST_SECONDS`].
fn burst_duration(
    seconds: Option<u64>,
    default: Duration,
    error: fn(u64) -> ConfigError,
) -> Result<Duration, ConfigError> {
    match seconds {
        None => Ok(default),
        Some(s) if s <= MAX_EBS_BURST_SECONDS => Ok(Duration::from_secs(s)),
        Some(s) => Err(error(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kernel: &str) -> RawConfig {
        RawConfig {
            kernel: Some(kernel.into()),
            ..Default::default()
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("4G"), Ok(4 << 30));
        assert_eq!(parse_memory_size("144G"), Ok(144 << 30));
        assert_eq!(parse_memory_size("144g"), Ok(144 << 30));
        assert_eq!(parse_memory_size("1000T"), Ok(1000 << 40));
        assert_eq!(parse_memory_size("256"), Ok(256 << 20));
        assert_eq!(parse_memory_size("65536K"), Ok(64 << 20));
        assert_eq!(parse_memory_size("2GiB"), Ok(2 << 30));
        assert!(parse_memory_size("").is_err());
        assert!(parse_memory_size("G").is_err());
        assert!(parse_memory_size("12Q").is_err());
        assert!(parse_memory_size("-1G").is_err());
        assert!(parse_memory_size("99999999999999999999").is_err());
        assert!(parse_memory_size("20000000T").is_err());
    }

    #[test]
    fn sizes_format_back() {
        for text in ["512M", "4G", "144G", "1000T", "65K", "123B", "1536M"] {
            assert_eq!(format_size(parse_memory_size(text).unwrap()), text);
        }
    }

    #[test]
    fn defaults_and_limits() {
        let c = raw("k").validate().unwrap();
        // The default shape is c5.large's.
        assert_eq!(c.instance.name, "c5.large");
        assert_eq!(
            (c.cpus, c.memory, c.serial.clone()),
            (2, 4 << 30, SerialMode::Stdio)
        );
        assert_eq!(c.cpu_profile, CpuProfileChoice::Auto);
        let cpus = |n| {
            RawConfig {
                cpus: Some(n),
                ..raw("k")
            }
            .validate()
        };
        assert_eq!(cpus(0), Err(ConfigError::Cpus(0)));
        assert_eq!(cpus(255), Err(ConfigError::Cpus(255)));
        assert_eq!(cpus(72).unwrap().cpus, 72);
        let mem = |m: &str| {
            RawConfig {
                memory: Some(MemorySize::Text(m.into())),
                ..raw("k")
            }
            .validate()
        };
        assert!(matches!(mem("0"), Err(ConfigError::Memory(..))));
        assert!(matches!(mem("1M"), Err(ConfigError::Memory(..))));
        assert!(matches!(mem("16777217B"), Err(ConfigError::Memory(..))));
        assert_eq!(mem("144G").unwrap().memory, 144 << 30);
        assert_eq!(
            RawConfig::default().validate(),
            Err(ConfigError::MissingKernel)
        );
    }

    #[test]
    fn instance_types_set_the_shape_and_flags_override_it() {
        let typed = |name: &str| RawConfig {
            instance_type: Some(name.into()),
            ..raw("k")
        };
        let c = typed("c5.18xlarge").validate().unwrap();
        assert_eq!((c.cpus, c.memory), (72, 144 << 30));
        let c = RawConfig {
            cpus: Some(3),
            memory: Some(MemorySize::Mib(1024)),
            ..typed("c5.2xlarge")
        }
        .validate()
        .unwrap();
        assert_eq!((c.cpus, c.memory, c.instance.vcpus), (3, 1 << 30, 8));
        match typed("c5.huge").validate() {
            Err(ConfigError::InstanceType(msg)) => assert!(msg.contains("c5.xlarge"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let bad_generation = RawConfig {
            instance_generation: Some("next".into()),
            ..raw("k")
        };
        assert!(matches!(
            bad_generation.validate(),
            Err(ConfigError::InstanceType(_))
        ));
    }

    // -- EBS rate limits (issue 5) --
    #[test]
    fn net_burst_seconds_and_bandwidth() {
        let c = raw("k").validate().unwrap();
        assert_eq!(c.net_burst, crate::net::NET_BURST_DURATION);
        assert_eq!(c.net_cap, c.instance.network);
        let with = |burst, bandwidth: Option<&str>| {
            RawConfig {
                net_burst_seconds: burst,
                net_bandwidth: bandwidth.map(String::from),
                ..raw("k")
            }
            .validate()
        };
        let c = with(Some(3), Some("750:2400")).unwrap();
        assert_eq!(c.net_burst, Duration::from_secs(3));
        assert_eq!(
            (c.net_cap.baseline_mbps, c.net_cap.maximum_mbps),
            (750, 2400)
        );
        assert_eq!(
            with(Some(u64::MAX), None).unwrap_err(),
            ConfigError::NetBurst(u64::MAX)
        );
        assert!(matches!(
            with(None, Some("9:1")),
            Err(ConfigError::NetBandwidth(_, _))
        ));
        let json: RawConfig = serde_json::from_str(
            r#"{"kernel": "k", "net_burst_seconds": 10, "net_bandwidth": "100:200"}"#,
        )
        .unwrap();
        assert_eq!(json.net_burst_seconds, Some(10));
        assert_eq!(json.net_bandwidth.as_deref(), Some("100:200"));
    }

    #[test]
    fn ebs_burst_seconds_and_volume_caps() {
        assert_eq!(
            raw("k").validate().unwrap().ebs_burst,
            Duration::from_secs(1800)
        );
        let burst = |s| {
            RawConfig {
                ebs_burst_seconds: Some(s),
                ..raw("k")
            }
            .validate()
        };
        assert_eq!(burst(3).unwrap().ebs_burst, Duration::from_secs(3));
        assert_eq!(burst(0).unwrap().ebs_burst, Duration::ZERO);
        assert_eq!(burst(u64::MAX), Err(ConfigError::EbsBurst(u64::MAX)));
        assert!(ConfigError::EbsBurst(u64::MAX)
            .to_string()
            .contains("expected 0 to 31536000 seconds"));
        let flags = RawConfig {
            ebs_burst_seconds: Some(5),
            ..Default::default()
        };
        let file = RawConfig {
            ebs_burst_seconds: Some(60),
            ..raw("k")
        };
        assert_eq!(file.overridden_by(flags).ebs_burst_seconds, Some(5));
        let json: RawConfig =
            serde_json::from_str(r#"{"kernel": "k", "ebs_burst_seconds": 10}"#).unwrap();
        assert_eq!(json.ebs_burst_seconds, Some(10));
        // Malformed caps are one-line errors naming the volume and what is valid.
        let err = RawConfig {
            volumes: Some(vec!["path=a,type=gp3,iops=99".into()]),
            ..raw("k")
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--volume path=a,type=gp3,iops=99: iops=99: gp3 takes 3000 to 16000 IOPS"
        );
    }
    // -- end EBS rate limits --

    // -- virtio-blk disks (issue 4) --
    #[test]
    fn disks_from_flags_and_files() {
        let json: RawConfig = serde_json::from_str(
            r#"{"kernel": "k", "disks": ["path=a.img", "path=b.img,readonly=on,id=b"]}"#,
        )
        .unwrap();
        let c = json.clone().validate().unwrap();
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[1].read_only);
        assert_eq!(c.disks[1].id.as_deref(), Some("b"));
        let flags = RawConfig {
            disks: Some(vec!["path=c.img".into()]),
            ..Default::default()
        };
        let c = json.overridden_by(flags).validate().unwrap();
        assert_eq!(c.disks.len(), 1);
        let err = RawConfig {
            disks: Some(vec!["path=x.img,readonly=maybe".into()]),
            ..raw("k")
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--disk path=x.img,readonly=maybe: readonly=maybe: expected on or off"
        );
        assert!(raw("k").validate().unwrap().disks.is_empty());
    }
    // -- end virtio-blk disks --

    // -- virtio-net (issue 4) --
    #[test]
    fn nets_from_flags_and_files() {
        let json: RawConfig = serde_json::from_str(
            r#"{"kernel": "k", "nets": ["tap=t0", "tap=t1,mac=02:00:00:00:00:01"]}"#,
        )
        .unwrap();
        let c = json.clone().validate().unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(c.nets[1].mac, Some([2, 0, 0, 0, 0, 1]));
        let flags = RawConfig {
            nets: Some(vec!["tap=t2".into()]),
            ..Default::default()
        };
        let c = json.overridden_by(flags).validate().unwrap();
        assert_eq!(c.nets.len(), 1);
        assert_eq!(c.nets[0].tap, "t2");
        let err = RawConfig {
            nets: Some(vec!["tap=t0,mac=x".into()]),
            ..raw("k")
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--net tap=t0,mac=x: mac=x: expected six hex bytes"),
            "{err}"
        );
        assert!(raw("k").validate().unwrap().nets.is_empty());
    }
    // -- end virtio-net --

    #[test]
    fn serial_and_profile_parse() {
        assert_eq!("off".parse(), Ok(SerialMode::Off));
        assert_eq!("file=/tmp/x".parse(), Ok(SerialMode::File("/tmp/x".into())));
        assert!("file=".parse::<SerialMode>().is_err());
        assert!("tty".parse::<SerialMode>().is_err());
        assert_eq!(
            "pvm-compat".parse(),
            Ok(CpuProfileChoice::Fixed(CpuProfile::PvmCompat))
        );
        assert!("fast".parse::<CpuProfileChoice>().is_err());
    }

    #[test]
    fn files_and_flag_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("vm.json");
        std::fs::write(
            &json,
            r#"{"kernel": "/k", "cpus": 4, "memory": "1G", "cmdline": "a=b"}"#,
        )
        .unwrap();
        let file = RawConfig::from_file(&json).unwrap();
        let merged = file.overridden_by(RawConfig {
            cpus: Some(2),
            ..Default::default()
        });
        let c = merged.validate().unwrap();
        assert_eq!(
            (c.cpus, c.memory, c.cmdline.as_deref()),
            (2, 1 << 30, Some("a=b"))
        );

        let toml_path = dir.path().join("vm.toml");
        std::fs::write(
            &toml_path,
            "kernel = \"/k\"\nmemory = 256\nserial = \"off\"\n",
        )
        .unwrap();
        let c = RawConfig::from_file(&toml_path)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!((c.memory, c.serial), (256 << 20, SerialMode::Off));

        std::fs::write(&json, r#"{"kernel": "/k", "cpu": 4}"#).unwrap();
        assert!(matches!(
            RawConfig::from_file(&json),
            Err(ConfigError::File(..))
        ));
        assert!(matches!(
            RawConfig::from_file(&dir.path().join("missing.json")),
            Err(ConfigError::File(..))
        ));
    }
}
