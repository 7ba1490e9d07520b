#!/usr/bin/env bash
# Builds the Kubernetes and etcd binaries the local test cluster runs, from the
# pinned tools modules next to this script, into a per-machine cache outside the
# repository. Binaries already present are kept, so a second run takes seconds.
#
#   SECRETFS_K8S_BIN   output directory
#                      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/secretfs/k8s-v1.37.2/bin)
#   ONLY="kubelet kubectl"   build only these binaries
#   FORCE=1            rebuild even when present
#
# Prints the output directory as its last line.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
here=$(cd "$(dirname "$0")" && pwd)
bin=${SECRETFS_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/secretfs/k8s-${K8S_VERSION}/bin}
mkdir -p "$bin"

# kubectl refuses to talk to a server whose version it cannot parse; stamp the
# same version a release build carries.
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} \
-X k8s.io/component-base/version.gitTreeState=clean"

all="etcd etcdctl kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
want=${ONLY:-$all}

build() { # name moduledir package ldflags
	local name=$1 dir=$2 pkg=$3 flags=$4
	case " $want " in *" $name "*) ;; *) return 0 ;; esac
	if [[ -x "$bin/$name" && -z "${FORCE:-}" ]]; then
		echo "build.sh: $name: present, skipped"
		return 0
	fi
	local start=$SECONDS
	echo "build.sh: $name: building $pkg"
	# Write to a temporary name first so an interrupted build never leaves a
	# truncated binary that a later run would mistake for a finished one.
	CGO_ENABLED=0 go build -C "$dir" -trimpath -ldflags "$flags" -o "$bin/.$name.tmp" "$pkg"
	mv -f "$bin/.$name.tmp" "$bin/$name"
	echo "build.sh: $name: built in $((SECONDS - start)) s"
}

build etcd "$here/etcd" go.etcd.io/etcd/server/v3 "-s -w"
build etcdctl "$here/etcd" go.etcd.io/etcd/etcdctl/v3 "-s -w"
build kube-apiserver "$here" k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build kube-controller-manager "$here" k8s.io/kubernetes/cmd/kube-controller-manager "$ldflags"
build kube-scheduler "$here" k8s.io/kubernetes/cmd/kube-scheduler "$ldflags"
build kubelet "$here" k8s.io/kubernetes/cmd/kubelet "$ldflags"
build kubectl "$here" k8s.io/kubernetes/cmd/kubectl "$ldflags"

echo "$bin"
