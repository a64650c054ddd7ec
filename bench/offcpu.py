#!/usr/bin/env python3
"""Where a command's threads wait: off-CPU time by kernel call site, from perf sched_switch events.

Runs COMMAND --runs times (stdin /dev/null, output discarded) while `perf record -a -e
sched:sched_switch -e sched:sched_process_fork -g` runs (system-wide, so that the switch back onto a
thread is seen too; only the threads of the processes started here count, found through their pids
and fork events), pairs every switch-out of one of the command's threads with
the next switch-in of the same thread, and sums the time off the CPU per call site (the first three
kernel frames below the scheduler and the wait primitives). A switch-out in state R is counted as
"preempted" (the thread was runnable: CPU contention, not a wait). Prints ms per run, the number of
waits, median and max, largest first.

Caveat, seen on the kvm_pvm host: perf sometimes drops a burst of sched_switch/sched_wakeup events
(a thread appears to switch out twice in a row). A switch-out whose switch-in is missing is not
counted, so "ms / run" is a lower bound; compare "waits seen" with the number of runs. The medians
and the call sites are exact for the waits that are seen. For exact ioctl durations use
`perf trace -e ioctl` or bench/kvm_setup_cost.py.

Needs root (or perf_event_paranoid <= -1) and perf. Example, flint's start-up and exit:

    python3 bench/offcpu.py --runs 10 -- target/release/flint run --kernel boot.elf \\
        --cpus 2 --memory 512M --cmdline exit=poweroff
"""

import argparse
import collections
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

WAIT_FRAMES = {
    "__schedule", "schedule", "schedule_timeout", "wait_for_completion", "__wait_for_common",
    "wait_for_completion_killable", "__synchronize_srcu.part.0", "__synchronize_srcu",
    "synchronize_srcu", "synchronize_srcu_expedited", "io_schedule", "schedule_hrtimeout_range_clock",
    "do_nanosleep", "hrtimer_nanosleep", "exit_to_user_mode_loop", "do_syscall_64",
    "entry_SYSCALL_64_after_hwframe", "__cond_resched", "preempt_schedule_common",
}
FORK = re.compile(r"sched:sched_process_fork: comm=(.*?) pid=(\d+) child_comm=(.*?) child_pid=(\d+)")
SWITCH = re.compile(r"\s(\d+\.\d+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) "
                    r"prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--comm", action="append", default=None,
                    help="thread name prefixes to account, among the command's own processes "
                         "(default: the command's basename and vcpu)")
    ap.add_argument("--min-ms", type=float, default=0.05, help="hide call sites below this per run")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")
    comms = tuple(args.comm or [os.path.basename(cmd[0])[:15], "vcpu"])
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-m", "1024", "-e", "sched:sched_switch",
                                 "-e", "sched:sched_process_fork", "-o", data],
                                stdout=subprocess.DEVNULL)
        ours = set()
        try:
            time.sleep(2.0)  # perf -a -g takes a while to enable its events everywhere
            with open(os.devnull, "w") as null:
                for i in range(args.runs + 1):  # the first run is a warm-up, not counted
                    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=null, stderr=null)
                    if i:
                        ours.add(p.pid)
                    p.wait()
            time.sleep(0.2)
        finally:
            perf.send_signal(signal.SIGINT)  # perf writes its file and exits
            perf.wait()
        text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,time,event,trace,ip,sym"],
                              check=True, capture_output=True, text=True).stdout
    # Only the threads of the processes started here (other tenants may run the same VMM): the
    # main threads' pids are known, their threads come from fork events.
    events, cur = [], None
    for line in text.splitlines():
        f = FORK.search(line)
        if f:
            if int(f.group(2)) in ours:
                ours.add(int(f.group(4)))
            cur = None
            continue
        m = SWITCH.search(line)
        if m:
            cur = {"t": float(m.group(1)), "pcomm": m.group(2), "ppid": int(m.group(3)),
                   "state": m.group(4), "npid": int(m.group(6)), "stack": []}
            events.append(cur)
        elif cur is not None and line.strip():
            parts = line.split()
            if len(parts) >= 2:
                cur["stack"].append(parts[1].split("+")[0])
    pending, agg = {}, collections.defaultdict(list)
    for e in events:
        if e["npid"] in pending:
            t0, key = pending.pop(e["npid"])
            agg[key].append((e["t"] - t0) * 1e3)
        if e["ppid"] in ours and e["pcomm"].startswith(comms):
            frames = [f for f in e["stack"] if f not in WAIT_FRAMES and not f.startswith("[")]
            site = " <- ".join(frames[:3])
            thread = re.sub(r"\d+$", "N", e["pcomm"]) if e["pcomm"].startswith("vcpu") else e["pcomm"]
            key = (thread, f"preempted in {' <- '.join(frames[:2])}" if e["state"].startswith("R")
                           else site)
            pending[e["ppid"]] = (e["t"], key)
    print(f"off-CPU time of {shlex.join(cmd)} ({args.runs} runs), per run, largest first; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| thread | ms / run (seen) | waits seen | median ms | max ms | where (kernel) |")
    print("|---|---|---|---|---|---|")
    for (thread, site), vals in sorted(agg.items(), key=lambda kv: -sum(kv[1])):
        per_run = sum(vals) / args.runs
        if per_run < args.min_ms:
            continue
        print(f"| {thread} | {per_run:.2f} | {len(vals)} | {statistics.median(vals):.2f} | "
              f"{max(vals):.2f} | {site[:140]} |")


if __name__ == "__main__":
    sys.exit(main())
