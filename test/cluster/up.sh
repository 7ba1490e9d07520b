#!/usr/bin/env bash
# Starts a real multi-node Kubernetes without Docker or a registry, the way
# kind builds one: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler (built by test/tools/build.sh) in the network namespace
# secretfs-cp, and NODES worker nodes (default 3), each in its own network
# and mount namespace with its own containerd, kubelet and CNI bridge pod
# network; images imported from tarballs, and secretfs deployed from deploy/
# as a DaemonSet. Idempotent: running it again starts only what is not
# running. Needs root. Stop it with down.sh. Settings and the address plan:
# see lib.sh. Reach the API server from inside secretfs-cp (exec.sh).
#
#   NODES=1             a single node (the same code)
#   SECRETFS_DEPLOY=0   start the cluster without building and deploying secretfs
#   SECRETFS_TOKEN_AUDIENCES=vault,...   audiences added to the CSIDriver's
#                       tokenRequests (and the chart values' tokenAudiences) on
#                       every run, for external providers such as Vault
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_time=$SECONDS

[[ $(id -u) == 0 ]] || die "must run as root (namespaces, kubelet, containerd and mounts need it)"
mkdir -p "$W" "$LOGS" "$RUN" "$PKI"
chmod 700 "$W"
echo "$NODES" >"$W/nodes"
trap 'echo "cluster: up failed; logs are in $LOGS" >&2' ERR

# --- packages ---------------------------------------------------------------
need_pkgs=()
command -v containerd >/dev/null || need_pkgs+=(containerd)
command -v runc >/dev/null || need_pkgs+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || need_pkgs+=(containernetworking-plugins)
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need_pkgs+=(busybox-static)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v iptables >/dev/null || need_pkgs+=(iptables)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
	log "installing ${need_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 "${need_pkgs[@]}" >"$LOGS/apt.log" 2>&1 ||
		die "apt-get install ${need_pkgs[*]} failed (see $LOGS/apt.log)"
fi

# --- binaries and images ----------------------------------------------------
log "building etcd and Kubernetes binaries if missing (test/tools/build.sh: 20-40 min the first time on 2 cores, seconds after)"
find_bin
echo "$BIN" >"$W/bin"
log "building images"
images="pause testapp"
[[ ${SECRETFS_DEPLOY:-1} == 0 ]] || images+=" secretfs"
IMAGES=$images OUT_DIR=$W/images "$repo/test/image/build.sh" >"$LOGS/images.log" 2>&1 || die "image build failed (see $LOGS/images.log)"

# --- PKI and credentials ----------------------------------------------------
cert() { # name subject eku san
	local name=$1 subj=$2 eku=$3 san=${4:-}
	[[ -f $PKI/$name.crt ]] && return 0
	openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	{
		echo "extendedKeyUsage=$eku"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		[[ -n $san ]] && echo "subjectAltName=$san"
	} >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
		-days 30 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
if [[ ! -f $PKI/ca.crt ]]; then
	log "generating PKI"
	openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -subj "/CN=secretfs-test-ca" \
		-days 30 -out "$PKI/ca.crt" 2>/dev/null
fi
cert apiserver "/CN=kube-apiserver" serverAuth \
	"IP:127.0.0.1,IP:$CP_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
# The API server's identity towards kubelet (exec, logs).
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
if [[ ! -f $PKI/sa.key ]]; then
	openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
	openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
# The CA of the e2e tests' fake Azure (see lib.sh).
if [[ ! -f $PKI/fakeazure-ca.crt ]]; then
	openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/fakeazure-ca.key" \
		-subj "/CN=secretfs-e2e-fakeazure-ca" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$PKI/fakeazure-ca.crt" 2>/dev/null
fi
mkdir -p "$FAKEAZURE_DIR" "$PROVIDERS_DIR" "$PROVIDERS_ETC_DIR" "$KUBELET_ROOT"
cp "$PKI/fakeazure-ca.crt" "$FAKEAZURE_DIR/ca.crt"
chmod 600 "$PKI"/*.key

token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
if [[ ! -f $PKI/tokens.csv ]]; then
	{
		echo "$(token),admin,admin,system:masters"
		for i in $(seq 9); do echo "$(token),system:node:$(node_name "$i"),kubelet-$i,system:nodes"; done
		echo "$(token),system:kube-controller-manager,kube-controller-manager"
		echo "$(token),system:kube-scheduler,kube-scheduler"
	} >"$PKI/tokens.csv"
	chmod 600 "$PKI/tokens.csv"
fi
kubeconfig() { # file user server
	local file=$1 user=$2 server=$3 tok
	tok=$(awk -F, -v u="$user" '$2 == u {print $1}' "$PKI/tokens.csv")
	cat >"$file" <<EOF_KC
apiVersion: v1
kind: Config
clusters:
- name: secretfs
  cluster:
    server: https://$server:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    token: $tok
contexts:
- name: secretfs
  context: {cluster: secretfs, user: $user}
current-context: secretfs
EOF_KC
	chmod 600 "$file"
}
kubeconfig "$KUBECONFIG_ADMIN" admin "$CP_IP"
kubeconfig "$W/controller-manager.kubeconfig" system:kube-controller-manager 127.0.0.1
kubeconfig "$W/scheduler.kubeconfig" system:kube-scheduler 127.0.0.1
for i in $(seq "$NODES"); do
	mkdir -p "$(node_dir "$i")"
	kubeconfig "$(node_dir "$i")/kubelet.kubeconfig" "system:node:$(node_name "$i")" "$CP_IP"
done

# --- network ----------------------------------------------------------------
# The control plane's namespace with the bridge, and one namespace per node
# on it. Pods reach other nodes' pods and the API server through their
# node's namespace (forwarding on, a route per other node's pod subnet); no
# namespace has a default route, so nothing leaves the machine.
if [[ ! -e /run/netns/$CP_NETNS ]]; then
	# ip netns add makes /run/netns a mount of its own; down.sh removes it
	# again if it was not there before.
	if [[ ! -f $W/netns-dir-state ]]; then
		if grep -q ' /run/netns ' /proc/self/mountinfo; then echo mounted; elif [[ -d /run/netns ]]; then echo dir; else echo none; fi >"$W/netns-dir-state"
	fi
	log "network namespace $CP_NETNS with bridge $BRIDGE ($CP_IP/24)"
	ip netns add "$CP_NETNS"
	in_cp ip link set lo up
	in_cp ip link add "$BRIDGE" type bridge
	in_cp ip addr add "$CP_IP/24" dev "$BRIDGE"
	in_cp ip link set "$BRIDGE" up
fi
for i in $(seq "$NODES"); do
	ns=$NODE_NETNS_PREFIX$i
	[[ -e /run/netns/$ns ]] && continue
	log "network namespace $ns ($(node_ip "$i"), pods $(node_pod_subnet "$i"))"
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	# The veth pair is made in the control plane's namespace and one end
	# moved, so the host's namespace never holds either end.
	in_cp ip link add "sfn$i" type veth peer name eth0 netns "$ns"
	in_cp ip link set "sfn$i" master "$BRIDGE" up
	ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1
	in_cp ip route add "$(node_pod_subnet "$i")" via "$(node_ip "$i")"
	for j in $(seq "$NODES"); do
		((j == i)) || ip -n "$ns" route add "$(node_pod_subnet "$j")" via "$(node_ip "$j")"
	done
done

# --- mount namespaces and cgroups ---------------------------------------------
# Each node's mount namespace has its own /run (containerd's and runc's
# state, the pods' network namespaces), /var/lib (CNI cache, kubelet's
# device-plugin socket), /var/log (pod logs), kubelet root and providers'
# socket dirs, kept alive by a bind mount of the namespace file under $W/ns
# (a private mount, as a namespace file's bind mount must be).
mkdir -p "$W/ns"
if ! awk -v p="$W/ns" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo; then
	mount --bind "$W/ns" "$W/ns"
	mount --make-private "$W/ns"
fi
for i in $(seq "$NODES"); do
	d=$(node_dir "$i") mnt=$(node_mntns "$i")
	awk -v p="$mnt" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo && continue
	mkdir -p "$d/run" "$d/var-lib" "$d/var-log" "$d/kubelet" "$d/providers" "$d/providers-etc" "$d/cni/net.d" "$d/cni/ipam"
	touch "$mnt"
	nsenter --net="/run/netns/$NODE_NETNS_PREFIX$i" unshare --mount="$mnt" --propagation private sh -ec "
		mount -t tmpfs -o mode=755,size=64m secretfs-node-$i-run /run
		mount --bind '$d/var-lib' /var/lib
		mount --bind '$d/var-log' /var/log
		mount --bind '$d/kubelet' '$KUBELET_ROOT'
		mount --bind '$d/providers' '$PROVIDERS_DIR'
		mount --bind '$d/providers-etc' '$PROVIDERS_ETC_DIR'
		# Shared inside the node (the namespace as a whole stays private to
		# the host), as kubelet and the runtime need for mount propagation.
		mount --make-shared '$KUBELET_ROOT'
		mount --make-shared '$PROVIDERS_DIR'
		mount --make-shared '$PROVIDERS_ETC_DIR'
	"
	# kubelet's --cgroup-root must exist; cpuset children need cpus and mems.
	for h in /sys/fs/cgroup/*/; do
		[[ -d $h ]] || continue
		c=$h$CGROUP_PREFIX$i
		[[ -d $c ]] && continue
		mkdir "$c"
		if [[ -f ${h}cpuset.cpus ]]; then
			cat "${h}cpuset.cpus" >"$c/cpuset.cpus"
			cat "${h}cpuset.mems" >"$c/cpuset.mems"
		fi
	done
done

# --- processes --------------------------------------------------------------
# start NAME BINARY CMD...: run CMD in its own session, logging to
# $LOGS/NAME.log, unless NAME already runs.
start() {
	local name=$1 bin=$2
	shift 2
	if alive "$name" "$bin"; then
		log "$name: already running"
		return 0
	fi
	log "$name: starting"
	setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN/$name.pid"
}
# wait_for WHAT SECONDS CMD...: poll CMD every 0.2 s.
wait_for() {
	local what=$1 secs=$2
	shift 2
	for _ in $(seq $((secs * 5))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	die "timed out after ${secs}s waiting for $what"
}

start etcd etcd ip netns exec "$CP_NETNS" "$BIN/etcd" --name default --data-dir "$W/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_for etcd 30 in_cp "$BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" endpoint health

# Audit reads and writes of Secrets (who read or wrote which, with what
# result; metadata only, never the data), so the e2e tests can show whose
# token the driver used and which node's driver wrote a synced Secret, and
# what a pod's volume costs the API server (make bench-pods): service-account
# token requests and the secrets-store resources; nothing else is logged.
cat >"$W/audit-policy.yaml" <<'EOF_AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [get, list, watch, create, update, patch, delete]
    resources: [{group: "", resources: [secrets]}]
  - level: Metadata
    verbs: [create]
    resources: [{group: "", resources: [serviceaccounts/token]}]
  - level: Metadata
    resources: [{group: secrets-store.csi.x-k8s.io}]
  - level: None
EOF_AUDIT
# It listens on the control plane's loopback and bridge address only.
start kube-apiserver kube-apiserver ip netns exec "$CP_NETNS" "$BIN/kube-apiserver" \
	--audit-policy-file "$W/audit-policy.yaml" --audit-log-path "$W/audit.log" \
	--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
	--bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$CP_IP" \
	--endpoint-reconciler-type none \
	--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
	--client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
	--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types InternalIP \
	--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
	--service-account-issuer https://kubernetes.default.svc \
	--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
	--service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true --profiling=false
wait_for kube-apiserver 60 kubectl_admin get --raw /readyz

start kube-controller-manager kube-controller-manager ip netns exec "$CP_NETNS" "$BIN/kube-controller-manager" \
	--kubeconfig "$W/controller-manager.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 \
	--leader-elect=false --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
	--use-service-account-credentials \
	--profiling=false
start kube-scheduler kube-scheduler ip netns exec "$CP_NETNS" "$BIN/kube-scheduler" \
	--kubeconfig "$W/scheduler.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
	--profiling=false

# start_node I: containerd and kubelet of node I in its namespaces.
start_node() {
	local i=$1 d sock name ip
	d=$(node_dir "$i") sock=$(node_containerd_sock "$i") name=$(node_name "$i") ip=$(node_ip "$i")
	mkdir -p "$d/containerd"
	cat >"$d/containerd/config.toml" <<EOF_CTRD
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/secretfs-pause:e2e"
  # This machine may not lower oom_score_adj; without this every sandbox fails.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
EOF_CTRD
	# The pod network: a bridge in the node's namespace, the node's own
	# /24, the node as the pods' gateway; no masquerading.
	cat >"$d/cni/net.d/10-secretfs.conflist" <<EOF_CNI
{"cniVersion": "1.0.0", "name": "secretfs", "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true,
 "ipMasq": false, "hairpinMode": true, "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam",
 "ranges": [[{"subnet": "$(node_pod_subnet "$i")"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF_CNI
	start "node-$i.containerd" "containerd --config $d/" nsenter --net="/run/netns/$NODE_NETNS_PREFIX$i" --mount="$(node_mntns "$i")" \
		containerd --config "$d/containerd/config.toml"
	cat >"$d/kubelet-config.yaml" <<EOF_KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PREFIX$i
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
imageServiceEndpoint: unix://$sock
# The e2e tests wait for rotation: kubelet republishes volumes about once
# per sync period.
syncFrequency: 10s
evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF_KUBELET
}
for i in $(seq "$NODES"); do start_node "$i"; done
for i in $(seq "$NODES"); do
	sock=$(node_containerd_sock "$i")
	wait_for "containerd of node $i" 30 ctr -a "$sock" version
	for img in $images; do
		[[ $img == secretfs ]] || img=secretfs-$img
		ctr -a "$sock" -n k8s.io images import "$W/images/$img.tar" >>"$LOGS/images.log" 2>&1 ||
			die "importing $img into node $i failed (see $LOGS/images.log)"
	done
	d=$(node_dir "$i")
	start "node-$i.kubelet" "kubelet --config $d/" nsenter --net="/run/netns/$NODE_NETNS_PREFIX$i" --mount="$(node_mntns "$i")" \
		"$BIN/kubelet" --config "$d/kubelet-config.yaml" --kubeconfig "$d/kubelet.kubeconfig" \
		--root-dir "$KUBELET_ROOT" --hostname-override "$(node_name "$i")" --node-ip "$(node_ip "$i")" --v 2
done
node_ready() {
	[[ $(kubectl_admin get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
for i in $(seq "$NODES"); do wait_for "node $(node_name "$i") Ready" 60 node_ready "$(node_name "$i")"; done

# --- secretfs ----------------------------------------------------------------
if [[ ${SECRETFS_DEPLOY:-1} == 0 ]]; then
	trap - ERR
	log "ready in $((SECONDS - start_time)) s (secretfs not deployed); KUBECONFIG=$KUBECONFIG_ADMIN; logs in $LOGS"
	exit 0
fi
# The overlay with this cluster's kubelet root and API server port.
mkdir -p "$W/deploy"
cat >"$W/deploy/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$W/deploy" "$repo/test/cluster/overlay")
patches:
  - target: {kind: DaemonSet, name: secretfs-node}
    patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: secretfs-node}
      spec:
        template:
          spec:
            containers:
              - name: driver
                env:
                  - {name: KUBERNETES_SERVICE_HOST, value: "$CP_IP"}
                  - {name: KUBERNETES_SERVICE_PORT, value: "$APISERVER_PORT"}
                volumeMounts:
                  - {name: fakeazure-ca, mountPath: /etc/secretfs-fakeazure, readOnly: true}
            volumes:
              - name: fakeazure-ca
                hostPath: {path: $FAKEAZURE_DIR, type: Directory}
  # The fake Azure of the e2e tests (it listens only while they run).
  - target: {kind: DaemonSet, name: secretfs-node}
    patch: |-
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --azure-vault-suffix=$FAKEAZURE_VAULT_SUFFIX}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--azure-vault-address=$CP_IP:$FAKEAZURE_PORT"}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--azure-authority-host=https://$CP_IP:$FAKEAZURE_PORT/"}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --azure-ca-file=/etc/secretfs-fakeazure/ca.crt}
  # Providers' sockets live in the work dir, not in the host's /var/run.
  - target: {kind: DaemonSet}
    patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: any}
      spec:
        template:
          spec:
            volumes:
              - name: providers-dir
                hostPath: {path: $PROVIDERS_DIR}
  - target: {kind: DaemonSet, name: secretfs-node|secretfs-provider-writer}
    patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: any}
      spec:
        template:
          spec:
            volumes:
              - name: providers-dir-etc
                hostPath: {path: $PROVIDERS_ETC_DIR}
EOF
# Token audiences for external providers: added to the shipped CSIDriver's
# tokenRequests on every run (a hand edit of the CSIDriver is replaced by
# the next apply).
token_audiences=()
if [[ -n ${SECRETFS_TOKEN_AUDIENCES:-} ]]; then
	IFS=, read -ra token_audiences <<<"$SECRETFS_TOKEN_AUDIENCES"
	{
		echo "  - target: {kind: CSIDriver}"
		echo "    patch: |-"
		for a in "${token_audiences[@]}"; do
			[[ $a =~ ^[A-Za-z0-9._:/-]+$ ]] || die "SECRETFS_TOKEN_AUDIENCES: audience \"$a\" has characters other than letters, digits and ._:/-"
			echo "      - {op: add, path: /spec/tokenRequests/-, value: {audience: \"$a\"}}"
		done
	} >>"$W/deploy/kustomization.yaml"
fi
# Values for installing the Helm chart on this cluster (the e2e suite's
# TestHelmChart installs a second driver with them).
cat >"$W/deploy/helm-values.yaml" <<EOF
image: {repository: secretfs, tag: e2e, pullPolicy: Never}
kubeletDir: $KUBELET_ROOT
providersDir: $PROVIDERS_DIR
additionalProvidersDirs: []
hostNetwork: false
health: {port: 19808}
metrics: {port: 19809}
backends: [azure, kubernetes, fake]
env:
  - {name: KUBERNETES_SERVICE_HOST, value: "$CP_IP"}
  - {name: KUBERNETES_SERVICE_PORT, value: "$APISERVER_PORT"}
rotationInterval: 5s
terminationGracePeriodSeconds: 5
EOF
# The Azure tests use workload identity (test/e2e/overlay adds the same
# audience to the kustomize install).
helm_audiences='"", "api://AzureADTokenExchange"'
for a in "${token_audiences[@]}"; do helm_audiences+=", \"$a\""; done
echo "tokenAudiences: [$helm_audiences]" >>"$W/deploy/helm-values.yaml"
log "deploying secretfs (test/cluster/overlay, kubelet root $KUBELET_ROOT)"
# kubelet's root dir is this cluster's, not /var/lib/kubelet: every host path
# of the driver lives under it.
kubectl_admin kustomize "$W/deploy" | sed "s#/var/lib/kubelet#$KUBELET_ROOT#g" >"$W/deploy/rendered.yaml"
kubectl_admin apply -f "$W/deploy/rendered.yaml" >>"$LOGS/deploy.log"
# A re-run with a rebuilt image: restart the driver so it runs the new one.
if [[ -f $W/deploy/driver-image-id ]]; then old_id=$(<"$W/deploy/driver-image-id"); else old_id=; fi
new_id=$(ctr -a "$(node_containerd_sock 1)" -n k8s.io images ls | awk '$1 == "docker.io/library/secretfs:e2e" {print $3}')
echo "$new_id" >"$W/deploy/driver-image-id"
if [[ -n $old_id && $old_id != "$new_id" ]]; then
	log "driver image changed; restarting the driver"
	kubectl_admin -n "$DRIVER_NS" rollout restart ds/secretfs-node ds/secretfs-provider-extfake >>"$LOGS/deploy.log"
fi
kubectl_admin wait --for condition=Established --timeout 60s crd/secretproviderclasses.secrets-store.csi.x-k8s.io >/dev/null
for ds in secretfs-node secretfs-provider-extfake; do
	kubectl_admin -n "$DRIVER_NS" rollout status "ds/$ds" --timeout 180s >>"$LOGS/deploy.log" 2>&1 ||
		die "the DaemonSet $ds did not become ready (kubectl --kubeconfig $KUBECONFIG_ADMIN -n $DRIVER_NS describe pods)"
done
registered() {
	kubectl_admin get csinode "$1" -o 'jsonpath={.spec.drivers[*].name}' | grep -qw csi.secretfs.dev
}
for i in $(seq "$NODES"); do
	wait_for "secretfs registered with kubelet (CSINode $(node_name "$i"))" 60 registered "$(node_name "$i")"
done

trap - ERR
log "ready in $((SECONDS - start_time)) s"
log "  $NODES nodes: $(for i in $(seq "$NODES"); do printf '%s ' "$(node_name "$i")"; done)"
log "  kubectl: test/cluster/exec.sh kubectl get nodes (the API server is at https://$CP_IP:$APISERVER_PORT inside $CP_NETNS)"
log "  logs:    $LOGS"
log "  stop:    make cluster-down"
