#!/bin/sh
# The local agent's run mode on this machine: a command gets the demo class's
# files on a tmpfs that only it can see. Needs root (make demo-run).
set -eu
bin=${1:-bin/secretfs}
[ "$(id -u)" = 0 ] || { echo "run as root: secretfs run mounts a tmpfs" >&2; exit 1; }
work=$(mktemp -d /tmp/secretfs-demo-run.XXXXXX)
export TARGET=/run/secretfs/demo-$$

step() { printf '\n== %s\n' "$1"; }
log=$work/secretfs.log  # the agent's own log, shown if something fails
trap 'status=$?; [ $status = 0 ] || cat "$log" >&2; rm -rf "$work"' EXIT

step "The command reads its secret (fake backend, test/demo/class.yaml)"
echo "\$ secretfs run --class test/demo/class.yaml --target \$TARGET -- sh -c 'cat \$TARGET/db-password'"
"$bin" run --class test/demo/class.yaml --target "$TARGET" -- sh -c 'cat $TARGET/db-password' 2>>"$log"
echo

step "Inside: a tmpfs at \$TARGET, root's alone; outside: nothing"
"$bin" run --class test/demo/class.yaml --target "$TARGET" -- sh -c '
  ls -l "$TARGET/"; grep " $TARGET " /proc/self/mountinfo | cut -d" " -f5,9-
  : > "'"$work"'/ready"; while [ ! -e "'"$work"'/done" ]; do sleep 0.05; done' 2>>"$log" &
run=$!
while [ ! -e "$work/ready" ]; do sleep 0.05; done
printf 'host mount table lines for %s: %s\n' "$TARGET" "$(grep -c " $TARGET " /proc/self/mountinfo || true)"
printf 'host reads %s/db-password: ' "$TARGET"; cat "$TARGET/db-password" 2>&1 || true
: > "$work/done"
wait "$run"

step "The exit code is the command's"
set +e
"$bin" run --class test/demo/class.yaml --target "$TARGET" -- sh -c 'exit 3' 2>>"$log"
echo "sh -c 'exit 3' -> secretfs run exit code: $?"
set -e
printf 'afterwards %s exists: %s; host mount table lines for it: %s\n' "$TARGET" \
  "$([ -e "$TARGET" ] && echo yes || echo no)" "$(grep -c " $TARGET " /proc/self/mountinfo || true)"
