#!/bin/sh
# Boots a probe under QEMU, for developing probes without flint.
#   tests/guests/qemu.sh out/boot.elf "expect_cpus=2 expect_mem_mib=512 exit=poweroff"
# Environment: SMP (default 2), MEM (MiB, default 512), MACHINE (default microvm,acpi=on;
# q35 boots SeaBIOS first, ~5 s, but has an i8042 for exit=reset), TIMEOUT (s, default 120).
# The -cpu flags keep QEMU 7.2 working on PVM hosts (see shared/notes/pvm-host.md).
set -eu
elf=$1
append=${2:-}
cpu=host,-xsave,-smap,-cx16,-popcnt,-fsgsbase,-rdrand,-rdseed,-pcid,-invpcid,-rdpid,-pku,arch-capabilities=off
exec timeout "${TIMEOUT:-120}" qemu-system-x86_64 -enable-kvm -M "${MACHINE:-microvm,acpi=on}" -cpu "$cpu" \
	-m "${MEM:-512}M" -smp "${SMP:-2}" -nographic -no-reboot -kernel "$elf" -append "$append"
