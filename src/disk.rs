//! `--disk path=FILE[,readonly=on][,id=NAME][,queues=N][,iops=N][,throughput=RATE]`: one virtio-blk
//! disk (a modern virtio-pci device on bus 0, attached after the NVMe volumes), optionally rate
//! limited. docs/virtio.md; the caps: docs/instance-types.md.

use std::path::PathBuf;

use devices::rate_limiter::{BucketConfig, LimiterChain, RateLimiter, RateLimiterConfig};

use crate::volume::{capacity, parse_throughput, MIN_BYTES_CAPACITY};

/// The highest `iops=` a disk takes (far above what this VMM can do; keeps the bucket sane).
pub const MAX_DISK_IOPS: u64 = 100_000_000;

/// One `--disk`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The disk image.
    pub path: PathBuf,
    /// Open read-only; guest writes fail with IOERR.
    pub read_only: bool,
    /// What the device answers to GET_ID (up to 20 printable ASCII bytes); None derives a stable
    /// one from the path.
    pub id: Option<String>,
    /// Request queues (1–16, default 1); more than one offers VIRTIO_BLK_F_MQ.
    pub queues: u16,
    /// Requests per second the disk allows (None: no cap).
    pub iops: Option<u64>,
    /// Bytes per second the disk allows (None: no cap).
    pub throughput: Option<u64>,
}

impl DiskConfig {
    /// The disk's token buckets, if it has a cap: each holds 50 ms of its rate (the bytes bucket at
    /// least 1 MiB), as a volume's do.
    pub fn limiter_config(&self) -> Option<RateLimiterConfig> {
        if self.iops.is_none() && self.throughput.is_none() {
            return None;
        }
        Some(RateLimiterConfig {
            ops: self
                .iops
                .map(|iops| BucketConfig::fixed(iops as f64, capacity(iops as f64, 1))),
            bytes: self.throughput.map(|rate| {
                BucketConfig::fixed(rate as f64, capacity(rate as f64, MIN_BYTES_CAPACITY))
            }),
        })
    }

    /// The disk's rate limiter (None: no cap). Disks are not EBS volumes: the instance's EBS cap
    /// does not apply to them.
    pub fn limiter(&self) -> anyhow::Result<Option<LimiterChain>> {
        let Some(config) = self.limiter_config() else {
            return Ok(None);
        };
        let local = RateLimiter::new(&config)
            .map_err(|e| anyhow::anyhow!("--disk path={}: {e}", self.path.display()))?;
        Ok(Some(LimiterChain::new(local, None)))
    }
}

fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut path = None;
        let mut disk = DiskConfig {
            path: PathBuf::new(),
            read_only: false,
            id: None,
            queues: 1,
            iops: None,
            throughput: None,
        };
        for field in spec.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("'{field}' is not key=value"))?;
            match key {
                "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
                "readonly" => disk.read_only = parse_switch(key, value)?,
                "id" => {
                    devices::virtio_blk::validate_disk_id(value).map_err(|e| e.to_string())?;
                    disk.id = Some(value.to_string());
                }
                "queues" => {
                    disk.queues = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=devices::virtio_blk::MAX_QUEUES).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "queues={value}: expected 1 to {}",
                                devices::virtio_blk::MAX_QUEUES
                            )
                        })?
                }
                "iops" => {
                    disk.iops = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|n| (1..=MAX_DISK_IOPS).contains(n))
                            .ok_or_else(|| {
                                format!(
                                    "iops={value}: expected a whole number of requests per second, \
                                     1 to {MAX_DISK_IOPS}"
                                )
                            })?,
                    )
                }
                // `bandwidth` is accepted as another name for it.
                "throughput" | "bandwidth" => {
                    let rate = parse_throughput(value)
                        .map_err(|e| e.replacen("throughput=", &format!("{key}="), 1))?;
                    if rate == 0 || rate as f64 > devices::rate_limiter::MAX_RATE {
                        return Err(format!(
                            "{key}={value}: expected 1 byte/s to {:e} bytes/s",
                            devices::rate_limiter::MAX_RATE
                        ));
                    }
                    disk.throughput = Some(rate);
                }
                _ => {
                    return Err(format!(
                        "unknown or empty setting '{field}' (expected path, readonly, id, queues, \
                         iops, throughput)"
                    ))
                }
            }
        }
        disk.path = path.ok_or("missing path=FILE")?;
        Ok(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_specs() {
        let d: DiskConfig = "path=scratch.img,readonly=on,id=data-1,queues=4"
            .parse()
            .unwrap();
        assert_eq!(d.path, PathBuf::from("scratch.img"));
        assert!(d.read_only);
        assert_eq!((d.id.as_deref(), d.queues), (Some("data-1"), 4));
        let d: DiskConfig = "path=/d.img".parse().unwrap();
        assert_eq!((d.read_only, d.id.as_deref(), d.queues), (false, None, 1));
        assert_eq!((d.iops, d.throughput), (None, None));
        assert!(d.limiter_config().is_none());
        assert!(d.limiter().unwrap().is_none());
    }

    #[test]
    fn caps() {
        let d: DiskConfig = "path=d.img,iops=2000,throughput=100M".parse().unwrap();
        assert_eq!((d.iops, d.throughput), (Some(2000), Some(100 << 20)));
        let c = d.limiter_config().unwrap();
        c.validate().unwrap();
        let ops = c.ops.unwrap();
        assert_eq!((ops.rate, ops.capacity, ops.burst), (2000.0, 100, None));
        let bytes = c.bytes.unwrap();
        assert_eq!(bytes.rate, (100u64 << 20) as f64);
        assert_eq!(bytes.capacity, 5_242_880, "50 ms of 100 MiB/s");
        // Either alone; `bandwidth` is the same setting; tiny rates get a bucket of one op / 1 MiB.
        let d: DiskConfig = "path=d.img,bandwidth=64K".parse().unwrap();
        let c = d.limiter_config().unwrap();
        assert!(c.ops.is_none());
        assert_eq!(c.bytes.unwrap().capacity, 1 << 20);
        let d: DiskConfig = "path=d.img,iops=1".parse().unwrap();
        let c = d.limiter_config().unwrap();
        assert!(c.bytes.is_none());
        assert_eq!(c.ops.unwrap().capacity, 1);
        let chain = d.limiter().unwrap().unwrap();
        assert!(chain.shared().is_none(), "not under the instance's EBS cap");
        assert_eq!(chain.local().ops_bucket().unwrap().rate(), 1.0);
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("readonly=on", "missing path"),
            ("path=", "unknown or empty"),
            ("path=a,readonly=maybe", "expected on or off"),
            ("path=a,id=", "1 to 20 printable ASCII"),
            ("path=a,id=abcdefghijklmnopqrstu", "1 to 20 printable ASCII"),
            ("path=a,queues=0", "queues=0: expected 1 to 16"),
            ("path=a,queues=x", "expected 1 to 16"),
            ("path=a,size=4G", "unknown or empty setting 'size=4G'"),
            ("path=a,ro", "not key=value"),
            (
                "path=a,iops=0",
                "iops=0: expected a whole number of requests per second, 1 to",
            ),
            ("path=a,iops=-3", "iops=-3: expected a whole number"),
            ("path=a,iops=1.5", "iops=1.5: expected a whole number"),
            ("path=a,iops=", "iops=: expected"),
            ("path=a,iops=100000001", "1 to 100000000"),
            ("path=a,throughput=0", "throughput=0: expected 1 byte/s"),
            (
                "path=a,throughput=fast",
                "throughput=fast: expected bytes per second",
            ),
            ("path=a,throughput=10T", "optional K, M or G suffix"),
            (
                "path=a,bandwidth=1.5G",
                "bandwidth=1.5G: expected bytes per second",
            ),
            (
                "path=a,throughput=99999999999999G",
                "throughput=99999999999999G",
            ),
            ("path=a,rate=5", "iops, throughput"),
        ] {
            let err = spec.parse::<DiskConfig>().unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: one line: {err}");
        }
    }
}
