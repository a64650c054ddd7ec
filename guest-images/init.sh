#!/bin/sh
# flint guest /init (also /sbin/init on rootfs.ext4).
#
# Under kvm_pvm every system call and page fault of the guest is a slow round
# trip, so this script is deliberately short: shell builtins where they are
# cheap, one busybox awk for all the reads (ash's `read` builtin does a poll and
# a 1-byte read per character), no loops in the shell.
#
# Kernel parameter flint.init=sh: open an interactive shell on the console
# instead of rebooting (reboots when the shell exits).

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# booted from rootfs.ext4 the kernel has already mounted devtmpfs (DEVTMPFS_MOUNT)
[ -e /dev/mem ] || mount -t devtmpfs devtmpfs /dev

# boot marker for the VMM (docs/platform.md); fails harmlessly elsewhere
devmem 0xf0000000 8 123 2>/dev/null

# stock kernel images only: load the drivers listed by build.sh --stock
[ -e /etc/flint-modules ] && . /etc/flint-modules

echo FLINT-INIT-OK
# What to read: NVMe identity only when a controller is there (booted with --volume).
set -- /sys/devices/system/cpu/online /proc/meminfo /proc/cmdline
[ -e /sys/class/nvme/nvme0/model ] && set -- "$@" /sys/class/nvme/nvme0/model /sys/class/nvme/nvme0/serial
awk '
FILENAME == "/sys/devices/system/cpu/online" {
	n = 0
	k = split($0, part, ",")
	for (i = 1; i <= k; i++)
		n += (split(part[i], r, "-") == 2) ? r[2] - r[1] + 1 : 1
	print "FLINT-CPUS " n
}
/^MemTotal:/ { print "FLINT-MEMTOTAL-KB " $2 }
FILENAME == "/proc/cmdline" {
	print "FLINT-CMDLINE " $0
	# The host checks this file on the root filesystem after the guest has rebooted.
	print $0 > "/flint-cmdline"
	close("/flint-cmdline")
	if ((" " $0 " ") ~ / flint\.init=sh /)
		interactive = 1
}
END { exit interactive ? 7 : 0 }
FILENAME ~ /nvme0\/model$/ { sub(/ +$/, ""); print "FLINT-NVME-MODEL " $0 }
FILENAME ~ /nvme0\/serial$/ { sub(/ +$/, ""); print "FLINT-NVME-SERIAL " $0 }
' "$@"

case $? in
7)
	echo "flint.init=sh: interactive shell; the guest reboots when it exits"
	setsid cttyhack sh
	;;
esac
# reboot -f does not sync: flush what /init wrote to the root filesystem first.
sync
reboot -f
