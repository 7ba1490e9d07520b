#!/usr/bin/env bash
# make e2e: start the local cluster (NODES nodes, default 3), run the e2e
# tests against it, and stop it again whatever happened. The tests run in
# the control plane's network namespace (test/cluster/exec.sh), where the API
# server and the address the fake Azure listens on are. On failure the
# cluster's logs are kept and their path printed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
W=${SECRETFS_CLUSTER_DIR:-/tmp/secretfs-cluster}

start=$SECONDS
"$repo/test/cluster/up.sh"
rc=$?
if ((rc == 0)); then
	echo "e2e: cluster up in $((SECONDS - start)) s; running tests" >&2
	t0=$SECONDS
	"$repo/test/cluster/exec.sh" env SECRETFS_AUDIT_LOG="$W/audit.log" SECRETFS_E2E_HELM_VALUES="$W/deploy/helm-values.yaml" \
		SECRETFS_E2E_NODE_CTL="$repo/test/cluster/node.sh" \
		go run -C "$repo" ./test/skips -tags "${E2E_TAGS:-e2e}" -count=1 -parallel "${E2E_PARALLEL:-8}" -timeout "${E2E_TIMEOUT:-20m}" -v ${E2E_RUN:+-run "$E2E_RUN"} ./test/e2e/
	rc=$?
	echo "e2e: tests took $((SECONDS - t0)) s (exit $rc)" >&2
fi
if ((rc != 0)); then
	SECRETFS_KEEP_LOGS=1 "$repo/test/cluster/down.sh"
else
	"$repo/test/cluster/down.sh"
fi
exit $rc
