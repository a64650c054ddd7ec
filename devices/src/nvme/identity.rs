//! What the controller says it is: the EBS identity and the Identify data structures (NVMe 1.4 §5.15).
//!
//! Guest tools recognise an EBS volume the way they do on EC2: PCI vendor 0x1d0f, model number
//! `Amazon Elastic Block Store` (space padded), serial number = the volume id without its dash
//! (`vol-0123456789abcdef0` → `vol0123456789abcdef0`), and the EC2 block-device name (`sdf`,
//! `/dev/sdf`, …) in the first 32 bytes of the vendor-specific area of Identify Controller
//! (bytes 3072–3103, space padded), which Amazon Linux's `ebsnvme-id` and nvme-cli's amzn plugin read.
//! Linux then creates `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…` from model and serial.

use std::path::Path;

/// Amazon's PCI vendor id, also the subsystem vendor id of EBS controllers.
pub const AMAZON_VENDOR_ID: u16 = 0x1d0f;
/// The PCI device id of an EBS NVMe controller on Nitro instances.
pub const EBS_DEVICE_ID: u16 = 0x8061;
/// The model number EBS volumes report.
pub const EBS_MODEL: &str = "Amazon Elastic Block Store";
/// The firmware revision this controller reports.
pub const FIRMWARE_REVISION: &str = "1.0";
/// Offset of the block-device name in Identify Controller (start of the vendor-specific area).
pub const DEVICE_NAME_OFFSET: usize = 3072;
/// Length of the block-device name field.
pub const DEVICE_NAME_LEN: usize = 32;
/// Size of every Identify data structure.
pub const IDENTIFY_SIZE: usize = 4096;

/// Number of abort commands that may be outstanding (ACL, 0-based in Identify).
pub const ABORT_LIMIT: u8 = 4;
/// Number of Asynchronous Event Requests that may be outstanding (AERL, 0-based in Identify).
pub const AER_LIMIT: usize = 4;
/// Number of entries in the Error Information log (ELPE, 0-based in Identify).
pub const ERROR_LOG_ENTRIES: usize = 16;
/// Warning composite temperature threshold in kelvins.
pub const WARNING_TEMPERATURE: u16 = 343;
/// Critical composite temperature threshold in kelvins.
pub const CRITICAL_TEMPERATURE: u16 = 373;
/// The composite temperature the controller reports, in kelvins.
pub const COMPOSITE_TEMPERATURE: u16 = 310;

/// Why a volume id or device name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The volume id is not `vol-` followed by 1 to 17 lowercase hex digits.
    #[error("volume id {0:?} is not vol- followed by 1 to 17 lowercase hex digits")]
    VolumeId(String),
    /// The device name is empty, longer than 32 bytes, or not printable ASCII without spaces.
    #[error("device name {0:?} must be 1 to 32 printable ASCII characters without spaces")]
    DeviceName(String),
}

/// Checks an EBS-style volume id: `vol-` and 1 to 17 lowercase hex digits, so the serial number
/// (the id without its dash) fits the 20-byte serial field.
pub fn validate_volume_id(id: &str) -> Result<(), IdentityError> {
    let hex = id
        .strip_prefix("vol-")
        .ok_or_else(|| IdentityError::VolumeId(id.to_string()))?;
    if hex.is_empty()
        || hex.len() > 17
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(IdentityError::VolumeId(id.to_string()));
    }
    Ok(())
}

/// Checks a block-device name for the vendor-specific field (`sdf`, `/dev/xvda`, …).
pub fn validate_device_name(name: &str) -> Result<(), IdentityError> {
    if name.is_empty()
        || name.len() > DEVICE_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(IdentityError::DeviceName(name.to_string()));
    }
    Ok(())
}

fn fnv1a64(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The default volume id of a disk file: `vol-` and 17 hex digits of a stable hash of its path
/// (canonicalized when possible, so the same file always gets the same id and different files get
/// different ones).
pub fn default_volume_id(path: &Path) -> String {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let bytes = canonical.as_os_str().as_encoded_bytes();
    let high = fnv1a64(bytes, 0xcbf2_9ce4_8422_2325);
    let low = fnv1a64(bytes, 0x6c62_272e_07bb_0142);
    format!("vol-{:016x}{:x}", high, low & 0xf)
}

/// The serial number of a volume: its id without the dash.
pub fn serial_number(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// A conventional EC2 block-device name for the `index`-th volume: `xvda` for the root volume, then
/// `sdf` to `sdz`; None beyond those.
pub fn default_device_name(index: usize) -> Option<String> {
    match index {
        0 => Some("xvda".to_string()),
        1..=21 => Some(format!("sd{}", (b'e' + index as u8) as char)),
        _ => None,
    }
}

/// Copies `s` into `buf[at..at + len]`, padded with spaces (ASCII fields of Identify).
fn put_padded(buf: &mut [u8], at: usize, len: usize, s: &str) {
    let field = &mut buf[at..at + len];
    field.fill(b' ');
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// What Identify Controller depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerIdentity {
    /// The volume id (`vol-…`).
    pub volume_id: String,
    /// The EC2 block-device name, if any.
    pub device_name: Option<String>,
    /// Maximum Data Transfer Size as a power of two of 4 KiB pages.
    pub mdts: u8,
}

impl ControllerIdentity {
    /// The 4096-byte Identify Controller data structure (CNS 01h).
    pub fn identify_controller(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_SIZE];
        put(&mut b, 0, &AMAZON_VENDOR_ID.to_le_bytes()); // VID
        put(&mut b, 2, &AMAZON_VENDOR_ID.to_le_bytes()); // SSVID
        put_padded(&mut b, 4, 20, &serial_number(&self.volume_id)); // SN
        put_padded(&mut b, 24, 40, EBS_MODEL); // MN
        put_padded(&mut b, 64, 8, FIRMWARE_REVISION); // FR
        b[72] = 6; // RAB
        b[77] = self.mdts; // MDTS
        put(&mut b, 78, &0u16.to_le_bytes()); // CNTLID
        put(&mut b, 80, &super::registers::VERSION_1_4.to_le_bytes()); // VER
        b[111] = 1; // CNTRLTYPE: I/O controller
        put(&mut b, 256, &(1u16 << 8).to_le_bytes()); // OACS: Doorbell Buffer Config
        b[258] = ABORT_LIMIT - 1; // ACL
        b[259] = (AER_LIMIT - 1) as u8; // AERL
        b[260] = 0x3; // FRMW: one slot, slot 1 read-only
        b[261] = 0x4; // LPA: extended data for Get Log Page (offsets, NUMDU)
        b[262] = (ERROR_LOG_ENTRIES - 1) as u8; // ELPE
        b[263] = 0; // NPSS: one power state
        put(&mut b, 266, &WARNING_TEMPERATURE.to_le_bytes()); // WCTEMP
        put(&mut b, 268, &CRITICAL_TEMPERATURE.to_le_bytes()); // CCTEMP
        b[512] = 0x66; // SQES: 64 bytes
        b[513] = 0x44; // CQES: 16 bytes
        put(&mut b, 516, &1u32.to_le_bytes()); // NN
        put(&mut b, 520, &((1u16 << 2) | (1u16 << 3)).to_le_bytes()); // ONCS: DSM, Write Zeroes
        b[525] = 1; // VWC: volatile write cache present
                    // SUBNQN in the form Linux makes up for controllers without one: vendor ids, serial, model.
        let nqn = format!(
            "nqn.2014.08.org.nvmexpress:{AMAZON_VENDOR_ID:04x}{AMAZON_VENDOR_ID:04x}{:20}{:40}",
            serial_number(&self.volume_id),
            EBS_MODEL
        );
        put(&mut b, 768, nqn.as_bytes()); // SUBNQN (NUL padded)
                                          // Power state 0: 25 W max, entry/exit latency reported as 0.
        put(&mut b, 2048, &2500u16.to_le_bytes());
        if let Some(name) = &self.device_name {
            put_padded(&mut b, DEVICE_NAME_OFFSET, DEVICE_NAME_LEN, name);
        }
        b
    }
}

/// The 4096-byte Identify Namespace data structure (CNS 00h) of a namespace of `blocks` logical
/// blocks of `block_size` bytes.
pub fn identify_namespace(blocks: u64, block_size: u32, read_only: bool) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_SIZE];
    put(&mut b, 0, &blocks.to_le_bytes()); // NSZE
    put(&mut b, 8, &blocks.to_le_bytes()); // NCAP
    put(&mut b, 16, &blocks.to_le_bytes()); // NUSE
    b[24] = 0x1; // NSFEAT: thin provisioning (deallocation)
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
               // DLFEAT: deallocated blocks read as zeroes; Write Zeroes supports the Deallocate bit.
    b[33] = 0x1 | (1 << 3);
    let capacity = u128::from(blocks) * u128::from(block_size);
    put(&mut b, 48, &capacity.to_le_bytes()); // NVMCAP
    b[99] = u8::from(read_only); // NSATTR: write protected
    b[128 + 2] = block_size.trailing_zeros() as u8; // LBAF0.LBADS
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids() {
        validate_volume_id("vol-0123456789abcdef0").unwrap();
        validate_volume_id("vol-1234abcd").unwrap();
        for bad in [
            "vol-",
            "vol0123",
            "vol-0123456789abcdef01",
            "vol-ABCDEF",
            "vol-xyz",
            "snap-1234",
        ] {
            assert!(validate_volume_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serial_number("vol-0123456789abcdef0"),
            "vol0123456789abcdef0"
        );
    }

    #[test]
    fn default_ids_are_stable_and_valid() {
        let a = default_volume_id(Path::new("/nonexistent/root.img"));
        let b = default_volume_id(Path::new("/nonexistent/root.img"));
        let c = default_volume_id(Path::new("/nonexistent/data.img"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 21);
        validate_volume_id(&a).unwrap();
        assert_eq!(serial_number(&a).len(), 20);
    }

    #[test]
    fn device_names() {
        assert_eq!(default_device_name(0).as_deref(), Some("xvda"));
        assert_eq!(default_device_name(1).as_deref(), Some("sdf"));
        assert_eq!(default_device_name(21).as_deref(), Some("sdz"));
        assert_eq!(default_device_name(22), None);
        validate_device_name("/dev/sdf").unwrap();
        assert!(validate_device_name("").is_err());
        assert!(validate_device_name("sd f").is_err());
        assert!(validate_device_name(&"x".repeat(33)).is_err());
    }

    #[test]
    fn controller_fields_at_their_offsets() {
        let id = ControllerIdentity {
            volume_id: "vol-0123456789abcdef0".into(),
            device_name: Some("sdf".into()),
            mdts: 7,
        };
        let b = id.identify_controller();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..4], &[0x0f, 0x1d, 0x0f, 0x1d]);
        assert_eq!(&b[4..24], b"vol0123456789abcdef0");
        assert_eq!(&b[24..64], format!("{:40}", EBS_MODEL).as_bytes());
        assert_eq!(&b[64..72], b"1.0     ");
        assert_eq!(b[77], 7);
        assert_eq!(u32::from_le_bytes(b[80..84].try_into().unwrap()), 0x10400);
        assert_eq!(u16::from_le_bytes([b[256], b[257]]) & 0x100, 0x100);
        assert_eq!(&b[3072..3104], format!("{:32}", "sdf").as_bytes());
        assert_eq!(b[512], 0x66);
        assert_eq!(b[513], 0x44);
        assert_eq!(u32::from_le_bytes(b[516..520].try_into().unwrap()), 1);
        let none = ControllerIdentity {
            device_name: None,
            ..id
        };
        assert!(none.identify_controller()[3072..3104]
            .iter()
            .all(|&x| x == 0));
    }

    #[test]
    fn namespace_fields() {
        let b = identify_namespace(2048, 4096, true);
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 2048);
        assert_eq!(b[130], 12);
        assert_eq!(b[99], 1);
        assert_eq!(identify_namespace(1, 512, false)[130], 9);
    }
}
