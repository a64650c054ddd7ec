//! `--volume path=FILE[,id=vol-...][,readonly=on][,block_size=512|4096][,name=sdf]`: one EBS-style
//! volume, which flint gives the guest as an NVMe controller with one namespace (as Nitro does).

use std::path::PathBuf;

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
}

fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
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
                _ => {
                    return Err(format!(
                        "unknown or empty setting '{field}' (expected path, id, readonly, block_size, name)"
                    ))
                }
            }
        }
        volume.path = path.ok_or("missing path=FILE")?;
        Ok(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("path=a,ro", "not key=value"),
        ] {
            let err = spec.parse::<VolumeConfig>().unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}
