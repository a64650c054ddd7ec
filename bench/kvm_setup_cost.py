#!/usr/bin/env python3
"""What the KVM set-up ioctls cost on this host, without any VMM code around them.

Replays, from Python, the ioctl sequence flint issues before the first KVM_RUN (KVM_CREATE_VM,
KVM_SET_TSS_ADDR, KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, KVM_SET_USER_MEMORY_REGION for each RAM
slot, KVM_CREATE_VCPU per vCPU) and then closes the VM fd (the teardown a VMM's exit waits for),
timing every step with perf_counter_ns. Variants, interleaved run by run: flint's order (at commit
2e1c9eb: irqchip and PIT, then the memory slots), the memory slots first (before KVM_CREATE_IRQCHIP,
as Firecracker does), and flint's order without the in-kernel PIT (what the PIT costs at creation
and at teardown). Guest RAM is an anonymous MAP_NORESERVE mapping, split like flint's
(below 3 GiB, and above 4 GiB for the rest), never touched.

These are the floor any VMM pays on this host before its guest runs; compare them with flint's
launch -> first serial line (bench/boot.py).

    python3 bench/kvm_setup_cost.py [--runs 10] [--memory 512M] [--cpus 2] [--variants 0,1,2]
"""

import argparse
import ctypes
import mmap
import os
import statistics
import struct
import time

KVMIO = 0xAE


def _io(nr):
    return (KVMIO << 8) | nr


def _iow(nr, size):
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_CREATE_VM = _io(0x01)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, 32)
KVM_CREATE_PIT2 = _iow(0x77, 64)
KVM_PIT_SPEAKER_DUMMY = 1
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
MMIO_HOLE_START = 3 << 30
HIGH_RAM_START = 4 << 30


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def ioctl(fd, request, arg=0):
    """ioctl with an integer argument, or a bytes struct passed by pointer."""
    if isinstance(arg, (bytes, bytearray)):
        buf = ctypes.create_string_buffer(bytes(arg), len(arg))
        ptr = ctypes.cast(buf, ctypes.c_void_p)
    else:
        buf, ptr = None, ctypes.c_void_p(arg)
    r = _libc.ioctl(fd, request, ptr)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ioctl {request:#x}: {os.strerror(e)}")
    return r


def parse_size(text):
    num, unit = (text[:-1], text[-1].upper()) if text[-1].isalpha() else (text, "M")
    return int(num) << {"K": 10, "M": 20, "G": 30, "T": 40}[unit]


def ram_ranges(memory):
    low = min(memory, MMIO_HOLE_START)
    ranges = [(0, low)]
    if memory > low:
        ranges.append((HIGH_RAM_START, memory - low))
    return ranges


def one_run(kvm_fd, memory, cpus, memory_first, with_pit):
    steps = {}

    def timed(name, fn):
        t = time.perf_counter_ns()
        r = fn()
        steps[name] = steps.get(name, 0.0) + (time.perf_counter_ns() - t) / 1e6
        return r

    maps = []

    def add_memory():
        for slot, (gpa, size) in enumerate(ram_ranges(memory)):
            m = timed("mmap guest RAM", lambda: mmap.mmap(
                -1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE))
            maps.append(m)
            host = ctypes.addressof(ctypes.c_char.from_buffer(m))
            region = struct.pack("=IIQQQ", slot, 0, gpa, size, host)
            timed("KVM_SET_USER_MEMORY_REGION", lambda: ioctl(vm, KVM_SET_USER_MEMORY_REGION, region))

    t_start = time.perf_counter_ns()
    vm = timed("KVM_CREATE_VM", lambda: ioctl(kvm_fd, KVM_CREATE_VM, 0))
    if memory_first:
        add_memory()
    timed("KVM_SET_TSS_ADDR", lambda: ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000))
    timed("KVM_CREATE_IRQCHIP", lambda: ioctl(vm, KVM_CREATE_IRQCHIP, 0))
    if with_pit:
        pit = struct.pack("=I60x", KVM_PIT_SPEAKER_DUMMY)
        timed("KVM_CREATE_PIT2", lambda: ioctl(vm, KVM_CREATE_PIT2, pit))
    if not memory_first:
        add_memory()
    vcpus = [timed("KVM_CREATE_VCPU (all)", lambda i=i: ioctl(vm, KVM_CREATE_VCPU, i))
             for i in range(cpus)]
    steps["total set-up"] = (time.perf_counter_ns() - t_start) / 1e6
    t = time.perf_counter_ns()
    for fd in vcpus:
        os.close(fd)
    os.close(vm)  # last reference: KVM destroys the VM here
    steps["close (VM teardown)"] = (time.perf_counter_ns() - t) / 1e6
    for m in maps:
        m.close()
    return steps


# (name, memory_first, with_pit)
VARIANTS = [
    ("flint's order (irqchip, PIT, memslots)", False, True),
    ("memslots first", True, True),
    ("flint's order, no PIT", False, False),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--memory", default="512M")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--variants", default="0,1,2",
                    help="comma-separated indices into: " + "; ".join(
                        f"{i}: {v[0]}" for i, v in enumerate(VARIANTS)))
    args = ap.parse_args()
    memory = parse_size(args.memory)
    kvm_fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    variants = [VARIANTS[int(i)] for i in args.variants.split(",")]
    results = {name: [] for name, _, _ in variants}
    for _, memory_first, pit in variants:  # warm-up
        one_run(kvm_fd, memory, args.cpus, memory_first, pit)
    for _ in range(args.runs):
        for name, memory_first, pit in variants:  # interleaved
            results[name].append(one_run(kvm_fd, memory, args.cpus, memory_first, pit))
    load = os.getloadavg()
    print(f"KVM set-up ioctls, {args.cpus} vCPUs, {args.memory} "
          f"({len(ram_ranges(memory))} RAM slot(s)), {args.runs} runs, median [min–max] ms; "
          f"load average {load[0]:.2f}\n")
    names = [n for n, _, _ in variants]
    print("| step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    keys = []
    for n in names:
        keys += [k for k in results[n][0] if k not in keys]
    keys.sort(key=lambda k: k in ("total set-up", "close (VM teardown)"))
    for k in keys:
        cells = []
        for n in names:
            vals = [r[k] for r in results[n] if k in r]
            cells.append(f"{statistics.median(vals):.2f} [{min(vals):.2f}–{max(vals):.2f}]"
                         if vals else "—")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
