#!/usr/bin/env bash
# Idle connections held at once by a Meerkat cluster on this machine: NODES
# nodes (one Raft cluster, one shared PostgreSQL database), one meerkat-load
# `idle` generator per node, all holding their connections at the same time.
# For hosts where one process may not open enough files (the hard open-file
# limit caps one server at that many connections): NODES processes each stay
# under it. Prints the most sessions the replicated session table held at
# once, and the nodes' RSS then.
#
#   USERS=100000 NODES=6 deploy/bench/idle-cluster.sh
#
# Knobs (environment):
#   USERS=100000  NODES=6  CONC=100 (logins in flight per generator)  HOLD=120 (seconds each generator holds)
#   PG_URL=postgres://postgres@127.0.0.1:5432/test   (a database is created and dropped)
#   CARGO_TARGET_DIR=/var/tmp/meerkat-target  MEERKAT_BIN, LOAD_BIN (release builds by default)
#   OUT=/var/tmp/meerkat-bench/<time>-idle-cluster
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/meerkat-target}"
MEERKAT_BIN="${MEERKAT_BIN:-$CARGO_TARGET_DIR/release/meerkat}"
LOAD_BIN="${LOAD_BIN:-$CARGO_TARGET_DIR/release/meerkat-load}"
USERS="${USERS:-100000}"
NODES="${NODES:-6}"
CONC="${CONC:-100}"
HOLD="${HOLD:-120}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
OUT="${OUT:-/var/tmp/meerkat-bench/$(date +%Y%m%d-%H%M%S)-idle-cluster}"
WORK="$OUT/work"
DB="meerkat_bench_$$"
DB_URL="${PG_URL%/*}/$DB"

say() { echo "== $*" >&2; }
die() { echo "idle-cluster: $*" >&2; exit 1; }
[ -x "$MEERKAT_BIN" ] || die "no meerkat binary at $MEERKAT_BIN (cargo build --release --bin meerkat)"
[ -x "$LOAD_BIN" ] || die "no meerkat-load binary at $LOAD_BIN (cargo build --release --bin meerkat-load)"
ulimit -n "$(ulimit -Hn)"
per=$(( (USERS + NODES - 1) / NODES ))
[ "$per" -lt $(( $(ulimit -n) - 200 )) ] || die "$per connections per node need more than the open-file limit $(ulimit -n): raise NODES"
mkdir -p "$OUT" "$WORK"

# shellcheck source=deploy/bench/cluster-lib.sh
. "$ROOT/deploy/bench/cluster-lib.sh"

say "starting $NODES nodes"
start_setup cluster "$NODES"
say "registering $USERS users"
"$LOAD_BIN" --host 127.0.0.1 --port 5301 --domain localhost --tls none --sasl plain \
  --users "$USERS" --concurrency "$CONC" --json register >/dev/null

say "$NODES generators, $per users each, holding for $HOLD s"
gens=()
for i in $(seq 1 "$NODES"); do
  first=$((1 + (i - 1) * per)); n=$per
  [ $((first + n - 1)) -le "$USERS" ] || n=$((USERS - first + 1))
  "$LOAD_BIN" --host 127.0.0.1 --port $((5300 + i)) --domain localhost --tls none --sasl plain \
    --users "$n" --first-index "$first" --concurrency "$CONC" --warmup 1 --duration "$HOLD" \
    --label "node$i" --json idle > "$OUT/gen$i.json" 2>"$OUT/gen$i.err" &
  gens+=($!)
done
best=0; best_rss=0; t0=$(date +%s)
while :; do
  alive=0; for p in "${gens[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  s="$(sessions "${CFGS[0]}" || echo 0)"; s="${s:-0}"
  if [ "$s" -gt "$best" ]; then
    best=$s
    best_rss=0; for p in "${PIDS[@]}"; do best_rss=$((best_rss + $(awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0))); done
    echo "$(( $(date +%s) - t0 )) s: $best sessions, nodes' RSS $((best_rss / 1024)) MiB" >&2
  fi
  sleep 2
done
for p in "${gens[@]}"; do wait "$p" || true; done
held=0; failures=0
for i in $(seq 1 "$NODES"); do
  l="$(tail -1 "$OUT/gen$i.json")"
  held=$((held + $(jq -r '.connections // 0' <<<"$l")))
  failures=$((failures + $(jq -r '.failures // 0' <<<"$l")))
done
{
  echo "| figure | value |"
  echo "|---|---|"
  echo "| nodes | $NODES |"
  echo "| users | $USERS |"
  echo "| most sessions in the replicated session table at once | $best |"
  echo "| connections held by the generators (sum) | $held |"
  echo "| login failures | $failures |"
  echo "| nodes' RSS at that moment, MiB (sum) | $((best_rss / 1024)) |"
  [ "$best" -gt 0 ] && echo "| KiB per session, all nodes (RSS / sessions, incl. each node's base and its copy of the table) | $(awk -v r="$best_rss" -v s="$best" 'BEGIN {printf "%.1f", r / s}') |"
} | tee "$OUT/table.md"
say "results in $OUT"
