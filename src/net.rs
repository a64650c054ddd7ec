//! `--net tap=NAME[,mac=02:..][,queues=N]`: one virtio-net device (a modern virtio-pci function on bus
//! 0, attached after the virtio-blk disks) on a host TAP interface. docs/virtio.md.
//!
//! The TAP is opened here (the `devices` crate has no unsafe code): `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (creating the interface if it does not exist, which needs
//! CAP_NET_ADMIN; a TAP flint creates disappears when flint exits), a 12-byte vnet header
//! (`TUNSETVNETHDRSZ`, the virtio 1.x header) and no offloads (`TUNSETOFFLOAD 0`) until the guest's
//! driver acknowledges some. With more than one queue pair the TAP is opened once per pair with
//! `IFF_MULTI_QUEUE`: each descriptor is one of the TAP's queues. The descriptors are non-blocking
//! and handed to the device as `File`s; [`TapQueues`] does the ioctls the device asks for
//! (offloads, attaching and detaching queues).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::instance::Bandwidth;

/// Most queue pairs `queues=` may ask for.
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// How long a full network burst-credit balance lasts at the maximum by default. EC2 documents
/// "typically 5 to 60 minutes depending on the instance size" without per-type figures; flint takes
/// EBS's 30 minutes.
pub const NET_BURST_DURATION: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The largest cap `--net-bandwidth` takes, in Mbit/s (1 Tbit/s).
pub const MAX_NET_MBPS: u64 = 1_000_000;

/// Parses `--net-bandwidth`: `BASELINE[:MAXIMUM]` in Mbit/s (decimal), 1 ≤ baseline ≤ maximum.
pub fn parse_bandwidth(text: &str) -> Result<Bandwidth, String> {
    let number = |t: &str| -> Result<u64, String> {
        t.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_NET_MBPS).contains(n))
            .ok_or_else(|| {
                format!("'{t}': expected Mbit/s from 1 to {MAX_NET_MBPS}, as BASELINE[:MAXIMUM]")
            })
    };
    let (baseline, maximum) = match text.split_once(':') {
        Some((b, m)) => (number(b)?, number(m)?),
        None => (number(text)?, number(text)?),
    };
    if maximum < baseline {
        return Err(format!(
            "the maximum {maximum} is below the baseline {baseline}"
        ));
    }
    Ok(Bandwidth {
        baseline_mbps: baseline,
        maximum_mbps: maximum,
    })
}

/// The instance's network caps, one shared limiter per direction for every NIC: `cap` each way,
/// with burst credits lasting `burst` at the maximum (the same bucket as the EBS cap, see
/// docs/instance-types.md).
pub fn instance_net_limits(
    cap: &Bandwidth,
    burst: std::time::Duration,
) -> anyhow::Result<devices::virtio_net::NetRateLimits> {
    if cap.bursts() && !burst.is_zero() {
        log::info!(
            "network cap: {} Mbps each way, up to {} Mbps for {} s of burst credits",
            cap.baseline_mbps,
            cap.maximum_mbps,
            burst.as_secs()
        );
    } else {
        log::info!("network cap: {} Mbps each way", cap.baseline_mbps);
    }
    let config = devices::rate_limiter::RateLimiterConfig {
        bytes: Some(crate::volume::bandwidth_bucket(cap, burst)),
        ops: None,
    };
    let limiter = || {
        devices::rate_limiter::SharedRateLimiter::new(&config)
            .map_err(|e| anyhow::anyhow!("the instance's network cap: {e}"))
    };
    Ok(devices::virtio_net::NetRateLimits {
        rx: Some(limiter()?),
        tx: Some(limiter()?),
    })
}

/// One `--net`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host TAP interface name (1–15 bytes).
    pub tap: String,
    /// The guest's MAC address; None derives a stable one from the TAP name ([`default_mac`]).
    pub mac: Option<[u8; 6]>,
    /// Queue pairs (1 to [`MAX_QUEUE_PAIRS`]); None: one per vCPU, at most [`MAX_QUEUE_PAIRS`].
    pub queues: Option<u16>,
}

impl NetConfig {
    /// The MAC the guest gets.
    pub fn mac(&self) -> [u8; 6] {
        self.mac.unwrap_or_else(|| default_mac(&self.tap))
    }

    /// The queue pairs of a VM with `cpus` vCPUs: `queues=` or one per vCPU, at most
    /// [`MAX_QUEUE_PAIRS`].
    pub fn queue_pairs(&self, cpus: u32) -> u16 {
        self.queues
            .unwrap_or_else(|| cpus.clamp(1, u32::from(MAX_QUEUE_PAIRS)) as u16)
    }
}

/// Formats a MAC address as `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `02:00:00:00:00:01`; must be a unicast, non-zero address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .zip(mac.iter_mut())
            .all(|(p, b)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok());
    if !ok {
        return Err(format!(
            "mac={text}: expected six hex bytes like 02:00:00:00:00:01"
        ));
    }
    if !devices::virtio_net::valid_mac(&mac) {
        return Err(format!("mac={text}: must be a unicast, non-zero address"));
    }
    Ok(mac)
}

/// The MAC of a TAP without `mac=`: locally administered unicast (`02:`) and five bytes of a hash of
/// the name, so the same `--net tap=NAME` always gives the guest the same address.
pub fn default_mac(tap: &str) -> [u8; 6] {
    let hash = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let h = hash.to_le_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut net = NetConfig {
            tap: String::new(),
            mac: None,
            queues: None,
        };
        let mut tap = None;
        for field in spec.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("'{field}' is not key=value"))?;
            match key {
                "tap" if !value.is_empty() => {
                    if value.len() >= libc::IFNAMSIZ || value.contains(['/', ' ', '\0']) {
                        return Err(format!(
                            "tap={value}: an interface name is 1 to 15 characters without '/' or spaces"
                        ));
                    }
                    tap = Some(value.to_string());
                }
                "mac" => net.mac = Some(parse_mac(value)?),
                "queues" => {
                    let n: u16 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_QUEUE_PAIRS).contains(n))
                        .ok_or_else(|| {
                            format!("queues={value}: expected 1 to {MAX_QUEUE_PAIRS}")
                        })?;
                    net.queues = Some(n);
                }
                _ => {
                    return Err(format!(
                        "unknown or empty setting '{field}' (expected tap, mac, queues)"
                    ))
                }
            }
        }
        net.tap = tap.ok_or("missing tap=NAME")?;
        Ok(net)
    }
}

/// Opens (creating when missing) TAP `name` with a 12-byte vnet header and no offloads,
/// non-blocking: one descriptor per queue pair, with `IFF_MULTI_QUEUE` when there are several.
/// Errors are one line.
pub fn open_tap(name: &str, pairs: u16) -> Result<Vec<File>, String> {
    let taps = (0..pairs)
        .map(|_| open_tap_queue(name, pairs > 1))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(first) = taps.first() {
        set_offload(first, 0)
            .map_err(|e| format!("TAP {name}: cannot turn its offloads off: {e}"))?;
    }
    Ok(taps)
}

fn open_tap_queue(name: &str, multi_queue: bool) -> Result<File, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    let fd = file.as_raw_fd();

    let mut ifr = ifreq_named(name)?;
    let multi = if multi_queue {
        libc::IFF_MULTI_QUEUE
    } else {
        0
    };
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | multi) as libc::c_short;
    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `file`; TUNSETIFF reads (and may
    // update) a `struct ifreq`, and `ifr` is a valid, exclusively borrowed one that outlives the call.
    let ret = unsafe { libc::ioctl(fd, libc::TUNSETIFF as _, &mut ifr as *mut libc::ifreq) };
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => {
                " (creating or attaching a TAP needs CAP_NET_ADMIN, or a TAP owned by this user)"
            }
            Some(libc::EBUSY) => {
                " (is another process attached to it, or is it not a TAP with a vnet header?)"
            }
            Some(libc::EINVAL) if multi_queue => {
                " (several queues need a multi-queue TAP: ip tuntap add NAME mode tap vnet_hdr multi_queue)"
            }
            Some(libc::EINVAL) => {
                " (is it an interface of another kind, or a multi-queue TAP? then give queues=N)"
            }
            _ => "",
        };
        return Err(format!("cannot attach to TAP {name}: {e}{hint}"));
    }
    let hdr_len: libc::c_int = devices::virtio_net::NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to `hdr_len`, alive
    // for the call; `fd` is the TAP attached above.
    let ret = unsafe {
        libc::ioctl(
            fd,
            libc::TUNSETVNETHDRSZ as _,
            &hdr_len as *const libc::c_int,
        )
    };
    if ret < 0 {
        return Err(format!(
            "TAP {name}: cannot set the vnet header size: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// A zeroed `ifreq` carrying interface name `name`.
fn ifreq_named(name: &str) -> Result<libc::ifreq, String> {
    // SAFETY: `ifreq` is plain old data (integers, arrays and a union of them), so all-zero bytes
    // are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(format!("tap={name}: bad interface name"));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}

/// The device's handle on its TAP's queues (a duplicate of each queue's descriptor).
pub struct TapQueues {
    queues: Vec<File>,
}

impl TapQueues {
    /// Duplicates the descriptors of `taps` (as [`open_tap`] returned them).
    pub fn new(taps: &[File]) -> std::io::Result<Self> {
        Ok(Self {
            queues: taps.iter().map(File::try_clone).collect::<Result<_, _>>()?,
        })
    }
}

impl devices::virtio_net::TapControl for TapQueues {
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        // One setting for the whole TAP; queue 0 is never detached.
        match self.queues.first() {
            Some(tap) => set_offload(tap, flags),
            None => Ok(()),
        }
    }

    fn set_queue_attached(&self, pair: usize, attached: bool) -> std::io::Result<()> {
        let tap = self.queues.get(pair).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no such queue")
        })?;
        // SAFETY: `ifreq` is plain old data, so all-zero bytes are a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        let flag = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        ifr.ifr_ifru.ifru_flags = flag as libc::c_short;
        // SAFETY: TUNSETQUEUE reads a `struct ifreq` (only its flags) through the pointer, which
        // points to `ifr`, alive and exclusively borrowed for the call; the descriptor is open for
        // as long as `self` lives.
        let ret = unsafe {
            libc::ioctl(
                tap.as_raw_fd(),
                libc::TUNSETQUEUE as _,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sets the offloads (`TUN_F_*` flags) of the TAP open as `tap`: what the TAP may hand the device.
pub fn set_offload(tap: &File, flags: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument (the offload flags) by value and touches no memory
    // of ours; the descriptor is open for as long as `tap` is borrowed (on anything but a TAP the
    // ioctl just fails).
    let ret = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETOFFLOAD as _,
            libc::c_ulong::from(flags),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_specs() {
        let n: NetConfig = "tap=tap0,mac=02:aa:bb:cc:dd:0e,queues=1".parse().unwrap();
        assert_eq!(n.queues, Some(1));
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e]));
        assert_eq!(n.mac(), [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e]);
        let n: NetConfig = "tap=flint0".parse().unwrap();
        assert_eq!((n.mac, n.queues), (None, None));
        // One pair per vCPU, at most eight, unless queues= says otherwise.
        assert_eq!(n.queue_pairs(1), 1);
        assert_eq!(n.queue_pairs(4), 4);
        assert_eq!(n.queue_pairs(72), 8);
        let three: NetConfig = "tap=t,queues=3".parse().unwrap();
        assert_eq!(three.queue_pairs(72), 3);
        // Stable, locally administered unicast, different per name.
        assert_eq!(n.mac(), default_mac("flint0"));
        assert_eq!(n.mac()[0], 0x02);
        assert_ne!(default_mac("flint0"), default_mac("flint1"));
        assert_eq!(format_mac(&n.mac()), format_mac(&default_mac("flint0")));
        assert_eq!(format_mac(&[2, 0, 0, 0, 0, 0xab]), "02:00:00:00:00:ab");
    }

    #[test]
    fn bandwidth_caps() {
        let b = |base, max| Bandwidth {
            baseline_mbps: base,
            maximum_mbps: max,
        };
        assert_eq!(parse_bandwidth("750:2400"), Ok(b(750, 2400)));
        assert_eq!(parse_bandwidth("500"), Ok(b(500, 500)));
        for (text, why) in [
            ("0", "expected Mbit/s"),
            ("fast", "expected Mbit/s"),
            ("100:", "expected Mbit/s"),
            ("1000001", "expected Mbit/s"),
            ("2400:750", "below the baseline"),
        ] {
            let err = parse_bandwidth(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        // Both directions get their own limiter, each with c5.large's 93.75 MB/s baseline and
        // 1.25 GB/s maximum.
        let limits = instance_net_limits(&b(750, 10_000), NET_BURST_DURATION).unwrap();
        let (rx, tx) = (limits.rx.unwrap(), limits.tx.unwrap());
        let mut rx_chain = rx.chain(
            devices::rate_limiter::RateLimiter::unlimited(
                devices::rate_limiter::MonotonicClock::shared(),
            )
            .unwrap(),
        );
        rx_chain.consume(1, 62_500_000).unwrap();
        assert!(
            rx_chain.consume(1, 1_000_000).is_err(),
            "the rx bucket holds 50 ms of 1.25 GB/s"
        );
        assert_eq!(
            tx.bytes_bucket().unwrap().tokens(),
            62_500_000.0,
            "tx is a bucket of its own"
        );
        assert!(instance_net_limits(&b(750, 750), std::time::Duration::ZERO).is_ok());
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("mac=02:00:00:00:00:01", "missing tap"),
            ("tap=", "unknown or empty"),
            ("tap=abcdefghijklmnop", "1 to 15 characters"),
            ("tap=a/b", "1 to 15 characters"),
            ("tap=t,mac=01:00:00:00:00:01", "unicast"),
            ("tap=t,mac=00:00:00:00:00:00", "unicast"),
            ("tap=t,mac=02:00:00:00:00", "six hex bytes"),
            ("tap=t,mac=02:00:00:00:00:zz", "six hex bytes"),
            ("tap=t,queues=0", "expected 1 to 8"),
            ("tap=t,queues=9", "expected 1 to 8"),
            ("tap=t,queues=x", "expected 1 to 8"),
            ("tap=t,vhost=on", "unknown or empty setting 'vhost=on'"),
            ("tap=t,x", "not key=value"),
        ] {
            let err = spec.parse::<NetConfig>().unwrap_err();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}
