#!/usr/bin/env bash
# virtio-net benchmark (issue 4): the virtio-net probe guest's bench=tx and bench=rx modes against
# flint's virtio-net and QEMU's virtio-net-pci (q35, TAP backend without vhost), same probe, same
# run, RUNS runs each, interleaved. Guest → host: the probe sends frames of 1,514 and 65,000 bytes
# (8 in flight) to a TAP nobody reads. Host → guest: a Python AF_PACKET sender floods the TAP with
# 1,514- or 60,000-byte frames (as fast as it can, one thread) and the probe counts what arrives
# in sixteen 64 KiB buffers. Each measurement is SECONDS long, timed by the guest's TSC. Everything
# runs in a network namespace of its own (deleted at the end); flint gets --net-bandwidth 1000000 so
# its instance cap (c5.large: 10 Gbit/s maximum) stays out of the way. Needs root, ip, python3 and
# Debian's qemu-system-x86.
#   bench/virtio_net.sh [RUNS] [SECONDS]        (after cargo build --release)
# WORKLOADS="rx1514 tx65000" limits the run to those rows (default: all four); FLINT_BEFORE=/path/to/flint
# adds another flint build (e.g. main's) to every round, as "before".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-3}
seconds=${2:-3}
work=$(mktemp -d)
ns=flint-bench-net-$$
cleanup() {
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
make -s -C tests/guests OUT="$work/guests" >/dev/null
ip netns add "$ns"
ip -n "$ns" tuntap add dev fb0 mode tap vnet_hdr
ip -n "$ns" link set fb0 mtu 65000 up
cat >"$work/sender.py" <<'PY'
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind((sys.argv[1], 0))
f = bytes([2, 0x12, 0x34, 0x56, 0x78, 0x9a, 2, 0, 0, 0, 0, 0xfe]) + b"\x88\xb5" + bytes(int(sys.argv[2]) - 14)
while True:
    try:
        s.send(f)
    except OSError:
        pass
PY
cpu=host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,arch-capabilities=off
mac=02:12:34:56:78:9a
# One measurement: VMM, direction, frame size.
measure() {
	local vmm=$1 dir=$2 size=$3 sender= cmdline
	cmdline="bench=$dir bench_seconds=$seconds bench_slice_ms=1000 exit=poweroff"
	if [ "$dir" = tx ]; then
		cmdline="$cmdline bench_frame=$size bench_chains=8"
	else
		ip netns exec "$ns" python3 "$work/sender.py" fb0 "$size" &
		sender=$!
	fi
	if [ "$vmm" != qemu ]; then
		local binary=target/release/flint
		[ "$vmm" = before ] && binary=$FLINT_BEFORE
		ip netns exec "$ns" timeout 120 "$binary" run --kernel "$work/guests/virtio_net.elf" \
			--cpus 1 --memory 256M --net "tap=fb0,mac=$mac,queues=1" --net-bandwidth 1000000 \
			--cmdline "$cmdline" </dev/null 2>/dev/null
	else
		ip netns exec "$ns" timeout 120 qemu-system-x86_64 -enable-kvm -M q35 -cpu "$cpu" -m 256M -smp 1 \
			-nographic -no-reboot -kernel "$work/guests/virtio_net.elf" -append "$cmdline" \
			-netdev tap,id=n0,ifname=fb0,script=no,downscript=no,vnet_hdr=on,vhost=off \
			-device "virtio-net-pci,netdev=n0,mac=$mac,disable-legacy=on" </dev/null 2>/dev/null
	fi | grep -E "^PROBE-INFO bench_(tx|rx)=" | sed "s/^PROBE-INFO /$vmm $dir$size /" || true
	if [ -n "$sender" ]; then
		kill "$sender"
		wait "$sender" 2>/dev/null || true
	fi
}
for i in $(seq "$runs"); do
	for w in ${WORKLOADS:-tx1514 tx65000 rx1514 rx60000}; do
		for vmm in flint qemu ${FLINT_BEFORE:+before}; do
			measure "$vmm" "${w:0:2}" "${w:2}"
		done
	done
done >"$work/results.txt"
cat "$work/results.txt"
python3 - "$work/results.txt" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    vmm, workload, rest = line.split(" ", 2)
    kv = dict(f.split("=", 1) for f in rest.partition("=")[2].split() if "=" in f)
    us = int(kv["us"])
    rows[(workload, vmm)].append((int(kv["frames"]) * 1e6 / us, int(kv["bytes"]) * 8e6 / us / 1e9))
before = any(v == "before" for _, v in rows)
print("\n| workload | flint frames/s | QEMU frames/s | flint Gbit/s | QEMU Gbit/s | flint / QEMU |"
      + (" before frames/s | flint / before |" if before else ""))
print("|---|---|---|---|---|---|" + ("---|---|" if before else ""))
for workload in ["tx1514", "tx65000", "rx1514", "rx60000"]:
    if not any(w == workload for w, _ in rows):
        continue
    f, q = rows.get((workload, "flint"), []), rows.get((workload, "qemu"), [])
    med = lambda r, i: statistics.median(x[i] for x in r) if r else float("nan")
    what = ("guest → host " if workload.startswith("tx") else "host → guest ") + workload[2:] + " B"
    ratio = med(f, 0) / med(q, 0) if f and q else float("nan")
    line = f"| {what} | {med(f, 0):,.0f} | {med(q, 0):,.0f} | {med(f, 1):.2f} | {med(q, 1):.2f} | {ratio:.2f} |"
    if before:
        b = rows.get((workload, "before"), [])
        line += f" {med(b, 0):,.0f} | {med(f, 0) / med(b, 0) if b else float('nan'):.2f} |"
    print(line)
    for vmm, r in (("flint", f), ("QEMU", q)) + ((("before", rows.get((workload, "before"), [])),) if before else ()):
        print(f"  {what} {vmm}: {min(x[0] for x in r):,.0f}–{max(x[0] for x in r):,.0f} frames/s over {len(r)} runs" if r else "")
PY
