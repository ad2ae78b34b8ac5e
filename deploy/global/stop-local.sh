#!/usr/bin/env bash
# Stops the local global-distribution demo that start-local.sh started:
# SIGTERM to every node whose pid file is in the base directory, then waits
# for them to exit. Each node closes its sessions, takes its entries and
# endpoints out of the routing table in Redis and leaves its cluster, within
# its shutdown_grace_period. Data directories, configs and logs are kept, so
# start-local.sh brings the same data centers back.
#
#   deploy/global/stop-local.sh
#   MEERKAT_GLOBAL_DIR=/tmp/mg deploy/global/stop-local.sh
#
# Environment (defaults):
#   MEERKAT_GLOBAL_DIR  base directory (./meerkat-global)
#   MEERKAT_WAIT        seconds to wait for the nodes to exit (30)
set -euo pipefail

base=${MEERKAT_GLOBAL_DIR:-./meerkat-global}
wait_s=${MEERKAT_WAIT:-30}
if [[ ! -d "$base" ]]; then
    echo "stop-local.sh: $base does not exist; nothing to stop" >&2
    exit 0
fi
base=$(cd "$base" && pwd)

# Pids of nodes that are running (checked against their config file, so a
# stale pid file never leads to signalling an unrelated process).
declare -A pids=()
for node in dc1-node1 dc1-node2 dc2-node1 dc2-node2; do
    pidfile=$base/$node.pid
    [[ -f "$pidfile" ]] || continue
    pid=$(cat "$pidfile")
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && ps -p "$pid" -o args= 2>/dev/null | grep -qF -- "$base/$node.toml"; then
        pids[$node]=$pid
    else
        echo "$node: not running"
        rm -f "$pidfile"
    fi
done

for node in "${!pids[@]}"; do
    kill -TERM "${pids[$node]}"
    echo "$node: SIGTERM sent to pid ${pids[$node]}"
done

deadline=$((SECONDS + wait_s))
status=0
for node in $(printf '%s\n' "${!pids[@]}" | sort); do
    while kill -0 "${pids[$node]}" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "$node: pid ${pids[$node]} still running after ${wait_s}s (see $base/$node.log)" >&2
            status=1
            continue 2
        fi
        sleep 0.2
    done
    rm -f "$base/$node.pid"
    echo "$node: stopped"
done
exit $status
