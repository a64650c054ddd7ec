//! The Linux smoke test: boots the minimal kernel from guest-images/ with its busybox initramfs and
//! checks what the guest's /init reports (CPU count, MemTotal, the command line), and that the guest's
//! reboot ends flint with status 0.
//!
//! On a hardware-KVM host this takes about a second of guest time. On a PVM host the guest kernel runs
//! through KVM's instruction emulator and takes about a minute (docs/pvm.md); the test prints how long
//! the boot took either way.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_ci, kvm_available, run_flint, scratch_disk, scratch_path};

fn guest_images() -> Option<PathBuf> {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-images/out");
    let complete = [
        "vmlinux",
        "bzImage",
        "initramfs.cpio",
        "cmdline.txt",
        "rootfs.ext4",
    ]
    .iter()
    .all(|f| out.join(f).exists());
    if complete {
        return Some(out);
    }
    assert!(
        !in_ci(),
        "CI=true but the guest images are missing: run guest-images/build.sh"
    );
    eprintln!("SKIPPED: guest-images/out is incomplete; run guest-images/build.sh");
    None
}

/// The guest images' kernel command line (guest-images/out/cmdline.txt) with `extra` appended.
fn linux_cmdline(out: &Path, extra: &str) -> String {
    let base = std::fs::read_to_string(out.join("cmdline.txt")).expect("cmdline.txt");
    format!("{} {extra}", base.trim())
}

/// Asserts that the console has a `key` line whose value is `want`.
fn assert_line(console: &str, key: &str, want: &str, context: &dyn Fn() -> String) {
    assert_eq!(line_value(console, key), Some(want), "{key}\n{}", context());
}

fn line_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(str::trim)
}

/// Boots `kernel_file` (from guest-images/out) with the initramfs and checks what /init reports.
/// Returns the console transcript.
fn boot_linux_with_initramfs(kernel_file: &str) -> Option<String> {
    if !kvm_available() {
        return None;
    }
    let out = guest_images()?;
    let cmdline = linux_cmdline(&out, "flint.test=smoke-7f3a");
    let kernel = out.join(kernel_file);
    let initrd = out.join("initramfs.cpio");
    let run = run_flint(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--cmdline",
            &cmdline,
            "--log-level",
            "info",
        ],
        Duration::from_secs(20 * 60),
    );
    println!(
        "Linux smoke test ({kernel_file}): launch to exit took {:.1} s",
        run.elapsed.as_secs_f64()
    );
    let console = &run.stdout;
    let context = || format!("--- console ---\n{console}\n--- stderr ---\n{}", run.stderr);
    assert!(
        console.contains("FLINT-INIT-OK"),
        "/init never ran\n{}",
        context()
    );
    // What the kernel did before /init is real too: it found the CPU and the ACPI tables.
    assert!(console.contains("ACPI: "), "{}", context());
    assert_line(console, "FLINT-CPUS ", "1", &context);
    let mem_kb: u64 = line_value(console, "FLINT-MEMTOTAL-KB ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal\n{}", context()));
    // MemTotal is RAM less what the kernel keeps for itself: a few MiB under 512 MiB.
    assert!(
        (400 * 1024..512 * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB\n{}",
        context()
    );
    let seen_cmdline = line_value(console, "FLINT-CMDLINE ").unwrap_or_default();
    assert!(
        seen_cmdline.contains("flint.test=smoke-7f3a"),
        "{}",
        context()
    );
    assert!(
        run.status.success(),
        "flint exited with {:?}\n{}",
        run.status,
        context()
    );
    Some(console.clone())
}

#[test]
fn linux_boots_to_init_and_sees_its_cpus_memory_and_cmdline() {
    // vmlinux carries a PVH note: flint enters it through hvm_start_info.
    boot_linux_with_initramfs("vmlinux");
}

#[test]
fn linux_bzimage_boots_through_the_64_bit_boot_protocol() {
    // A bzImage is entered in long mode with boot_params: the kernel must see flint's e820 map.
    let Some(console) = boot_linux_with_initramfs("bzImage") else {
        return;
    };
    for needle in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
        "BIOS-e820: [mem 0x00000000e0000000-0x00000000efffffff] reserved",
    ] {
        assert!(console.contains(needle), "missing {needle:?}\n{console}");
    }
}

/// Runs a host tool and returns its stdout; fails the test if it cannot run or fails.
fn host_tool(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn linux_boots_with_its_root_filesystem_on_nvme() {
    if !kvm_available() {
        return;
    }
    let Some(out) = guest_images() else {
        return;
    };
    // The guest writes to its root filesystem: give it a copy.
    let disk = scratch_path("linux-root-nvme.ext4");
    std::fs::copy(out.join("rootfs.ext4"), &disk).expect("copy rootfs.ext4");
    let cmdline = linux_cmdline(
        &out,
        "root=/dev/nvme0n1 rw rootfstype=ext4 flint.test=nvme-root-51c2",
    );
    let kernel = out.join("vmlinux");
    let volume = format!("path={},id=vol-0abcdef0123456789,name=sdf", disk.display());
    // A virtio-blk disk beside it: Linux's virtio_blk driver must bind it too (read-only here).
    let scratch = scratch_path("linux-virtio-scratch.img");
    std::fs::write(&scratch, vec![0u8; 8 << 20]).expect("create the scratch disk");
    let disk_spec = format!("path={},readonly=on,id=scratch-disk", scratch.display());
    let run = run_flint(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--volume",
            &volume,
            "--disk",
            &disk_spec,
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(20 * 60),
    );
    println!(
        "Linux root-on-NVMe test: launch to exit took {:.1} s",
        run.elapsed.as_secs_f64()
    );
    let console = &run.stdout;
    let context = || format!("--- console ---\n{console}\n--- stderr ---\n{}", run.stderr);
    // Linux's own nvme driver bound the controller and mounted the root filesystem from it.
    for needle in [
        "PCI host bridge to bus 0000:00",
        "nvme nvme0: pci function 0000:00:01.0",
        "virtio_blk virtio0: [vda] 16384 512-byte logical blocks",
        "EXT4-fs (nvme0n1): mounted filesystem",
        "VFS: Mounted root (ext4 filesystem)",
        "FLINT-INIT-OK",
    ] {
        assert!(
            console.contains(needle),
            "missing {needle:?}\n{}",
            context()
        );
    }
    assert_line(
        console,
        "FLINT-NVME-MODEL ",
        "Amazon Elastic Block Store",
        &context,
    );
    assert_line(
        console,
        "FLINT-NVME-SERIAL ",
        "vol0abcdef0123456789",
        &context,
    );
    assert!(
        run.status.success(),
        "flint exited with {:?}\n{}",
        run.status,
        context()
    );

    // What the guest wrote and synced is in the image file, and the filesystem is clean.
    let disk_arg = disk.to_str().unwrap();
    let written = host_tool("debugfs", &["-R", "cat /flint-cmdline", disk_arg]);
    assert!(
        written.contains("flint.test=nvme-root-51c2"),
        "file on disk: {written:?}"
    );
    host_tool("e2fsck", &["-fn", disk_arg]);
}

/// The host end of the Linux I/O test, run inside the test's network namespace: takes the guest's
/// upload on port 5001 and serves `BYTES` random bytes on port 5002, printing the sha256 of both.
const TCP_PEER: &str = r#"
import hashlib, os, signal, socket, sys, threading
signal.alarm(int(sys.argv[2]))
data = os.urandom(int(sys.argv[1]))
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    return s
upload, download = listen(5001), listen(5002)
def take_upload():
    c, _ = upload.accept()
    h, total = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
        total += len(b)
    c.close()
    print("RECEIVED", total, h.hexdigest(), flush=True)
def serve_download():
    c, _ = download.accept()
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    while c.recv(1 << 16):
        pass
    c.close()
    print("SERVED", len(data), hashlib.sha256(data).hexdigest(), flush=True)
print("READY", flush=True)
threads = [threading.Thread(target=f) for f in (take_upload, serve_download)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// How many bytes the Linux I/O test moves each way: 100 MiB as the issue asks, except on a PVM host,
/// where guest system calls and interrupts run through KVM's emulator and TCP moves a few hundred
/// KiB per minute (docs/pvm.md). `FLINT_LINUX_IO_BYTES` overrides both.
fn linux_io_bytes() -> usize {
    if let Some(n) = std::env::var("FLINT_LINUX_IO_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n / 4096 * 4096;
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        println!(
            "PVM host: the Linux I/O test moves 256 KiB each way instead of 100 MiB \
             (guest TCP is too slow under KVM's instruction emulator); hardware KVM runs the full size"
        );
        256 << 10
    } else {
        100 << 20
    }
}

fn sha256_of_file_prefix(path: &std::path::Path, len: usize) -> String {
    host_tool(
        "python3",
        &[
            "-c",
            "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read(int(sys.argv[2]))).hexdigest())",
            path.to_str().unwrap(),
            &len.to_string(),
        ],
    )
    .trim()
    .to_string()
}

/// Linux's own virtio drivers under flint: virtio-net on a TAP in the test's network namespace (MAC,
/// queue count, ping, a TCP upload and download whose sha256 both ends check) and virtio-blk (a
/// write/read round trip on a writable disk whose contents the host checks afterwards, and a
/// read-only disk the guest cannot write).
#[test]
fn linux_drives_virtio_net_and_virtio_blk() {
    use common::netns::{net_available, NetNs};
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    if !kvm_available() || !net_available() {
        return;
    }
    let Some(out) = guest_images() else {
        return;
    };
    let bytes = linux_io_bytes();
    let ns = NetNs::new();
    let tap = "flio0";
    let mac = "02:46:8a:ce:01:23";
    let queues = 2;
    ns.ip_in(&[
        "tuntap",
        "add",
        "dev",
        tap,
        "mode",
        "tap",
        "vnet_hdr",
        "multi_queue",
    ]);
    ns.ip_in(&["addr", "add", "10.77.0.1/24", "dev", tap]);
    ns.ip_in(&["link", "set", tap, "up"]);
    let timeout = Duration::from_secs(12 * 60);
    let mut peer = ns
        .exec("python3")
        .args([
            "-c",
            TCP_PEER,
            &bytes.to_string(),
            &timeout.as_secs().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the TCP peer");
    let mut peer_lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(
        peer_lines.next().and_then(Result::ok).as_deref(),
        Some("READY"),
        "the TCP peer did not start"
    );
    let peer_output =
        std::thread::spawn(move || peer_lines.map_while(Result::ok).collect::<Vec<_>>());

    let read_only = scratch_path("linux-io-readonly.img");
    std::fs::write(&read_only, vec![0u8; 8 << 20]).expect("create the read-only disk");
    let writable_len = (bytes as u64 + (1 << 20)).next_multiple_of(1 << 20);
    let writable = scratch_disk("linux-io-writable.img", writable_len);

    let cmdline = linux_cmdline(
        &out,
        &format!("flint.io=10.77.0.2/24,10.77.0.1,{bytes},vdb"),
    );
    let kernel = out.join("vmlinux");
    let initrd = out.join("initramfs.cpio");
    let disk_ro = format!("path={},readonly=on", read_only.display());
    let disk_rw = format!("path={}", writable.display());
    let net = format!("tap={tap},mac={mac},queues={queues}");
    let started = std::time::Instant::now();
    let child = ns
        .exec(common::flint_bin())
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--disk",
            &disk_ro,
            "--disk",
            &disk_rw,
            "--net",
            &net,
            "--cmdline",
            &cmdline,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flint");
    let run = common::wait_with_timeout(child, timeout, started);
    println!(
        "Linux virtio I/O test ({bytes} bytes each way): launch to exit took {:.1} s",
        run.elapsed.as_secs_f64()
    );
    let _ = peer.kill();
    let _ = peer.wait();
    let peer_said = peer_output.join().unwrap_or_default();
    let console = &run.stdout;
    let context = || {
        format!(
            "--- console ---\n{console}\n--- stderr ---\n{}\n--- TCP peer ---\n{peer_said:?}",
            run.stderr
        )
    };
    assert!(console.contains("FLINT-IO-DONE"), "{}", context());
    let first_word = |key: &str| {
        line_value(console, key)
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_string)
    };

    // virtio-net: what Linux's driver made of the device, then real traffic both ways.
    assert_line(console, "FLINT-NET-MAC ", mac, &context);
    assert_line(
        console,
        "FLINT-NET-QUEUES ",
        queues.to_string().as_str(),
        &context,
    );
    assert_line(console, "FLINT-NET-PING ", "ok", &context);
    let guest_sha = first_word("FLINT-IO-SHA256 ").unwrap_or_else(|| panic!("{}", context()));
    assert_line(console, "FLINT-NET-SENT ", "ok", &context);
    let received = format!("RECEIVED {bytes} {guest_sha}");
    assert!(
        peer_said.contains(&received),
        "want {received:?}\n{}",
        context()
    );
    let served = peer_said
        .iter()
        .find_map(|l| l.strip_prefix(&format!("SERVED {bytes} ")))
        .unwrap_or_else(|| panic!("the peer served nothing\n{}", context()));
    assert_eq!(
        first_word("FLINT-NET-RECEIVED-SHA256 ").as_deref(),
        Some(served),
        "{}",
        context()
    );

    // virtio-blk: the round trip, the sizes, read-only honoured, and the bytes in the host file.
    assert_line(console, "FLINT-BLK-WRITTEN ", "ok", &context);
    assert_eq!(
        first_word("FLINT-BLK-READ-SHA256 ").as_deref(),
        Some(guest_sha.as_str()),
        "{}",
        context()
    );
    assert_line(console, "FLINT-BLK-VDA-SIZE ", "16384", &context);
    assert_line(
        console,
        "FLINT-BLK-VDB-SIZE ",
        (writable_len / 512).to_string().as_str(),
        &context,
    );
    assert_line(console, "FLINT-BLK-RO-REFUSED ", "ok", &context);
    assert!(
        run.status.success(),
        "flint exited with {:?}\n{}",
        run.status,
        context()
    );
    assert_eq!(
        sha256_of_file_prefix(&writable, bytes),
        guest_sha,
        "the writable disk's file"
    );
    let untouched = std::fs::read(&read_only).expect("read the read-only disk");
    assert!(
        untouched.iter().all(|&b| b == 0),
        "the read-only disk was written"
    );
    let _ = std::fs::remove_file(&writable);
    let _ = std::fs::remove_file(&read_only);
}
