#!/usr/bin/env bash
# NVMe benchmark (issue 3): the NVMe probe guest's bench=1 mode (4 KiB random read QD1/QD32, 128 KiB
# sequential read and write, each with MMIO and with shadow doorbells) against flint's NVMe controller
# and QEMU's `-device nvme` (q35), same probe, same disk file, same run; plus the host's own pread
# rate on that file as the limit. RUNS runs each, interleaved; prints every run's PROBE-INFO bench lines
# and the medians.
#   bench/nvme.sh [RUNS]        (after cargo build --release)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s -C tests/guests OUT="$work/guests" >/dev/null
disk=$work/disk.img
truncate -s 256M "$disk"
cat "$disk" >/dev/null # page cache warm: every VMM reads the same cached file
cpu=host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,arch-capabilities=off
for i in $(seq "$runs"); do
	target/release/flint run --kernel "$work/guests/nvme.elf" --cpus 1 --memory 256M \
		--volume "path=$disk,id=vol-0123456789abcdef0" --cmdline "bench=1" |
		grep '^PROBE-INFO bench_' | sed "s/^/flint run$i /"
	timeout 300 qemu-system-x86_64 -enable-kvm -M q35 -cpu "$cpu" -m 256M -smp 1 -nographic \
		-no-reboot -kernel "$work/guests/nvme.elf" -append "bench=1" \
		-drive "file=$disk,if=none,id=d0,format=raw,cache=writeback" \
		-device nvme,drive=d0,serial=vol0123456789abcdef0 |
		grep '^PROBE-INFO bench_' | sed "s/^/qemu run$i /" || true
done >"$work/results.txt"
cat "$work/results.txt"
python3 - "$work/results.txt" "$disk" <<'PY'
import os, random, statistics, sys, time, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    vmm, _, rest = line.split(" ", 2)
    key, _, val = rest.removeprefix("PROBE-INFO ").partition("=")
    fields = val.split()
    # fields: ops bytes us iops MB/s ... ; keep iops and MB/s by name where present
    kv = dict(f.split("=", 1) for f in fields if "=" in f)
    rows[(key, vmm)].append(kv)
print("\n| workload | flint | QEMU | flint / QEMU |\n|---|---|---|---|")
for key in sorted({k for k, _ in rows}):
    if key in ("bench_disk",):
        continue
    def med(vmm, field):
        vals = [float(r[field]) for r in rows.get((key, vmm), []) if field in r]
        return statistics.median(vals) if vals else None
    field = "iops" if "rand" in key else "mbps"
    f, q = med("flint", field), med("qemu", field)
    ratio = f"{f / q:.2f}" if f and q else "-"
    print(f"| {key} ({field}) | {f} | {q} | {ratio} |")
# The host's own limit: pread on the same cached file, one thread.
fd = os.open(sys.argv[2], os.O_RDONLY)
size = os.fstat(fd).st_size
n = 20000
t = time.perf_counter()
for _ in range(n):
    os.pread(fd, 4096, random.randrange(size // 4096) * 4096)
iops = n / (time.perf_counter() - t)
t = time.perf_counter()
done = 0
for off in range(0, size, 131072):
    done += len(os.pread(fd, 131072, off))
mbps = done / (time.perf_counter() - t) / 1e6
print(f"\nhost pread on the same file (Python, one thread): 4 KiB random {iops:.0f} IOPS, 128 KiB sequential {mbps:.0f} MB/s")
PY
