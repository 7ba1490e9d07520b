#!/usr/bin/env bash
# Checks that `make cluster-down` leaves nothing behind: takes a snapshot of
# the host's network namespaces, interfaces, routes, iptables rules, mounts,
# cgroups and the namespaces and command lines of processes, starts the
# cluster (up.sh, with secretfs and its pods on every node), stops it
# (down.sh), takes the snapshot again and fails on any difference that
# touches what the cluster creates. Root.
#
# The machine may be busy with other work while this runs, so mounts under
# /tmp other than the cluster's work dir, and processes that are not the
# cluster's binaries and live in the host's namespaces, are not compared.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
[[ $(id -u) == 0 ]] || die "must run as root"
[[ ! -d $W ]] || die "a cluster is running in $W; stop it first (make cluster-down)"

snapshot() {
	echo "## netns"
	ls /run/netns 2>/dev/null | sort
	echo "## links"
	ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
	echo "## addresses"
	ip -o addr show | awk '{print $2, $4}' | sort
	echo "## routes"
	ip route show table all | sort
	for ipt in iptables ip6tables; do
		command -v $ipt >/dev/null || continue
		echo "## $ipt"
		$ipt-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' | sort
	done
	echo "## mounts"
	awk -v w="$W" '$5 !~ "^/tmp/" || $5 == w || index($5, w "/") == 1 {print $5, $9}' /proc/self/mountinfo | sort
	echo "## nsfs mounts"
	awk '$9 == "nsfs" {print $5}' /proc/self/mountinfo | sort
	echo "## cgroups"
	find /sys/fs/cgroup -maxdepth 2 -type d | sort
	echo "## processes (cluster binaries)"
	for c in /proc/[0-9]*/cmdline; do
		tr '\0' ' ' 2>/dev/null <"$c" | grep -F "$W" | grep -v "leaks.sh"
	done | sort
	echo "## namespaces of processes"
	for p in /proc/[0-9]*; do
		readlink "$p/ns/net" "$p/ns/mnt" 2>/dev/null | tr '\n' ' '
		echo
	done | grep . | sort -u
	echo "## paths"
	for p in /var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/lib/cni /run/netns /opt/cni; do
		[[ -e $p ]] && echo "$p"
	done
}

before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snapshot >"$before"
t0=$SECONDS
"$repo/test/cluster/up.sh" || { "$repo/test/cluster/down.sh"; die "up.sh failed"; }
up=$((SECONDS - t0))
t0=$SECONDS
"$repo/test/cluster/down.sh" || die "down.sh failed"
down=$((SECONDS - t0))
snapshot >"$after"
# Processes of other work on the machine come and go; a namespace pair that
# is gone after is not a leak, one that is new is.
section() { awk -v want="$1" '/^## /{keep = (($0 ~ "^## namespaces") == want)} keep' "$2"; }
diff <(section 0 "$before") <(section 0 "$after") >"$after.diff"
new_ns=$(comm -13 <(section 1 "$before" | sort) <(section 1 "$after" | sort) | grep -v '^## ')
rc=0
if [[ -s $after.diff ]]; then
	echo "leaks: what the cluster left behind (< before, > after):" >&2
	cat "$after.diff" >&2
	rc=1
fi
if [[ -n $new_ns ]]; then
	echo "leaks: processes in namespaces that did not exist before:" >&2
	echo "$new_ns" >&2
	rc=1
fi
rm -f "$after.diff"
echo "leaks: up ${up} s, down ${down} s, $NODES nodes: $([[ $rc == 0 ]] && echo 'nothing left behind' || echo LEAKS)" >&2
exit $rc
