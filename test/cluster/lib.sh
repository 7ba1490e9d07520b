# Shared settings of up.sh, down.sh, exec.sh and leaks.sh; sourced, not run.
#
#   NODES                  number of worker nodes (default 3; 1 is the same code)
#   SECRETFS_CLUSTER_DIR   work dir with all state, logs and the admin kubeconfig
#                          (default /tmp/secretfs-cluster)
#   SECRETFS_K8S_BIN       where test/tools/build.sh puts the binaries
#   SECRETFS_APISERVER_PORT, SECRETFS_ETCD_PORT   ports in the control plane's
#                          network namespace (6443, 2379)
#   SECRETFS_FAKEAZURE_PORT  port the e2e tests serve the fake Azure on, on the
#                          control plane's bridge address (18443)
#
# Network: the control plane runs in the network namespace $CP_NETNS, which
# holds the bridge $BRIDGE ($CP_IP/24). Node i runs in $NODE_NETNS_PREFIX$i,
# joined to the bridge by a veth pair with the address 10.240.0.(10+i), and
# its pods get 10.244.i.0/24 from the CNI bridge plugin. Every one of these
# addresses exists only inside namespaces up.sh creates and down.sh removes:
# no namespace has a default route, nothing is masqueraded, and the host's
# own network namespace gets no interface, route or iptables rule.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W=${SECRETFS_CLUSTER_DIR:-/tmp/secretfs-cluster}
LOGS=$W/logs
RUN=$W/run
PKI=$W/pki
APISERVER_PORT=${SECRETFS_APISERVER_PORT:-6443}
ETCD_PORT=${SECRETFS_ETCD_PORT:-2379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
KUBECONFIG_ADMIN=$W/admin.kubeconfig
DRIVER_NS=secretfs-system
CP_NETNS=secretfs-cp
NODE_NETNS_PREFIX=secretfs-node-
BRIDGE=secretfs0
CP_IP=10.240.0.1
# The number of nodes of a running cluster is the one it was started with.
if [[ -f $W/nodes ]]; then NODES=$(<"$W/nodes"); else NODES=${NODES:-3}; fi
[[ $NODES =~ ^[1-9]$ ]] || { echo "cluster: NODES must be 1..9, not \"$NODES\"" >&2; exit 1; }
# The name, address, pod subnet and dirs of node i.
node_name() { echo "secretfs-node-$1"; }
node_ip() { echo "10.240.0.$((10 + $1))"; }
node_pod_subnet() { echo "10.244.$1.0/24"; }
node_dir() { echo "$W/node-$1"; }
# Its mount namespace, kept by a bind mount of the namespace file.
node_mntns() { echo "$W/ns/node-$1.mnt"; }
node_containerd_sock() { echo "$(node_dir "$1")/containerd/containerd.sock"; }
# External providers' sockets (the driver sees this as
# /var/run/secrets-store-csi-providers) and the second directory
# (/etc/kubernetes/secrets-store-csi-providers), per node.
node_providers_dir() { echo "$(node_dir "$1")/providers"; }
node_providers_etc_dir() { echo "$(node_dir "$1")/providers-etc"; }
# The kubelet root dir: the same path in every node's mount namespace (a
# bind mount of the node's own dir), so one DaemonSet fits every node.
KUBELET_ROOT=$W/kubelet
PROVIDERS_DIR=$W/providers
PROVIDERS_ETC_DIR=$W/providers-etc
# The fake Azure of the e2e tests: the driver trusts the CA in
# $FAKEAZURE_DIR/ca.crt (its key stays in $PKI); the tests sign the fake's
# serving certificate with it, so the driver can start before the fake.
FAKEAZURE_PORT=${SECRETFS_FAKEAZURE_PORT:-18443}
FAKEAZURE_DIR=$W/fakeazure
FAKEAZURE_VAULT_SUFFIX=vault.azure.test
# Each node's kubelet puts its pods under the cgroup /$CGROUP_PREFIX<i>.
CGROUP_PREFIX=secretfs-node-

log() { echo "cluster: $*" >&2; }
die() {
	echo "cluster: error: $*" >&2
	echo "cluster: logs are in $LOGS" >&2
	exit 1
}

# in_cp CMD...: run CMD in the control plane's network namespace.
in_cp() { ip netns exec "$CP_NETNS" "$@"; }
# in_node I CMD...: run CMD in node I's network and mount namespaces.
in_node() {
	local i=$1
	shift
	nsenter --net="/run/netns/$NODE_NETNS_PREFIX$i" --mount="$(node_mntns "$i")" "$@"
}

# alive NAME BINARY: the process recorded for NAME is running (and is still
# ours: its command line names BINARY, so a reused pid does not count).
alive() {
	local pidfile=$RUN/$1.pid pid
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "${2:-$1}"
}

# stop NAME BINARY: SIGTERM the recorded process, SIGKILL after 15 s.
stop() {
	local name=$1 bin=${2:-$1} pid
	if alive "$name" "$bin"; then
		pid=$(<"$RUN/$name.pid")
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 150); do
			alive "$name" "$bin" || break
			sleep 0.1
		done
		if alive "$name" "$bin"; then
			log "$name did not stop in 15 s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.5
		fi
	fi
	rm -f "$RUN/$name.pid"
}

kubectl_admin() { in_cp "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# find_bin: the binaries of test/tools/build.sh; builds the missing ones.
find_bin() {
	BIN=$("$repo/test/tools/build.sh" | tail -n 1)
	[[ -x $BIN/kubelet ]] || die "test/tools/build.sh did not produce kubelet in $BIN"
}
