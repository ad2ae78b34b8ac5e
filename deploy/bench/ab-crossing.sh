#!/usr/bin/env bash
# Two builds of meerkat side by side on the local 2 x 2 global demo
# (deploy/global/start-local.sh): delivered messages per second when the
# receiver is on the sender's data center's other node (the cluster
# transport) and on the other data center (a link), closed loop. The builds
# alternate, ROUNDS times each, so that both see the same machine.
#
#   deploy/bench/ab-crossing.sh OLD_BINARY NEW_BINARY
#   ROUNDS=5 WINDOW=20 DURATION=15 SETUPS="node:6232 dc:6242" deploy/bench/ab-crossing.sh old/meerkat new/meerkat
set -euo pipefail
cd "$(dirname "$0")/../.."

old=${1:?usage: $0 OLD_BINARY NEW_BINARY}
new=${2:?usage: $0 OLD_BINARY NEW_BINARY}
target=${CARGO_TARGET_DIR:-/var/tmp/meerkat-target}
rounds=${ROUNDS:-3}
window=${WINDOW:-20}
duration=${DURATION:-15}
setups=${SETUPS:-node:6232 dc:6242}
redis_port=${REDIS_PORT:-16379}

if [[ "${BUILD:-1}" == 1 ]]; then
    CARGO_TARGET_DIR=$target cargo build --release --bin meerkat-load
fi
load=$target/release/meerkat-load
out=$(mktemp /tmp/meerkat-ab.XXXXXX.jsonl)
base=""

cleanup() {
    if [[ -n $base ]]; then
        MEERKAT_GLOBAL_DIR=$base deploy/global/stop-local.sh >/dev/null 2>&1 || true
        if [[ -f $base/redis.pid ]]; then kill "$(cat "$base/redis.pid")" 2>/dev/null || true; fi
        # The next round's Redis needs the port.
        for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 || break; sleep 0.1; done
        rm -rf "$base"
    fi
}
trap cleanup EXIT

for round in $(seq 1 "$rounds"); do
    for which in old new; do
        bin=$old
        [[ $which == new ]] && bin=$new
        base=$(mktemp -d /tmp/meerkat-ab.XXXXXX)
        redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
            --pidfile "$base/redis.pid" --logfile "$base/redis.log"
        for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
        MEERKAT_BIN=$bin MEERKAT_GLOBAL_DIR=$base MEERKAT_REDIS_PORT=$redis_port \
            deploy/global/start-local.sh >"$base/start.log"
        common=(--domain example.com --host 127.0.0.1 --port 6222 --users 100 --tls starttls)
        "$load" "${common[@]}" register >/dev/null
        for setup in $setups; do
            echo "round $round: $which, receiver on ${setup%%:*}" >&2
            "$load" "${common[@]}" --label "$which-${setup%%:*}" --warmup 2 --duration "$duration" --json-out "$out" \
                chat --one-way --window "$window" --recv-server "127.0.0.1:${setup##*:}" >/dev/null
        done
        cleanup
        base=""
    done
done
"$load" report "$out"
rm -f "$out"
