//! virtio-net feature bits, the `virtio_net_hdr`, and the TAP offloads that follow from the driver's
//! features.

/// Feature bit: the device has a MAC address in its configuration.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the configuration has a link status field.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Link status: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Feature bit: the device takes frames with a partial checksum (TX checksum offload).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver takes frames with a partial checksum (RX checksum offload).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: the driver takes TCPv4 super-frames (RX TSO).
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCPv6 super-frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature bit: the device takes TCPv4 super-frames (TX TSO).
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature bit: the device takes TCPv6 super-frames.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// The offload features offered when the backend can set its offloads.
pub const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6;
/// TAP offload flag (`TUNSETOFFLOAD`): the TAP may hand over frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// TAP offload flag: TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// TAP offload flag: TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// `virtio_net_hdr.gso_type`: not a super-frame.
pub(crate) const GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: TCPv4.
pub(crate) const GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: TCPv6.
pub(crate) const GSO_TCPV6: u8 = 4;

/// Sets the backend's offloads (`TUNSETOFFLOAD` with `TUN_F_*` flags); given by the VMM, which owns
/// the ioctl.
pub type SetOffload = Box<dyn Fn(u32) -> std::io::Result<()> + Send>;

/// The TAP offloads matching the driver's `acked` features: exactly what it can take on RX.
pub fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= TUN_F_TSO6;
    }
    flags
}

/// Checks (and for a driver without CSUM, clears) the header of a TX frame against the acked
/// features; false when the frame uses an offload the driver did not negotiate.
pub(crate) fn fix_tx_header(hdr: &mut [u8], acked: u64) -> bool {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_CSUM) {
        // No offload negotiated: whatever is there means nothing.
        hdr[..NET_HDR_LEN].fill(0);
        return true;
    }
    // num_buffers is not used on TX.
    hdr[10..12].fill(0);
    match hdr[1] {
        GSO_NONE => true,
        GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    }
}

/// Feature bit: the driver can take a frame spread over several receive buffers (`num_buffers`).
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature bit: the device has a control queue.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// Feature bit: several RX/TX queue pairs, chosen through the control queue.
pub const VIRTIO_NET_F_MQ: u32 = 22;
/// Length of `struct virtio_net_hdr` with VERSION_1 (`num_buffers` included).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub(crate) const NUM_BUFFERS_OFFSET: usize = 10;
