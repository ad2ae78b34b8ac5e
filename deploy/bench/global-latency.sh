#!/usr/bin/env bash
# Extra delivery latency across data centers, measured with meerkat-load in
# one run against the local 2 x 2 demo (deploy/global/start-local.sh):
#
#   same-node   sender and receiver on dc1-node1
#   other-node  receiver on dc1-node2 (the cluster transport)
#   other-dc    receiver on dc2-node1 (a link between data centers)
#
# Open loop, one-way pairs, STARTTLS and PLAIN; each setup RUNS times, in
# turn. The demo gets its own Redis on REDIS_PORT and its own directory, and
# both are removed at the end. Everything runs on this machine: the figures
# are the processing cost of crossing data centers, not network distance.
#
#   deploy/bench/global-latency.sh
#   BUILD=0 RUNS=3 RATE=1000 DURATION=30 deploy/bench/global-latency.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${CARGO_TARGET_DIR:-/var/tmp/meerkat-target}
runs=${RUNS:-2}
rate=${RATE:-500}
users=${USERS:-100}
duration=${DURATION:-20}
redis_port=${REDIS_PORT:-16379}

if [[ "${BUILD:-1}" == 1 ]]; then
    CARGO_TARGET_DIR=$target cargo build --release --bin meerkat --bin meerkat-load
fi
load=$target/release/meerkat-load
base=$(mktemp -d /tmp/meerkat-global-bench.XXXXXX)

cleanup() {
    MEERKAT_GLOBAL_DIR=$base deploy/global/stop-local.sh >/dev/null 2>&1 || true
    if [[ -f $base/redis.pid ]]; then kill "$(cat "$base/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$base"
}
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$base/redis.pid" --logfile "$base/redis.log"
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

MEERKAT_BIN=$target/release/meerkat MEERKAT_GLOBAL_DIR=$base MEERKAT_REDIS_PORT=$redis_port \
    deploy/global/start-local.sh >"$base/start.log"

common=(--domain example.com --host 127.0.0.1 --port 6222 --users "$users" --tls starttls)
"$load" "${common[@]}" register >/dev/null

for run in $(seq 1 "$runs"); do
    for setup in same-node:6222 other-node:6232 other-dc:6242; do
        label=${setup%%:*}
        port=${setup##*:}
        echo "run $run: $label" >&2
        "$load" "${common[@]}" --label "$label" --warmup 2 --duration "$duration" --json-out "$base/latency.jsonl" \
            chat --one-way --rate "$rate" --recv-server "127.0.0.1:$port" >/dev/null
    done
done
"$load" report "$base/latency.jsonl"
