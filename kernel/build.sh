#!/bin/bash
# Build the kernel lab's bzImage: Debian's linux-source-6.12 + patches/series,
# configured as tinyconfig + lab.config. The result is cached outside the
# checkout, keyed by everything that determines it, so a second run is instant.
#
#   kernel/build.sh            build if needed; print the bzImage path
#   kernel/build.sh --path     print the bzImage path if it is cached, else exit 1
#   kernel/build.sh --key      print the cache key
#   kernel/build.sh --headers  build if needed; print a directory with the
#                              patched tree's installed uapi headers
#                              (include/) and the kselftest headers
#                              (selftests/), for userspace built against
#                              this kernel (tests/lab/test_kselftest.py)
#
# Environment:
#   KEXECHIB_KERNEL_CACHE  cache root (default /var/cache/kexechib-kernel)
#   JOBS                   make -j (default 2: the machine is shared)
#   KEEP_BUILD=1           keep the build tree (for debugging), else it is removed
#   KEXECHIB_CCACHE=0      compile without ccache (default: with it, if installed)
#
# Layout: $KEXECHIB_KERNEL_CACHE/<key>/{bzImage,config,System.map,inputs}
#         $KEXECHIB_KERNEL_CACHE/headers-<key>/{include,selftests}
# The key is the SHA-256 of: the source package's name and version, the config
# fragment, the series file and every patch in it (in order), the compiler's
# version and RECIPE below (bump it when this script changes how it builds).
#
# Compiling goes through ccache (cache in $KEXECHIB_KERNEL_CACHE/ccache): a
# change to one patch then recompiles only the objects whose preprocessed
# source changed, not the whole tree. ccache is not part of the key: it
# returns an object only for the same compiler, flags and preprocessed source,
# so the bzImage is the one a build without it would make.
set -euo pipefail

RECIPE=2
SRC_PKG=linux-source-6.12
SRC_TARBALL=/usr/src/$SRC_PKG.tar.xz
APT_DEPS=($SRC_PKG bc bison flex libelf-dev libssl-dev make gcc xz-utils perl)

HERE=$(cd "$(dirname "$0")" && pwd)
FRAGMENT=$HERE/lab.config
PATCHES=$HERE/patches
SERIES=$PATCHES/series
CACHE=${KEXECHIB_KERNEL_CACHE:-/var/cache/kexechib-kernel}
JOBS=${JOBS:-2}

CCACHE_ROOT=$CACHE/ccache

log() { echo "lab-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Patch names from the series file, in order (comments and blank lines skipped).
series() {
	sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$SERIES" | grep -v '^$' || true
}

ensure_packages() {
	local missing=() p
	for p in "${APT_DEPS[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' \
			|| missing+=("$p")
	done
	if ((${#missing[@]})); then
		log "apt: installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get -o DPkg::Lock::Timeout=600 update -q >&2
		apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
			"${missing[@]}" >&2
	fi
}

compute_key() {
	local version p
	version=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) \
		|| die "$SRC_PKG is not installed"
	{
		echo "recipe $RECIPE"
		echo "source $SRC_PKG $version"
		echo "compiler $(gcc --version | head -n1)"
		echo "fragment"; cat "$FRAGMENT"
		echo "series"; cat "$SERIES"
		for p in $(series); do
			[[ -f $PATCHES/$p ]] || die "series names $p, which is not in $PATCHES"
			echo "patch $p"; cat "$PATCHES/$p"
		done
	} | sha256sum | cut -c1-16
}

# Fail if Kconfig dropped any value the fragment asks for (unmet dependency).
check_config() {
	local config=$1 line bad=0
	while IFS= read -r line; do
		if ! grep -qxF "$line" "$config"; then
			log "config: '$line' did not survive olddefconfig"
			bad=1
		fi
	done < <(grep -E '^CONFIG_[A-Z0-9_]+=|^# CONFIG_[A-Z0-9_]+ is not set' "$FRAGMENT")
	return $bad
}

# A fresh $1/$SRC_PKG with the series applied.
unpack() {
	local work=$1 p
	rm -rf "$work"
	mkdir -p "$work"
	log "unpacking $SRC_TARBALL"
	tar -C "$work" -xf "$SRC_TARBALL"
	for p in $(series); do
		log "applying $p"
		patch -d "$work/$SRC_PKG" -p1 --batch --forward --quiet < "$PATCHES/$p"
	done
}

# The uapi headers of the patched tree and the kselftest headers, without
# building a kernel: what a test program built for the lab kernel needs.
headers() {
	local key=$1 out=$CACHE/headers-$key
	local work=$CACHE/headers-build-$key
	local src=$work/$SRC_PKG
	local started=$SECONDS
	unpack "$work"
	# headers_install is `make headers` and an rsync of the .h files;
	# rsync is not installed here, so copy them.
	make -C "$src" -s headers >&2
	mkdir -p "$work/out/include" "$work/out/selftests"
	(cd "$src/usr/include" && find . -name '*.h' -exec cp --parents -t "$work/out/include" {} +)
	cp "$src/tools/testing/selftests/kselftest.h" \
		"$src/tools/testing/selftests/kselftest_harness.h" "$work/out/selftests/"
	rm -rf "$out"
	mv "$work/out" "$out"
	rm -rf "$work"
	log "installed headers in $out in $((SECONDS - started)) s"
}

build() {
	local key=$1 out=$CACHE/$key
	local work=$CACHE/build-$key
	local src=$work/$SRC_PKG
	local started=$SECONDS
	unpack "$work"
	log "configuring (tinyconfig + $(basename "$FRAGMENT"))"
	make -C "$src" -s tinyconfig >/dev/null
	(cd "$src" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null)
	# Kconfig warns that the fragment overrides tinyconfig's compression
	# choice; that is intended, anything else is shown.
	if ! make -C "$src" -s olddefconfig >"$work/olddefconfig.log" 2>&1; then
		cat "$work/olddefconfig.log" >&2
		die "make olddefconfig failed"
	fi
	grep -v 'changes choice state' "$work/olddefconfig.log" >&2 || true
	check_config "$src/.config" || die "config fragment not satisfied"
	local cc=()
	if [[ ${KEXECHIB_CCACHE:-1} != 0 ]] && command -v ccache >/dev/null; then
		# Each key builds in its own directory: BASEDIR makes the paths
		# ccache hashes relative to it, so another key's objects match.
		# The tree is private to this build, so the guard against headers
		# changing during the build (mtime/ctime) is not needed; without
		# this sloppiness every freshly unpacked or generated header
		# would force the slower preprocessor mode.
		export CCACHE_DIR=$CCACHE_ROOT CCACHE_BASEDIR=$work CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-3G}
		export CCACHE_SLOPPINESS=include_file_mtime,include_file_ctime
		cc=(CC="ccache gcc" HOSTCC="ccache gcc")
		ccache --zero-stats >/dev/null
	fi
	log "building bzImage with -j$JOBS${cc:+ through ccache}"
	# The banner (uname -v, /proc/version) names the cache key, so a guest
	# log tells which build it ran.
	KBUILD_BUILD_USER=kexechib KBUILD_BUILD_HOST=lab KBUILD_BUILD_VERSION="$key" \
		make -C "$src" -s -j"$JOBS" "${cc[@]}" bzImage
	if ((${#cc[@]})); then
		log "ccache: $(ccache --print-stats 2>/dev/null | awk -F'\t' '/^(direct_cache_hit|preprocessed_cache_hit|cache_miss)\t/ {printf "%s %s ", $1, $2}')"
	fi
	mkdir -p "$work/out"
	cp "$src/arch/x86/boot/bzImage" "$src/.config" "$src/System.map" "$work/out/"
	mv "$work/out/.config" "$work/out/config"
	{
		echo "key $key"
		echo "source $SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG")"
		echo "release $(make -C "$src" -s kernelrelease)"
		echo "patches $(series | tr '\n' ' ')"
		echo "built $(date -u +%FT%TZ) in $((SECONDS - started)) s"
	} > "$work/out/inputs"
	rm -rf "$out"
	mv "$work/out" "$out"
	if [[ ${KEEP_BUILD:-0} == 1 ]]; then
		log "build tree kept in $work"
	else
		rm -rf "$work"
	fi
	log "built $out/bzImage in $((SECONDS - started)) s"
}

main() {
	case ${1:-} in
	--key)
		compute_key; return ;;
	--path)
		local key; key=$(compute_key)
		[[ -f $CACHE/$key/bzImage ]] || exit 1
		echo "$CACHE/$key/bzImage"; return ;;
	--headers)
		ensure_packages
		local key; key=$(compute_key)
		if [[ ! -d $CACHE/headers-$key ]]; then
			mkdir -p "$CACHE"
			exec 9>"$CACHE/.lock-headers-$key"
			flock 9
			[[ -d $CACHE/headers-$key ]] || headers "$key"
		fi
		echo "$CACHE/headers-$key"; return ;;
	"") ;;
	*) die "usage: $0 [--path|--key|--headers]" ;;
	esac
	ensure_packages
	local key; key=$(compute_key)
	if [[ ! -f $CACHE/$key/bzImage ]]; then
		mkdir -p "$CACHE"
		# One build per key at a time; a waiting run finds the result cached.
		exec 9>"$CACHE/.lock-$key"
		flock 9
		[[ -f $CACHE/$key/bzImage ]] || build "$key"
	fi
	echo "$CACHE/$key/bzImage"
}

main "$@"
