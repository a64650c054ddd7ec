#!/usr/bin/env python3
"""virtio-blk benchmark (issue 4): the virtio-blk probe's bench=1 mode against flint and QEMU's
virtio-blk-pci, same probe, same cached disk file, interleaved runs; medians, ratios, and the VMM's
own CPU time per request.

Phases (tests/guests/virtio_blk.c, bench_main): 1 MiB sequential reads and writes at queue depth 1
over the whole file, 4 KiB random reads at queue depth 1 and 32; each timed by the guest's TSC.

CPU time: while a phase runs, the script samples /proc/<pid>/task/<tid>/stat of the VMM's threads; a
phase's CPU time is the difference between the samples taken when the probe prints the previous
phase's result line and its own (the device is idle in between: the probe only prints). For flint
it is the `virtio-blk` worker thread (std::thread::Builder name, /proc comm); for QEMU, which has no
such thread, every thread but the vCPUs (comm `CPU n/KVM`): the main loop that takes the ioeventfd,
and the thread-pool workers that do the I/O with aio=threads (the process's total minus its vCPU
threads, so workers that exit are counted too).

    cargo build --release && python3 bench/virtio_blk.py --runs 5
    python3 bench/virtio_blk.py --runs 3 --extra-flint before=/tmp/flint-before   # compare builds
"""
import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
QEMU_CPU = ("host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,"
            "arch-capabilities=off")
PHASES = ["seqread", "seqwrite", "randread_qd1", "randread_qd32"]
# What other VMMs reached here with a probe guest (virtio-blk QD1 1 MiB requests on a cached 1 GiB
# file, /work/shared/notes/pvm-host.md), in MB/s.
PEERS = {"seqread": {"vmm-reference": 5100, "Cloud Hypervisor": 3000},
         "seqwrite": {"vmm-reference": 4600, "Cloud Hypervisor": 3400}}


def thread_cpu(pid, tid):
    """Time one thread has run on a CPU, in seconds (schedstat: nanoseconds, not clock ticks;
    None once the thread is gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def threads(pid):
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    out[tid] = f.read().strip()
            except OSError:
                pass
    except OSError:
        pass
    return out


class IoCpu:
    """The VMM's I/O CPU time so far (see the module docs). Threads are remembered once seen, so a
    QEMU worker that exits between two samples keeps the time it had at the last one."""

    def __init__(self, pid, kind):
        self.pid, self.kind, self.seen = pid, kind, {}

    def __call__(self):
        for tid, name in threads(self.pid).items():
            io = name == "virtio-blk" if self.kind == "flint" else not re.match(r"CPU \d+/KVM", name)
            if io:
                t = thread_cpu(self.pid, tid)
                if t is not None:
                    self.seen[tid] = t
        return sum(self.seen.values())


def run_vmm(kind, cmd, timeout):
    """Runs one VMM; returns {phase: dict of the probe's fields plus cpu_s}."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    results = {}
    io_cpu = IoCpu(proc.pid, kind)
    last = None
    try:
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("PROBE bench_driver_ok"):
                last = io_cpu()
            m = re.match(r"PROBE-INFO bench_(\w+)=(.*)", line)
            if m and m.group(1) in PHASES:
                now = io_cpu()
                fields = dict(f.split("=", 1) for f in m.group(2).split() if "=" in f)
                fields["cpu_s"] = (now - last) if last is not None else None
                results[m.group(1)] = fields
                last = now
    finally:
        timer.cancel()
        proc.wait()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flint", default=os.path.join(ROOT, "target/release/flint"))
    ap.add_argument("--extra-flint", action="append", default=[], metavar="NAME=PATH",
                    help="another flint build in the same interleaved runs")
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="'' to skip QEMU")
    ap.add_argument("--seq-ops", type=int, default=2048, help="1 MiB requests per sequential phase")
    ap.add_argument("--ops", type=int, default=10000, help="4 KiB requests per random phase")
    ap.add_argument("--disk-mib", type=int, default=1024)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="flint-vblk-bench-")
    try:
        guests = os.path.join(work, "guests")
        subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "tests/guests"), f"OUT={guests}"],
                       check=True, stdout=subprocess.DEVNULL)
        elf = os.path.join(guests, "virtio_blk.elf")
        disk = os.path.join(work, "disk.img")
        # Written out (no holes: reading a hole costs less than copying cached data), then cached.
        chunk = bytes(range(256)) * 4096
        with open(disk, "wb") as f:
            for _ in range(args.disk_mib):
                f.write(chunk)
        with open(disk, "rb") as f:
            while f.read(1 << 24):
                pass
        # The guest idles 300 ms after each phase's line, so this script samples the CPU time
        # between phases even when the host is busy and it reads the line late.
        cmdline = f"bench=1 bench_seq_ops={args.seq_ops} bench_ops={args.ops} bench_gap_ms=300 exit=reset"
        vmms = [("flint", "flint", [args.flint])]
        for extra in args.extra_flint:
            name, _, path = extra.partition("=")
            vmms.append((name, "flint", [path]))
        if args.qemu:
            vmms.append(("qemu", "qemu", [args.qemu]))

        def command(kind, exe):
            if kind == "flint":
                return [exe[0], "run", "--kernel", elf, "--cpus", "1", "--memory", "256M",
                        "--disk", f"path={disk}", "--cmdline", cmdline]
            return [exe[0], "-enable-kvm", "-M", "q35", "-cpu", QEMU_CPU, "-m", "256M",
                    "-smp", "1", "-nographic", "-no-reboot", "-kernel", elf, "-append", cmdline,
                    "-drive", f"file={disk},if=none,id=d0,format=raw,cache=writeback",
                    "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]

        print(f"load before: {os.getloadavg()}", flush=True)
        samples = collections.defaultdict(list)  # (vmm, phase) -> [fields]
        for run in range(1, args.runs + 1):
            for name, kind, exe in vmms:
                res = run_vmm(kind, command(kind, exe), 600)
                for phase in PHASES:
                    if phase in res:
                        samples[(name, phase)].append(res[phase])
                print(f"run {run} {name}: " + "  ".join(
                    f"{p} {res[p].get('mbps' if p.startswith('seq') else 'iops')}"
                    + (f" ({float(res[p]['cpu_s']) * 1e6 / int(res[p]['ops']):.1f} us/req)"
                       if res[p].get("cpu_s") is not None else "")
                    for p in PHASES if p in res), flush=True)

        def med(name, phase, key):
            vals = [float(s[key]) for s in samples.get((name, phase), []) if s.get(key) is not None]
            return statistics.median(vals) if vals else None

        def cpu_per_req(name, phase):
            vals = [float(s["cpu_s"]) * 1e6 / int(s["ops"]) for s in samples.get((name, phase), [])
                    if s.get("cpu_s") is not None and int(s["ops"])]
            return statistics.median(vals) if vals else None

        names = [n for n, _, _ in vmms]
        head = ["workload"] + [f"{n}" for n in names] + [f"flint / {n}" for n in names[1:]] + \
            ["best peer", "flint / peer"] + [f"{n} CPU µs/req" for n in names]
        print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        labels = {"seqread": "1 MiB seq read QD1 (MB/s)", "seqwrite": "1 MiB seq write QD1 (MB/s)",
                  "randread_qd1": "4 KiB rand read QD1 (IOPS)", "randread_qd32": "4 KiB rand read QD32 (IOPS)"}
        for phase in PHASES:
            key = "mbps" if phase.startswith("seq") else "iops"
            vals = [med(n, phase, key) for n in names]
            row = [labels[phase]] + [f"{v:.0f}" if v else "-" for v in vals]
            row += [f"{vals[0] / v:.2f}" if vals[0] and v else "-" for v in vals[1:]]
            peers = PEERS.get(phase)
            if peers:
                peer, best = max(peers.items(), key=lambda kv: kv[1])
                row += [f"{best} ({peer})", f"{vals[0] / best:.2f}" if vals[0] else "-"]
            else:
                row += ["-", "-"]
            row += [f"{c:.1f}" if c is not None else "-" for c in (cpu_per_req(n, phase) for n in names)]
            print("| " + " | ".join(row) + " |")
        # The host's own limit: 1 MiB preadv/pwritev on the same cached file, one thread, into one
        # reused buffer (what a VMM's I/O thread does at best).
        fd = os.open(disk, os.O_RDWR)
        buf = memoryview(bytearray(1 << 20))
        size = os.fstat(fd).st_size
        rates = {}
        for what, call in (("read", os.preadv), ("write", os.pwritev)):
            t = time.perf_counter()
            done = sum(call(fd, [buf], off) for off in range(0, size, 1 << 20))
            rates[what] = done / (time.perf_counter() - t) / 1e6
        os.close(fd)
        print(f"\nhost, same file, 1 MiB at a time, one thread: read {rates['read']:.0f} MB/s, "
              f"write {rates['write']:.0f} MB/s; load after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
