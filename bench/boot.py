#!/usr/bin/env python3
"""Boot benchmark of issue 2: flint vs. QEMU -M microvm booting the boot probe guest.

Per VMM and configuration (vCPUs, memory) it measures, over N interleaved runs (A B A B ...,
after one uncounted warm-up run of each VMM):

  first line   launch -> the first byte of the guest's `PROBE-START` line arriving on the
               VMM's stdout (a pipe; timestamp taken when read() returns the chunk holding it)
  exit         launch -> process exit (pidfd becomes readable), with the probe's exit mode
               (`exit=poweroff`, ACPI S5, by default: flint and QEMU microvm both support it)
  overhead     VMM memory overhead while the probe idles (`exit=hang`, sampled a settle delay
               after `PROBE-DONE`): RSS of every mapping in /proc/PID/smaps except the guest-RAM
               mapping(s), i.e. the anonymous mapping(s) whose size is exactly the guest RAM size
               (or, if RAM is split, the largest anonymous mappings that add up to it)
  total RSS    sum of Rss over all mappings (= VmRSS), same sample

"launch" is monotonic_ns() immediately before posix_spawn(). Timing and memory runs are separate
processes (a run cannot both exit and idle). Output: a markdown table (median, min-max, flint/QEMU
ratio of medians) on stdout, progress on stderr; --json writes every sample.

Python 3.9+ standard library only (os.posix_spawn, os.pidfd_open). Linux only.
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PVM_CPU = ("host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,"
           "arch-capabilities=off")
MAPPING_RE = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def parse_size(text):
    """512M, 4G, 144G, or a bare number of MiB -> bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    mult = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * mult


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Vmm:
    def __init__(self, name, argv_fn, is_qemu=False):
        self.name = name
        self.is_qemu = is_qemu
        self.argv_fn = argv_fn  # (cpus, mem_str, cmdline) -> argv
        self.refused = None     # reason this VMM could not run a configuration


def flint_argv(flint, kernel, extra):
    def fn(cpus, mem, cmdline):
        return [flint, "run", "--kernel", kernel, "--cpus", str(cpus), "--memory", mem,
                "--cmdline", cmdline] + extra
    return fn


def qemu_argv(qemu, kernel, cpu, reserve_off):
    def fn(cpus, mem, cmdline):
        machine = "microvm,acpi=on"
        backend = []
        if reserve_off:
            machine += ",memory-backend=mem"
            backend = ["-object", f"memory-backend-ram,id=mem,size={mem},reserve=off"]
        return [qemu, "-enable-kvm", "-M", machine] + backend + [
            "-cpu", cpu, "-m", mem, "-smp", str(cpus), "-nographic", "-no-reboot",
            "-kernel", kernel, "-append", cmdline]
    return fn


def spawn(argv, stderr_fd):
    """posix_spawn argv with stdin=/dev/null, stdout=pipe, stderr=stderr_fd. Returns
    (t_launch_ns, pid, pidfd, read_fd)."""
    rfd, wfd = os.pipe()  # both O_CLOEXEC; dup2 onto 1 clears it for the child's copy
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, wfd, 1),
               (os.POSIX_SPAWN_DUP2, stderr_fd, 2)]
    t0 = time.monotonic_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    pidfd = os.pidfd_open(pid)
    os.close(wfd)
    os.close(devnull)
    return t0, pid, pidfd, rfd


class Run:
    """One VMM process: reads its stdout, timestamps chunks, notices its exit."""

    def __init__(self, argv):
        self.argv = argv
        self.err = tempfile.TemporaryFile()
        self.t0, self.pid, self.pidfd, self.rfd = spawn(argv, self.err.fileno())
        self.buf = bytearray()
        self.chunks = []        # (offset of first byte, monotonic ns after read returned)
        self.t_exit = None
        self.status = None
        self.eof = False
        self.poll = select.poll()
        self.poll.register(self.rfd, select.POLLIN)
        self.poll.register(self.pidfd, select.POLLIN)

    def step(self, timeout_ms):
        for fd, _ in self.poll.poll(timeout_ms):
            if fd == self.rfd:
                data = os.read(self.rfd, 1 << 16)
                t = time.monotonic_ns()
                if data:
                    self.chunks.append((len(self.buf), t))
                    self.buf += data
                else:
                    self.eof = True
                    self.poll.unregister(self.rfd)
            elif fd == self.pidfd and self.t_exit is None:
                self.t_exit = time.monotonic_ns()
                self.poll.unregister(self.pidfd)
                _, self.status = os.waitpid(self.pid, 0)

    def time_of_byte(self, offset):
        t = None
        for start, ts in self.chunks:
            if start > offset:
                break
            t = ts
        return t

    def first_line_ns(self):
        i = self.buf.find(b"PROBE-START")
        return None if i < 0 else self.time_of_byte(i) - self.t0

    def wait_until(self, pred, deadline):
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.t_exit is not None and self.eof:
                return pred()
            self.step(int(left * 1000) + 1)
        return True

    def kill(self, sig=signal.SIGKILL):
        if self.t_exit is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def close(self):
        self.kill()
        deadline = time.monotonic() + 10
        self.wait_until(lambda: self.t_exit is not None and self.eof, deadline)
        os.close(self.rfd)
        os.close(self.pidfd)

    def stderr_text(self):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def done_line(self):
        m = re.search(rb"PROBE-DONE pass=(\d+) fail=(\d+)", self.buf)
        return (int(m.group(1)), int(m.group(2))) if m else None


def smaps(pid):
    """[{size, rss, pss (KiB), path, perms}] for every mapping."""
    out, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if MAPPING_RE.match(line):
                parts = line.split(None, 5)
                cur = {"perms": parts[1], "path": parts[5].strip() if len(parts) > 5 else ""}
            elif line.startswith("Size:"):
                cur["size"] = int(line.split()[1])
            elif line.startswith("Rss:"):
                cur["rss"] = int(line.split()[1])
                out.append(cur)
            elif line.startswith("Pss:"):
                cur["pss"] = int(line.split()[1])
    return out


def guest_ram_mappings(maps, ram_kib):
    """Indices of the guest-RAM mapping(s): anonymous mappings of exactly the RAM size; else the
    largest anonymous mappings (>= 64 MiB each) whose sizes add up to it."""
    anon = [i for i, m in enumerate(maps) if m["path"] == "" or m["path"].startswith("[anon")]
    exact = [i for i in anon if maps[i]["size"] == ram_kib]
    if exact:
        return exact[:1]
    big = sorted((i for i in anon if maps[i]["size"] >= 64 << 10), key=lambda i: -maps[i]["size"])
    chosen, total = [], 0
    for i in big:
        if total + maps[i]["size"] <= ram_kib:
            chosen.append(i)
            total += maps[i]["size"]
        if total == ram_kib:
            return chosen
    return None


def timing_run(vmm, cfg, args):
    argv = vmm.argv_fn(cfg["cpus"], cfg["mem"], f"exit={args.exit_mode} {args.cmdline}".strip())
    r = Run(argv)
    ok = r.wait_until(lambda: r.t_exit is not None and r.eof, time.monotonic() + args.timeout)
    r.close()
    first = r.first_line_ns()
    if not ok or first is None or r.status != 0 or r.done_line() is None:
        return None, (f"timeout={not ok} status={r.status} first_line={first} "
                      f"done={r.done_line()} stderr={r.stderr_text().strip()[-400:]!r}")
    res = {"first_line_ms": first / 1e6, "exit_ms": (r.t_exit - r.t0) / 1e6,
           "probe_done": r.done_line()}
    # flint --log-level info: its own view of the start-up (see --flint-log)
    err = r.stderr_text()
    m = re.search(r"VMM start-up: ([\d.]+) ms from process start to first KVM_RUN", err)
    if m:
        res["own_startup_ms"] = float(m.group(1))
    m = re.search(r"guest boot marker: ([\d.]+) ms after VMM start", err)
    if m:
        res["own_marker_ms"] = float(m.group(1))
    return res, None


def memory_run(vmm, cfg, args):
    argv = vmm.argv_fn(cfg["cpus"], cfg["mem"], f"exit=hang {args.cmdline}".strip())
    r = Run(argv)
    try:
        ok = r.wait_until(lambda: b"PROBE-DONE" in r.buf, time.monotonic() + args.timeout)
        if not ok or r.t_exit is not None:
            return None, f"no PROBE-DONE (exited={r.status}) stderr={r.stderr_text().strip()[-400:]!r}"
        r.wait_until(lambda: False, time.monotonic() + args.settle)  # keep draining stdout
        maps = smaps(r.pid)
        ram = guest_ram_mappings(maps, cfg["ram_bytes"] >> 10)
        if ram is None:
            return None, "could not identify the guest-RAM mapping in smaps"
        total = sum(m["rss"] for m in maps)
        ram_rss = sum(maps[i]["rss"] for i in ram)
        with open(f"/proc/{r.pid}/status") as f:
            threads = int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))
        anon_rss = sum(m["rss"] for i, m in enumerate(maps) if i not in ram
                       and (m["path"] == "" or m["path"].startswith("[")))
        pss = sum(m.get("pss", 0) for i, m in enumerate(maps) if i not in ram)
        return {"total_rss_mib": total / 1024, "overhead_mib": (total - ram_rss) / 1024,
                "overhead_pss_mib": pss / 1024,
                "guest_ram_rss_mib": ram_rss / 1024, "anon_overhead_mib": anon_rss / 1024,
                "file_rss_mib": (total - ram_rss - anon_rss) / 1024, "threads": threads,
                "ram_mappings": len(ram)}, None
    finally:
        r.kill(signal.SIGTERM)
        if not r.wait_until(lambda: r.t_exit is not None, time.monotonic() + 5):
            r.kill(signal.SIGKILL)
        r.close()


METRICS = [("first_line_ms", "launch → first serial line", "ms", 1),
           ("exit_ms", "launch → exit", "ms", 1),
           ("overhead_mib", "VMM memory overhead (RSS − guest RAM)", "MiB", 2),
           ("total_rss_mib", "total RSS (idle)", "MiB", 2)]
EXTRA = [("anon_overhead_mib", "  of which anonymous (heap, stacks, ...)", "MiB", 2),
         ("file_rss_mib", "  of which file-backed (binary, libraries)", "MiB", 2),
         ("overhead_pss_mib", "overhead as PSS (shared pages divided among their users)", "MiB", 2),
         ("own_startup_ms", "flint's log: main() → first KVM_RUN", "ms", 1),
         ("own_marker_ms", "flint's log: main() → boot marker (after the first line)", "ms", 1),
         ("guest_ram_rss_mib", "guest RAM touched (excluded)", "MiB", 2),
         ("threads", "threads (idle)", "", 0)]


def fmt(v, nd):
    return f"{v:.{nd}f}"


def table(cfg, vmms, samples, runs):
    live = [v for v in vmms if not v.refused]
    names = [v.name for v in live]
    qemu = next((v.name for v in live if v.is_qemu), None)
    ratio_of = [v.name for v in live if not v.is_qemu] if qemu else []
    lines = [f"**{cfg['cpus']} vCPUs, {cfg['mem']}** ({runs} runs each; median [min–max])", "",
             "| metric | " + " | ".join(names) + " |"
             + "".join(f" {n} / QEMU |" for n in ratio_of),
             "|---|" + "---|" * (len(names) + len(ratio_of))]
    for key, label, unit, nd in METRICS + EXTRA:
        row, meds = [], {}
        for n in names:
            vals = [s[key] for s in samples[n] if key in s]
            if not vals:
                row.append("—")
                continue
            med = statistics.median(vals)
            meds[n] = med
            u = f" {unit}" if unit else ""
            n_note = "" if len(vals) == runs else f" (n={len(vals)})"
            row.append(f"{fmt(med, nd)}{u} [{fmt(min(vals), nd)}–{fmt(max(vals), nd)}]{n_note}")
        if not meds:
            continue
        ratios = "".join(f" {meds[n] / meds[qemu]:.3f} |" if n in meds and meds.get(qemu)
                         and (key, label, unit, nd) in METRICS else " |" for n in ratio_of)
        lines.append(f"| {label} | " + " | ".join(row) + " |" + ratios)
    for v in vmms:
        if v.refused:
            lines.append("")
            lines.append(f"{v.name}: refused this configuration: {v.refused}")
    return "\n".join(lines)


def machine_info(args):
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return "?"
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    repo = os.path.dirname(os.path.abspath(args.flint))
    commit = sh(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"])
    dirty = sh(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "kvm_pvm": os.path.exists("/sys/module/kvm_pvm"),
            "qemu": sh([args.qemu, "--version"]).splitlines()[0] if args.qemu else None,
            "flint_commit": commit + (" (dirty tree)" if dirty else ""),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_start": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flint", default="target/release/flint")
    ap.add_argument("--kernel", required=True, help="boot.elf of the probe guests")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"),
                    help="QEMU binary ('' to skip QEMU)")
    ap.add_argument("--qemu-cpu", default=PVM_CPU if os.path.exists("/sys/module/kvm_pvm") else "host")
    ap.add_argument("--qemu-reserve-off-fallback", action="store_true",
                    help="when QEMU refuses a configuration (e.g. -m 144G on a smaller host), run it "
                         "with a memory-backend-ram reserve=off (MAP_NORESERVE) backend instead")
    ap.add_argument("--extra-flint", action="append", default=[], metavar="NAME=PATH",
                    help="also run another flint binary (e.g. an experimental build); repeatable")
    ap.add_argument("--config", action="append", default=[], metavar="CPUS:MEM",
                    help="e.g. 2:512M (default), 72:144G; repeatable")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--exit-mode", default="poweroff", choices=["poweroff", "acpi-reset", "reset"])
    ap.add_argument("--cmdline", default="", help="extra probe command line (exit= is added)")
    ap.add_argument("--settle", type=float, default=0.3, help="s after PROBE-DONE before sampling smaps")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-memory", action="store_true", help="timing runs only")
    ap.add_argument("--flint-log", action="store_true",
                    help="run flint with --log-level info and also report its own start-up log lines "
                         "(main() -> first KVM_RUN, main() -> boot marker)")
    ap.add_argument("--json", help="write all samples here")
    args = ap.parse_args()

    args.flint = os.path.abspath(args.flint)
    args.kernel = os.path.abspath(args.kernel)
    configs = []
    for c in args.config or ["2:512M"]:
        cpus, mem = c.split(":")
        configs.append({"cpus": int(cpus), "mem": mem, "ram_bytes": parse_size(mem)})

    info = machine_info(args)
    log(f"machine: {info}")
    out = {"machine": info, "args": vars(args), "results": []}
    md = []
    for cfg in configs:
        flint_extra = ["--log-level", "info"] if args.flint_log else []
        vmms = [Vmm("flint", flint_argv(args.flint, args.kernel, flint_extra))]
        for spec in args.extra_flint:
            name, path = spec.split("=", 1)
            vmms.append(Vmm(name, flint_argv(os.path.abspath(path), args.kernel, flint_extra)))
        if args.qemu:
            vmms.append(Vmm("QEMU microvm", qemu_argv(args.qemu, args.kernel, args.qemu_cpu, False),
                            is_qemu=True))
        # Warm-up: one timing run per VMM, not counted; a VMM that fails it is dropped.
        for _ in range(args.warmup):
            for v in list(vmms):
                if v.refused:
                    continue
                res, err = timing_run(v, cfg, args)
                if res is None:
                    v.refused = err
                    log(f"[{cfg['cpus']}:{cfg['mem']}] {v.name}: warm-up failed, dropped: {err}")
                    if v.is_qemu and args.qemu_reserve_off_fallback and "reserve" not in v.name:
                        alt = Vmm("QEMU microvm reserve=off",
                                  qemu_argv(args.qemu, args.kernel, args.qemu_cpu, True), is_qemu=True)
                        res, err = timing_run(alt, cfg, args)
                        if res is None:
                            alt.refused = err
                        vmms.append(alt)
        samples = {v.name: [] for v in vmms}
        cmd_examples = {v.name: v.argv_fn(cfg["cpus"], cfg["mem"],
                                          f"exit={args.exit_mode} {args.cmdline}".strip())
                        for v in vmms}
        live = [v for v in vmms if not v.refused]
        for i in range(args.runs):
            for phase in ("timing", "memory"):
                if phase == "memory" and args.no_memory:
                    continue
                for v in live:  # interleaved: A B A B ...
                    fn = timing_run if phase == "timing" else memory_run
                    res, err = fn(v, cfg, args)
                    if res is None:
                        log(f"[{cfg['cpus']}:{cfg['mem']}] {v.name} run {i} {phase} FAILED: {err}")
                        continue
                    samples[v.name].append(res)  # one dict per run; timing and memory keys differ
                    if phase == "timing":
                        log(f"[{cfg['cpus']}:{cfg['mem']}] {v.name:>12} run {i}: first line "
                            f"{res['first_line_ms']:7.2f} ms, exit {res['exit_ms']:8.2f} ms")
                    else:
                        log(f"[{cfg['cpus']}:{cfg['mem']}] {v.name:>12} run {i}: overhead "
                            f"{res['overhead_mib']:.2f} MiB, total RSS {res['total_rss_mib']:.2f} MiB")
        md.append(table(cfg, vmms, samples, args.runs))
        out["results"].append({"config": cfg, "commands": cmd_examples, "samples": samples,
                               "refused": {v.name: v.refused for v in vmms if v.refused}})
    info["loadavg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"machine: nproc {info['nproc']}, {info['cpu_model']}, kernel {info['kernel']}, "
          f"kvm_pvm {'yes' if info['kvm_pvm'] else 'no'}; {info['qemu'] or 'QEMU not run'}; flint {info['flint_commit']}; "
          f"{info['date']}; load average start {info['loadavg_start'][0]:.2f} / "
          f"end {info['loadavg_end'][0]:.2f} (1 min); exit mode exit={args.exit_mode}\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
