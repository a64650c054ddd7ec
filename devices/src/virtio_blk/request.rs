//! One virtio-blk request: parse a descriptor chain, do the I/O, write the status.
//!
//! A request is a stream of device-readable bytes (the 16-byte header `type, reserved, sector`, then
//! the data of a write, discard or write-zeroes) followed by device-writable bytes (the data of a
//! read or GET_ID, then the status byte, the last byte of the chain). Buffer boundaries do not
//! matter (any layout). Every failure is a status:
//!
//! | problem | result |
//! |---|---|
//! | chain broken (loop, dangling `next`, unreadable descriptor or table) | dropped: used with length 0, nothing written |
//! | chain ends in a readable or empty descriptor, or its last byte is outside RAM | dropped |
//! | more than [`MAX_DESCRIPTORS`] descriptors, readable after writable, a buffer outside RAM | `IOERR` |
//! | header shorter than 16 bytes, data not a whole number of sectors, range past the capacity | `IOERR` |
//! | write, discard or write-zeroes on a read-only disk (nothing is written) | `IOERR` |
//! | the disk file fails | `IOERR` (logged) |
//! | unknown request type, discard flags other than 0, reserved write-zeroes flags | `UNSUPP` |
//!
//! Data moves straight between the disk file and the guest's buffers ([`BlockIo::read_to_guest`],
//! [`BlockIo::write_from_guest`]: one `read`/`write` per buffer, no host copy in between), after
//! every buffer has been checked to lie in guest RAM.
//!
//! A device with a rate limiter asks it before a request that moves data ([`Cost`]); a refused
//! request is left untouched (nothing read, nothing written) for the caller to put back.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::{BlockIo, FailureLog};
use crate::virtio::{collect_chain, Chain, Segment};

/// virtio-blk addresses the disk in 512-byte sectors whatever its block size.
pub const SECTOR_SIZE: u64 = 512;
/// Most data buffers in one request (`seg_max`).
pub const SEG_MAX: u32 = 254;
/// Most descriptors in one chain: the data buffers, the header and the status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Most sectors one discard (or write-zeroes) segment may cover: 2 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard granularity the driver should align to, in sectors (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Length of the request header.
const HEADER_LEN: u64 = 16;
/// Length of one discard / write-zeroes segment.
const DISCARD_SEGMENT_LEN: u64 = 16;
/// Write-zeroes flag: the device may deallocate (it always does: a hole reads as zeroes).
const FLAG_UNMAP: u32 = 1;

/// The disk a virtio-blk device serves.
pub struct Disk {
    /// The backing file.
    pub backend: Box<dyn BlockIo + Sync>,
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub sectors: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// What GET_ID returns (NUL-padded).
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// Rate-limited warnings about the disk file failing.
    pub failures: FailureLog,
}

/// Per-worker buffers reused from request to request.
#[derive(Default)]
pub struct Scratch {
    chain: Chain,
}

/// What a request costs a rate limiter: one operation and the bytes it moves.
///
/// IN and OUT cost their data length (nothing when they will fail: outside the capacity, or a
/// write to a read-only disk); DISCARD and WRITE_ZEROES cost one operation and no bytes (they punch
/// holes, moving no data). FLUSH, GET_ID, unknown types and malformed chains are not limited: they
/// move no data and complete at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Operations (always 1).
    pub ops: u64,
    /// Bytes read or written.
    pub bytes: u64,
}

/// The outcome of a request, for the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The head descriptor.
    pub head: u16,
    /// Bytes written into the chain's writable buffers (data plus the status byte; 0 for a dropped
    /// chain).
    pub len: u32,
    /// The status written, None for a dropped chain.
    pub status: Option<u8>,
}

type Status = u8;
const OK: Status = VIRTIO_BLK_S_OK as u8;
const IOERR: Status = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: Status = VIRTIO_BLK_S_UNSUPP as u8;

/// Walks `segs` as one byte stream and calls `f(addr, range in buf)` for the bytes
/// `[skip, skip + len)` of it, piece by piece. Returns false if the stream is too short.
fn for_pieces(
    segs: &[Segment],
    skip: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut pos = 0u64; // stream offset of the current segment
    let mut done = 0usize;
    for seg in segs {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        let start = skip + done as u64;
        if start >= pos + seg_len {
            pos += seg_len;
            continue;
        }
        let within = start - pos;
        let n = ((seg_len - within) as usize).min(len - done);
        if !f(GuestAddress(seg.addr.0 + within), done..done + n) {
            return false;
        }
        done += n;
        pos += seg_len;
    }
    done == len
}

/// Copies `buf.len()` bytes from offset `skip` of the stream `segs` in guest RAM.
fn copy_from_guest(mem: &GuestMemoryMmap, segs: &[Segment], skip: u64, buf: &mut [u8]) -> bool {
    let len = buf.len();
    for_pieces(segs, skip, len, |addr, r| {
        mem.read_slice(&mut buf[r], addr).is_ok()
    })
}

/// Copies `buf` to offset `skip` of the stream `segs` in guest RAM.
fn copy_to_guest(mem: &GuestMemoryMmap, segs: &[Segment], skip: u64, buf: &[u8]) -> bool {
    for_pieces(segs, skip, buf.len(), |addr, r| {
        mem.write_slice(&buf[r], addr).is_ok()
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// Runs the request in `chain` and writes its status; returns what goes in the used ring.
/// `writeback`: the driver negotiated VIRTIO_BLK_F_FLUSH (otherwise every write is made durable
/// before it completes).
pub fn process_chain<M>(
    mem: &GuestMemoryMmap,
    disk: &Disk,
    writeback: bool,
    chain: DescriptorChain<M>,
    scratch: &mut Scratch,
) -> Completion
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let head = chain.head_index();
    // `admit` never refuses, so None cannot come back; dropping the chain would be the safe answer.
    process_chain_limited(mem, disk, writeback, chain, scratch, |_| true).unwrap_or(Completion {
        head,
        len: 0,
        status: None,
    })
}

/// [`process_chain`], asking `admit` first for a request that has a [`Cost`]. If `admit` refuses,
/// nothing is read or written (the status byte included) and None is returned: the caller puts the
/// chain back in the available ring to retry it later.
pub fn process_chain_limited<M>(
    mem: &GuestMemoryMmap,
    disk: &Disk,
    writeback: bool,
    chain: DescriptorChain<M>,
    scratch: &mut Scratch,
    admit: impl FnOnce(Cost) -> bool,
) -> Option<Completion>
where
    M: std::ops::Deref<Target = GuestMemoryMmap>,
{
    let Scratch { chain: c } = scratch;
    let head = chain.head_index();
    let dropped = Completion {
        head,
        len: 0,
        status: None,
    };
    let finish = |addr: GuestAddress, status: Status, data_len: u32| {
        if mem.write_obj(status, addr).is_err() {
            return dropped;
        }
        Completion {
            head,
            len: data_len.saturating_add(1),
            status: Some(status),
        }
    };
    if let Err(fault) = collect_chain(chain, mem, MAX_DESCRIPTORS, c) {
        log::debug!("virtio-blk: descriptor chain {head}: {:?}", fault.error);
        return Some(match fault.status_byte(mem) {
            Some(addr) => finish(addr, IOERR, 0),
            None => dropped,
        });
    }
    // The status byte is the last writable byte.
    let Some(last) = c.writable.last_mut() else {
        log::debug!("virtio-blk: descriptor chain {head} has no writable buffer");
        return Some(dropped);
    };
    let status_addr = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
    last.len -= 1;
    if last.len == 0 {
        c.writable.pop();
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    if !copy_from_guest(mem, &c.readable, 0, &mut raw) {
        return Some(finish(status_addr, IOERR, 0));
    }
    let header = Header {
        request_type: u32_at(&raw, 0),
        sector: u64_at(&raw, 8),
    };
    if let Some(cost) = cost(disk, &header, c) {
        if !admit(cost) {
            return None;
        }
    }
    Some(match execute(mem, disk, writeback, &header, c) {
        Ok(written) => finish(status_addr, OK, written),
        Err(status) => finish(status_addr, status, 0),
    })
}

/// The request header.
struct Header {
    request_type: u32,
    sector: u64,
}

/// What the request costs a rate limiter, or None if it is not limited.
fn cost(disk: &Disk, header: &Header, c: &Chain) -> Option<Cost> {
    let data = |len: u64, allowed: bool| Cost {
        ops: 1,
        bytes: if allowed && byte_range(disk, header.sector, len).is_ok() {
            len
        } else {
            0
        },
    };
    match header.request_type {
        VIRTIO_BLK_T_IN => Some(data(c.writable_len(), true)),
        VIRTIO_BLK_T_OUT => Some(data(
            c.readable_len().saturating_sub(HEADER_LEN),
            !disk.read_only,
        )),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => Some(Cost { ops: 1, bytes: 0 }),
        _ => None,
    }
}

/// Byte offset of `sectors` sectors from `sector`, if they lie inside the disk.
fn byte_range(disk: &Disk, sector: u64, bytes: u64) -> Result<u64, Status> {
    if bytes % SECTOR_SIZE != 0 {
        return Err(IOERR);
    }
    match sector.checked_add(bytes / SECTOR_SIZE) {
        Some(end) if end <= disk.sectors => Ok(sector * SECTOR_SIZE),
        _ => Err(IOERR),
    }
}

fn backend_error(disk: &Disk, what: &str, offset: u64, e: io::Error) -> Status {
    disk.failures
        .warn(|| format!("virtio-blk: {what} at byte {offset} of the disk file failed: {e}"));
    IOERR
}

/// The request's work; Ok(bytes written to the guest before the status).
fn execute(
    mem: &GuestMemoryMmap,
    disk: &Disk,
    writeback: bool,
    header: &Header,
    c: &Chain,
) -> Result<u32, Status> {
    let Header {
        request_type,
        sector,
    } = *header;
    let readable_data = c.readable_len().saturating_sub(HEADER_LEN);
    let writable_data = c.writable_len();
    match request_type {
        VIRTIO_BLK_T_IN => {
            let offset = byte_range(disk, sector, writable_data)?;
            // The writable buffers (the status byte taken off) are the data, in order.
            let mut at = offset;
            for seg in &c.writable {
                disk.backend
                    .read_to_guest(mem, seg.addr, seg.len as usize, at)
                    .map_err(|e| backend_error(disk, "read", at, e))?;
                at += u64::from(seg.len);
            }
            // At most 4 GiB: virtio-queue refuses longer chains.
            Ok(u32::try_from(writable_data).unwrap_or(u32::MAX))
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(IOERR);
            }
            let offset = byte_range(disk, sector, readable_data)?;
            // The readable bytes after the header are the data, whatever the buffer boundaries.
            let mut result = Ok(());
            for_pieces(
                &c.readable,
                HEADER_LEN,
                readable_data as usize,
                |addr, range| {
                    let at = offset + range.start as u64;
                    result = disk
                        .backend
                        .write_from_guest(mem, addr, range.len(), at)
                        .map_err(|e| backend_error(disk, "write", at, e));
                    result.is_ok()
                },
            );
            result?;
            if !writeback && readable_data > 0 {
                disk.backend
                    .flush()
                    .map_err(|e| backend_error(disk, "flush", offset, e))?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            disk.backend
                .flush()
                .map_err(|e| backend_error(disk, "flush", 0, e))?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = writable_data.min(disk.id.len() as u64) as usize;
            if !copy_to_guest(mem, &c.writable, 0, &disk.id[..n]) {
                return Err(IOERR);
            }
            Ok(n as u32)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let zeroes = request_type == VIRTIO_BLK_T_WRITE_ZEROES;
            if disk.read_only {
                return Err(IOERR);
            }
            let count = readable_data / DISCARD_SEGMENT_LEN;
            if readable_data % DISCARD_SEGMENT_LEN != 0
                || count == 0
                || count > u64::from(MAX_DISCARD_SEG)
            {
                return Err(IOERR);
            }
            // Check every segment before touching the file.
            let mut extents = [(0u64, 0u64); MAX_DISCARD_SEG as usize];
            for (i, extent) in extents.iter_mut().take(count as usize).enumerate() {
                let mut raw = [0u8; DISCARD_SEGMENT_LEN as usize];
                if !copy_from_guest(
                    mem,
                    &c.readable,
                    HEADER_LEN + i as u64 * DISCARD_SEGMENT_LEN,
                    &mut raw,
                ) {
                    return Err(IOERR);
                }
                let (start, sectors, flags) = (u64_at(&raw, 0), u32_at(&raw, 8), u32_at(&raw, 12));
                let allowed = if zeroes { FLAG_UNMAP } else { 0 };
                if flags & !allowed != 0 {
                    return Err(UNSUPP);
                }
                if sectors > MAX_DISCARD_SECTORS {
                    return Err(IOERR);
                }
                let len = u64::from(sectors) * SECTOR_SIZE;
                *extent = (byte_range(disk, start, len)?, len);
            }
            for &(offset, len) in &extents[..count as usize] {
                let result = if zeroes {
                    disk.backend.write_zeroes(offset, len)
                } else {
                    disk.backend.discard(offset, len)
                };
                result.map_err(|e| backend_error(disk, "discard", offset, e))?;
            }
            if zeroes && !writeback {
                disk.backend
                    .flush()
                    .map_err(|e| backend_error(disk, "flush", 0, e))?;
            }
            Ok(0)
        }
        _ => Err(UNSUPP),
    }
}
