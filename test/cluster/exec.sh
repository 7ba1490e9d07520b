#!/usr/bin/env bash
# Runs a command where the local cluster's API server can be reached: in the
# control plane's network namespace (secretfs-cp), with KUBECONFIG set to the
# admin kubeconfig and the cluster's kubectl first on PATH. Root.
#
#   test/cluster/exec.sh kubectl get nodes -o wide
#   test/cluster/exec.sh go test -tags e2e -count=1 ./test/e2e/
#   test/cluster/exec.sh --node 2 ip route   # in node 2's network and mount namespaces
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ -f $W/bin ]] || die "no cluster in $W (make cluster-up)"
BIN=$(<"$W/bin")
if [[ ${1:-} == --node ]]; then
	i=$2
	shift 2
	exec nsenter --net="/run/netns/$NODE_NETNS_PREFIX$i" --mount="$(node_mntns "$i")" "$@"
fi
# The caller lives in the host's namespaces as long as CMD runs: node.sh
# goes back there through it.
exec ip netns exec "$CP_NETNS" env KUBECONFIG="$KUBECONFIG_ADMIN" PATH="$BIN:$PATH" \
	SECRETFS_HOST_NS_PID="${SECRETFS_HOST_NS_PID:-$PPID}" "$@"
