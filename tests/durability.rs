//! Durability of the block devices (issue 6), for NVMe volumes (`--volume`) and virtio-blk disks
//! (`--disk`) alike. The block probes' durability modes (tests/guests/nvme.c and virtio_blk.c,
//! `mode=flushloop` / `mode=fulldisk`) write the self-describing 512-byte records of
//! tests/guests/lib/records.h; this file checks them in the disk file.
//!
//! - **SIGKILL after a flush**: the probe writes generation after generation of 256 records and
//!   prints `PROBE-INFO flushed=<g>` once each Flush has completed; the test kills flint with SIGKILL
//!   as soon as it sees `flushed=3`, then requires every record in the file to be intact and of a
//!   generation between the last one the guest saw flushed and the one after it. SIGKILL does not drop
//!   the host's page cache, so this proves flint wrote the data to the file before it acknowledged
//!   the writes and the flush, not that the data reached the medium.
//! - **fdatasync before the acknowledgement**: the same loop under `strace -f`: between two
//!   `flushed=` lines the disk file gets its writes and then an `fdatasync` that returns before the
//!   guest prints the line, i.e. before it saw the Flush complete.
//! - **exclusive lock**: while one flint runs on a disk file, a second one given the same file as a
//!   volume or a disk exits non-zero with one line naming the file, and the first keeps working.
//! - **full host disk**: the disk file (16 MiB, sparse) sits on a 2 MiB tmpfs the test mounts; writes
//!   past the free space fail with an error status (NVMe: Capacity Exceeded; virtio-blk: IOERR), flint
//!   keeps running, the flushed records read back, can be overwritten, and are in the file afterwards.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    assert_one_line_error, in_ci, kvm_available, probe, run_flint, scratch_path, LiveFlint, Run,
};

const RECORD_BYTES: usize = 512;
const RECORD_DWORDS: usize = RECORD_BYTES / 4;
const MAGIC_HEAD: u32 = 0x4455_5241;
const MAGIC_TAIL: u32 = 0x424C_4F4B;
/// Records the flush loop rewrites in every generation (128 KiB).
const FLUSHLOOP_RECORDS: usize = 256;
/// Records the full-disk run writes (32 KiB).
const FULLDISK_RECORDS: usize = 64;
/// Size of every disk file here: the NVMe probe wants at least 16 MiB.
const DISK_BYTES: u64 = 16 << 20;
/// The generation after whose flush the SIGKILL test kills flint.
const KILL_AFTER: u32 = 3;
const SIGKILL: i32 = 9;

/// The two block device models and how a test attaches a disk file to each.
#[derive(Clone, Copy, Debug)]
enum Device {
    Nvme,
    VirtioBlk,
}

impl Device {
    fn probe(self) -> &'static str {
        match self {
            Device::Nvme => "nvme",
            Device::VirtioBlk => "virtio_blk",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Device::Nvme => "--volume",
            Device::VirtioBlk => "--disk",
        }
    }

    /// The prefix of the probe's check names.
    fn checks(self) -> &'static str {
        match self {
            Device::Nvme => "nvme",
            Device::VirtioBlk => "vblk",
        }
    }
}

/// The flint arguments that boot `device`'s probe on `disk` with guest command line `cmdline`.
fn flint_args(device: Device, disk: &Path, cmdline: &str) -> Vec<String> {
    let kernel = probe(device.probe());
    [
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--memory",
        "256M",
        "--cpus",
        "1",
        "--cmdline",
        cmdline,
        device.flag(),
        &format!("path={}", disk.display()),
    ]
    .map(String::from)
    .to_vec()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A sparse, all-zero disk file of `DISK_BYTES` at `path`.
fn fresh_disk(path: &Path) -> PathBuf {
    let _ = std::fs::remove_file(path);
    let file = std::fs::File::create(path).expect("create the disk file");
    file.set_len(DISK_BYTES).expect("size the disk file");
    path.to_path_buf()
}

// ---------------------------------------------------------------- records (lib/records.h)

fn record_tag(g: u32, r: u32) -> u32 {
    g.wrapping_mul(0x85EB_CA6B) ^ r.wrapping_mul(0xC2B2_AE35) ^ 0x27D4_EB2F
}

/// Generation `g` of record `r`, as the probe writes it.
fn record(r: u32, g: u32) -> Vec<u8> {
    let tag = record_tag(g, r);
    (0..RECORD_DWORDS as u32)
        .map(|i| match i {
            0 => MAGIC_HEAD,
            1 => g,
            2 => r,
            3 => tag,
            124 => g,
            125 => r,
            126 => !tag,
            127 => MAGIC_TAIL,
            _ => r
                .wrapping_mul(128)
                .wrapping_add(i)
                .wrapping_mul(0x9E37_79B1)
                .wrapping_add(0x464C_4E54),
        })
        .flat_map(u32::to_le_bytes)
        .collect()
}

/// The generation of record `r` that `bytes` holds exactly, or why it holds none (zeroes, a torn
/// record, another record's data).
fn record_generation(bytes: &[u8], r: u32) -> Result<u32, String> {
    let dword = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    let g = dword(1);
    let want = record(r, g);
    match (0..RECORD_DWORDS).find(|&i| bytes[4 * i..4 * i + 4] != want[4 * i..4 * i + 4]) {
        None => Ok(g),
        Some(i) => Err(format!(
            "record {r} is no generation of it: dword {i} is {:#010x} (header says generation {g}, \
             which wants {:#010x})",
            dword(i),
            u32::from_le_bytes(want[4 * i..4 * i + 4].try_into().unwrap())
        )),
    }
}

/// The generation of each of the first `count` records of the file, or the first bad record.
fn file_generations(disk: &Path, count: usize) -> Result<Vec<u32>, String> {
    let data = std::fs::read(disk).expect("read the disk file back");
    assert_eq!(data.len() as u64, DISK_BYTES, "the disk file changed size");
    (0..count)
        .map(|r| record_generation(&data[r * RECORD_BYTES..(r + 1) * RECORD_BYTES], r as u32))
        .collect()
}

/// The generation in a `PROBE-INFO flushed=<g>` line.
fn flushed(line: &str) -> Option<u32> {
    line.trim_end()
        .strip_prefix("PROBE-INFO flushed=")?
        .parse()
        .ok()
}

fn context(run: &Run) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    )
}

// ---------------------------------------------------------------- SIGKILL right after a flush

/// Checks a disk image after a flush loop whose last flushed generation was `last`: each of the first
/// `count` records must be exactly generation `last` or `last + 1` of itself, and everything after
/// them zero. Returns how many records hold each generation.
fn check_flushed_records(
    data: &[u8],
    count: usize,
    last: u32,
) -> Result<BTreeMap<u32, u32>, String> {
    let mut histogram = BTreeMap::new();
    for r in 0..count {
        let bytes = &data[r * RECORD_BYTES..(r + 1) * RECORD_BYTES];
        let g = record_generation(bytes, r as u32)
            .map_err(|e| format!("{e} (last flushed generation {last})"))?;
        if !(last..=last + 1).contains(&g) {
            return Err(format!(
                "record {r} holds generation {g}, but generation {last} was flushed (and {} is \
                 the newest the guest can have written)",
                last + 1
            ));
        }
        *histogram.entry(g).or_insert(0u32) += 1;
    }
    if data[count * RECORD_BYTES..].iter().any(|b| *b != 0) {
        return Err("bytes past the records changed".into());
    }
    Ok(histogram)
}

/// The check above fails for each way a flushed record can be lost.
#[test]
fn flushed_record_check_finds_stale_torn_and_missing_records() {
    let image = |gens: &[u32]| -> Vec<u8> {
        let mut data: Vec<u8> = gens
            .iter()
            .enumerate()
            .flat_map(|(r, g)| record(r as u32, *g))
            .collect();
        data.resize(data.len() + 4096, 0);
        data
    };
    assert_eq!(
        check_flushed_records(&image(&[4, 5, 4]), 3, 4),
        Ok(BTreeMap::from([(4, 2), (5, 1)]))
    );
    // A flushed write lost: generation 3 after generation 4 was flushed.
    let err = check_flushed_records(&image(&[4, 3, 4]), 3, 4).unwrap_err();
    assert!(err.contains("record 1 holds generation 3"), "{err}");
    // A record from the future: the guest never wrote generation 6 before flushing 5.
    assert!(check_flushed_records(&image(&[4, 6, 4]), 3, 4).is_err());
    // Torn: the head of generation 5, the tail of generation 4.
    let mut torn = image(&[4, 4, 4]);
    torn[RECORD_BYTES..RECORD_BYTES + 256].copy_from_slice(&record(1, 5)[..256]);
    let err = check_flushed_records(&torn, 3, 4).unwrap_err();
    assert!(err.contains("record 1 is no generation"), "{err}");
    // Never written (zeroes), or another record's data.
    let mut zero = image(&[4, 4, 4]);
    zero[..RECORD_BYTES].fill(0);
    assert!(check_flushed_records(&zero, 3, 4).is_err());
    let mut swapped = image(&[4, 4, 4]);
    swapped[..RECORD_BYTES].copy_from_slice(&record(2, 4));
    assert!(check_flushed_records(&swapped, 3, 4).is_err());
    // A stray write past the records.
    let mut stray = image(&[4, 4, 4]);
    stray[3 * RECORD_BYTES + 100] = 1;
    assert!(check_flushed_records(&stray, 3, 4).is_err());
}

/// Kills flint with SIGKILL right after the guest saw generation `KILL_AFTER` flushed, then checks
/// the file record by record. Let F be the last generation the guest printed as flushed (the console
/// is read to its end after the kill, so F >= KILL_AFTER). Every record must be exactly generation F
/// or F + 1 of itself: not older (a flushed write lost), not torn, not zero, and not newer than F + 1
/// (the probe writes generation g + 1 only after printing flushed=g).
fn killed_after_flush(device: Device) {
    if !kvm_available() {
        return;
    }
    let disk = fresh_disk(&scratch_path(&format!(
        "durability-kill-{}.img",
        device.probe()
    )));
    let args = flint_args(device, &disk, "mode=flushloop flush_seconds=25 exit=reset");
    let mut vm = LiveFlint::spawn(&as_strs(&args));
    let seen = vm.wait_for_line(Duration::from_secs(25), |l| {
        flushed(l).is_some_and(|g| g >= KILL_AFTER)
    });
    // A varying delay of 0-39 ms (a generation takes a few tens of ms here), so that the kill lands
    // at different points of the next generation: stamping records, mid-writes, mid-flush.
    std::thread::sleep(Duration::from_millis(u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 40),
    )));
    let run = vm.kill();
    assert!(
        seen.is_some(),
        "the guest never saw generation {KILL_AFTER} flushed\n{}",
        context(&run)
    );
    assert_eq!(
        run.status.signal(),
        Some(SIGKILL),
        "flint was not killed by the SIGKILL: {:?}\n{}",
        run.status,
        context(&run)
    );
    let report = run.probe();
    assert!(
        report.checks.iter().all(|(_, ok, _)| *ok),
        "{}",
        context(&run)
    );
    assert!(
        report.done.is_none(),
        "the probe had finished before the kill\n{}",
        context(&run)
    );
    let last = run.stdout.lines().filter_map(flushed).max().unwrap_or(0);
    let data = std::fs::read(&disk).expect("read the disk file back");
    assert_eq!(data.len() as u64, DISK_BYTES, "the disk file changed size");
    let histogram = check_flushed_records(&data, FLUSHLOOP_RECORDS, last)
        .unwrap_or_else(|e| panic!("{e}\n{}", context(&run)));
    eprintln!(
        "{device:?}: killed {:?} after the guest saw flushed={KILL_AFTER}; last flushed generation \
         {last}; records per generation in the file: {histogram:?}",
        run.elapsed
    );
}

#[test]
fn nvme_sigkill_after_flush_loses_nothing_flushed() {
    killed_after_flush(Device::Nvme);
}

#[test]
fn virtio_blk_sigkill_after_flush_loses_nothing_flushed() {
    killed_after_flush(Device::VirtioBlk);
}

// ---------------------------------------------------------------- fdatasync before the acknowledgement

/// One traced system call, in the order strace saw them.
#[derive(Clone, Debug, PartialEq)]
enum Traced {
    /// A pwrite64 or write on `fd` (not the console's 0-2) that returned a positive count.
    Write { fd: i32 },
    /// An fdatasync on `fd` that returned 0.
    Sync { fd: i32 },
    /// The console line `flushed=<g>` being written to stdout.
    Flushed(u32),
}

/// Parses `strace -f` output (each line starts with the thread id; a call interrupted by another
/// thread's is split into `<unfinished ...>` and `<... name resumed>`). A call counts where it returns.
/// The console is written to stdout a byte or a few at a time; a `flushed=<g>` line counts where its
/// first byte was written.
fn parse_strace(text: &str) -> Vec<Traced> {
    let mut pending: BTreeMap<String, i32> = BTreeMap::new(); // thread + call -> fd of an unfinished call
    let mut events = Vec::new();
    let mut console = String::new();
    let mut line_starts_at = 0; // index in `events` where the current console line began
    let returned = |line: &str| {
        line.rsplit_once(" = ")
            .and_then(|(_, r)| r.split_whitespace().next()?.parse::<i64>().ok())
    };
    for line in text.lines() {
        let Some((tid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let fd_of = |rest: &str| rest.split([',', ' ', ')']).next()?.parse::<i32>().ok();
        // Disk writes are pwrite64 (NVMe, through a buffer) or write at the file's offset (virtio-blk,
        // straight from guest memory); fds 0-2 are the console.
        for (name, sync) in [("pwrite64", false), ("write", false), ("fdatasync", true)] {
            let key = format!("{tid} {name}");
            let fd = if let Some(rest) = call.strip_prefix(&format!("{name}(")) {
                if call.ends_with("<unfinished ...>") {
                    if let Some(fd) = fd_of(rest) {
                        pending.insert(key, fd);
                    }
                    continue;
                }
                fd_of(rest)
            } else if call.starts_with(&format!("<... {name} resumed>")) {
                pending.remove(&key)
            } else {
                continue;
            };
            match (fd, returned(call)) {
                (Some(fd), Some(0)) if sync => events.push(Traced::Sync { fd }),
                (Some(fd), Some(n)) if !sync && n > 0 && fd > 2 => {
                    events.push(Traced::Write { fd })
                }
                _ => {}
            }
        }
        if let Some(rest) = call.strip_prefix("write(1, \"") {
            let Some((text, _)) = rest.split_once("\", ") else {
                continue;
            };
            if console.is_empty() {
                line_starts_at = events.len();
            }
            console.push_str(&text.replace("\\n", "\n"));
            while let Some((first, more)) = console.split_once('\n') {
                if let Some(g) = flushed(first) {
                    events.insert(line_starts_at, Traced::Flushed(g));
                }
                console = more.to_string();
                line_starts_at = events.len();
            }
        }
    }
    events
}

/// Checks that before each `flushed=<g>` the disk file got writes and then an fdatasync that had
/// returned. Returns the number of generations checked.
fn check_sync_order(events: &[Traced]) -> Result<u32, String> {
    // The disk file is what fdatasync is called on; writes to other files (eventfds) don't count.
    let disk_fd = events
        .iter()
        .find_map(|e| match e {
            Traced::Sync { fd } => Some(*fd),
            _ => None,
        })
        .ok_or("no fdatasync at all")?;
    let mut checked = 0;
    let mut since_last = Vec::new();
    for e in events {
        match e {
            Traced::Flushed(g) => {
                let last_write = since_last
                    .iter()
                    .rposition(|e| *e == Traced::Write { fd: disk_fd })
                    .ok_or(format!("no write to the disk file before flushed={g}"))?;
                if !since_last[last_write..].contains(&Traced::Sync { fd: disk_fd }) {
                    return Err(format!(
                        "the guest saw generation {g} flushed before fdatasync of the disk file \
                         returned (after its last write): {since_last:?}"
                    ));
                }
                checked += 1;
                since_last.clear();
            }
            other => since_last.push(other.clone()),
        }
    }
    Ok(checked)
}

/// Runs the flush loop for 2 s under `strace -f` and checks the order of pwrite64, fdatasync and the
/// guest's `flushed=` lines. Threads are stopped at every traced call, so the order in the trace is
/// the order of the calls: a flush the device acknowledged before its fdatasync returned would show
/// the console line before the fdatasync's return.
fn fdatasync_before_acknowledgement(device: Device) {
    if !kvm_available() {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(!in_ci(), "CI=true but strace is not installed");
        eprintln!("SKIPPED: strace is not installed");
        return;
    }
    let disk = fresh_disk(&scratch_path(&format!(
        "durability-strace-{}.img",
        device.probe()
    )));
    let trace = scratch_path(&format!("durability-{}.strace", device.probe()));
    let flint = flint_args(device, &disk, "mode=flushloop flush_seconds=2 exit=reset");
    let mut args = vec![
        "-f".to_string(),
        "--seccomp-bpf".into(),
        "-qq".into(),
        "-s".into(),
        "40".into(),
        "-e".into(),
        "trace=pwrite64,fdatasync,write".into(),
        "-o".into(),
        trace.display().to_string(),
        common::flint_bin().into(),
    ];
    args.extend(flint);
    let run = LiveFlint::spawn_program("strace", &as_strs(&args)).finish(Duration::from_secs(90));
    let report = run.probe();
    report.assert_all_passed(&run);
    assert!(
        report.passed(&format!("{}_flushloop", device.checks())),
        "{}",
        context(&run)
    );
    assert!(run.status.success(), "{}", context(&run));
    let events = parse_strace(&std::fs::read_to_string(&trace).expect("read the strace log"));
    let checked = check_sync_order(&events).unwrap_or_else(|e| panic!("{e}"));
    let generations: u32 = report.info("generations").unwrap().parse().unwrap();
    assert_eq!(
        checked, generations,
        "every generation's flushed= line must be in the trace"
    );
    eprintln!(
        "{device:?}: {checked} generations, each fdatasync'ed before the guest saw its flush"
    );
}

#[test]
fn nvme_flush_is_fdatasync_before_the_completion() {
    fdatasync_before_acknowledgement(Device::Nvme);
}

#[test]
fn virtio_blk_flush_is_fdatasync_before_the_completion() {
    fdatasync_before_acknowledgement(Device::VirtioBlk);
}

#[test]
fn strace_parser_pairs_split_calls_and_finds_missing_syncs() {
    let trace = "\
10 pwrite64(7, \"ARUD\\1\\0\\0\\0\"..., 4096, 0) = 4096
10 fdatasync(7 <unfinished ...>
11 write(3, \"\\1\\0\\0\\0\\0\\0\\0\\0\", 8) = 8
10 <... fdatasync resumed>) = 0
11 write(1, \"PROBE-INFO flushed=1\\n\", 21) = 21
10 pwrite64(7, \"ARUD\\2\\0\\0\\0\"..., 4096, 0) = 4096
11 write(1, \"P\", 1) = 1
10 fdatasync(7) = 0
11 write(1, \"ROBE-INFO flushed=2\", 19) = 19
11 write(1, \"\\n\", 1) = 1
";
    let events = parse_strace(trace);
    assert_eq!(
        events,
        [
            Traced::Write { fd: 7 },
            Traced::Write { fd: 3 },
            Traced::Sync { fd: 7 },
            Traced::Flushed(1),
            Traced::Write { fd: 7 },
            Traced::Flushed(2),
            Traced::Sync { fd: 7 },
        ]
    );
    // The second flush's fdatasync returned only after the guest began printing flushed=2.
    let err = check_sync_order(&events).unwrap_err();
    assert!(err.contains("generation 2"), "{err}");
    assert_eq!(check_sync_order(&events[..4]), Ok(1));
}

// ---------------------------------------------------------------- exclusive lock

/// While one flint runs the flush loop on a disk file, a second flint given the same file (as the
/// same kind of device, and as the other kind) fails at once with one line naming the file; the
/// first keeps flushing.
fn second_vmm_is_refused(device: Device) {
    if !kvm_available() {
        return;
    }
    let disk = fresh_disk(&scratch_path(&format!(
        "durability-lock-{}.img",
        device.probe()
    )));
    let args = flint_args(device, &disk, "mode=flushloop flush_seconds=25 exit=reset");
    let mut first = LiveFlint::spawn(&as_strs(&args));
    let up = first
        .wait_for_line(Duration::from_secs(20), |l| flushed(l).is_some())
        .and_then(|l| flushed(&l));
    let Some(before) = up else {
        panic!("{}", context(&first.kill()));
    };
    let kernel = probe("boot");
    let spec = format!("path={}", disk.display());
    let path = disk.display().to_string();
    for flag in ["--volume", "--disk"] {
        assert_one_line_error(
            &[
                "run",
                "--kernel",
                kernel.to_str().unwrap(),
                "--memory",
                "64M",
                flag,
                &spec,
            ],
            &[&path, "is in use by another process"],
        );
    }
    assert!(first.running(), "the first flint stopped");
    let later = first.wait_for_line(Duration::from_secs(10), |l| {
        flushed(l).is_some_and(|g| g > before + 1)
    });
    let run = first.kill();
    assert!(
        later.is_some(),
        "the first flint stopped flushing after the second one was refused\n{}",
        context(&run)
    );
}

#[test]
fn nvme_volume_in_use_refuses_a_second_vmm() {
    second_vmm_is_refused(Device::Nvme);
}

#[test]
fn virtio_blk_disk_in_use_refuses_a_second_vmm() {
    second_vmm_is_refused(Device::VirtioBlk);
}

// ---------------------------------------------------------------- full host disk

/// A tmpfs mounted on a fresh directory for one test, unmounted (and the directory removed) when
/// dropped, also when the test fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax). None (the test is skipped) if that is not allowed,
    /// except in CI, where it fails the test.
    fn mount(name: &str, size: &str) -> Option<Self> {
        let dir = scratch_path(&format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Self { dir });
        }
        let _ = std::fs::remove_dir(&dir);
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            !in_ci(),
            "CI=true but a tmpfs cannot be mounted (run the tests as root): {why}"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?): {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The disk file (16 MiB, sparse) on a 2 MiB tmpfs: the probe's writes past the free space fail
/// with the device's error status, flint keeps serving (Flush, reads of the flushed records, new
/// writes over them), exits normally, and the file holds the last flushed generation.
fn full_host_disk(device: Device) {
    if !kvm_available() {
        return;
    }
    let Some(fs) = Tmpfs::mount(&format!("durability-tmpfs-{}", device.probe()), "2M") else {
        return;
    };
    let disk = fresh_disk(&fs.dir.join("disk.img"));
    let args = flint_args(device, &disk, "mode=fulldisk exit=reset");
    let run = run_flint(&as_strs(&args), Duration::from_secs(60));
    let report = run.probe();
    report.assert_all_passed(&run);
    assert!(run.status.success(), "{}", context(&run));
    let p = device.checks();
    for check in [
        "fulldisk_flushed",
        "fulldisk_write_error",
        "fulldisk_retries",
        "fulldisk_flush_after",
        "fulldisk_read_flushed",
        "fulldisk_overwrite",
    ] {
        assert!(
            report.passed(&format!("{p}_{check}")),
            "{p}_{check} did not pass\n{}",
            context(&run)
        );
    }
    let written: u64 = report
        .info("fulldisk_written")
        .and_then(|w| w.parse().ok())
        .expect("fulldisk_written");
    assert!(
        written > 0 && written < 2 << 20,
        "{written} bytes went in before the error, on a 2 MiB file system"
    );
    // The host's error is logged once, not once per failed request (21 of them).
    let warnings = run
        .stderr
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .count();
    assert_eq!(
        warnings,
        1,
        "flint should log the host's error once\n{}",
        context(&run)
    );
    let generations = file_generations(&disk, FULLDISK_RECORDS).unwrap_or_else(|e| panic!("{e}"));
    if let Some((r, g)) = generations.iter().enumerate().find(|(_, g)| **g != 2) {
        panic!("record {r} holds generation {g}, want the flushed generation 2");
    }
    eprintln!("{device:?}: {written} bytes written before the file system was full");
}

#[test]
fn nvme_full_host_disk_is_an_error_status_and_keeps_flushed_data() {
    full_host_disk(Device::Nvme);
}

#[test]
fn virtio_blk_full_host_disk_is_an_error_status_and_keeps_flushed_data() {
    full_host_disk(Device::VirtioBlk);
}
