#!/bin/bash
# Build-each-patch check: apply kernel/patches/series one patch at a time to
# a fresh copy of the source build.sh uses and, after each patch, build the
# objects the series touches with W=1 (lab.config; KEXEC_STAGED on once it
# exists). Any compiler message fails the check. Objects only, not bzImage:
# a full build per patch is too slow on the shared cores.
#
#   kernel/check-series.sh [WORKDIR]     (default: a new directory under /tmp)
#   SRC_PKG=linux-source-6.1 PATCHES=/path/to/series kernel/check-series.sh
#
# Environment: JOBS (make -j, default 2); EXTRA_CONFIG, symbols to set on top
# of the fragment for a variant, e.g. EXTRA_CONFIG="KEXEC_STAGED=n COMPAT=y";
# SRC_PKG and PATCHES for another series than the lab's (default: build.sh's
# source package and kernel/patches).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC_PKG=${SRC_PKG:-$(sed -n 's/^SRC_PKG=//p' "$HERE/build.sh")}
TARBALL=/usr/src/$SRC_PKG.tar.xz
PATCHES=$(cd "${PATCHES:-$HERE/patches}" && pwd)
WORK=${1:-$(mktemp -d /tmp/check-series.XXXXXX)}
JOBS=${JOBS:-2}
OBJECTS=(mm/page_alloc.o kernel/kexec_core.o kernel/kexec.o kernel/exit.o
	 arch/x86/kernel/machine_kexec_64.o arch/x86/kernel/relocate_kernel_64.o)

log() { echo "check-series: $*" >&2; }

src=$WORK/$SRC_PKG
out=$WORK/build
mkdir -p "$WORK"
if [[ ! -d $src ]]; then
	log "unpacking $TARBALL into $WORK"
	tar -C "$WORK" -xf "$TARBALL"
fi
mkdir -p "$out"

configure() {
	local sym
	make -C "$src" O="$out" -s tinyconfig >/dev/null
	(cd "$out" && "$src"/scripts/kconfig/merge_config.sh -m .config "$HERE/lab.config" >/dev/null)
	for sym in ${EXTRA_CONFIG:-}; do
		"$src"/scripts/config --file "$out/.config" --set-val "${sym%%=*}" "${sym#*=}"
	done
	make -C "$src" O="$out" -s olddefconfig >/dev/null 2>&1
}

build_objects() {
	local what=$1 msgs=$WORK/messages
	if ! make -C "$src" O="$out" -s -j"$JOBS" W=1 "${OBJECTS[@]}" >"$msgs" 2>&1 || [[ -s $msgs ]]; then
		cat "$msgs" >&2
		log "FAIL after $what"
		exit 1
	fi
	log "ok after $what"
}

# Configure once, and again only after a patch that changes a Kconfig file
# (reconfiguring makes Kbuild redo its prepare steps, minutes on shared cores).
configure
build_objects "the unpatched source"
for p in $(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$PATCHES/series" | grep -v '^$'); do
	patch -d "$src" -p1 --batch --forward --quiet < "$PATCHES/$p"
	if grep -q '^+++ .*/Kconfig' "$PATCHES/$p"; then
		configure
	fi
	build_objects "$p"
done
log "every patch builds (${EXTRA_CONFIG:-lab.config})"
