#!/usr/bin/env bash
# Stops the cluster of up.sh and removes everything it left: processes,
# containers, mounts under the work dir, the host paths and cgroups it
# created, and the work dir itself. Safe to run twice or after a failed up.
#
#   SECRETFS_KEEP_LOGS=1   move the logs to ${SECRETFS_CLUSTER_DIR}-logs-<time> first
set -uo pipefail
source "$(dirname "$0")/lib.sh"

[[ $(id -u) == 0 ]] || die "must run as root"
if [[ ! -d $W ]]; then
	log "nothing to stop ($W does not exist)"
	exit 0
fi

# kubelet first, so it does not restart what is stopped next.
stop kubelet

# Containers: kill every task, then the shims our containerd started.
if alive containerd; then
	ctr_() { ctr -a "$CONTAINERD_SOCK" -n k8s.io "$@"; }
	for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1; done
	for _ in $(seq 50); do
		ctr_ tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | grep -q . || break
		sleep 0.2
	done
	for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1; done
	for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers rm "$id" >/dev/null 2>&1; done
fi
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd
stop containerd
# Shims outlive containerd; ours name its socket on their command line.
for cmdline in /proc/[0-9]*/cmdline; do
	pid=${cmdline#/proc/}
	pid=${pid%/cmdline}
	if tr '\0' ' ' 2>/dev/null <"$cmdline" | grep -q -- "containerd-shim.*-address $CONTAINERD_SOCK"; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
done

# Mounts under the work dir (kubelet's bind mount of its root, pods'
# volumes, overlay rootfs, sandbox shm), deepest first.
for _ in 1 2 3; do
	mapfile -t mounts < <(awk -v w="$W" '$5 == w || index($5, w "/") == 1 {print $5}' /proc/self/mountinfo | sort -r -u)
	((${#mounts[@]})) || break
	for m in "${mounts[@]}"; do
		m=$(printf '%b' "$m") # mountinfo escapes spaces as \040
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
done
left=$(awk -v w="$W" '$5 == w || index($5, w "/") == 1' /proc/self/mountinfo | wc -l)
((left == 0)) || log "warning: $left mounts under $W could not be removed"

# Host paths and cgroups this cluster created (recorded by up.sh).
if [[ -f $W/created-host-paths ]]; then
	while read -r p; do
		[[ -e $p ]] || continue
		if [[ $p == /sys/fs/cgroup/* ]]; then
			find "$p" -depth -type d -exec rmdir {} + 2>/dev/null || log "warning: cgroup $p still in use"
		else
			rm -rf "$p"
		fi
	done <"$W/created-host-paths"
fi
if [[ -f $W/created-iptables-chains ]]; then
	while IFS=: read -r ipt table chain; do
		# Drop the rules that jump to the chain, then the chain.
		$ipt -w -t "$table" -S 2>/dev/null | grep -- "-j $chain\$\|-j $chain " | grep '^-A' | sed 's/^-A/-D/' |
			while read -r rule; do eval "$ipt -w -t $table $rule" 2>/dev/null; done
		$ipt -w -t "$table" -F "$chain" 2>/dev/null
		$ipt -w -t "$table" -X "$chain" 2>/dev/null
	done <"$W/created-iptables-chains"
fi

if [[ ${SECRETFS_KEEP_LOGS:-} == 1 && -d $LOGS ]]; then
	kept=$W-logs-$(date +%Y%m%d-%H%M%S)
	mv "$LOGS" "$kept"
	log "logs kept in $kept"
fi
rm -rf "$W"
log "stopped; $W removed"
