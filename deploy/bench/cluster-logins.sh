#!/usr/bin/env bash
# Logins per second into a 3-node Meerkat cluster, compared with one node,
# measured in the same run with meerkat-load on one shared PostgreSQL database.
#
#   deploy/bench/cluster-logins.sh
#
# Setups, each measured RUNS times with the same users:
#   single    one node without [cluster] (the session table is local)
#   cluster1  one node that is a one-member Raft cluster (every login is a log commit)
#   cluster3  three nodes on this machine; the users are split over the three
#             nodes, one generator per node, all running at once
#
# Knobs (environment):
#   USERS=6000  CONC=100 (logins in flight per generator)  RUNS=3
#   SETUPS="single cluster1 cluster3"
#   PG_URL=postgres://postgres@127.0.0.1:5432/test   (a database is created and dropped)
#   CARGO_TARGET_DIR=/var/tmp/meerkat-target  MEERKAT_BIN, LOAD_BIN (release builds by default)
#   OUT=/var/tmp/meerkat-bench/<time>-cluster
#
# All processes share this machine's cores: the three-node figure includes
# three Raft members and three generators competing for them, which is the
# point of comparing in one run, not a per-node capacity figure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/meerkat-target}"
MEERKAT_BIN="${MEERKAT_BIN:-$CARGO_TARGET_DIR/release/meerkat}"
LOAD_BIN="${LOAD_BIN:-$CARGO_TARGET_DIR/release/meerkat-load}"
USERS="${USERS:-6000}"
CONC="${CONC:-100}"
RUNS="${RUNS:-3}"
SETUPS="${SETUPS:-single cluster1 cluster3}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
OUT="${OUT:-/var/tmp/meerkat-bench/$(date +%Y%m%d-%H%M%S)-cluster}"
WORK="$OUT/work"
DB="meerkat_bench_$$"
DB_URL="${PG_URL%/*}/$DB"

say() { echo "== $*" >&2; }
die() { echo "cluster-logins: $*" >&2; exit 1; }
[ -x "$MEERKAT_BIN" ] || die "no meerkat binary at $MEERKAT_BIN (cargo build --release --bin meerkat)"
[ -x "$LOAD_BIN" ] || die "no meerkat-load binary at $LOAD_BIN (cargo build --release --bin meerkat-load)"
mkdir -p "$OUT" "$WORK"

# shellcheck source=deploy/bench/cluster-lib.sh
. "$ROOT/deploy/bench/cluster-lib.sh"

REGISTERED=0
register_users() {
  [ "$REGISTERED" = 1 ] && return 0
  say "registering $USERS users"
  "$LOAD_BIN" --host 127.0.0.1 --port 5301 --domain localhost --tls none --sasl plain \
    --users "$USERS" --concurrency "$CONC" --json register >/dev/null
  REGISTERED=1
}

# One measured run: every node gets USERS/nodes users; prints "logins/s" over all generators.
run_logins() {
  local setup="$1" run="$2" n="${#CFGS[@]}"
  local per=$((USERS / n)) files=() pids=() start end
  start=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    local f="$OUT/$setup-run$run-node$i.json"
    files+=("$f")
    "$LOAD_BIN" --host 127.0.0.1 --port $((5300 + i)) --domain localhost --tls none --sasl plain \
      --users "$per" --first-index $((1 + (i - 1) * per)) --concurrency "$CONC" \
      --label "$setup" --run "$run" --json login > "$f" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || say "$setup run $run: a generator reported failures"; done
  end=$(date +%s.%N)
  # Sum of each generator's own rate (their windows overlap), and users over the whole wall time.
  python3 - "$setup" "$run" "$start" "$end" "${files[@]}" <<'PY'
import json, sys
setup, run, start, end, files = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
rows = [json.loads(open(f).read().strip().splitlines()[-1]) for f in files]
ok = sum(r.get("logins", 0) for r in rows)
failed = sum(r.get("failures", 0) for r in rows)
rate = sum(r["logins_per_s"] for r in rows)
p99 = max(r.get("ttfp_ms", {}).get("p99", 0) for r in rows) if rows else 0
print(json.dumps({"setup": setup, "run": int(run), "nodes": len(rows), "logins_per_s": round(rate, 1),
                  "users_over_wall_s": round(ok / (end - start), 1), "failures": failed, "first_presence_p99_ms": p99}))
PY
  # The generators closed their sessions; wait until the table is empty again.
  for _ in $(seq 1 300); do
    [ "$(sessions "${CFGS[0]}")" = 0 ] && break
    sleep 0.1
  done
}

RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
for setup in $SETUPS; do
  say "setup $setup"
  nodes=1; [ "$setup" = cluster3 ] && nodes=3
  start_setup "$setup" "$nodes"
  register_users
  for run in $(seq 1 "$RUNS"); do
    line="$(run_logins "$setup" "$run")"
    echo "$line" | tee -a "$RESULTS" >&2
  done
  stop_all
done

python3 - "$RESULTS" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["setup"], []).append(r["logins_per_s"])
med = {k: statistics.median(v) for k, v in by.items()}
base = med.get("single")
print("| setup | logins/s (median) | runs | vs single |")
print("|---|---|---|---|")
for k, v in by.items():
    ratio = f"{med[k] / base:.2f}x" if base else "-"
    print(f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.0f}' for x in v)} | {ratio} |")
PY
say "results in $OUT"
