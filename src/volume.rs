//! `--volume path=FILE[,id=vol-...][,readonly=on][,block_size=512|4096][,name=sdf]
//! [,type=gp2|gp3|io2][,iops=N][,throughput=N[K|M|G]]`: one EBS-style volume, which flint gives the
//! guest as an NVMe controller with one namespace (as Nitro does), and the rate limits its I/O gets:
//! the volume's own caps (gp3/io2/gp2, below) on top of the instance's EBS cap, which all volumes
//! share ([`instance_ebs_limiter`]). docs/instance-types.md describes the model and its sources.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use devices::rate_limiter::{
    BucketConfig, LimiterChain, RateLimiter, RateLimiterConfig, SharedRateLimiter,
};

use crate::instance::{Bandwidth, InstanceType};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// gp3: IOPS included in the price, and the most that can be provisioned.
pub const GP3_IOPS: (u64, u64) = (3_000, 16_000);
/// gp3: throughput included, and the most that can be provisioned, in bytes/s (125 and 1,000 MiB/s).
pub const GP3_THROUGHPUT: (u64, u64) = (125 * MIB, 1_000 * MIB);
/// gp3: provisioned throughput per provisioned IOPS, in bytes/s (0.25 MiB/s).
pub const GP3_THROUGHPUT_PER_IOPS: u64 = MIB / 4;
/// io2: the IOPS that can be provisioned.
pub const IO2_IOPS: (u64, u64) = (100, 256_000);
/// io2: throughput per provisioned IOPS (16 KiB I/Os).
pub const IO2_BYTES_PER_IOP: u64 = 16 * KIB;
/// io2: the highest throughput, in bytes/s.
pub const IO2_MAX_THROUGHPUT: u64 = 4_000 * MIB;
/// gp2: baseline IOPS per GiB of volume size.
pub const GP2_IOPS_PER_GIB: u64 = 3;
/// gp2: lowest and highest baseline IOPS.
pub const GP2_BASELINE_IOPS: (u64, u64) = (100, 16_000);
/// gp2: the burst rate of volumes whose baseline is below it.
pub const GP2_BURST_IOPS: u64 = 3_000;
/// gp2: the I/O credit balance (and its initial value), 5.4 million I/O credits.
pub const GP2_CREDITS: u64 = 5_400_000;
/// Token-bucket capacity as a time slice of the (top) rate: 50 ms worth of tokens. Small against
/// the one-second windows EBS rates are stated over (a full bucket adds at most 2.5% to a 2 s
/// measurement), and large enough that a worker thread the host scheduler delays by up to 50 ms
/// loses none of the rate (refill keeps accruing meanwhile).
const BUCKET_SLICE: f64 = 0.05;
/// A bytes bucket holds at least this much (above the NVMe MDTS of 512 KiB, so a full-size
/// transfer never goes into debt).
pub(crate) const MIN_BYTES_CAPACITY: u64 = MIB;

/// An EBS volume type: which per-volume caps apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeType {
    /// General Purpose SSD, size-based: 3 IOPS per GiB (100 to 16,000), bursting to 3,000 IOPS on
    /// 5.4 million I/O credits; 128 MiB/s up to 170 GiB, 250 MiB/s above.
    Gp2,
    /// General Purpose SSD: provisioned IOPS (3,000 to 16,000) and throughput (125 to 1,000 MiB/s,
    /// at most 0.25 MiB/s per IOPS), flat, no burst.
    Gp3,
    /// Provisioned IOPS SSD: IOPS (100 to 256,000); throughput follows them (16 KiB per I/O, at
    /// most 4,000 MiB/s).
    Io2,
}

impl std::str::FromStr for VolumeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gp2" => Ok(VolumeType::Gp2),
            "gp3" => Ok(VolumeType::Gp3),
            "io2" => Ok(VolumeType::Io2),
            _ => Err(format!("type={s}: expected gp2, gp3 or io2")),
        }
    }
}

/// A volume's own caps, resolved: IOPS (baseline, and burst with its duration for gp2) and
/// throughput in bytes/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeCaps {
    /// Sustained IOPS.
    pub iops: u64,
    /// gp2's burst: (burst IOPS, how long a full credit balance lasts at that rate).
    pub burst: Option<(u64, Duration)>,
    /// Throughput in bytes per second.
    pub throughput: u64,
}

impl VolumeCaps {
    /// The token buckets: an ops bucket (burstable for gp2) and a bytes bucket.
    pub fn limiter_config(&self) -> RateLimiterConfig {
        let top_iops = self.burst.map_or(self.iops, |(iops, _)| iops);
        let ops_capacity = capacity(top_iops as f64, 1);
        let ops = match self.burst {
            Some((burst, duration)) => {
                BucketConfig::burstable(self.iops as f64, burst as f64, duration, ops_capacity)
            }
            None => BucketConfig::fixed(self.iops as f64, ops_capacity),
        };
        RateLimiterConfig {
            ops: Some(ops),
            bytes: Some(BucketConfig::fixed(
                self.throughput as f64,
                capacity(self.throughput as f64, MIN_BYTES_CAPACITY),
            )),
        }
    }
}

/// A bucket of [`BUCKET_SLICE`] worth of `rate`, at least `min`.
pub(crate) fn capacity(rate: f64, min: u64) -> u64 {
    // Rates here are at most a few GB/s: the product fits a u64 and the cast saturates anyway.
    ((rate * BUCKET_SLICE).ceil() as u64).max(min)
}

/// One `--volume`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    /// The disk image.
    pub path: PathBuf,
    /// The EBS volume id (`vol-` + hex); None derives a stable one from the path.
    pub id: Option<String>,
    /// Open read-only; guest writes fail.
    pub read_only: bool,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// The EC2 block-device name reported to the guest (`xvda`, `sdf`, ...); None picks one by position.
    pub name: Option<String>,
    /// The EBS volume type; None: no caps of the volume's own (only the instance's EBS cap).
    pub kind: Option<VolumeType>,
    /// Provisioned IOPS (gp3, io2), validated for the type.
    pub iops: Option<u64>,
    /// Provisioned throughput in bytes per second (gp3), validated.
    pub throughput: Option<u64>,
}

fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

/// `125M` (= 125 MiB/s), `1G`, `64K`, `131072000`: bytes per second, with binary K/M/G suffixes (EBS
/// states volume throughput in MiB/s). An optional `iB` after the suffix is accepted (`125MiB`).
pub fn parse_throughput(text: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "throughput={text}: expected bytes per second with an optional K, M or G suffix \
             (binary, as EBS's MiB/s: 125M = 125 MiB/s)"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| err())?;
    let shift = match unit {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(err()),
    };
    value.checked_mul(1 << shift).ok_or_else(err)
}

fn parse_iops(text: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|_| {
        format!(
            "iops={text}: expected a whole number of I/O operations per second \
             (gp3: {}-{}, io2: {}-{})",
            GP3_IOPS.0, GP3_IOPS.1, IO2_IOPS.0, IO2_IOPS.1
        )
    })
}

fn mib(bytes: u64) -> String {
    if bytes % MIB == 0 {
        format!("{}M", bytes / MIB)
    } else {
        format!("{bytes} bytes/s")
    }
}

impl VolumeConfig {
    /// Checks `type`, `iops` and `throughput` together (and fills in gp3's defaults).
    fn validate_caps(&mut self) -> Result<(), String> {
        if self.kind.is_none() && (self.iops.is_some() || self.throughput.is_some()) {
            // Only gp3 takes both; iops= or throughput= alone means a gp3 volume.
            self.kind = Some(VolumeType::Gp3);
        }
        match self.kind {
            None => Ok(()),
            Some(VolumeType::Gp2) => {
                if self.iops.is_some() || self.throughput.is_some() {
                    return Err(
                        "type=gp2 takes no iops= or throughput=: gp2 performance follows the \
                         volume size (3 IOPS per GiB, bursting to 3000); use type=gp3 or io2 to \
                         provision it"
                            .into(),
                    );
                }
                Ok(())
            }
            Some(VolumeType::Gp3) => {
                let iops = *self.iops.get_or_insert(GP3_IOPS.0);
                let throughput = *self.throughput.get_or_insert(GP3_THROUGHPUT.0);
                if !(GP3_IOPS.0..=GP3_IOPS.1).contains(&iops) {
                    return Err(format!(
                        "iops={iops}: gp3 takes {} to {} IOPS",
                        GP3_IOPS.0, GP3_IOPS.1
                    ));
                }
                if !(GP3_THROUGHPUT.0..=GP3_THROUGHPUT.1).contains(&throughput) {
                    return Err(format!(
                        "throughput={}: gp3 takes {} to {} (MiB/s)",
                        mib(throughput),
                        mib(GP3_THROUGHPUT.0),
                        mib(GP3_THROUGHPUT.1)
                    ));
                }
                let most = iops * GP3_THROUGHPUT_PER_IOPS;
                if throughput > GP3_THROUGHPUT.0 && throughput > most {
                    return Err(format!(
                        "throughput={}: gp3 allows 0.25 MiB/s per provisioned IOPS, at most {} \
                         with iops={iops}",
                        mib(throughput),
                        mib(most)
                    ));
                }
                Ok(())
            }
            Some(VolumeType::Io2) => {
                if self.throughput.is_some() {
                    return Err(format!(
                        "type=io2 takes no throughput=: it follows the IOPS ({} KiB per I/O, at \
                         most {})",
                        IO2_BYTES_PER_IOP / KIB,
                        mib(IO2_MAX_THROUGHPUT)
                    ));
                }
                match self.iops {
                    Some(iops) if (IO2_IOPS.0..=IO2_IOPS.1).contains(&iops) => Ok(()),
                    Some(iops) => Err(format!(
                        "iops={iops}: io2 takes {} to {} IOPS",
                        IO2_IOPS.0, IO2_IOPS.1
                    )),
                    None => Err(format!(
                        "type=io2 needs iops=N ({} to {})",
                        IO2_IOPS.0, IO2_IOPS.1
                    )),
                }
            }
        }
    }

    /// The volume's own caps, for a volume of `size` bytes (gp2's depend on it). None: no caps.
    pub fn caps(&self, size: u64) -> Option<VolumeCaps> {
        match self.kind? {
            VolumeType::Gp3 => Some(VolumeCaps {
                iops: self.iops.unwrap_or(GP3_IOPS.0),
                burst: None,
                throughput: self.throughput.unwrap_or(GP3_THROUGHPUT.0),
            }),
            VolumeType::Io2 => {
                let iops = self.iops.unwrap_or(IO2_IOPS.0);
                Some(VolumeCaps {
                    iops,
                    burst: None,
                    throughput: iops
                        .saturating_mul(IO2_BYTES_PER_IOP)
                        .min(IO2_MAX_THROUGHPUT),
                })
            }
            VolumeType::Gp2 => {
                // EBS sizes are whole GiB: a file of 1.5 GiB counts as 2, anything smaller as 1.
                let gib = size.div_ceil(GIB).max(1);
                let baseline = gib
                    .saturating_mul(GP2_IOPS_PER_GIB)
                    .clamp(GP2_BASELINE_IOPS.0, GP2_BASELINE_IOPS.1);
                // The credit balance lasts (credits) / (burst - baseline) seconds at the burst rate.
                let burst = (baseline < GP2_BURST_IOPS).then(|| {
                    (
                        GP2_BURST_IOPS,
                        Duration::from_secs_f64(
                            GP2_CREDITS as f64 / (GP2_BURST_IOPS - baseline) as f64,
                        ),
                    )
                });
                Some(VolumeCaps {
                    iops: baseline,
                    burst,
                    throughput: if gib <= 170 { 128 * MIB } else { 250 * MIB },
                })
            }
        }
    }
}

impl std::str::FromStr for VolumeConfig {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut path = None;
        let mut volume = VolumeConfig {
            path: PathBuf::new(),
            id: None,
            read_only: false,
            block_size: 512,
            name: None,
            kind: None,
            iops: None,
            throughput: None,
        };
        for field in spec.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("'{field}' is not key=value"))?;
            match key {
                "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
                "id" => volume.id = Some(value.to_string()),
                "readonly" => volume.read_only = parse_switch(key, value)?,
                "block_size" => {
                    volume.block_size = match value {
                        "512" => 512,
                        "4096" => 4096,
                        _ => return Err(format!("block_size={value}: expected 512 or 4096")),
                    }
                }
                "name" if !value.is_empty() => volume.name = Some(value.to_string()),
                "type" => volume.kind = Some(value.parse()?),
                "iops" => volume.iops = Some(parse_iops(value)?),
                "throughput" => volume.throughput = Some(parse_throughput(value)?),
                _ => {
                    return Err(format!(
                        "unknown or empty setting '{field}' (expected path, id, readonly, \
                         block_size, name, type, iops, throughput)"
                    ))
                }
            }
        }
        volume.path = path.ok_or("missing path=FILE")?;
        volume.validate_caps()?;
        Ok(volume)
    }
}

/// The instance's EBS caps, shared by all its volumes: bytes per second from the instance type's
/// EBS bandwidth (Mbit/s, decimal: 650 Mbps = 81.25 MB/s) and operations per second from its EBS
/// IOPS (one operation per command, whatever its size). An "up to" figure gets burst credits for
/// `burst` at the maximum (EC2: 30 minutes; zero: no credits, the baseline from the start); a flat
/// one its rate. Each bucket holds 50 ms of its top rate (the bytes one at least 1 MiB).
pub fn instance_ebs_config(instance: &InstanceType, burst: Duration) -> RateLimiterConfig {
    let iops = &instance.ebs_iops;
    RateLimiterConfig {
        bytes: Some(bandwidth_bucket(&instance.ebs, burst)),
        ops: Some(burstable_bucket(
            iops.baseline as f64,
            iops.maximum as f64,
            burst,
            1,
        )),
    }
}

/// A bytes-per-second bucket for a bandwidth in Mbit/s (decimal: 650 Mbps = 81.25 MB/s), with burst
/// credits for `burst` at the maximum when the figure is "up to"; used for the instance's EBS and
/// network caps alike.
pub fn bandwidth_bucket(cap: &Bandwidth, burst: Duration) -> BucketConfig {
    let bytes_per_s = |mbps: u64| mbps as f64 * 125_000.0;
    burstable_bucket(
        bytes_per_s(cap.baseline_mbps),
        bytes_per_s(cap.maximum_mbps),
        burst,
        MIN_BYTES_CAPACITY,
    )
}

/// A bucket at `baseline` that may run at `maximum` while burst credits for `burst` last (none when
/// `burst` is zero or the two are equal), holding 50 ms of its top rate and at least `min_capacity`.
fn burstable_bucket(
    baseline: f64,
    maximum: f64,
    burst: Duration,
    min_capacity: u64,
) -> BucketConfig {
    if maximum > baseline && !burst.is_zero() {
        BucketConfig::burstable(baseline, maximum, burst, capacity(maximum, min_capacity))
    } else {
        BucketConfig::fixed(baseline, capacity(baseline, min_capacity))
    }
}

/// The instance's shared EBS limiter ([`instance_ebs_config`]).
pub fn instance_ebs_limiter(
    instance: &InstanceType,
    burst: Duration,
) -> anyhow::Result<SharedRateLimiter> {
    let (ebs, iops) = (&instance.ebs, &instance.ebs_iops);
    let credits = if burst.is_zero() {
        String::new()
    } else {
        format!(" ({} s of burst credits)", burst.as_secs())
    };
    log::info!(
        "EBS caps: {} Mbps{}, {} IOPS{}{}",
        ebs.baseline_mbps,
        if ebs.bursts() && !burst.is_zero() {
            format!(" up to {} Mbps", ebs.maximum_mbps)
        } else {
            String::new()
        },
        iops.baseline,
        if iops.bursts() && !burst.is_zero() {
            format!(" up to {} IOPS", iops.maximum)
        } else {
            String::new()
        },
        if ebs.bursts() || iops.bursts() {
            credits
        } else {
            String::new()
        }
    );
    SharedRateLimiter::new(&instance_ebs_config(instance, burst))
        .map_err(|e| anyhow::anyhow!("the instance's EBS cap: {e}"))
}

/// The size of the disk file (or block device) at `path`.
fn disk_size(path: &Path) -> std::io::Result<u64> {
    File::open(path)?.seek(SeekFrom::End(0))
}

impl VolumeConfig {
    /// The rate limiter of this volume: its own caps (if it has a type) in front of the instance's
    /// shared EBS cap.
    pub fn limiter(&self, ebs: &SharedRateLimiter) -> anyhow::Result<LimiterChain> {
        let caps = match self.kind {
            // gp2 needs the size; a file that cannot be read fails later with a better message.
            Some(VolumeType::Gp2) => self.caps(disk_size(&self.path).unwrap_or(0)),
            _ => self.caps(0),
        };
        if let (Some(kind), Some(caps)) = (self.kind, caps) {
            log::info!(
                "volume {}: {kind:?} caps {} IOPS{}, {} bytes/s",
                self.path.display(),
                caps.iops,
                caps.burst
                    .map(|(iops, t)| format!(" (up to {iops} for {} s)", t.as_secs()))
                    .unwrap_or_default(),
                caps.throughput
            );
        }
        let local = match caps {
            Some(caps) => RateLimiter::new(&caps.limiter_config()),
            None => RateLimiter::new(&RateLimiterConfig::unlimited()),
        }
        .map_err(|e| anyhow::anyhow!("--volume path={}: {e}", self.path.display()))?;
        Ok(ebs.chain(local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{find_instance_type, Generation};

    #[test]
    fn full_and_minimal_specs() {
        let v: VolumeConfig =
            "path=root.img,id=vol-0123456789abcdef0,readonly=on,block_size=4096,name=sdf"
                .parse()
                .unwrap();
        assert_eq!(v.path, PathBuf::from("root.img"));
        assert_eq!(v.id.as_deref(), Some("vol-0123456789abcdef0"));
        assert!(v.read_only);
        assert_eq!((v.block_size, v.name.as_deref()), (4096, Some("sdf")));
        assert_eq!(v.caps(1 << 30), None, "no type: no caps of its own");
        let v: VolumeConfig = "path=/d.img".parse().unwrap();
        assert_eq!(
            (v.read_only, v.block_size, v.id, v.name),
            (false, 512, None, None)
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("id=vol-1", "missing path"),
            ("path=", "unknown or empty"),
            ("path=a,readonly=maybe", "expected on or off"),
            ("path=a,block_size=1024", "512 or 4096"),
            ("path=a,size=4G", "unknown or empty setting 'size=4G'"),
            ("path=a,size=4G", "type, iops, throughput"),
            ("path=a,ro", "not key=value"),
            ("path=a,type=gp4", "type=gp4: expected gp2, gp3 or io2"),
            ("path=a,type=", "expected gp2, gp3 or io2"),
            ("path=a,iops=fast", "iops=fast: expected a whole number"),
            ("path=a,iops=-5", "gp3: 3000-16000, io2: 100-256000"),
            ("path=a,iops=", "expected a whole number"),
            ("path=a,throughput=125X", "optional K, M or G suffix"),
            ("path=a,throughput=M", "125M = 125 MiB/s"),
            ("path=a,throughput=99999999999999G", "optional K, M or G"),
            ("path=a,type=gp3,iops=2999", "gp3 takes 3000 to 16000 IOPS"),
            ("path=a,type=gp3,iops=16001", "gp3 takes 3000 to 16000 IOPS"),
            ("path=a,type=gp3,throughput=124M", "gp3 takes 125M to 1000M"),
            (
                "path=a,type=gp3,throughput=1001M",
                "gp3 takes 125M to 1000M",
            ),
            (
                "path=a,type=gp3,throughput=1000M",
                "at most 750M with iops=3000",
            ),
            ("path=a,type=io2", "type=io2 needs iops=N (100 to 256000)"),
            ("path=a,type=io2,iops=99", "io2 takes 100 to 256000"),
            (
                "path=a,type=io2,iops=1000,throughput=125M",
                "io2 takes no throughput",
            ),
            (
                "path=a,type=gp2,iops=300",
                "gp2 performance follows the volume size",
            ),
        ] {
            let err = spec.parse::<VolumeConfig>().unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: one line: {err}");
        }
    }

    #[test]
    fn throughput_suffixes_are_binary() {
        assert_eq!(parse_throughput("125M"), Ok(125 << 20));
        assert_eq!(parse_throughput("125MiB"), Ok(125 << 20));
        assert_eq!(parse_throughput("1G"), Ok(1 << 30));
        assert_eq!(parse_throughput("64K"), Ok(64 << 10));
        assert_eq!(parse_throughput("64k"), Ok(64 << 10));
        assert_eq!(parse_throughput("131072000"), Ok(131_072_000));
        for bad in ["", "M", "1.5M", "12 M", "1T", "-1", "125MB"] {
            assert!(parse_throughput(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_types_set_the_caps() {
        let caps = |spec: &str, size: u64| spec.parse::<VolumeConfig>().unwrap().caps(size);
        // gp3: the defaults, and provisioned figures.
        let gp3 = caps("path=a,type=gp3", 0).unwrap();
        assert_eq!(
            (gp3.iops, gp3.throughput, gp3.burst),
            (3000, 125 << 20, None)
        );
        let gp3 = caps("path=a,type=gp3,iops=16000,throughput=1000M", 0).unwrap();
        assert_eq!((gp3.iops, gp3.throughput), (16000, 1000 << 20));
        // iops= alone means gp3.
        let v: VolumeConfig = "path=a,iops=4000".parse().unwrap();
        assert_eq!(v.kind, Some(VolumeType::Gp3));
        assert_eq!(v.throughput, Some(125 << 20));
        // io2: 16 KiB per IOPS, at most 4,000 MiB/s.
        let io2 = caps("path=a,type=io2,iops=1000", 0).unwrap();
        assert_eq!((io2.iops, io2.throughput), (1000, 16000 << 10));
        let io2 = caps("path=a,type=io2,iops=256000", 0).unwrap();
        assert_eq!(io2.throughput, 4000 << 20);
        // gp2: by size; the burst lasts 5.4 M credits / (3000 - baseline) s.
        let gp2 = caps("path=a,type=gp2", 64 << 20).unwrap();
        assert_eq!((gp2.iops, gp2.throughput), (100, 128 << 20));
        let (burst, duration) = gp2.burst.unwrap();
        assert_eq!(burst, 3000);
        assert_eq!(
            duration.as_secs(),
            1862,
            "EBS's table: 1,862 s for 1-33 GiB"
        );
        let gp2 = caps("path=a,type=gp2", 100 << 30).unwrap();
        assert_eq!((gp2.iops, gp2.burst.unwrap().1.as_secs()), (300, 2000));
        let gp2 = caps("path=a,type=gp2", 750 << 30).unwrap();
        assert_eq!((gp2.iops, gp2.throughput), (2250, 250 << 20));
        assert_eq!(gp2.burst.unwrap().1.as_secs(), 7200);
        let gp2 = caps("path=a,type=gp2", 1000 << 30).unwrap();
        assert_eq!((gp2.iops, gp2.burst), (3000, None));
        assert_eq!(caps("path=a,type=gp2", 6000 << 30).unwrap().iops, 16000);
        // Every type's buckets are valid.
        for spec in [
            "path=a,type=gp3",
            "path=a,type=gp3,iops=16000,throughput=1000M",
            "path=a,type=io2,iops=100",
            "path=a,type=io2,iops=256000",
            "path=a,type=gp2",
        ] {
            for size in [0, 1 << 20, 200 << 30, 16 << 40] {
                let c = caps(spec, size).unwrap().limiter_config();
                c.validate()
                    .unwrap_or_else(|e| panic!("{spec} {size}: {e}"));
                // The bytes bucket takes a full 512 KiB transfer without debt.
                assert!(c.bytes.unwrap().capacity >= 512 << 10);
            }
        }
    }

    #[test]
    fn instance_ebs_caps_from_the_profiles() {
        let burst = devices::rate_limiter::EBS_BURST_DURATION;
        for generation in [Generation::Launch, Generation::Current] {
            for t in crate::instance::instance_types(generation) {
                let c = instance_ebs_config(&t, burst);
                c.validate().unwrap();
                let bytes = c.bytes.unwrap();
                assert_eq!(
                    bytes.rate,
                    t.ebs.baseline_mbps as f64 * 125_000.0,
                    "{}",
                    t.name
                );
                assert_eq!(bytes.burst.is_some(), t.ebs.bursts(), "{}", t.name);
                let ops = c.ops.unwrap();
                assert_eq!(ops.rate, t.ebs_iops.baseline as f64, "{}", t.name);
                assert_eq!(ops.burst.is_some(), t.ebs_iops.bursts(), "{}", t.name);
                if let Some(b) = ops.burst {
                    assert_eq!((b.max_rate, b.duration), (t.ebs_iops.maximum as f64, burst));
                }
            }
        }
        // c5.large at launch: 81.25 MB/s, up to 281.25 MB/s for 30 minutes; 4,000 IOPS, up to
        // 16,000 with the same credits model.
        let large = find_instance_type("c5.large", Generation::Launch).unwrap();
        let config = instance_ebs_config(&large, burst);
        let c = config.bytes.unwrap();
        assert_eq!(c.rate, 81.25e6);
        let b = c.burst.unwrap();
        assert_eq!((b.max_rate, b.duration), (281.25e6, burst));
        assert_eq!(c.capacity, 14_062_500, "50 ms at the maximum");
        let ops = config.ops.unwrap();
        assert_eq!(
            (ops.rate, ops.capacity),
            (4000.0, 800),
            "50 ms of 16,000 IOPS"
        );
        assert_eq!(ops.burst.unwrap().max_rate, 16_000.0);
        // A zero burst: the baselines from the start.
        let config = instance_ebs_config(&large, Duration::ZERO);
        let c = config.bytes.unwrap();
        assert_eq!((c.burst, c.capacity), (None, 4_062_500));
        let ops = config.ops.unwrap();
        assert_eq!((ops.rate, ops.burst, ops.capacity), (4000.0, None, 200));
        // c5.2xlarge at launch is flat at its documented 2,300 Mbps baseline, but its IOPS burst
        // (8,000 up to 16,000).
        let x2 = find_instance_type("c5.2xlarge", Generation::Launch).unwrap();
        let config = instance_ebs_config(&x2, burst);
        let c = config.bytes.unwrap();
        assert_eq!((c.rate, c.burst), (287.5e6, None));
        assert!(config.ops.unwrap().burst.is_some());
        assert!(instance_ebs_limiter(&x2, burst).is_ok());
        // c5.18xlarge today: a flat 80,000 IOPS.
        let big = find_instance_type("c5.18xlarge", Generation::Current).unwrap();
        let ops = instance_ebs_config(&big, burst).ops.unwrap();
        assert_eq!((ops.rate, ops.burst, ops.capacity), (80_000.0, None, 4000));
    }

    /// The instance's IOPS cap on a manual clock, as the shared limiter of a volume: a c5.large
    /// (launch) with 2 s of credits gets 16,000 IOPS while they last, then its 4,000 baseline.
    #[test]
    fn instance_iops_cap_bursts_then_settles_at_the_baseline() {
        use devices::rate_limiter::{Clock, ManualClock, Throttled};
        let clock = ManualClock::new();
        let large = find_instance_type("c5.large", Generation::Launch).unwrap();
        let config = instance_ebs_config(&large, Duration::from_secs(2));
        let shared = SharedRateLimiter::with_clock(&config, clock.shared()).unwrap();
        let mut chain = shared.chain(RateLimiter::unlimited(clock.shared()).unwrap());
        // A greedy guest of 4 KiB reads (the bytes cap, 281 MB/s, allows 68,000/s: IOPS govern).
        let mut per_second = Vec::new();
        for _ in 0..5 {
            let end = clock.now() + Duration::from_secs(1);
            let mut done = 0u64;
            while clock.now() < end {
                match chain.consume(1, 4096) {
                    Ok(()) => done += 1,
                    Err(Throttled { retry_after }) => {
                        clock.advance(retry_after);
                        chain.on_timer_event();
                    }
                }
            }
            per_second.push(done);
        }
        let near = |n: u64, want: f64| (n as f64 - want).abs() / want <= 0.06;
        // Credits (16,000 - 4,000) x 2 s: 2 s at the maximum (plus the 800-op bucket), then 4,000.
        assert!(near(per_second[0], 16_000.0), "{per_second:?}");
        assert!(near(per_second[1], 16_000.0), "{per_second:?}");
        assert!(near(per_second[3], 4_000.0), "{per_second:?}");
        assert!(near(per_second[4], 4_000.0), "{per_second:?}");
    }

    #[test]
    fn limiter_chains_volume_caps_to_the_shared_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(100 << 30)
            .unwrap();
        let large = find_instance_type("c5.large", Generation::Launch).unwrap();
        let ebs = instance_ebs_limiter(&large, Duration::from_secs(5)).unwrap();
        let spec = format!("path={},type=gp2", path.display());
        let v: VolumeConfig = spec.parse().unwrap();
        let chain = v.limiter(&ebs).unwrap();
        // gp2 of 100 GiB: 300 IOPS baseline.
        assert_eq!(chain.local().ops_bucket().unwrap().rate(), 300.0);
        assert!(chain.shared().is_some());
        let v: VolumeConfig = format!("path={}", path.display()).parse().unwrap();
        let chain = v.limiter(&ebs).unwrap();
        assert!(chain.local().ops_bucket().is_none() && chain.local().bytes_bucket().is_none());
    }
}
