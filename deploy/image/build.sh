#!/usr/bin/env bash
# Builds the secretfs image as a docker-archive tarball, without Docker:
# a static secretfs binary plus busybox's mount and umount, which
# k8s.io/mount-utils runs for unmounts and mount-point checks.
#
# usage: deploy/image/build.sh [OUT.tar] [REF]
#   default OUT: _output/images/secretfs.tar, REF: secretfs:dev
# Needs Go and a static busybox (Debian/Ubuntu: apt-get install busybox-static).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/_output/images/secretfs.tar}
ref=${2:-secretfs:dev}
busybox=${BUSYBOX:-/bin/busybox}

if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
	echo "$0: $busybox is not a static busybox; install busybox-static or set BUSYBOX=" >&2
	exit 1
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
chmod 1777 "$rootfs/tmp"
version=$(git -C "$repo" describe --tags --always --dirty 2>/dev/null || echo dev)
# -tags grpcnotrace: as the Makefile's TAGS (the reason is there).
CGO_ENABLED=0 go build -C "$repo" -trimpath -tags grpcnotrace -ldflags "-s -w -X github.com/secretfs/secretfs/driver.Version=$version" -o "$rootfs/bin/secretfs" ./cmd/secretfs
cp "$busybox" "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/mount"
ln -s busybox "$rootfs/bin/umount"
echo 'root:x:0:0:root:/:/bin/secretfs' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"

"$repo/deploy/image/archive.sh" "$out" "$ref" "$rootfs" /bin/secretfs
