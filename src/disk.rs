//! `--disk path=FILE[,readonly=on][,id=NAME][,queues=N]`: one virtio-blk disk (a modern virtio-pci
//! device on bus 0, attached after the NVMe volumes). docs/virtio.md.

use std::path::PathBuf;

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
                _ => {
                    return Err(format!(
                        "unknown or empty setting '{field}' (expected path, readonly, id, queues)"
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
        assert_eq!((d.read_only, d.id, d.queues), (false, None, 1));
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
        ] {
            let err = spec.parse::<DiskConfig>().unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}
