#!/usr/bin/env bash
# Builds the images the tests run, as docker-archive tarballs in OUT_DIR
# (default _output/images):
#   secretfs.tar          secretfs:e2e            the driver (deploy/image/build.sh)
#   secretfs-testapp.tar  secretfs-testapp:e2e    test/testapp
#   secretfs-pause.tar    secretfs-pause:e2e      test/pause, the pod sandbox image
# Each loads with `ctr -n k8s.io images import` or `kind load image-archive`.
# IMAGES="pause testapp" builds only those (default: all three).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT_DIR:-$repo/_output/images}
mkdir -p "$out"

tiny() { # name package ref
	local rootfs
	rootfs=$(mktemp -d)
	CGO_ENABLED=0 go build -C "$repo" -trimpath -ldflags "-s -w" -o "$rootfs/$1" "$2"
	"$repo/deploy/image/archive.sh" "$out/$3.tar" "$3:e2e" "$rootfs" "/$1"
	rm -rf "$rootfs"
}
for img in ${IMAGES:-secretfs testapp pause}; do
	case $img in
	secretfs) "$repo/deploy/image/build.sh" "$out/secretfs.tar" secretfs:e2e ;;
	testapp) tiny testapp ./test/testapp secretfs-testapp ;;
	pause) tiny pause ./test/pause secretfs-pause ;;
	*) echo "$0: unknown image $img" >&2; exit 2 ;;
	esac
done
