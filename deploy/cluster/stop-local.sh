#!/usr/bin/env bash
# Stops the local cluster that start-local.sh started: SIGTERM to every node
# whose pid file is in the base directory, then waits for them to exit (each
# closes its sessions and tells the cluster it is going, within its
# shutdown_grace_period). Data directories, configs and logs are kept, so
# start-local.sh brings the same cluster back.
#
#   deploy/cluster/stop-local.sh
#   MEERKAT_CLUSTER_DIR=/tmp/mc deploy/cluster/stop-local.sh
#
# Environment (defaults):
#   MEERKAT_CLUSTER_DIR  base directory (./meerkat-cluster)
#   MEERKAT_WAIT         seconds to wait for the nodes to exit (30)
set -euo pipefail

base=${MEERKAT_CLUSTER_DIR:-./meerkat-cluster}
wait_s=${MEERKAT_WAIT:-30}
if [[ ! -d "$base" ]]; then
    echo "stop-local.sh: $base does not exist; nothing to stop" >&2
    exit 0
fi
base=$(cd "$base" && pwd)

# Pids of nodes that are running (checked against their config file, so a
# stale pid file never leads to signalling an unrelated process).
declare -A pids=()
for n in 1 2 3; do
    pidfile=$base/node$n.pid
    [[ -f "$pidfile" ]] || continue
    pid=$(cat "$pidfile")
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && ps -p "$pid" -o args= 2>/dev/null | grep -qF -- "$base/node$n.toml"; then
        pids[$n]=$pid
    else
        echo "node $n: not running"
        rm -f "$pidfile"
    fi
done

for n in "${!pids[@]}"; do
    kill -TERM "${pids[$n]}"
    echo "node $n: SIGTERM sent to pid ${pids[$n]}"
done

deadline=$((SECONDS + wait_s))
status=0
for n in $(printf '%s\n' "${!pids[@]}" | sort); do
    while kill -0 "${pids[$n]}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "node $n: pid ${pids[$n]} still running after ${wait_s}s (see $base/node$n.log)" >&2
            status=1
            continue 2
        fi
        sleep 0.2
    done
    rm -f "$base/node$n.pid"
    echo "node $n: stopped"
done
exit $status
