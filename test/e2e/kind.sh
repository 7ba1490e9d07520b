#!/usr/bin/env bash
# make e2e-kind: run the e2e tests on a kind cluster (needs Docker and kind).
# Creates the cluster of deploy/kind/cluster.yaml (unless one named
# $KIND_CLUSTER exists), loads the images from docker-archive tarballs,
# deploys test/e2e/overlay, runs the tests, and deletes the cluster it
# created (KEEP_CLUSTER=1 keeps it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${KIND_CLUSTER:-secretfs}
kubectl=${KUBECTL:-kubectl}
for tool in kind docker "$kubectl"; do
	command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is not installed" >&2; exit 1; }
done

created=
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
	kind create cluster --name "$cluster" --config "$repo/deploy/kind/cluster.yaml" --wait 120s
	created=1
fi
kubeconfig=$(mktemp)
cleanup() {
	rm -f "$kubeconfig"
	if [[ -n $created && -z ${KEEP_CLUSTER:-} ]]; then kind delete cluster --name "$cluster"; fi
}
trap cleanup EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"
export KUBECONFIG=$kubeconfig

OUT_DIR="$repo/_output/images" "$repo/test/image/build.sh"
for img in secretfs secretfs-testapp; do
	kind load image-archive --name "$cluster" "$repo/_output/images/$img.tar"
done

"$kubectl" apply -k "$repo/test/e2e/overlay"
"$kubectl" wait --for condition=Established --timeout 60s crd/secretproviderclasses.secrets-store.csi.x-k8s.io
# A re-run with new images: make the driver pick them up.
"$kubectl" -n secretfs-system rollout restart ds/secretfs-node ds/secretfs-provider-extfake
for ds in secretfs-node secretfs-provider-extfake; do "$kubectl" -n secretfs-system rollout status "ds/$ds" --timeout 180s; done

go test -C "$repo" -tags e2e -count=1 -timeout 20m -v ${E2E_RUN:+-run "$E2E_RUN"} ./test/e2e/
