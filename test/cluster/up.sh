#!/usr/bin/env bash
# Starts a real single-node Kubernetes on loopback, without Docker or a
# registry: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kubelet (built by test/tools/build.sh), containerd + runc from the
# distribution, images imported from tarballs, and secretfs deployed from
# deploy/ as a DaemonSet. Idempotent: running it again starts only what is
# not running. Needs root. Stop it with down.sh. Settings: see lib.sh.
#
# Pods on this cluster must use hostNetwork: there is no pod network (its
# addresses would not be loopback).
#
#   SECRETFS_DEPLOY=0   start the cluster without building and deploying secretfs
#   SECRETFS_TOKEN_AUDIENCES=vault,...   audiences added to the CSIDriver's
#                       tokenRequests (and the chart values' tokenAudiences) on
#                       every run, for external providers such as Vault
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start_time=$SECONDS

[[ $(id -u) == 0 ]] || die "must run as root (kubelet, containerd and mounts need it)"
mkdir -p "$W" "$LOGS" "$RUN" "$PKI"
chmod 700 "$W"
trap 'echo "cluster: up failed; logs are in $LOGS" >&2' ERR

# --- packages ---------------------------------------------------------------
need_pkgs=()
command -v containerd >/dev/null || need_pkgs+=(containerd)
command -v runc >/dev/null || need_pkgs+=(runc)
[[ -x /usr/lib/cni/loopback ]] || need_pkgs+=(containernetworking-plugins)
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need_pkgs+=(busybox-static)
command -v openssl >/dev/null || need_pkgs+=(openssl)
if ((${#need_pkgs[@]})); then
	log "installing ${need_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 "${need_pkgs[@]}" >"$LOGS/apt.log" 2>&1 ||
		die "apt-get install ${need_pkgs[*]} failed (see $LOGS/apt.log)"
fi

# --- binaries and images ----------------------------------------------------
log "building etcd and Kubernetes binaries if missing (test/tools/build.sh: 20-40 min the first time on 2 cores, seconds after)"
find_bin
log "building images"
images="pause testapp"
[[ ${SECRETFS_DEPLOY:-1} == 0 ]] || images+=" secretfs"
IMAGES=$images OUT_DIR=$W/images "$repo/test/image/build.sh" >"$LOGS/images.log" 2>&1 || die "image build failed (see $LOGS/images.log)"

# --- host paths this run may create (recorded once, for down.sh) ------------
if [[ ! -f $W/created-host-paths ]]; then
	{
		for p in "${HOST_PATHS[@]}"; do [[ -e $p ]] || echo "$p"; done
		for h in /sys/fs/cgroup/*/; do
			for n in "${CGROUP_NAMES[@]}"; do [[ -e $h$n ]] || echo "$h$n"; done
		done
	} >"$W/created-host-paths.tmp"
	mv "$W/created-host-paths.tmp" "$W/created-host-paths"
	for ipt in iptables ip6tables; do
		command -v $ipt >/dev/null || continue
		for tc in "${IPTABLES_CHAINS[@]}"; do
			$ipt -w -t "${tc%%:*}" -S "${tc#*:}" >/dev/null 2>&1 || echo "$ipt:$tc"
		done
	done >"$W/created-iptables-chains"
fi

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
	"IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
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
mkdir -p "$FAKEAZURE_DIR" "$PROVIDERS_DIR" "$PROVIDERS_ETC_DIR"
cp "$PKI/fakeazure-ca.crt" "$FAKEAZURE_DIR/ca.crt"
chmod 600 "$PKI"/*.key

token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
if [[ ! -f $PKI/tokens.csv ]]; then
	{
		echo "$(token),admin,admin,system:masters"
		echo "$(token),system:node:$NODE,kubelet,system:nodes"
		echo "$(token),system:kube-controller-manager,kube-controller-manager"
		echo "$(token),system:kube-scheduler,kube-scheduler"
	} >"$PKI/tokens.csv"
	chmod 600 "$PKI/tokens.csv"
fi
kubeconfig() { # file user
	local file=$1 user=$2 tok
	tok=$(awk -F, -v u="$user" '$2 == u {print $1}' "$PKI/tokens.csv")
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: secretfs
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    token: $tok
contexts:
- name: secretfs
  context: {cluster: secretfs, user: $user}
current-context: secretfs
EOF
	chmod 600 "$file"
}
kubeconfig "$KUBECONFIG_ADMIN" admin
kubeconfig "$W/kubelet.kubeconfig" "system:node:$NODE"
kubeconfig "$W/controller-manager.kubeconfig" system:kube-controller-manager
kubeconfig "$W/scheduler.kubeconfig" system:kube-scheduler

# --- processes --------------------------------------------------------------
# start NAME CMD...: run CMD in its own session, logging to $LOGS/NAME.log.
start() {
	local name=$1
	shift
	if alive "$name"; then
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

start etcd "$BIN/etcd" --name default --data-dir "$W/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_for etcd 30 "$BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" endpoint health

# Audit reads of Secrets (who read which, with what result), so the e2e
# tests can show whose token the driver used; nothing else is logged.
cat >"$W/audit-policy.yaml" <<'EOF_AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [get, watch]
    resources: [{group: "", resources: [secrets]}]
  - level: None
EOF_AUDIT
start kube-apiserver "$BIN/kube-apiserver" \
	--audit-policy-file "$W/audit-policy.yaml" --audit-log-path "$W/audit.log" \
	--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
	--bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address 127.0.0.1 \
	--endpoint-reconciler-type none \
	--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
	--client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
	--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types Hostname,InternalIP \
	--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
	--service-account-issuer https://kubernetes.default.svc \
	--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
	--service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true --profiling=false
wait_for kube-apiserver 60 kubectl_admin get --raw /readyz

start kube-controller-manager "$BIN/kube-controller-manager" \
	--kubeconfig "$W/controller-manager.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 \
	--leader-elect=false --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
	--use-service-account-credentials \
	--profiling=false
start kube-scheduler "$BIN/kube-scheduler" \
	--kubeconfig "$W/scheduler.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
	--profiling=false

mkdir -p "$W/containerd" "$W/cni/net.d" "$KUBELET_ROOT"
cat >"$W/containerd/config.toml" <<EOF
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$W/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/containerd/opt"
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
    conf_dir = "$W/cni/net.d"
EOF
# Only a loopback network: it makes the runtime report its network ready;
# pods use hostNetwork.
cat >"$W/cni/net.d/10-loopback.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "loopback", "plugins": [{"type": "loopback"}]}
EOF
start containerd containerd --config "$W/containerd/config.toml"
wait_for containerd 30 ctr -a "$CONTAINERD_SOCK" version

for img in $images; do
	[[ $img == secretfs ]] || img=secretfs-$img
	ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$W/images/$img.tar" >>"$LOGS/images.log" 2>&1 ||
		die "importing $img failed (see $LOGS/images.log)"
done

cat >"$W/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
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
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
# The e2e tests wait for rotation: kubelet republishes volumes about once
# per sync period.
syncFrequency: 10s
evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
start kubelet "$BIN/kubelet" --config "$W/kubelet-config.yaml" --kubeconfig "$W/kubelet.kubeconfig" \
	--root-dir "$KUBELET_ROOT" --hostname-override "$NODE" --v 2
node_ready() {
	[[ $(kubectl_admin get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
wait_for "node $NODE Ready" 60 node_ready

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
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--azure-vault-address=127.0.0.1:$FAKEAZURE_PORT"}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--azure-authority-host=https://127.0.0.1:$FAKEAZURE_PORT/"}
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
hostNetwork: true
health: {port: 19808}
metrics: {host: 127.0.0.1, port: 19809}
backends: [azure, kubernetes, fake]
env:
  - {name: KUBERNETES_SERVICE_HOST, value: 127.0.0.1}
  - {name: KUBERNETES_SERVICE_PORT, value: "$APISERVER_PORT"}
rotationInterval: 5s
terminationGracePeriodSeconds: 5
EOF
if ((${#token_audiences[@]})); then
	echo 'tokenAudiences: ["", "api://AzureADTokenExchange"'"$(printf ', "%s"' "${token_audiences[@]}")]" >>"$W/deploy/helm-values.yaml"
fi
log "deploying secretfs (test/cluster/overlay, kubelet root $KUBELET_ROOT)"
# kubelet's root dir is this cluster's, not /var/lib/kubelet: every host path
# of the driver lives under it.
kubectl_admin kustomize "$W/deploy" | sed "s#/var/lib/kubelet#$KUBELET_ROOT#g" >"$W/deploy/rendered.yaml"
kubectl_admin apply -f "$W/deploy/rendered.yaml" >>"$LOGS/deploy.log"
# A re-run with a rebuilt image: restart the driver so it runs the new one.
if [[ -f $W/deploy/driver-image-id ]]; then old_id=$(<"$W/deploy/driver-image-id"); else old_id=; fi
new_id=$(ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls | awk '$1 == "docker.io/library/secretfs:e2e" {print $3}')
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
	kubectl_admin get csinode "$NODE" -o 'jsonpath={.spec.drivers[*].name}' | grep -qw csi.secretfs.dev
}
wait_for "secretfs registered with kubelet (CSINode $NODE)" 60 registered

trap - ERR
log "ready in $((SECONDS - start_time)) s"
log "  export KUBECONFIG=$KUBECONFIG_ADMIN"
log "  kubectl: $BIN/kubectl"
log "  logs:    $LOGS"
log "  stop:    make cluster-down"
