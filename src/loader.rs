//! Loads the guest kernel (ELF vmlinux with or without a PVH note, or bzImage) and the initrd into guest
//! memory with linux-loader, and says how to enter it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::HIGH_MEMORY_START;
use crate::arch::x86_64::regs::EntryMode;

/// The 64-bit entry point of a bzImage is this far past where its protected-mode code is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// A kernel in guest memory.
#[derive(Debug)]
pub struct LoadedKernel {
    /// How to enter it.
    pub mode: EntryMode,
    /// Where to enter it.
    pub entry: GuestAddress,
    /// First byte past the image.
    pub end: u64,
    /// The bzImage setup header, if it was a bzImage.
    pub setup_header: Option<setup_header>,
    /// Whether it is a Linux kernel (bzImage, or an ELF with a "Linux" note) — decides whether
    /// Linux-specific command-line parameters apply.
    pub is_linux: bool,
}

/// Errors loading the guest's images. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("{what} {path}: {error}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is empty.
    #[error("{what} {path} is empty")]
    Empty {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: String,
    },
    /// Not a format flint can boot.
    #[error("kernel {path} is neither a 64-bit ELF nor a bzImage ({detail})")]
    UnknownFormat {
        /// The path given.
        path: String,
        /// What linux-loader said about each format.
        detail: String,
    },
    /// The image does not fit in guest memory.
    #[error("{what} {path} ({size} bytes) does not fit in guest memory below {limit:#x}")]
    TooLarge {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: String,
        /// Its size.
        size: u64,
        /// The address it must end below.
        limit: u64,
    },
}

fn open(what: &'static str, path: &Path) -> Result<(File, u64), LoadError> {
    let display = path.display().to_string();
    let open_err = |error| LoadError::Open {
        what,
        path: display.clone(),
        error,
    };
    let file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if meta.is_dir() {
        return Err(open_err(std::io::Error::other("is a directory")));
    }
    if meta.len() == 0 {
        return Err(LoadError::Empty {
            what,
            path: display,
        });
    }
    Ok((file, meta.len()))
}

/// Whether an ELF file carries Linux's own ELF notes (owner "Linux"), which every vmlinux has.
fn elf_has_linux_note(file: &mut File) -> bool {
    // A vmlinux is tens of MB; its notes are near the start of the image. Reading the first 8 MiB
    // finds them without reading the whole file.
    let mut head = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_err() {
        return false;
    }
    if file.take(8 << 20).read_to_end(&mut head).is_err() {
        return false;
    }
    head.windows(6).any(|w| w == b"Linux\0")
}

/// Loads the kernel at `path`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoadError> {
    let (mut file, _) = open("kernel", path)?;
    let high = Some(GuestAddress(HIGH_MEMORY_START));
    let elf_error = match Elf::load(mem, None, &mut file, high) {
        Ok(result) => {
            let is_linux = elf_has_linux_note(&mut file);
            let (mode, entry) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (EntryMode::Pvh, addr),
                _ => (EntryMode::Linux64, result.kernel_load),
            };
            return Ok(LoadedKernel {
                mode,
                entry,
                end: result.kernel_end,
                setup_header: None,
                is_linux,
            });
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut file, high) {
        Ok(result) => Ok(LoadedKernel {
            mode: EntryMode::Linux64,
            entry: GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            end: result.kernel_end,
            setup_header: result.setup_header,
            is_linux: true,
        }),
        Err(bz_error) => Err(LoadError::UnknownFormat {
            path: path.display().to_string(),
            detail: format!("as ELF: {elf_error}; as bzImage: {bz_error}"),
        }),
    }
}

/// Loads the initrd as high as possible below `limit` (exclusive) and above `kernel_end`.
/// Returns its guest address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(GuestAddress, u64), LoadError> {
    let (mut file, size) = open("initrd", path)?;
    let too_large = || LoadError::TooLarge {
        what: "initrd",
        path: path.display().to_string(),
        size,
        limit,
    };
    let start = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(|e| LoadError::Open {
            what: "initrd",
            path: path.display().to_string(),
            error: std::io::Error::other(e.to_string()),
        })?;
    Ok((GuestAddress(start), size))
}
