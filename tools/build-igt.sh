#!/usr/bin/env bash
# Build IGT's eudebug test binaries (xe_eudebug, xe_eudebug_online, xe_exec_sip_eudebug) for the
# conformance run (tests/igt/test_igt_conformance.py), following ../shared/igt/README.md.
#
#   tools/build-igt.sh [BUILD_DIR]        default BUILD_DIR: build/igt in the repository
#
# IGT_SRC: the IGT source, a .tar.xz or an extracted tree (default:
# ../shared/igt/igt-gpu-tools-b3d809d5.tar.xz beside the repository).  Without it this says so
# and exits 0: the conformance tests then skip.  Installs the Debian build packages with apt-get
# when they are missing and this runs as root.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build/igt}"
src="${IGT_SRC:-$(dirname "$repo")/shared/igt/igt-gpu-tools-b3d809d5.tar.xz}"

if [ ! -e "$src" ]; then
    echo "build-igt: no IGT source at $src (set IGT_SRC): IGT conformance tests will be skipped"
    exit 0
fi
if [ -x "$build/tests/xe_eudebug" ] && [ -f "$build/.igt-src" ] && [ "$(cat "$build/.igt-src")" = "$src" ]; then
    echo "build-igt: $build is up to date"
    exit 0
fi

packages="meson ninja-build pkg-config gcc libc6-dev libpciaccess-dev libkmod-dev libproc2-dev libdw-dev
  zlib1g-dev libcairo2-dev libpixman-1-dev libudev-dev libglib2.0-dev libdrm-dev umockdev"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "build-igt: installing$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "build-igt: missing Debian packages:$missing (install them as root)" >&2
        exit 1
    fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -d "$src" ]; then
    tree="$src"
else
    tar -xJf "$src" -C "$work"
    tree="$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)"
fi
rm -rf "$build"
mkdir -p "$(dirname "$build")"
meson setup "$build" "$tree" -Dxe_eudebug=enabled -Dlibdrm_drivers=[] \
    -Doverlay=disabled -Dchamelium=disabled -Dvalgrind=disabled -Dman=disabled -Dtestplan=disabled \
    -Dsphinx=disabled -Ddocs=disabled -Dlibunwind=disabled -Drunner=disabled -Doping=disabled \
    -Dvmtb=disabled -Dversion_hash=b3d809d5 >"$work/meson.log" 2>&1 || { cat "$work/meson.log" >&2; exit 1; }
ninja -C "$build" tests/xe_eudebug tests/xe_eudebug_online tests/xe_exec_sip_eudebug \
    >"$work/ninja.log" 2>&1 || { tail -50 "$work/ninja.log" >&2; exit 1; }
echo "$src" > "$build/.igt-src"
echo "build-igt: built $build/tests/xe_eudebug"
