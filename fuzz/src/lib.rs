//! Shared pieces of flint's fuzz targets (docs/fuzzing.md): a cursor that turns the fuzzer's bytes
//! into values, an in-memory disk that asserts every access a device makes stays inside the disk,
//! and guest memory with a hole in it. `seeds` builds the committed seed corpora.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::block::BlockIo;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub mod seeds;

/// Reads values from the fuzzer's input; past its end every read gives zeroes.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Builds inputs in the encoding [`Input`] reads (for seeds).
#[derive(Default)]
pub struct Encoder(pub Vec<u8>);

impl Encoder {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// A disk in host memory that checks what a device model asks of it: every access inside the disk,
/// no write to a read-only disk, no transfer longer than `max_transfer`. A violation panics, which
/// the fuzzer reports as a crash. It counts the operations asked of it ([`MemDisk::operations`]).
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    max_transfer: usize,
    operations: Arc<AtomicU64>,
}

impl MemDisk {
    /// A zeroed disk of `size` bytes.
    pub fn new(size: usize, read_only: bool, max_transfer: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size]),
            read_only,
            max_transfer,
            operations: Arc::default(),
        }
    }

    /// The count of reads, writes, flushes, discards and write-zeroes asked so far (shared, so it
    /// can be read after the disk has been boxed behind a device).
    pub fn operations(&self) -> Arc<AtomicU64> {
        self.operations.clone()
    }

    fn count(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }

    fn check(&self, what: &str, offset: u64, len: u64, size: usize) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|end| end <= size as u64),
            "{what} of {len} bytes at {offset} goes past the end of a {size}-byte disk"
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fill(&self, what: &str, offset: u64, len: u64) -> io::Result<()> {
        self.count();
        assert!(!self.read_only, "{what} on a read-only disk");
        let mut data = self.lock();
        self.check(what, offset, len, data.len());
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

impl BlockIo for MemDisk {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.count();
        assert!(
            buf.len() <= self.max_transfer,
            "read of {} bytes",
            buf.len()
        );
        let data = self.lock();
        self.check("read", offset, buf.len() as u64, data.len());
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.count();
        assert!(!self.read_only, "write on a read-only disk");
        assert!(
            buf.len() <= self.max_transfer,
            "write of {} bytes",
            buf.len()
        );
        let mut data = self.lock();
        self.check("write", offset, buf.len() as u64, data.len());
        data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.count();
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill("discard", offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill("write zeroes", offset, len)
    }
}

/// Guest RAM with a hole: `[0, low)` and `[high_base, high_base + high)`, holding `image` (low
/// range first, then the high one). Buffers that reach into the hole or past the end must be
/// refused by the device models. A new mapping per input is cheaper than zeroing the old one
/// through vm-memory, whose copies are instrumented loops under the fuzzer.
pub fn guest_memory(low: usize, high_base: u64, high: usize, image: &[u8]) -> GuestMemoryMmap {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), low), (GuestAddress(high_base), high)])
            .expect("guest memory");
    let (first, second) = image.split_at(image.len().min(low));
    mem.write_slice(first, GuestAddress(0)).expect("low RAM");
    let second = &second[..second.len().min(high)];
    mem.write_slice(second, GuestAddress(high_base))
        .expect("high RAM");
    mem
}

/// Where a split virtqueue of `size` entries sits when packed from `base`: descriptor table,
/// available ring, used ring (each at its required alignment), and the first free byte after it.
/// Packing keeps the fuzz inputs, which are pictures of guest RAM, small.
#[derive(Clone, Copy, Debug)]
pub struct SplitRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub end: u64,
}

impl SplitRing {
    pub fn packed(base: u64, size: u16) -> Self {
        let size = u64::from(size);
        let desc = base.next_multiple_of(16);
        let avail = desc + 16 * size;
        let used = (avail + 6 + 2 * size).next_multiple_of(4);
        let end = used + 6 + 8 * size;
        Self {
            desc,
            avail,
            used,
            end,
        }
    }
}
