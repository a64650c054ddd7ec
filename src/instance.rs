//! EC2 instance-type profiles: the shape (vCPUs, memory) and I/O caps (EBS and network bandwidth) of
//! the C5 family, as EC2 published them at the family's launch and as it documents them today.
//! docs/instance-types.md gives the sources and the burst model behind "up to" figures.

use std::fmt::Write as _;

/// Which set of published figures to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generation {
    /// The C5 launch table of November 2017 (the default).
    #[default]
    Launch,
    /// Today's EC2 documentation.
    Current,
}

impl std::str::FromStr for Generation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "launch" => Ok(Generation::Launch),
            "current" => Ok(Generation::Current),
            _ => Err(format!(
                "invalid instance generation '{s}': expected launch or current"
            )),
        }
    }
}

/// A bandwidth cap: the rate always available, and the rate allowed while burst credits last (equal
/// when the type has no "up to" figure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Sustained rate in Mbit/s.
    pub baseline_mbps: u64,
    /// Burst rate in Mbit/s.
    pub maximum_mbps: u64,
}

impl Bandwidth {
    const fn flat(mbps: u64) -> Self {
        Self {
            baseline_mbps: mbps,
            maximum_mbps: mbps,
        }
    }

    const fn up_to(baseline_mbps: u64, maximum_mbps: u64) -> Self {
        Self {
            baseline_mbps,
            maximum_mbps,
        }
    }

    /// Whether the type bursts above its baseline ("up to" in EC2's tables).
    pub fn bursts(&self) -> bool {
        self.maximum_mbps > self.baseline_mbps
    }
}

/// An EBS IOPS cap: the operations per second always available, and the rate allowed while burst
/// credits last (equal when the type does not burst). EC2 states them for 16 KiB I/Os.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iops {
    /// Sustained I/O operations per second.
    pub baseline: u64,
    /// Burst I/O operations per second.
    pub maximum: u64,
}

impl Iops {
    const fn flat(iops: u64) -> Self {
        Self {
            baseline: iops,
            maximum: iops,
        }
    }

    const fn up_to(baseline: u64, maximum: u64) -> Self {
        Self { baseline, maximum }
    }

    /// Whether the type bursts above its baseline.
    pub fn bursts(&self) -> bool {
        self.maximum > self.baseline
    }
}

/// One instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceType {
    /// EC2's name, e.g. "c5.large".
    pub name: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in GiB.
    pub memory_gib: u64,
    /// EBS bandwidth, shared by all of the instance's volumes.
    pub ebs: Bandwidth,
    /// EBS IOPS, shared by all of the instance's volumes.
    pub ebs_iops: Iops,
    /// Network bandwidth, per direction.
    pub network: Bandwidth,
}

impl InstanceType {
    /// Memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_gib << 30
    }
}

/// The default instance type.
pub const DEFAULT_INSTANCE_TYPE: &str = "c5.large";

/// The C5 family. Launch figures: the November 2017 launch table; EBS and network baselines of the
/// "up to" sizes from EC2's documentation; EBS IOPS from the EBS-optimized table of that time
/// (docs/instance-types.md).
const C5_LAUNCH: [InstanceType; 6] = [
    InstanceType {
        name: "c5.large",
        vcpus: 2,
        memory_gib: 4,
        ebs: Bandwidth::up_to(650, 2250),
        ebs_iops: Iops::up_to(4_000, 16_000),
        network: Bandwidth::up_to(750, 10_000),
    },
    InstanceType {
        name: "c5.xlarge",
        vcpus: 4,
        memory_gib: 8,
        ebs: Bandwidth::up_to(1150, 2250),
        ebs_iops: Iops::up_to(6_000, 16_000),
        network: Bandwidth::up_to(1250, 10_000),
    },
    InstanceType {
        name: "c5.2xlarge",
        vcpus: 8,
        memory_gib: 16,
        ebs: Bandwidth::up_to(2300, 2250),
        ebs_iops: Iops::up_to(8_000, 16_000),
        network: Bandwidth::up_to(2500, 10_000),
    },
    InstanceType {
        name: "c5.4xlarge",
        vcpus: 16,
        memory_gib: 32,
        ebs: Bandwidth::flat(2250),
        ebs_iops: Iops::flat(16_000),
        network: Bandwidth::up_to(5000, 10_000),
    },
    InstanceType {
        name: "c5.9xlarge",
        vcpus: 36,
        memory_gib: 72,
        ebs: Bandwidth::flat(4500),
        ebs_iops: Iops::flat(32_000),
        network: Bandwidth::flat(10_000),
    },
    InstanceType {
        name: "c5.18xlarge",
        vcpus: 72,
        memory_gib: 144,
        ebs: Bandwidth::flat(9000),
        ebs_iops: Iops::flat(64_000),
        network: Bandwidth::flat(25_000),
    },
];

/// How today's figures differ from the launch table: (name, EBS, EBS IOPS, network).
const C5_CURRENT_CHANGES: [(&str, Bandwidth, Iops, Bandwidth); 6] = [
    (
        "c5.large",
        Bandwidth::up_to(650, 4750),
        Iops::up_to(4_000, 20_000),
        Bandwidth::up_to(750, 10_000),
    ),
    (
        "c5.xlarge",
        Bandwidth::up_to(1150, 4750),
        Iops::up_to(6_000, 20_000),
        Bandwidth::up_to(1250, 10_000),
    ),
    (
        "c5.2xlarge",
        Bandwidth::up_to(2300, 4750),
        Iops::up_to(10_000, 20_000),
        Bandwidth::up_to(2500, 10_000),
    ),
    (
        "c5.4xlarge",
        Bandwidth::flat(4750),
        Iops::flat(20_000),
        Bandwidth::up_to(5000, 10_000),
    ),
    (
        "c5.9xlarge",
        Bandwidth::flat(9500),
        Iops::flat(40_000),
        Bandwidth::flat(12_000),
    ),
    (
        "c5.18xlarge",
        Bandwidth::flat(19_000),
        Iops::flat(80_000),
        Bandwidth::flat(25_000),
    ),
];

/// Every profile of `generation`.
pub fn instance_types(generation: Generation) -> Vec<InstanceType> {
    C5_LAUNCH
        .iter()
        .map(|base| {
            let mut t = *base;
            if generation == Generation::Current {
                if let Some((_, ebs, ebs_iops, network)) = C5_CURRENT_CHANGES
                    .iter()
                    .find(|(name, _, _, _)| *name == t.name)
                {
                    t.ebs = *ebs;
                    t.ebs_iops = *ebs_iops;
                    t.network = *network;
                }
            }
            // A baseline above the burst rate means the type does not burst: EC2's c5.2xlarge launch
            // figures (baseline 2,300 vs "up to 2.25 Gbps") are such a case.
            if t.ebs.baseline_mbps > t.ebs.maximum_mbps {
                t.ebs.maximum_mbps = t.ebs.baseline_mbps;
            }
            t
        })
        .collect()
}

/// The profile called `name`.
pub fn find_instance_type(name: &str, generation: Generation) -> Result<InstanceType, String> {
    let all = instance_types(generation);
    all.iter().find(|t| t.name == name).copied().ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|t| t.name).collect();
        format!(
            "unknown instance type '{name}': valid types are {}",
            names.join(", ")
        )
    })
}

fn format_mbps(mbps: u64) -> String {
    if mbps >= 1000 && mbps % 1000 == 0 {
        format!("{} Gbps", mbps / 1000)
    } else if mbps >= 1000 {
        format!("{:.2} Gbps", mbps as f64 / 1000.0)
    } else {
        format!("{mbps} Mbps")
    }
}

/// The table `flint instance-types` prints.
pub fn table(generation: Generation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>5} {:>8} {:>13} {:>13} {:>10} {:>10} {:>13} {:>13}",
        "NAME",
        "VCPUS",
        "MEMORY",
        "EBS BASELINE",
        "EBS MAX",
        "EBS IOPS",
        "IOPS MAX",
        "NET BASELINE",
        "NET MAX"
    );
    for t in instance_types(generation) {
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>8} {:>13} {:>13} {:>10} {:>10} {:>13} {:>13}",
            t.name,
            t.vcpus,
            format!("{} GiB", t.memory_gib),
            format_mbps(t.ebs.baseline_mbps),
            format_mbps(t.ebs.maximum_mbps),
            t.ebs_iops.baseline,
            t.ebs_iops.maximum,
            format_mbps(t.network.baseline_mbps),
            format_mbps(t.network.maximum_mbps),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_table_matches_the_2017_figures() {
        let t = find_instance_type("c5.large", Generation::Launch).unwrap();
        assert_eq!((t.vcpus, t.memory_gib), (2, 4));
        assert_eq!(t.ebs, Bandwidth::up_to(650, 2250));
        assert_eq!(t.network, Bandwidth::up_to(750, 10_000));
        assert_eq!(t.ebs_iops, Iops::up_to(4_000, 16_000));
        let big = find_instance_type("c5.18xlarge", Generation::Launch).unwrap();
        assert_eq!((big.vcpus, big.memory_bytes()), (72, 144 << 30));
        assert_eq!(big.ebs, Bandwidth::flat(9000));
        assert_eq!(big.ebs_iops, Iops::flat(64_000));
        // The launch-era EBS-optimized table (docs/instance-types.md): baseline and maximum IOPS.
        let iops: Vec<(u64, u64)> = instance_types(Generation::Launch)
            .iter()
            .map(|t| (t.ebs_iops.baseline, t.ebs_iops.maximum))
            .collect();
        assert_eq!(
            iops,
            [
                (4_000, 16_000),
                (6_000, 16_000),
                (8_000, 16_000),
                (16_000, 16_000),
                (32_000, 32_000),
                (64_000, 64_000)
            ]
        );
        assert!(!big.network.bursts());
        // No profile's burst rate is below its baseline.
        for g in [Generation::Launch, Generation::Current] {
            for t in instance_types(g) {
                assert!(t.ebs.maximum_mbps >= t.ebs.baseline_mbps, "{t:?}");
                assert!(t.ebs_iops.maximum >= t.ebs_iops.baseline, "{t:?}");
                assert!(t.network.maximum_mbps >= t.network.baseline_mbps, "{t:?}");
            }
        }
    }

    #[test]
    fn current_generation_figures() {
        let t = find_instance_type("c5.xlarge", Generation::Current).unwrap();
        assert_eq!(t.ebs, Bandwidth::up_to(1150, 4750));
        let t = find_instance_type("c5.9xlarge", Generation::Current).unwrap();
        assert_eq!((t.ebs.maximum_mbps, t.network.maximum_mbps), (9500, 12_000));
        // Today's EBS-optimized tables: baseline IOPS of the "up to" sizes, maximum IOPS of all.
        let iops: Vec<(u64, u64)> = instance_types(Generation::Current)
            .iter()
            .map(|t| (t.ebs_iops.baseline, t.ebs_iops.maximum))
            .collect();
        assert_eq!(
            iops,
            [
                (4_000, 20_000),
                (6_000, 20_000),
                (10_000, 20_000),
                (20_000, 20_000),
                (40_000, 40_000),
                (80_000, 80_000)
            ]
        );
        assert_eq!(instance_types(Generation::Current).len(), 6);
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = find_instance_type("m5.large", Generation::Launch).unwrap_err();
        assert!(
            err.contains("'m5.large'") && err.contains("c5.large") && err.contains("c5.18xlarge")
        );
        assert!("next".parse::<Generation>().is_err());
    }

    #[test]
    fn table_lists_every_type() {
        let text = table(Generation::Launch);
        assert_eq!(text.lines().count(), 7);
        assert!(
            text.contains("c5.9xlarge") && text.contains("4.50 Gbps") && text.contains("750 Mbps")
        );
        assert!(text.lines().next().unwrap().contains("EBS IOPS"));
        let large = text.lines().find(|l| l.starts_with("c5.large")).unwrap();
        assert!(
            large.contains(" 4000 ") && large.contains(" 16000 "),
            "{large}"
        );
        let current = table(Generation::Current);
        let big = current
            .lines()
            .find(|l| l.starts_with("c5.18xlarge"))
            .unwrap();
        assert!(big.contains(" 80000 "), "{big}");
    }
}
