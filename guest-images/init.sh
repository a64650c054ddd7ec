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
#
# Kernel parameter flint.io=ADDR/PREFIX,PEER,BYTES[,DISK]: the I/O test of
# tests/linux.rs. Brings eth0 up with ADDR, pings PEER, sends BYTES random
# bytes to PEER:5001 and receives PEER:5002 over TCP (busybox nc), printing
# both sha256 sums; with DISK (e.g. vdb) also writes the same bytes to
# /dev/DISK and reads them back with O_DIRECT; and tries to write to /dev/vda,
# which the test attaches read-only.

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
	for (i = 1; i <= NF; i++)
		if ($i ~ /^flint\.io=/) {
			n = split(substr($i, 10), v, ",")
			print "IO_ADDR=" v[1] " IO_PEER=" v[2] " IO_BYTES=" v[3] " IO_DISK=" v[4] > "/flint-io.env"
			close("/flint-io.env")
		}
}
END { exit interactive ? 7 : 0 }
FILENAME ~ /nvme0\/model$/ { sub(/ +$/, ""); print "FLINT-NVME-MODEL " $0 }
FILENAME ~ /nvme0\/serial$/ { sub(/ +$/, ""); print "FLINT-NVME-SERIAL " $0 }
' "$@"

status=$?

if [ -e /flint-io.env ]; then
	. /flint-io.env
	ip link set eth0 up
	ip addr add "$IO_ADDR" dev eth0
	# The interface as the guest's driver sees it: its MAC and how many queue pairs it set up
	# (one MSI-X vector per receive queue, named virtioN-input.K in /proc/interrupts).
	awk '
	FILENAME ~ /address$/ { print "FLINT-NET-MAC " $0 }
	/-input\./ { q++ }
	END { print "FLINT-NET-QUEUES " q + 0 }
	' /sys/class/net/eth0/address /proc/interrupts
	# One echo request: this kernel has no POSIX timers, so ping cannot schedule a second one or
	# a deadline (alarm(2) fails); busybox timeout only sleeps and signals.
	timeout 120 ping -c 1 "$IO_PEER" >/dev/null && echo FLINT-NET-PING ok
	dd if=/dev/urandom of=/flint-io.bin bs=4096 count=$((IO_BYTES / 4096)) 2>/dev/null
	echo "FLINT-IO-SHA256 $(sha256sum </flint-io.bin)"
	nc "$IO_PEER" 5001 </flint-io.bin && echo FLINT-NET-SENT ok
	echo "FLINT-NET-RECEIVED-SHA256 $(nc "$IO_PEER" 5002 </dev/null | sha256sum)"
	if [ -n "$IO_DISK" ]; then
		dd if=/flint-io.bin of="/dev/$IO_DISK" bs=4096 conv=fsync 2>/dev/null && echo FLINT-BLK-WRITTEN ok
		echo "FLINT-BLK-READ-SHA256 $(dd if="/dev/$IO_DISK" bs=4096 count=$((IO_BYTES / 4096)) iflag=direct 2>/dev/null | sha256sum)"
		awk '{ print "FLINT-BLK-" toupper(substr(FILENAME, 12, 3)) "-SIZE " $0 }' /sys/block/vda/size /sys/block/"$IO_DISK"/size
		dd if=/dev/zero of=/dev/vda bs=512 count=1 2>/dev/null || echo FLINT-BLK-RO-REFUSED ok
	fi
	echo FLINT-IO-DONE
fi

case $status in
7)
	echo "flint.init=sh: interactive shell; the guest reboots when it exits"
	setsid cttyhack sh
	;;
esac
# reboot -f does not sync: flush what /init wrote to the root filesystem first.
sync
reboot -f
