#!/usr/bin/env bash
# Sets the machine up (scripts/setup.sh) and boots the default guest: the minimal Linux kernel shaped
# as a c5.large, its root filesystem on an EBS-style NVMe volume, the serial console on this terminal.
# The guest drops to a shell (flint.init=sh); `exit` reboots it and ends flint. Ctrl-A x quits at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
out=guest-images/out
# The guest writes to its root volume: keep the built image pristine and boot a copy.
[ -e "$out/root-volume.ext4" ] || cp "$out/rootfs.ext4" "$out/root-volume.ext4"
cpus=()
if [ -d /sys/module/kvm_pvm ]; then
	echo "This host's KVM is PVM (software nested virtualization): the Linux guest takes a minute or more to boot, on 1 vCPU (docs/pvm.md)."
	cpus=(--cpus 1)
fi
exec target/release/flint --log-level info run \
	--instance-type c5.large "${cpus[@]}" \
	--kernel "$out/vmlinux" \
	--volume "path=$out/root-volume.ext4,id=vol-0f1e2d3c4b5a69788,name=xvda" \
	--cmdline "$(cat "$out/cmdline.txt") root=/dev/nvme0n1 rw rootfstype=ext4 flint.init=sh"
