#!/usr/bin/env bash
# Boot guest-images/out/ under QEMU microvm with the CPU flags kvm_pvm needs and
# report when each FLINT-* line of /init appears (seconds after QEMU's launch).
#
#   guest-images/qemu-boot.sh [--acpi|--no-acpi] [--kernel vmlinux|bzImage]
#                             [--timeout SECONDS] [--log FILE] [--smp N]
#                             [--cmdline CMDLINE] [-- EXTRA CMDLINE]
#
# --acpi (default): -M microvm,acpi=on and out/cmdline.txt as is.
# --no-acpi: -M microvm and "acpi=off" appended to the command line.
# --cmdline replaces out/cmdline.txt; words after -- are appended.
# Exit status 0 when FLINT-INIT-OK, FLINT-CPUS, FLINT-MEMTOTAL-KB and
# FLINT-CMDLINE were all seen before QEMU exited or the timeout hit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/out
ACPI=on KERNEL=vmlinux TIMEOUT=600 LOG= SMP=1 cmdline=
while (($#)); do
	case $1 in
	--acpi) ACPI=on ;;
	--no-acpi) ACPI=off ;;
	--kernel) KERNEL=$2 && shift ;;
	--timeout) TIMEOUT=$2 && shift ;;
	--log) LOG=$2 && shift ;;
	--smp) SMP=$2 && shift ;;
	--cmdline) cmdline=$2 && shift ;;
	--) shift && break ;;
	*)
		echo "usage: $0 [--acpi|--no-acpi] [--kernel vmlinux|bzImage] [--timeout S] [--log FILE] [--smp N] [--cmdline CMDLINE] [-- EXTRA CMDLINE]" >&2
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
(($#)) && cmdline+=" $*"

qemu=(qemu-system-x86_64 -enable-kvm -M "$machine"
	-cpu host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,arch-capabilities=off
	-m 512M -smp "$SMP" -nographic -no-reboot
	-kernel "$OUT/$KERNEL" -initrd "$OUT/initramfs.cpio" -append "$cmdline")

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
}
timeout "$TIMEOUT" "${qemu[@]}" </dev/null > >(stamp_lines >>"$LOG") 2>&1 &
qpid=$!
# Under kvm_pvm with acpi=off, QEMU kept running after the guest's "reboot:
# machine restart" (microvm has no i8042; the kernel's fallback is a triple
# fault): stop QEMU once the guest has asked.
while kill -0 "$qpid" 2>/dev/null; do
	if grep -qE 'reboot: (machine restart|Power down)|Kernel panic' "$LOG"; then
		sleep 10
		kill "$qpid" 2>/dev/null && echo "   [qemu stopped by qemu-boot.sh 10 s after the guest's reboot/panic]" >>"$LOG"
		break
	fi
	sleep 1
done
wait "$qpid" || true
sleep 1
awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%8.2f [qemu exited]\n", b - a }' >>"$LOG"

ok=0
for marker in FLINT-INIT-OK FLINT-CPUS FLINT-MEMTOTAL-KB FLINT-CMDLINE; do
	if line=$(grep -m1 -E "^ *[0-9.]+ $marker" "$LOG"); then
		echo "$line"
	else
		echo "MISSING  $marker"
		ok=1
	fi
done
grep -m1 -E 'Run /init as init process|Kernel panic|INTERNAL_ERROR|segfault' "$LOG" || true
tail -1 "$LOG"
exit $ok
