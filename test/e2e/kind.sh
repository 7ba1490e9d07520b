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

# The security tests read the API server's audit log (which user read a
# Secret): a cluster this script creates writes it to a host directory.
# A cluster that already exists has none unless SECRETFS_AUDIT_LOG names
# it, and those tests then fail.
work=$(mktemp -d)
cleanup() {
	if [[ -n ${created:-} && -z ${KEEP_CLUSTER:-} ]]; then kind delete cluster --name "$cluster"; fi
	rm -rf "$work"
}
trap cleanup EXIT
created=
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
	mkdir -p "$work/audit" "$work/policy"
	cat >"$work/policy/audit-policy.yaml" <<'EOF_AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
- level: None
EOF_AUDIT
	# Appended to the control-plane node, whose kubeadmConfigPatches list
	# ends the file: one more patch, and the mounts.
	cat "$repo/deploy/kind/cluster.yaml" - >"$work/cluster.yaml" <<EOF_KIND
      - |
        kind: ClusterConfiguration
        apiServer:
          extraArgs:
            audit-policy-file: /etc/kubernetes/audit-policy/audit-policy.yaml
            audit-log-path: /var/log/kubernetes/audit/audit.log
            audit-log-format: json
          extraVolumes:
            - {name: audit-policy, hostPath: /etc/kubernetes/audit-policy, mountPath: /etc/kubernetes/audit-policy, readOnly: true, pathType: Directory}
            - {name: audit-log, hostPath: /var/log/kubernetes/audit, mountPath: /var/log/kubernetes/audit, readOnly: false, pathType: DirectoryOrCreate}
    extraMounts:
      - {hostPath: $work/policy, containerPath: /etc/kubernetes/audit-policy, readOnly: true}
      - {hostPath: $work/audit, containerPath: /var/log/kubernetes/audit}
EOF_KIND
	kind create cluster --name "$cluster" --config "$work/cluster.yaml" --wait 120s
	created=1
	export SECRETFS_AUDIT_LOG=$work/audit/audit.log
fi
kubeconfig=$work/kubeconfig
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

# TestHelmChart installs the chart with these values (helm from HELM, which
# make exports); without helm it is skipped, and the summary says so.
printf 'image: {repository: secretfs, tag: e2e, pullPolicy: Never}\n' >"$work/helm-values.yaml"
export SECRETFS_E2E_HELM_VALUES=$work/helm-values.yaml
go run -C "$repo" ./test/skips -tags e2e -count=1 -parallel "${E2E_PARALLEL:-8}" -timeout 20m -v ${E2E_RUN:+-run "$E2E_RUN"} ./test/e2e/
