#!/usr/bin/env bash
# Prepares this machine for building and testing flint: host packages, the guest images
# (guest-images/build.sh: minimal Linux kernel, initramfs, root filesystem, all cached under
# ${FLINT_CACHE:-/var/cache/flint}), and a release build of flint. Idempotent; a second run takes
# seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What the probe guests and guest images are built with, QEMU for the side-by-side benchmarks, and
# strace for the durability test that watches flint's fdatasync calls.
PACKAGES=(gcc make binutils e2fsprogs cpio qemu-system-x86 iproute2 strace)
missing=()
for pkg in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
	echo "[setup] installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

guest-images/build.sh
cargo build --release --quiet
echo "[setup] ready: target/release/flint, guest images in guest-images/out/" >&2
