#!/usr/bin/env bash
# Packs a directory into a one-layer image in docker-archive form (what
# `docker save` writes), without Docker or a registry. The result loads with
#   ctr -n k8s.io images import IMAGE.tar
#   kind load image-archive IMAGE.tar
#   docker load -i IMAGE.tar
#
# usage: archive.sh OUT.tar REF ROOTFS-DIR ENTRYPOINT [ARG...]
# REF is a name:tag; the layer is reproducible (fixed owner, mode order, mtime).
set -euo pipefail

if [[ $# -lt 4 ]]; then
	echo "usage: $0 OUT.tar REF ROOTFS-DIR ENTRYPOINT [ARG...]" >&2
	exit 2
fi
out=$1 ref=$2 rootfs=$3
shift 3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
	-C "$rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/$diff_id"
mv "$work/layer.tar" "$work/$diff_id/layer.tar"

arch=$(go env GOARCH)
# Entrypoint words are plain paths and flags: no JSON escaping needed.
entrypoint=$(printf '"%s",' "$@")
entrypoint="[${entrypoint%,}]"
cat >"$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Entrypoint":$entrypoint,"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"deploy/image/archive.sh"}]}
JSON
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/$config_id.json"
cat >"$work/manifest.json" <<JSON
[{"Config":"$config_id.json","RepoTags":["$ref"],"Layers":["$diff_id/layer.tar"]}]
JSON
mkdir -p "$(dirname "$out")"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.tmp" manifest.json "$config_id.json" "$diff_id"
mv -f "$out.tmp" "$out"
echo "$out ($ref)"
