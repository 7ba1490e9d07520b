#!/usr/bin/env bash
# Stops the cluster of up.sh and removes everything it left: processes,
# containers and their shims, the nodes' mount namespaces (and with them every
# mount the nodes made), the network namespaces (and with them every veth,
# bridge, route and iptables rule inside), the nodes' cgroups, and the work
# dir. Safe to run twice or after a failed up. leaks.sh checks it.
#
#   SECRETFS_KEEP_LOGS=1   move the logs to ${SECRETFS_CLUSTER_DIR}-logs-<time> first
set -uo pipefail
source "$(dirname "$0")/lib.sh"

[[ $(id -u) == 0 ]] || die "must run as root"
if [[ ! -d $W ]]; then
	log "nothing to stop ($W does not exist)"
	exit 0
fi

# kill_cgroup_procs I: SIGKILL every process in node I's cgroups (its pods'
# containers), until none is left.
kill_cgroup_procs() {
	local i=$1 pids
	for _ in $(seq 50); do
		pids=$(find /sys/fs/cgroup/*/"$CGROUP_PREFIX$i" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
		[[ -n $pids ]] || return 0
		kill -KILL $pids 2>/dev/null
		sleep 0.1
	done
	log "warning: processes left in the cgroups of node $i"
}

for i in $(seq "$NODES"); do
	# kubelet first, so it does not restart what is stopped next.
	stop "node-$i.kubelet" "kubelet --config $(node_dir "$i")/" &
done
wait
for i in $(seq "$NODES"); do
	(
		sock=$(node_containerd_sock "$i")
		# Containers: kill every task, then the shims this containerd started.
		if alive "node-$i.containerd" "containerd --config $(node_dir "$i")/"; then
			ctr_() { ctr -a "$sock" -n k8s.io "$@"; }
			for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1; done
		fi
		kill_cgroup_procs "$i"
		stop "node-$i.containerd" "containerd --config $(node_dir "$i")/"
		# Shims outlive containerd; ours name its socket on their command line.
		for cmdline in /proc/[0-9]*/cmdline; do
			pid=${cmdline#/proc/}
			pid=${pid%/cmdline}
			if tr '\0' ' ' 2>/dev/null <"$cmdline" | grep -q -- "containerd-shim.*-address $sock"; then
				kill -KILL "$pid" 2>/dev/null || true
			fi
		done
	) &
done
wait
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd
# Anything still running in our network namespaces is ours.
for ns in "$CP_NETNS" $(for i in $(seq "$NODES"); do echo "$NODE_NETNS_PREFIX$i"; done); do
	[[ -e /run/netns/$ns ]] || continue
	pids=$(ip netns pids "$ns" 2>/dev/null)
	if [[ -n $pids ]]; then
		log "killing what is left in $ns: $(echo $pids)"
		kill -KILL $pids 2>/dev/null
		sleep 0.2
	fi
done

# The nodes' mount namespaces: dropping the last reference (the bind mount
# of the namespace file, no process left) unmounts everything in them.
for i in $(seq "$NODES"); do
	mnt=$(node_mntns "$i")
	if awk -v p="$mnt" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo; then
		umount "$mnt" || umount -l "$mnt"
	fi
done
# Mounts under the work dir on the host (the namespace dir), deepest first.
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

# Network namespaces: deleting them deletes their veths, bridges, routes and
# iptables rules.
for i in $(seq "$NODES"); do
	[[ -e /run/netns/$NODE_NETNS_PREFIX$i ]] && ip netns del "$NODE_NETNS_PREFIX$i"
done
[[ -e /run/netns/$CP_NETNS ]] && ip netns del "$CP_NETNS"
# /run/netns as it was before up.sh.
if [[ -f $W/netns-dir-state ]] && [[ -z $(ls -A /run/netns 2>/dev/null) ]]; then
	case $(<"$W/netns-dir-state") in
	none)
		umount /run/netns 2>/dev/null
		rmdir /run/netns 2>/dev/null
		;;
	dir) umount /run/netns 2>/dev/null ;;
	esac
fi

# The nodes' cgroups, bottom-up (kubelet's kubepods tree inside them).
for i in $(seq "$NODES"); do
	for c in /sys/fs/cgroup/*/"$CGROUP_PREFIX$i"; do
		[[ -d $c ]] || continue
		for _ in 1 2 3 4 5; do
			find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
			[[ -d $c ]] || break
			sleep 0.2
		done
		[[ -d $c ]] && log "warning: cgroup $c still in use"
	done
done

if [[ ${SECRETFS_KEEP_LOGS:-} == 1 && -d $LOGS ]]; then
	kept=$W-logs-$(date +%Y%m%d-%H%M%S)
	mv "$LOGS" "$kept"
	for i in $(seq "$NODES"); do
		[[ -d $(node_dir "$i")/var-log/pods ]] && cp -r "$(node_dir "$i")/var-log/pods" "$kept/node-$i-pods"
	done
	# The API server's audit log: who watched and wrote what, and when.
	[[ -f $W/audit.log ]] && gzip -c "$W/audit.log" >"$kept/audit.log.gz"
	log "logs kept in $kept"
fi
rm -rf "$W"
log "stopped; $W removed"
