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
# p50 as well as p99, per setup (median over the runs), and the extra
# latency of each setup over same-node.
python3 - "$base/latency.jsonl" <<'PY'
import collections, json, statistics, sys
runs = collections.OrderedDict()
for line in open(sys.argv[1]):
    v = json.loads(line)
    runs.setdefault(v["label"], []).append(v)
med = lambda xs: statistics.median(xs)
base = {k: med([r["latency_ms"][k] for r in runs["same-node"]]) for k in ("p50", "p99")}
print("\n| setup | p50 ms | p99 ms | extra p50 ms | extra p99 ms | lost | out of order | runs |")
print("|---|---|---|---|---|---|---|---|")
for label, rs in runs.items():
    p50 = med([r["latency_ms"]["p50"] for r in rs])
    p99 = med([r["latency_ms"]["p99"] for r in rs])
    lost = sum(r["lost"] for r in rs)
    ooo = sum(r["out_of_order"] for r in rs)
    print(f"| {label} | {p50:.2f} | {p99:.2f} | {p50 - base['p50']:+.2f} | {p99 - base['p99']:+.2f} | {lost} | {ooo} | {len(rs)} |")
PY
