#!/usr/bin/env bash
# Sets the machine up (scripts/setup.sh) and boots the default guest: the minimal Linux kernel with
# 2 vCPUs and 4 GiB (the c5.large shape) on the serial console. Ctrl-A x quits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
if [ -d /sys/module/kvm_pvm ]; then
	echo "This host's KVM is PVM (software nested virtualization): the Linux guest takes several minutes to boot."
fi
exec target/release/flint --log-level info run \
	--kernel guest-images/out/vmlinux \
	--initrd guest-images/out/initramfs.cpio \
	--cpus 2 --memory 4G \
	--cmdline "$(cat guest-images/out/cmdline.txt) flint.init=sh"
