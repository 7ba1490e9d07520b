#!/usr/bin/env bash
# Kills or restarts one node of the local cluster, for the e2e test of a
# node that dies. Root.
#
#   test/cluster/node.sh kill I    SIGKILL node I's kubelet, containerd, shims
#                                  and every container (the driver's included);
#                                  its mounts stay, as on a machine that lost power
#                                  with its disks
#   test/cluster/node.sh start I   start what is not running again (up.sh) and
#                                  wait for the node to be Ready
#
# Run from inside the control plane's namespace (test/cluster/exec.sh, the e2e
# tests), it goes back to the host's namespaces through SECRETFS_HOST_NS_PID,
# a process exec.sh names.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
[[ $(id -u) == 0 ]] || die "must run as root"
# Nodes are started from the host's mount namespace (where the nodes' mount
# namespace files are bound), not from the control plane's `ip netns exec`:
# exec.sh names a process that lives there.
host=${SECRETFS_HOST_NS_PID:-}
if [[ -n $host && $(readlink /proc/self/ns/mnt) != "$(readlink "/proc/$host/ns/mnt")" ]]; then
	exec nsenter -t "$host" -m -n -- "$0" "$@"
fi
[[ ${2:-} =~ ^[1-9]$ ]] && (($2 <= NODES)) || die "usage: $0 kill|start NODE (1..$NODES)"
i=$2
case $1 in
kill)
	d=$(node_dir "$i")
	pids=()
	for name in kubelet containerd; do
		f=$RUN/node-$i.$name.pid
		alive "node-$i.$name" "$name --config $d/" && pids+=("$(<"$f")")
	done
	for cmdline in /proc/[0-9]*/cmdline; do
		pid=${cmdline#/proc/}
		pid=${pid%/cmdline}
		tr '\0' ' ' 2>/dev/null <"$cmdline" | grep -q -- "containerd-shim.*-address $(node_containerd_sock "$i")" && pids+=("$pid")
	done
	pids+=($(find /sys/fs/cgroup/*/"$CGROUP_PREFIX$i" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u))
	((${#pids[@]})) && kill -KILL "${pids[@]}" 2>/dev/null
	log "node $i: killed ${#pids[@]} processes"
	;;
start)
	# Only what is not running; secretfs stays deployed as it is (its
	# DaemonSet restarts the node's driver pod).
	SECRETFS_DEPLOY=0 exec "$(dirname "$0")/up.sh"
	;;
*) die "usage: $0 kill|start NODE" ;;
esac
