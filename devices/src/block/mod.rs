//! Disk-file backends for block devices (the NVMe controller now, virtio-blk later).
//!
//! A [`BlockBackend`] is one host file (or host block device) opened for a guest volume:
//! - a read-only volume opens the file `O_RDONLY` and never writes to it;
//! - the file is locked with a non-blocking exclusive `flock`, so two VMMs cannot open one volume
//!   (the second gets "disk PATH is in use by another process");
//! - reads and writes are positional (`pread`/`pwrite`), so one backend serves several queues;
//! - flush is `fdatasync`; once one has failed, every later flush fails too: after a failed
//!   `fdatasync` Linux may have dropped the dirty pages it could not write and marked them clean, so
//!   a later `fdatasync` would succeed without the lost data ever reaching the disk;
//! - discard and write-zeroes punch a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), falling back to
//!   writing zeroes where the filesystem refuses.
//!
//! Device models use the [`BlockIo`] trait rather than the concrete type, so tests can put a failing
//! backend behind a controller. They report a failing file through a [`FailureLog`], so that a guest
//! repeating a failing request (every write to a full host disk fails) cannot flood the host's log.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::{FallocateFlags, FlockOperation};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions, ReadVolatile,
    VolatileMemoryError, VolatileSlice, WriteVolatile,
};

/// The I/O a block device model needs from its backing store. Every method reports failures as
/// `io::Error`; the device model turns them into guest-visible error statuses.
pub trait BlockIo: Send {
    /// Size of the backing store in bytes.
    fn size(&self) -> u64;
    /// Whether the volume is read-only (no method that writes may be called).
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`. Fails (rather than returning a short read) if the store ends first.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn flush(&self) -> io::Result<()>;
    /// The guest no longer needs `[offset, offset + len)`; afterwards the range reads as zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes `[offset, offset + len)` read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Reads `len` bytes at `offset` of the store into guest RAM at `addr` (which the caller has
    /// checked lies in RAM; if not, this fails and may have filled part of it). This default
    /// goes through a host buffer; [`BlockBackend`] reads straight into guest memory.
    fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, offset)?;
        mem.write_slice(&buf, addr).map_err(guest_memory_error)
    }

    /// Writes `len` bytes of guest RAM at `addr` to `offset` of the store. This default goes
    /// through a host buffer; [`BlockBackend`] writes straight from guest memory.
    fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, addr).map_err(guest_memory_error)?;
        self.write_at(&buf, offset)
    }
}

/// A guest-memory failure as an `io::Error` (the file's own errors pass through unchanged).
fn guest_memory_error(e: GuestMemoryError) -> io::Error {
    match e {
        GuestMemoryError::IOError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidInput, other),
    }
}

/// Errors opening a disk file.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file could not be opened or inspected.
    #[error("cannot open disk {path}: {source}")]
    Open {
        /// The disk file.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// Another process (another VMM) holds the lock on the file.
    #[error("disk {path} is in use by another process")]
    InUse {
        /// The disk file.
        path: PathBuf,
    },
    /// The file cannot be locked for another reason.
    #[error("cannot lock disk {path}: {source}")]
    Lock {
        /// The disk file.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
}

/// Warnings about one disk's failing file: the first failure is logged, then at most one line per
/// interval (10 s), which says how many failures it left out in between.
#[derive(Debug)]
pub struct FailureLog {
    interval: Duration,
    state: Mutex<FailureLogState>,
}

#[derive(Debug, Default)]
struct FailureLogState {
    last_logged: Option<Instant>,
    left_out: u64,
}

impl Default for FailureLog {
    fn default() -> Self {
        Self::with_interval(Duration::from_secs(10))
    }
}

impl FailureLog {
    /// A log that writes at most one warning per `interval`.
    pub fn with_interval(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Logs `message()` as a warning, or only counts it if the last warning is younger than the
    /// interval. Returns whether it logged.
    pub fn warn(&self, message: impl FnOnce() -> String) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state
            .last_logged
            .is_some_and(|at| now.duration_since(at) < self.interval)
        {
            state.left_out += 1;
            return false;
        }
        state.last_logged = Some(now);
        match std::mem::take(&mut state.left_out) {
            0 => log::warn!("{}", message()),
            n => log::warn!("{} ({n} more failures since the last warning)", message()),
        }
        true
    }
}

/// Largest chunk written at once when zeroes have to be written out by hand.
const ZERO_CHUNK: usize = 1 << 20;

/// A disk file opened for one guest volume. See the module documentation.
#[derive(Debug)]
pub struct BlockBackend {
    file: File,
    /// The file's own offset, if known, and held while it is in use ([`BlockIo::read_to_guest`]
    /// and [`BlockIo::write_from_guest`] seek, then read or write): vm-memory moves data between
    /// guest memory and a file only through `read`/`write` at the file offset, not
    /// `pread`/`pwrite`. Knowing it saves the seek when requests follow each other.
    cursor: Mutex<Option<u64>>,
    path: PathBuf,
    read_only: bool,
    size: u64,
    /// An `fdatasync` failed: data the guest wrote may be lost (see the module documentation).
    flush_failed: AtomicBool,
}

impl BlockBackend {
    /// Opens `path` read-only (`O_RDONLY`) or read-write and takes the exclusive lock on it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let kind = file.metadata().map_err(open_err)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            )));
        }
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(BlockError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(BlockError::Lock {
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
        // Seeking to the end measures regular files and host block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Self {
            file,
            cursor: Mutex::new(None),
            path: path.to_path_buf(),
            read_only,
            size,
            flush_failed: AtomicBool::new(false),
        })
    }

    /// Passes on the result of an `fdatasync`, and fails every flush after a failed one.
    fn flush_outcome(&self, result: io::Result<()>) -> io::Result<()> {
        if self.flush_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier fdatasync of the disk file failed: written data may have been lost",
            ));
        }
        if result.is_err() {
            self.flush_failed.store(true, Ordering::Release);
        }
        result
    }

    /// The path the backend was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the volume is read-only",
            ))
        } else {
            Ok(())
        }
    }

    /// Locks the file offset, moves it to `offset` (unless it is there), and runs `io`, which moves
    /// `len` bytes from there.
    fn at_offset(
        &self,
        offset: u64,
        len: usize,
        io: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        // A panic while the lock was held may have left the offset anywhere: forget it.
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| {
            let mut guard = p.into_inner();
            *guard = None;
            guard
        });
        if *cursor != Some(offset) {
            *cursor = None;
            (&self.file).seek(SeekFrom::Start(offset))?;
        }
        // After a failure (a short transfer, say) the offset is unknown.
        *cursor = None;
        io()?;
        *cursor = offset.checked_add(len as u64);
        Ok(())
    }

    /// Moves `len` bytes between guest RAM at `addr` (checked to be all RAM with `access` first)
    /// and the file at `offset`: `io` runs on each slice of the range, one per guest memory region
    /// it touches, and must move all of it.
    fn guest_io(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
        access: Permissions,
        mut io: impl FnMut(&File, &mut VolatileSlice) -> Result<(), VolatileMemoryError>,
    ) -> io::Result<()> {
        check_in_ram(mem, addr, len, access)?;
        self.at_offset(offset, len, || {
            let mut done = 0;
            for slice in
                GuestMemory::get_slices(mem, addr, len, access).map_err(guest_memory_error)?
            {
                let mut slice = slice.map_err(guest_memory_error)?;
                io(&self.file, &mut slice).map_err(volatile_error)?;
                done += slice.len();
            }
            check_complete(done, len)
        })
    }

    fn zero_by_writing(&self, offset: u64, len: u64) -> io::Result<()> {
        let chunk = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.file.write_all_at(&chunk[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        if len == 0 {
            return Ok(());
        }
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => Ok(()),
            // The filesystem (or block device) cannot punch holes: write the zeroes instead.
            Err(rustix::io::Errno::OPNOTSUPP)
            | Err(rustix::io::Errno::NOSYS)
            | Err(rustix::io::Errno::INVAL)
            | Err(rustix::io::Errno::NODEV) => self.zero_by_writing(offset, len),
            Err(e) => Err(e.into()),
        }
    }
}

impl BlockIo for BlockBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            // Nothing this process wrote can be pending.
            return Ok(());
        }
        self.flush_outcome(self.file.sync_data())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.punch_hole(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.punch_hole(offset, len)
    }

    /// `read(2)` from the file straight into guest memory: no host buffer, no copy in between.
    fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        // Loops over short reads; end of file is an error, not a short read.
        self.guest_io(
            mem,
            addr,
            len,
            offset,
            Permissions::Write,
            |mut file, slice| file.read_exact_volatile(slice),
        )
    }

    /// `write(2)` to the file straight from guest memory.
    fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        self.guest_io(
            mem,
            addr,
            len,
            offset,
            Permissions::Read,
            |mut file, slice| file.write_all_volatile(slice),
        )
    }
}

fn volatile_error(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidInput, other),
    }
}

/// The whole guest range is RAM: checked before any I/O, so a bad range moves nothing.
fn check_in_ram(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    access: Permissions,
) -> io::Result<()> {
    if len == 0 || GuestMemory::check_range(mem, addr, len, access) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("guest buffer {:#x}+{len} is not all RAM", addr.0),
        ))
    }
}

/// The slices of a guest range covered all of it (they stop early at a hole in guest RAM).
fn check_complete(done: usize, len: usize) -> io::Result<()> {
    if done == len {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("guest buffer of {len} bytes is only partly in RAM ({done} bytes)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_disk(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        f
    }

    #[test]
    fn failure_log_leaves_out_repeats_within_the_interval() {
        let log = FailureLog::default();
        assert!(log.warn(|| "first".into()));
        assert!(!log.warn(|| unreachable!("not formatted when left out")));
        assert!(!log.warn(|| unreachable!()));
        assert_eq!(log.state.lock().unwrap().left_out, 2);
        let log = FailureLog::with_interval(Duration::ZERO);
        assert!(log.warn(|| "first".into()));
        assert!(log.warn(|| "second".into()));
    }

    #[test]
    fn flushes_fail_for_good_after_a_failed_fdatasync() {
        let f = temp_disk(4096);
        let b = BlockBackend::open(f.path(), false).unwrap();
        b.flush().unwrap();
        let eio = b.flush_outcome(Err(io::Error::from_raw_os_error(5)));
        assert_eq!(eio.unwrap_err().raw_os_error(), Some(5));
        // The next fdatasync succeeds, but the data of the failed one may be gone.
        let err = b.flush().unwrap_err();
        assert!(err.to_string().contains("earlier fdatasync"), "{err}");
        // Reads and writes go on.
        b.write_at(&[1; 512], 0).unwrap();
        let mut buf = [0u8; 512];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [1; 512]);
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let f = temp_disk(1 << 20);
        let b = BlockBackend::open(f.path(), false).unwrap();
        assert_eq!(b.size(), 1 << 20);
        assert!(!b.read_only());
        b.write_at(&[0xab; 4096], 8192).unwrap();
        b.flush().unwrap();
        let mut buf = [0u8; 4096];
        b.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [0xab; 4096]);
        // Past the end is an error, not a short read.
        assert!(b.read_at(&mut buf, (1 << 20) - 100).is_err());
    }

    #[test]
    fn read_only_never_writes() {
        let f = temp_disk(65536);
        std::fs::write(f.path(), vec![7u8; 65536]).unwrap();
        let b = BlockBackend::open(f.path(), true).unwrap();
        assert!(b.read_only());
        assert!(b.write_at(&[1; 512], 0).is_err());
        assert!(b.discard(0, 4096).is_err());
        assert!(b.write_zeroes(0, 4096).is_err());
        b.flush().unwrap();
        drop(b);
        assert_eq!(std::fs::read(f.path()).unwrap(), vec![7u8; 65536]);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let f = temp_disk(4096);
        let first = BlockBackend::open(f.path(), false).unwrap();
        let err = BlockBackend::open(f.path(), true).unwrap_err();
        assert!(matches!(err, BlockError::InUse { .. }));
        assert_eq!(
            err.to_string(),
            format!("disk {} is in use by another process", f.path().display())
        );
        drop(first);
        BlockBackend::open(f.path(), false).unwrap();
    }

    #[test]
    fn missing_file_or_directory_is_an_open_error() {
        let err = BlockBackend::open(Path::new("/nonexistent/flint-disk.img"), false).unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }));
        let dir = tempfile::tempdir().unwrap();
        let err = BlockBackend::open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn discard_punches_a_hole() {
        let f = temp_disk(0);
        std::fs::write(f.path(), vec![0x5au8; 1 << 20]).unwrap();
        let b = BlockBackend::open(f.path(), false).unwrap();
        b.flush().unwrap();
        let before = std::fs::metadata(f.path()).unwrap().blocks();
        b.discard(0, 512 * 1024).unwrap();
        b.write_zeroes(512 * 1024, 256 * 1024).unwrap();
        let after = std::fs::metadata(f.path()).unwrap();
        assert_eq!(after.len(), 1 << 20, "the size is kept");
        assert!(
            after.blocks() < before,
            "allocated blocks {before} -> {}",
            after.blocks()
        );
        let mut buf = vec![1u8; 768 * 1024];
        b.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        let mut tail = vec![0u8; 256 * 1024];
        b.read_at(&mut tail, 768 * 1024).unwrap();
        assert!(tail.iter().all(|&x| x == 0x5a));
    }

    #[test]
    fn moves_data_straight_between_file_and_guest_memory() {
        let f = temp_disk(0);
        let content: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(f.path(), &content).unwrap();
        let b = BlockBackend::open(f.path(), false).unwrap();
        // Two regions with a hole between them, as guest RAM around the MMIO gap.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(2 << 20), 1 << 20),
        ])
        .unwrap();
        b.read_to_guest(&mem, GuestAddress(0x1000), 0x8_0000, 0x1_0000)
            .unwrap();
        let mut got = vec![0u8; 0x8_0000];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, content[0x1_0000..0x9_0000]);
        // Guest memory to the file, at an offset: the file offset does not leak between calls.
        mem.write_slice(&[0xc3; 4096], GuestAddress((2 << 20) + 512))
            .unwrap();
        b.write_from_guest(&mem, GuestAddress((2 << 20) + 512), 4096, 8192)
            .unwrap();
        let mut back = [0u8; 4096];
        b.read_at(&mut back, 8192).unwrap();
        assert_eq!(back, [0xc3; 4096]);
        b.read_to_guest(&mem, GuestAddress(0), 512, 0).unwrap();
        let mut first = [0u8; 512];
        mem.read_slice(&mut first, GuestAddress(0)).unwrap();
        assert_eq!(first[..], content[..512]);
        // Back to back (the file offset is reused, no seek) and after a positional write.
        for (i, offset) in [4096u64, 4096 + 512, 8192 + 512, 8192 + 1024]
            .iter()
            .enumerate()
        {
            let at = GuestAddress(0x10_0000 - 0x1000 * (i as u64 + 1));
            b.read_to_guest(&mem, at, 512, *offset).unwrap();
            let mut got = [0u8; 512];
            mem.read_slice(&mut got, at).unwrap();
            let mut want = [0u8; 512];
            b.read_at(&mut want, *offset).unwrap();
            assert_eq!(got, want, "offset {offset}");
        }
        // Past the end of the file: an error, not a short read; the next read finds its place.
        assert!(b
            .read_to_guest(&mem, GuestAddress(0), 8192, (1 << 20) - 4096)
            .is_err());
        b.read_to_guest(&mem, GuestAddress(0), 512, (1 << 20) - 512)
            .unwrap();
        let mut tail = [0u8; 512];
        mem.read_slice(&mut tail, GuestAddress(0)).unwrap();
        assert_eq!(tail[..], content[(1 << 20) - 512..]);
        // Guest ranges that leave RAM (into the hole, past the end, wrapping) fail before or
        // during the I/O, and never touch anything outside guest RAM.
        for (addr, len) in [
            ((1 << 20) - 512, 1024),
            ((3 << 20) - 512, 1024),
            (5 << 20, 512),
            (u64::MAX - 100, 512),
        ] {
            assert!(
                b.read_to_guest(&mem, GuestAddress(addr), len, 0).is_err(),
                "read to {addr:#x}+{len}"
            );
            assert!(
                b.write_from_guest(&mem, GuestAddress(addr), len, 0)
                    .is_err(),
                "write from {addr:#x}+{len}"
            );
        }
        // A read-only backend refuses writes from guest memory too.
        drop(b);
        let ro = BlockBackend::open(f.path(), true).unwrap();
        assert!(ro.write_from_guest(&mem, GuestAddress(0), 512, 0).is_err());
    }

    #[test]
    fn zero_fallback_writes_zeroes() {
        let f = temp_disk(0);
        std::fs::write(f.path(), vec![3u8; 3 * ZERO_CHUNK]).unwrap();
        let b = BlockBackend::open(f.path(), false).unwrap();
        b.zero_by_writing(100, 2 * ZERO_CHUNK as u64 + 5).unwrap();
        let data = std::fs::read(f.path()).unwrap();
        assert!(data[..100].iter().all(|&x| x == 3));
        assert!(data[100..100 + 2 * ZERO_CHUNK + 5].iter().all(|&x| x == 0));
        assert!(data[100 + 2 * ZERO_CHUNK + 5..].iter().all(|&x| x == 3));
    }
}
