#!/usr/bin/env bash
# Build flint's minimal Linux guest from Debian packages. See README.md.
#
#   guest-images/build.sh           kernel (PVM-patched 6.1), initramfs, rootfs -> out/
#   guest-images/build.sh --stock   Debian's stock cloud kernel + module initramfs -> out/stock/
#
# Environment: FLINT_CACHE (default /var/cache/flint) holds the unpacked, built
# kernel tree and other intermediate files. Idempotent: each stage is skipped
# when the hash of its inputs matches the stamp left by its last success.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FLINT_CACHE:-/var/cache/flint}
OUT=$HERE/out
PATCH_DIR=$HERE/patches
FRAGMENT=$HERE/kernel.config
INIT_SCRIPT=$HERE/init.sh
ROOTFS_MIB=64
# Bump when the way the kernel is configured or built below changes.
KERNEL_RECIPE=2
# Applets the init script uses (plus sh). Keep in sync with init.sh.
APPLETS=(sh mount devmem awk reboot setsid cttyhack insmod sync ip ping nc dd sha256sum timeout)
# Fixed identity for reproducible images.
ROOTFS_UUID=6f1c3e0a-1a5e-4c8e-9d2b-f11e7f11e700
ROOTFS_HASH_SEED=0b7e1c52-3f0d-4b6e-8a59-f11e7f11e700

MODE=custom
case ${1:-} in
'') ;;
--stock) MODE=stock ;;
-h | --help)
	sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 0
	;;
*)
	echo "usage: $0 [--stock]" >&2
	exit 2
	;;
esac

log() { printf '[guest-images] %s\n' "$*" >&2; }
die() {
	printf '[guest-images] ERROR: %s\n' "$*" >&2
	exit 1
}

# stage NAME FUNCTION: run FUNCTION, then print one line with its duration.
stage() {
	local name=$1 t0=$EPOCHREALTIME
	shift
	"$@"
	awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" \
		'BEGIN { printf "[guest-images] stage %-10s %7.1f s\n", n, b - a }' >&2
}

as_root() {
	if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

pkg_installed() {
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# Install missing packages; `apt-get update` only when something is missing.
# Waits for the dpkg lock (another apt-get may be running) instead of failing.
ensure_packages() {
	local p missing=()
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	log "installing: ${missing[*]}"
	as_root apt-get -o DPkg::Lock::Timeout=1200 -qq update
	as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=1200 \
		-qq -y --no-install-recommends install "${missing[@]}"
}

hash_stream() { sha256sum | cut -d' ' -f1; }

stamp_ok() { [[ -f $1 && $(<"$1") == "$2" ]]; }

# Deterministic timestamps for the kernel build and the image trees: the
# source tarball's mtime (custom) or busybox's (--stock), unless SOURCE_DATE_EPOCH is set.
EPOCH=

#
# Stage: packages
#
KSRC_PKG= KSRC_VERSION= KSRC_TAR= BUSYBOX=

find_busybox() {
	BUSYBOX=$(dpkg -L busybox-static | grep -m1 -E '/bin/busybox$') ||
		die "busybox-static ships no busybox binary"
	if LC_ALL=C readelf -l "$BUSYBOX" | grep -q 'program interpreter'; then
		die "$BUSYBOX is dynamically linked"
	fi
}

stage_deps() {
	if [[ $MODE == stock ]]; then
		ensure_packages busybox-static cpio xz-utils binutils kmod
		find_busybox
		EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$BUSYBOX")}
		return 0
	fi
	ensure_packages linux-source busybox-static bc bison flex libelf-dev libssl-dev \
		cpio e2fsprogs lz4 xz-utils gcc make libc6-dev binutils
	# linux-source is a metapackage: "Depends: linux-source-6.1 (= 6.1.x-y)"
	KSRC_PKG=$(dpkg-query -W -f='${Depends}' linux-source | sed -n 's/^\(linux-source-[0-9.]*\).*/\1/p')
	[[ -n $KSRC_PKG ]] || die "cannot tell which linux-source-X the linux-source package points to"
	ensure_packages "$KSRC_PKG"
	KSRC_VERSION=$(pkg_version "$KSRC_PKG")
	KSRC_TAR=$(dpkg -L "$KSRC_PKG" | grep -m1 -E '^/usr/src/linux-source-.*\.tar\.(xz|bz2|gz)$') ||
		die "$KSRC_PKG ships no source tarball"
	find_busybox
	EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$KSRC_TAR")}
}

#
# Stage: unpack linux-source into $CACHE/linux-<version>
#
SRC= KVER=

stage_unpack() {
	SRC=$CACHE/linux-$KSRC_VERSION
	if [[ ! -f $SRC/.flint/unpacked ]]; then
		log "unpacking $KSRC_TAR -> $SRC"
		mkdir -p "$CACHE"
		rm -rf "$SRC" "$SRC.tmp"
		mkdir -p "$SRC.tmp"
		tar -xf "$KSRC_TAR" -C "$SRC.tmp" --strip-components=1
		mkdir -p "$SRC.tmp/.flint/applied"
		touch "$SRC.tmp/.flint/unpacked"
		mv "$SRC.tmp" "$SRC"
	fi
	KVER=$(make -s -C "$SRC" kernelversion)
}

#
# Stage: patches. Applied patches are kept in $SRC/.flint/applied; when the
# patch set changes the old set is reversed first, so the tree (and make's
# view of what changed) stays incremental.
#
stage_patch() {
	local applied=$SRC/.flint/applied p i
	local -a wanted=("$PATCH_DIR"/*.patch) old=()
	[[ -e ${wanted[0]} ]] || die "no patches in $PATCH_DIR"
	if [[ $(cat "$applied"/*.patch 2>/dev/null | hash_stream) == $(cat "${wanted[@]}" | hash_stream) &&
		$(cd "$applied" && ls) == $(cd "$PATCH_DIR" && ls -- *.patch) ]]; then
		return 0
	fi
	shopt -s nullglob
	old=("$applied"/*.patch)
	shopt -u nullglob
	for ((i = ${#old[@]} - 1; i >= 0; i--)); do
		log "reverting $(basename "${old[i]}")"
		patch -d "$SRC" -p1 -R -s --no-backup-if-mismatch <"${old[i]}" ||
			die "cannot revert ${old[i]}; delete $SRC and rerun"
		rm -f "${old[i]}"
	done
	for p in "${wanted[@]}"; do
		log "applying $(basename "$p")"
		patch -d "$SRC" -p1 -N -s --dry-run <"$p" >/dev/null ||
			die "$(basename "$p") does not apply to $KSRC_PKG $KSRC_VERSION"
		patch -d "$SRC" -p1 -N -s --no-backup-if-mismatch <"$p"
		cp "$p" "$applied/"
	done
}

#
# Stage: configure (tinyconfig + fragment) and build
#
KERNEL_HASH=

kmake() {
	make -C "$SRC" -s ARCH=x86_64 \
		KBUILD_BUILD_USER=flint KBUILD_BUILD_HOST=flint KBUILD_BUILD_VERSION=1 \
		KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$EPOCH" '+%Y-%m-%d')" \
		"$@"
}

# Every line of the fragment must be in .config as written; "# CONFIG_X is not
# set" also accepts X being absent (its dependencies are off).
verify_config() {
	local line sym bad=0
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			if ! grep -qxF -- "$line" "$SRC/.config"; then
				log "config: wanted '$line', got '$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$SRC/.config" || echo "${BASH_REMATCH[1]} absent (unmet dependencies?)")'"
				bad=1
			fi
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
			sym=${BASH_REMATCH[1]}
			if grep -qE "^$sym=" "$SRC/.config"; then
				log "config: wanted '$sym' off, got '$(grep -E "^$sym=" "$SRC/.config")' (selected by something?)"
				bad=1
			fi
		fi
	done <"$FRAGMENT"
	((bad == 0)) || die "kernel config does not match $FRAGMENT (see above)"
}

stage_kernel() {
	local stamp=$SRC/.flint/kernel.stamp
	KERNEL_HASH=$({
		echo "recipe $KERNEL_RECIPE $KSRC_PKG $KSRC_VERSION"
		for p in "$PATCH_DIR"/*.patch; do
			basename "$p"
			cat "$p"
		done
		cat "$FRAGMENT"
	} | hash_stream)
	if stamp_ok "$stamp" "$KERNEL_HASH" && [[ -f $SRC/vmlinux && -f $SRC/arch/x86/boot/bzImage ]]; then
		log "kernel $KVER up to date"
		return 0
	fi
	rm -f "$stamp"
	log "configuring $KVER: tinyconfig + $(basename "$FRAGMENT")"
	local clog=$SRC/.flint/config.log
	{
		kmake tinyconfig
		(cd "$SRC" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$FRAGMENT")
		kmake olddefconfig
	} >"$clog" 2>&1 || {
		cat "$clog" >&2
		die "kernel configuration failed (log: $clog)"
	}
	verify_config
	log "building $KVER with $(nproc) jobs (cold: 5-12 min on 2 cores)"
	kmake -j"$(nproc)" vmlinux bzImage
	echo "$KERNEL_HASH" >"$stamp"
}

#
# Stages: busybox tree, initramfs (uncompressed newc cpio), ext4 rootfs
#
# populate_tree DIR [EXTRA_DIRS...]: busybox, applet links, /init, /sbin/init
populate_tree() {
	local dir=$1 a
	shift
	rm -rf "$dir"
	mkdir -p "$dir"/{bin,sbin,dev,proc,sys,tmp,root,etc} "$@"
	chmod 1777 "$dir/tmp"
	chmod 0700 "$dir/root"
	install -m 0755 "$BUSYBOX" "$dir/bin/busybox"
	for a in "${APPLETS[@]}"; do
		ln -s busybox "$dir/bin/$a"
	done
	install -m 0755 "$INIT_SCRIPT" "$dir/init"
	ln -s ../init "$dir/sbin/init"
}

# normalise timestamps so the images depend only on their contents
clamp_times() {
	find "$1" -exec touch -h -d "@$EPOCH" {} +
}

# write_cpio DIR FILE: uncompressed newc archive, root-owned, sorted, reproducible
write_cpio() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc --reproducible --owner=0:0 --quiet) >"$2.tmp"
	mv "$2.tmp" "$2"
}

IMAGES_HASH=

stage_images() {
	local tree=$CACHE/work/rootfs-tree stamp=$CACHE/work/images.stamp
	IMAGES_HASH=$({
		echo "applets ${APPLETS[*]} size $ROOTFS_MIB uuid $ROOTFS_UUID $ROOTFS_HASH_SEED"
		sha256sum "$BUSYBOX" "$INIT_SCRIPT" | cut -d' ' -f1
		declare -f populate_tree clamp_times write_cpio stage_images
	} | hash_stream)
	if stamp_ok "$stamp" "$IMAGES_HASH" && [[ -f $CACHE/work/initramfs.cpio && -f $CACHE/work/rootfs.ext4 ]]; then
		log "initramfs and rootfs up to date"
		return 0
	fi
	mkdir -p "$CACHE/work"
	rm -f "$stamp"
	populate_tree "$tree"
	clamp_times "$tree"
	write_cpio "$tree" "$CACHE/work/initramfs.cpio"

	rm -f "$CACHE/work/rootfs.ext4.tmp"
	E2FSPROGS_FAKE_TIME=$EPOCH mkfs.ext4 -q -F -L flint-root \
		-U "$ROOTFS_UUID" -E "hash_seed=$ROOTFS_HASH_SEED,root_owner=0:0" \
		-d "$tree" "$CACHE/work/rootfs.ext4.tmp" "${ROOTFS_MIB}M" >/dev/null
	# mkfs -d copies each file's atime and ctime, which are "now": pin them too
	(cd "$tree" && find . | sed 's|^\.||; s|^$|/|') | while IFS= read -r p; do
		printf 'sif "%s" atime @%s\nsif "%s" ctime @%s\n' "$p" "$EPOCH" "$p" "$EPOCH"
	done >"$CACHE/work/rootfs.debugfs"
	E2FSPROGS_FAKE_TIME=$EPOCH debugfs -w -f "$CACHE/work/rootfs.debugfs" \
		"$CACHE/work/rootfs.ext4.tmp" >/dev/null 2>&1 || die "debugfs failed on rootfs.ext4"
	e2fsck -fn "$CACHE/work/rootfs.ext4.tmp" >/dev/null 2>&1 || die "rootfs.ext4 fails e2fsck"
	mv "$CACHE/work/rootfs.ext4.tmp" "$CACHE/work/rootfs.ext4"
	echo "$IMAGES_HASH" >"$stamp"
}

#
# Stage: outputs + manifest
#
# The PVM-safe command line of /work/shared/notes/pvm-host.md, with ACPI kept
# on (flint describes its CPUs only in the ACPI MADT) and kvmclock kept on
# ("no-kvmclock" dropped): with a hardware-reduced FADT Linux starts no PIT, and
# PIT calibration fails under PVM anyway, so without kvmclock the TSC frequency
# is unknown and the boot hangs at "Calibrating delay loop" (measured under QEMU
# microvm). kvmclock supplies the TSC frequency and the wall clock (no CMOS RTC
# read). clocksource=tsc keeps the TSC as clocksource, so the vDSO reads time
# without system calls. A VMM without kvmclock must append
# tsc_early_khz=<host TSC kHz> instead. panic=-1: a panic resets the VM at once.
CMDLINE="console=ttyS0 nokaslr noxsave nosmap mitigations=off clearcpuid=popcnt,cx16,rdrand,rdseed,smap,fsgsbase,rdpid,pcid,invpcid,erms,fsrm tsc=reliable clocksource=tsc nowatchdog initcall_blacklist=cmos_init,rtc_init panic=-1"

# copy_if_changed SRC DST: keep DST (and its mtime) when the content is the same
copy_if_changed() {
	if ! cmp -s "$1" "$2"; then
		cp "$1" "$2.tmp"
		mv "$2.tmp" "$2"
	fi
}

write_if_changed() { # DST, content on stdin
	local tmp=$1.tmp
	cat >"$tmp"
	if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

stage_outputs() {
	local f
	mkdir -p "$OUT"
	copy_if_changed "$SRC/vmlinux" "$OUT/vmlinux"
	copy_if_changed "$SRC/arch/x86/boot/bzImage" "$OUT/bzImage"
	copy_if_changed "$CACHE/work/initramfs.cpio" "$OUT/initramfs.cpio"
	copy_if_changed "$CACHE/work/rootfs.ext4" "$OUT/rootfs.ext4"
	echo "$CMDLINE" | write_if_changed "$OUT/cmdline.txt"
	if ! LC_ALL=C readelf -n "$OUT/vmlinux" | grep -q 'Xen.*0x00000012'; then
		die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
	fi
	{
		echo "# flint guest images, built by guest-images/build.sh"
		echo "linux-source-package: $KSRC_PKG $KSRC_VERSION"
		echo "busybox-static-package: busybox-static $(pkg_version busybox-static)"
		echo "kernel-version: $KVER"
		echo "kernel-config-fragment: kernel.config sha256 $(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
		for f in "$PATCH_DIR"/*.patch; do
			echo "patch: $(basename "$f") sha256 $(sha256sum <"$f" | cut -d' ' -f1)"
		done
		echo "cmdline: $CMDLINE"
		for f in vmlinux bzImage initramfs.cpio rootfs.ext4 cmdline.txt; do
			echo "sha256: $(cd "$OUT" && sha256sum "$f")"
		done
	} | write_if_changed "$OUT/manifest.txt"
	(cd "$OUT" && ls -l vmlinux bzImage initramfs.cpio rootfs.ext4 cmdline.txt manifest.txt) >&2
}

#
# --stock: Debian's linux-image-cloud-amd64 with an initramfs that loads its
# virtio and NVMe modules. For hosts with hardware KVM only: it does not boot
# under kvm_pvm (see README.md).
#
STOCK_MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net nvme ext4)

stage_stock() {
	local dir=$CACHE/stock out=$OUT/stock meta pkg deb ver root tree m f
	meta=linux-image-cloud-amd64
	pkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -1)
	if [[ -z $pkg ]]; then
		as_root apt-get -o DPkg::Lock::Timeout=1200 -qq update
		pkg=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -1)
	fi
	[[ -n $pkg ]] || die "cannot resolve $meta to a kernel package"
	ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
	mkdir -p "$dir" "$out"
	deb=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -1)
	if [[ -z $deb ]]; then
		log "downloading $pkg $ver"
		(cd "$dir" && apt-get -qq -o APT::Sandbox::User=root download "$pkg")
		deb=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -1)
	fi
	root=$dir/${pkg}
	if [[ ! -f $root.unpacked ]]; then
		rm -rf "$root"
		dpkg-deb -x "$deb" "$root"
		touch "$root.unpacked"
	fi
	local kver
	kver=$(basename "$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -1)")
	[[ -n $kver ]] || die "no modules in $deb"
	# resolve dependencies from modules.dep, dependencies first
	local moddir=$root/lib/modules/$kver
	# the package ships no modules.dep (its postinst runs depmod)
	[[ -f $moddir/modules.dep ]] || depmod -b "$root" "$kver" ||
		die "depmod failed for $kver"
	local -a order=()
	local -A seen=()
	add_mod() { # path relative to $moddir
		local rel=$1 deps d
		[[ -n ${seen[$rel]:-} ]] && return 0
		seen[$rel]=1
		deps=$(grep -m1 "^$rel:" "$moddir/modules.dep" | cut -d: -f2)
		for d in $deps; do add_mod "$d"; done
		order+=("$rel")
	}
	for m in "${STOCK_MODULES[@]}"; do
		f=$(grep -m1 -E "(^|/)${m}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | cut -d: -f1 || true)
		if [[ -z $f ]]; then
			if grep -qE "(^|/)${m}\.ko" "$moddir/modules.builtin"; then
				log "stock: $m is built into the kernel"
			else
				log "stock: WARNING: module $m not found"
			fi
			continue
		fi
		add_mod "$f"
	done
	tree=$dir/initramfs-tree
	populate_tree "$tree" "$tree/lib/modules"
	: >"$tree/etc/flint-modules"
	for f in "${order[@]}"; do
		m=$(basename "$f")
		case $m in
		*.xz) xz -dc "$moddir/$f" >"$tree/lib/modules/${m%.xz}" ;;
		*.zst) zstd -qdc "$moddir/$f" >"$tree/lib/modules/${m%.zst}" ;;
		*.gz) gzip -dc "$moddir/$f" >"$tree/lib/modules/${m%.gz}" ;;
		*) cp "$moddir/$f" "$tree/lib/modules/$m" ;;
		esac
		echo "insmod /lib/modules/${m%.[xgz]*}" >>"$tree/etc/flint-modules"
	done
	clamp_times "$tree"
	write_cpio "$tree" "$out/initramfs.cpio"
	copy_if_changed "$root/boot/vmlinuz-$kver" "$out/bzImage"
	# the stock kernel needs no PVM workarounds; keep ACPI on (CPUs come from the MADT)
	echo "console=ttyS0 panic=-1" | write_if_changed "$out/cmdline.txt"
	{
		echo "# flint stock guest (hardware KVM only), built by guest-images/build.sh --stock"
		echo "kernel-package: $pkg $(dpkg-deb -f "$deb" Version)"
		echo "busybox-static-package: busybox-static $(pkg_version busybox-static)"
		echo "kernel-version: $kver"
		echo "modules: ${order[*]}"
		for f in bzImage initramfs.cpio cmdline.txt; do
			echo "sha256: $(cd "$out" && sha256sum "$f")"
		done
	} | write_if_changed "$out/manifest.txt"
	(cd "$out" && ls -l) >&2
}

main() {
	local t0=$EPOCHREALTIME
	stage deps stage_deps
	if [[ $MODE == stock ]]; then
		stage stock stage_stock
	else
		stage unpack stage_unpack
		stage patch stage_patch
		stage kernel stage_kernel
		stage images stage_images
		stage outputs stage_outputs
	fi
	awk -v a="$t0" -v b="$EPOCHREALTIME" \
		'BEGIN { printf "[guest-images] total            %7.1f s\n", b - a }' >&2
}

main
