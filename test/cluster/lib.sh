# Shared settings of up.sh and down.sh; sourced, not run.
#
#   SECRETFS_CLUSTER_DIR   work dir with all state, logs and the admin kubeconfig
#                          (default /tmp/secretfs-cluster)
#   SECRETFS_K8S_BIN       where test/tools/build.sh puts the binaries
#   SECRETFS_APISERVER_PORT, SECRETFS_ETCD_PORT   loopback ports (6443, 2379)
#   SECRETFS_FAKEAZURE_PORT  loopback port the e2e tests serve the fake Azure
#                          on, and the driver is pointed at (18443)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W=${SECRETFS_CLUSTER_DIR:-/tmp/secretfs-cluster}
LOGS=$W/logs
RUN=$W/run
PKI=$W/pki
KUBELET_ROOT=$W/kubelet
CONTAINERD_SOCK=$W/containerd/containerd.sock
APISERVER_PORT=${SECRETFS_APISERVER_PORT:-6443}
ETCD_PORT=${SECRETFS_ETCD_PORT:-2379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
KUBECONFIG_ADMIN=$W/admin.kubeconfig
DRIVER_NS=secretfs-system
# External providers' sockets (the driver sees this as
# /var/run/secrets-store-csi-providers).
PROVIDERS_DIR=$W/providers
# ... and the second directory (/etc/kubernetes/secrets-store-csi-providers).
PROVIDERS_ETC_DIR=$W/providers-etc
# The fake Azure of the e2e tests: the driver trusts the CA in
# $FAKEAZURE_DIR/ca.crt (its key stays in $PKI); the tests sign the fake's
# serving certificate with it, so the driver can start before the fake.
FAKEAZURE_PORT=${SECRETFS_FAKEAZURE_PORT:-18443}
FAKEAZURE_DIR=$W/fakeazure
FAKEAZURE_VAULT_SUFFIX=vault.azure.test
NODE=localhost

# Host paths the stack writes outside the work dir. up.sh records which of
# them did not exist before, and down.sh removes exactly those.
HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/lib/cni /var/run/netns /opt/cni)
CGROUP_NAMES=(kubepods k8s.io)
IPTABLES_CHAINS=(filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT)

log() { echo "cluster: $*" >&2; }
die() {
	echo "cluster: error: $*" >&2
	echo "cluster: logs are in $LOGS" >&2
	exit 1
}

# alive NAME: the process recorded for NAME is running (and is still ours:
# its command line names the binary, so a reused pid does not count).
alive() {
	local pidfile=$RUN/$1.pid pid
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1"
}

# stop NAME: SIGTERM the recorded process, SIGKILL after 15 s.
stop() {
	local name=$1 pid
	if alive "$name"; then
		pid=$(<"$RUN/$name.pid")
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 150); do
			alive "$name" || break
			sleep 0.1
		done
		if alive "$name"; then
			log "$name did not stop in 15 s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.5
		fi
	fi
	rm -f "$RUN/$name.pid"
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# find_bin: the binaries of test/tools/build.sh; builds the missing ones.
find_bin() {
	BIN=$("$repo/test/tools/build.sh" | tail -n 1)
	[[ -x $BIN/kubelet ]] || die "test/tools/build.sh did not produce kubelet in $BIN"
}
