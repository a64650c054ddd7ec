#!/usr/bin/env bash
# Boot guest-images/out/ under QEMU microvm with the CPU flags kvm_pvm needs and
# report when each FLINT-* line of /init appears (seconds after QEMU's launch).
#
#   guest-images/qemu-boot.sh [--acpi|--no-acpi] [--kernel vmlinux|bzImage]
#                             [--timeout SECONDS] [--log FILE] [--smp N] [--mem 512M]
#                             [--nvme-root] [--cmdline CMDLINE] [-- EXTRA CMDLINE]
#
# --acpi (default): -M microvm,acpi=on and out/cmdline.txt as is.
# --no-acpi: -M microvm and "acpi=off" appended to the command line.
# --cmdline replaces out/cmdline.txt; words after -- are appended.
# --nvme-root: no initramfs; out/rootfs.ext4 (snapshot) on a QEMU NVMe
# controller (microvm pcie=on, needs ACPI) and root=/dev/nvme0n1.
# Exit status 0 when FLINT-INIT-OK, FLINT-CPUS, FLINT-MEMTOTAL-KB and
# FLINT-CMDLINE were all seen before QEMU exited or the timeout hit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/out
ACPI=on KERNEL=vmlinux TIMEOUT=600 LOG= SMP=1 MEM=512M NVME=0 cmdline=
while (($#)); do
	case $1 in
	--acpi) ACPI=on ;;
	--no-acpi) ACPI=off ;;
	--kernel) KERNEL=$2 && shift ;;
	--timeout) TIMEOUT=$2 && shift ;;
	--log) LOG=$2 && shift ;;
	--smp) SMP=$2 && shift ;;
	--mem) MEM=$2 && shift ;;
	--nvme-root) NVME=1 ;;
	--cmdline) cmdline=$2 && shift ;;
	--) shift && break ;;
	*)
		echo "usage: $0 [--acpi|--no-acpi] [--kernel vmlinux|bzImage] [--timeout S] [--log FILE] [--smp N] [--mem SIZE] [--nvme-root] [--cmdline CMDLINE] [-- EXTRA CMDLINE]" >&2
		exit 2
		;;
	esac
	shift
done
LOG=${LOG:-$(mktemp /tmp/flint-qemu-boot.XXXXXX.log)}

[[ -n $cmdline ]] || cmdline=$(<"$OUT/cmdline.txt")
machine=microvm,acpi=on
if [[ $ACPI == off ]]; then
	machine=microvm
	cmdline+=" acpi=off"
fi
disk=(-initrd "$OUT/initramfs.cpio")
if ((NVME)); then
	machine+=,pcie=on
	disk=(-drive "if=none,id=root,file=$OUT/rootfs.ext4,format=raw,snapshot=on"
		-device nvme,drive=root,serial=flint-root)
	cmdline+=" root=/dev/nvme0n1"
fi
(($#)) && cmdline+=" $*"

qemu=(qemu-system-x86_64 -enable-kvm -M "$machine"
	-cpu host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,arch-capabilities=off
	-m "$MEM" -smp "$SMP" -nographic -no-reboot
	-kernel "$OUT/$KERNEL" "${disk[@]}" -append "$cmdline")

echo "log: $LOG" >&2
echo "qemu: ${qemu[*]}" >"$LOG"
t0=$EPOCHREALTIME
# Each console line gets the seconds since launch in front of it. (No tr/sed
# in between: they would buffer the output and skew the times.)
stamp_lines() {
	local line
	while IFS= read -r line || [[ -n $line ]]; do
		printf '%8.2f %s\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" "${line%$'\r'}"
	done
	awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%8.2f [qemu exited]\n", b - a }'
}
timeout "$TIMEOUT" "${qemu[@]}" </dev/null > >(stamp_lines >>"$LOG") 2>&1 &
qpid=$!
# Under kvm_pvm with acpi=off, QEMU kept running after the guest's "reboot:
# machine restart" (microvm has no i8042; the kernel's fallback is a triple
# fault): stop QEMU once the guest has asked.
while kill -0 "$qpid" 2>/dev/null; do
	if grep -qE 'reboot: (machine restart|Power down)|Kernel panic' "$LOG"; then
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			sleep 1
			kill -0 "$qpid" 2>/dev/null || break
		done
		kill "$qpid" 2>/dev/null && echo "   [qemu stopped by qemu-boot.sh 10 s after the guest's reboot/panic]" >>"$LOG"
		break
	fi
	sleep 1
done
wait "$qpid" || true
sleep 1 # let stamp_lines finish

ok=0
for marker in FLINT-INIT-OK FLINT-CPUS FLINT-MEMTOTAL-KB FLINT-CMDLINE; do
	if line=$(grep -m1 -E "^ *[0-9.]+ $marker" "$LOG"); then
		echo "$line"
	else
		echo "MISSING  $marker"
		ok=1
	fi
done
grep -m1 -E 'Run /(sbin/)?init as init process|Kernel panic|INTERNAL_ERROR|segfault' "$LOG" || true
tail -1 "$LOG"
exit $ok
