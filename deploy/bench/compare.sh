#!/usr/bin/env bash
# Meerkat measured side by side with ejabberd and Prosody, with meerkat-load
# as the generator. One server at a time on 127.0.0.1:5222, the server pinned
# to one core and the generator to another; every scenario RUNS times; prints
# a Markdown table of medians with Meerkat's ratio to each peer.
#
#   deploy/bench/compare.sh                      # peer conditions, all installed servers
#   MODE=production deploy/bench/compare.sh      # SCRAM-SHA-256, hashed passwords, STARTTLS
#   SERVERS=meerkat RUNS=1 LOGIN_NS=100 ... deploy/bench/compare.sh   # a quick look
#   SERVERS="meerkat meerkat-modules" SCENARIOS=chat deploy/bench/compare.sh
#                                                # Meerkat against itself with MODULES_TOML
#
# MODE=peer (default): plain TCP, SASL PLAIN, passwords stored in plain form
#   (Meerkat: tls.mode="none", allow_plain_without_tls, password.format="plain"),
#   the conditions of $PEER_BENCH_DIR/results.md; ejabberd and Prosody run with
#   the configs in $PEER_BENCH_DIR through its servers/*.sh.
# MODE=production: STARTTLS required, SCRAM-SHA-256 against hashed (SCRAM)
#   credentials, for Meerkat and ejabberd (a derived copy of the peer config).
#
# ejabberd and Prosody are measured when their Debian packages are installed
# (see $PEER_BENCH_DIR/README.md for the one-time set-up). Users are created by
# XEP-0077 in-band registration once per invocation. Results: $OUT/NAME.jsonl
# (one JSON line per run) and $OUT/table.md.
#
# Environment (defaults):
#   MODE=peer  SERVERS="meerkat ejabberd prosody"  RUNS=3
#   SCENARIOS="login idle chat steps presence"
#   LOGIN_NS="2000 10000"  CONC=100
#   IDLE_NS="10000"  IDLE_DURATION=10      (IDLE_NS=100000 for the 100k target)
#   CHAT_USERS=1000  CHAT_WINDOW=10  CHAT_DURATION=30  WARMUP=5
#   RATE_STEPS="1000 1250 1600 2000 2500 3200 4000 5000 6300 8000 10000 12500 16000 20000 25000 32000 40000 50000 63000 80000"
#   (steps of about 25 %, the same for every server, so no server gets a finer resolution)
#   STEP_DURATION=15  P99_BOUND_MS=5       (steps stop at the first rate over the bound)
#   PRESENCE_USERS=1000  PRESENCE_CONTACTS=10  PRESENCE_RATE=1000  PRESENCE_DURATION=15
#   PUBSUB_SUBSCRIBERS=1000  PUBSUB_RATES="5 10 20 40 80 160"  PUBSUB_DURATION=15
#   PUBSUB_P99_BOUND_MS=50                 (scenario "pubsub", not in the default list: one
#                                          publisher, PUBSUB_SUBSCRIBERS subscribers of one
#                                          node at pubsub.DOMAIN, items published at each
#                                          rate in turn, stopping past the p99 bound; every
#                                          server with PubSub turned on: Meerkat's
#                                          mod_pubsub, ejabberd's mod_pubsub ("flat") and
#                                          Prosody's pubsub component, from copies of the
#                                          peer configs under $OUT)
#   SERVER_CPUS=1  GEN_CPUS=0              ("all" = no pinning)
#   BROKER_CPUS=$GEN_CPUS                  (RabbitMQ's beam.smp, when it runs, is pinned
#                                          here for the whole invocation and given every
#                                          CPU back at the end, so the broker the modules
#                                          publish to does not share the server's core;
#                                          "all" = leave it alone)
#   SOURCE_IPS=127.0.0.2-127.0.0.9         (idle connections; ~28k per address)
#   HOST=127.0.0.1  PORT=5222  DOMAIN=localhost  ADMIN_PORT=5289
#   PEER_BENCH_DIR=<repo>/../shared/bench
#   PROFILE=release  BUILD=1               (cargo build --release of meerkat and meerkat-load;
#                                          off when both binaries are given)
#   CARGO_TARGET_DIR=/var/tmp/meerkat-target  MEERKAT_BIN, LOAD_BIN (override the binaries: an
#                                          A/B of two builds keeps one LOAD_BIN for both)
#   MODULES_TOML=<Inbox (rdbms_async), and the rabbit event pusher on the machine's RabbitMQ>
#                                          (appended to Meerkat's config for the server
#                                          "meerkat-modules", the same binary otherwise)
#   OUT=/var/tmp/meerkat-bench/<time>-<mode>
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODE="${MODE:-peer}"
PEER_BENCH_DIR="${PEER_BENCH_DIR:-$ROOT/../shared/bench}"
RUNS="${RUNS:-3}"
SCENARIOS="${SCENARIOS:-login idle chat steps presence}"
LOGIN_NS="${LOGIN_NS:-2000 10000}"; CONC="${CONC:-100}"
IDLE_NS="${IDLE_NS:-10000}"; IDLE_DURATION="${IDLE_DURATION:-10}"
CHAT_USERS="${CHAT_USERS:-1000}"; CHAT_WINDOW="${CHAT_WINDOW:-10}"; CHAT_DURATION="${CHAT_DURATION:-30}"
WARMUP="${WARMUP:-5}"
RATE_STEPS="${RATE_STEPS:-1000 1250 1600 2000 2500 3200 4000 5000 6300 8000 10000 12500 16000 20000 25000 32000 40000 50000 63000 80000}"
STEP_DURATION="${STEP_DURATION:-15}"; P99_BOUND_MS="${P99_BOUND_MS:-5}"
PRESENCE_USERS="${PRESENCE_USERS:-1000}"; PRESENCE_CONTACTS="${PRESENCE_CONTACTS:-10}"
PRESENCE_RATE="${PRESENCE_RATE:-1000}"; PRESENCE_DURATION="${PRESENCE_DURATION:-15}"
PUBSUB_SUBSCRIBERS="${PUBSUB_SUBSCRIBERS:-1000}"; PUBSUB_RATES="${PUBSUB_RATES:-5 10 20 40 80 160}"
PUBSUB_DURATION="${PUBSUB_DURATION:-15}"; PUBSUB_P99_BOUND_MS="${PUBSUB_P99_BOUND_MS:-50}"
PUBSUB=""   # set while a pubsub run's server is up
SERVER_CPUS="${SERVER_CPUS:-1}"; GEN_CPUS="${GEN_CPUS:-0}"; BROKER_CPUS="${BROKER_CPUS:-$GEN_CPUS}"
SOURCE_IPS="${SOURCE_IPS:-127.0.0.2-127.0.0.9}"
HOST="${HOST:-127.0.0.1}"; PORT="${PORT:-5222}"; DOMAIN="${DOMAIN:-localhost}"; ADMIN_PORT="${ADMIN_PORT:-5289}"
PROFILE="${PROFILE:-release}"
# Given binaries are measured as they are: building would overwrite the target directory's.
if [ -n "${MEERKAT_BIN:-}" ] && [ -n "${LOAD_BIN:-}" ]; then BUILD="${BUILD:-0}"; else BUILD="${BUILD:-1}"; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/meerkat-target}"
MEERKAT_BIN="${MEERKAT_BIN:-$CARGO_TARGET_DIR/$PROFILE/meerkat}"
LOAD_BIN="${LOAD_BIN:-$CARGO_TARGET_DIR/$PROFILE/meerkat-load}"
OUT="${OUT:-/var/tmp/meerkat-bench/$(date +%Y%m%d-%H%M%S)-$MODE}"
DEFAULT_MODULES_TOML='[modules.mod_inbox]
enabled = true
backend = "rdbms_async"

[outgoing_pools.rabbit.event_pusher.connection]
host = "127.0.0.1"

[modules.mod_event_pusher]
enabled = true
[modules.mod_event_pusher.rabbit]'
MODULES_TOML="${MODULES_TOML:-$DEFAULT_MODULES_TOML}"
WORK="$OUT/work"

case "$MODE" in
  peer) SERVERS="${SERVERS:-meerkat ejabberd prosody}"; AUTH=(--tls none --sasl plain) ;;
  production) SERVERS="${SERVERS:-meerkat ejabberd}"; AUTH=(--tls starttls --sasl scram-sha-256) ;;
  *) echo "MODE must be peer or production" >&2; exit 2 ;;
esac

say() { echo "# $*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }

command -v jq >/dev/null || die "needs jq (apt-get install jq)"
command -v taskset >/dev/null || die "needs taskset (util-linux)"
if [ "$GEN_CPUS" = all ]; then GEN=(); else GEN=(taskset -c "$GEN_CPUS"); fi
if [ "$SERVER_CPUS" = all ]; then PIN=(); else PIN=(taskset -c "$SERVER_CPUS"); fi

# Every connection is a file descriptor on both sides: raise the limit for
# this shell and everything it starts (root may raise the hard limit too).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "open-file limit $(ulimit -n)"
for n in $IDLE_NS $LOGIN_NS; do
  if [ "$n" -ge "$(ulimit -n)" ]; then
    say "warning: $n connections need more than the open-file limit of $(ulimit -n) (the hard limit is $(ulimit -Hn);"
    say "raising it needs CAP_SYS_RESOURCE): the server and the generator will refuse connections beyond it"
  fi
done

if ss -ltn "sport = :$PORT" | grep -q LISTEN; then
  die "something already listens on port $PORT: stop it first (one server at a time)"
fi

if [ "$BUILD" = 1 ]; then
  say "building meerkat and meerkat-load ($PROFILE)"
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  (cd "$ROOT" && cargo build "${flag[@]}" --bin meerkat --bin meerkat-load)
fi
[ -x "$MEERKAT_BIN" ] || die "no meerkat binary at $MEERKAT_BIN"
[ -x "$LOAD_BIN" ] || die "no meerkat-load binary at $LOAD_BIN"
mkdir -p "$WORK"

# ------------------------------------------------------------------ servers

PID=""; CURRENT=""

installed() { dpkg -s "$1" >/dev/null 2>&1; }

meerkat_config() {
  local dir="$WORK/$CURRENT"
  mkdir -p "$dir"
  local listener auth
  if [ "$MODE" = peer ]; then
    listener='tls.mode = "none"'
    auth='allow_plain_without_tls = true
password.format = "plain"
sasl_mechanisms = ["plain"]'
  else
    listener='tls.mode = "starttls_required"'
    auth='password.format = "scram"
sasl_mechanisms = ["scram_sha256"]'
  fi
  cat > "$dir/meerkat.toml" <<EOF
# Written by deploy/bench/compare.sh (MODE=$MODE).
[general]
hosts = ["$DOMAIN"]
data_dir = "$dir/data"
shutdown_grace_period = 5

[[listen.c2s]]
port = $PORT
ip_address = "$HOST"
$listener

[auth]
$auth

[admin]
ip_address = "127.0.0.1"
port = $ADMIN_PORT

[log]
level = "warn"

[session]
idle_timeout = 3600

[modules.mod_register]
enabled = true
# The generator creates its users in-band, all from one address.
registration_timeout = 0

# The peers' benchmark configs load no message archive (mod_mam), so neither
# does Meerkat here: every server does the same work per message.
[modules.mod_mam]
enabled = false
EOF
  if [ "$CURRENT" = meerkat-modules ]; then
    printf '\n# MODULES_TOML\n%s\n' "$MODULES_TOML" >> "$dir/meerkat.toml"
  fi
  if [ -n "$PUBSUB" ]; then
    printf '\n[modules.mod_pubsub]\nenabled = true\nplugins = ["flat"]\n' >> "$dir/meerkat.toml"
  fi
  echo "$dir/meerkat.toml"
}

# Copies of the peer harness with PubSub on, their own state directories:
# ejabberd's mod_pubsub (plugin "flat", at pubsub.DOMAIN), Prosody's pubsub
# component at pubsub.DOMAIN. Nothing is written to PEER_BENCH_DIR.
peer_pubsub_dir() {
  local d="$WORK/peer-pubsub"
  if [ ! -d "$d" ]; then
    mkdir -p "$d"
    cp -r "$PEER_BENCH_DIR/servers" "$PEER_BENCH_DIR/ejabberd" "$PEER_BENCH_DIR/prosody" "$d/"
    chmod -R u+w "$d"
    chown -R ejabberd:ejabberd "$d/ejabberd" 2>/dev/null || true
    sed -i 's#/tmp/xmppbench#/tmp/xmppbench-pubsub#g' "$d/servers/ejabberd.sh" "$d/servers/prosody.sh" \
      "$d/ejabberd/ejabberdctl.cfg" "$d/prosody/prosody.cfg.lua"
    sed -i 's/^modules:$/modules:\n  mod_pubsub:\n    plugins: ["flat"]\n    access_createnode: all\n    max_items_node: 10/' \
      "$d/ejabberd/ejabberd.yml"
    # Prosody lets only admins create nodes: the publisher (user1) is one.
    sed -i "s/^admins = { }/admins = { \"user1@$DOMAIN\" }/" "$d/prosody/prosody.cfg.lua"
    printf '\nComponent "pubsub.%s" "pubsub"\n' "$DOMAIN" >> "$d/prosody/prosody.cfg.lua"
  fi
  echo "$d"
}

wait_listening() {
  for _ in $(seq 1 300); do
    ss -ltn "sport = :$PORT" | grep -q LISTEN && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# A copy of the peer harness for production mode: STARTTLS required, SCRAM
# (SHA-256) credentials, its own state directory. Nothing is written to PEER_BENCH_DIR.
ejabberd_production_dir() {
  local d="$WORK/peer-production"
  if [ ! -d "$d" ]; then
    mkdir -p "$d"
    cp -r "$PEER_BENCH_DIR/servers" "$PEER_BENCH_DIR/ejabberd" "$d/"
    chmod -R u+w "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$DOMAIN" \
      -addext "subjectAltName=DNS:$DOMAIN" -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
    cat "$d/key.pem" "$d/cert.pem" > "$d/ejabberd/server.pem"
    chown -R ejabberd:ejabberd "$d/ejabberd" 2>/dev/null || true
    sed -i 's#/tmp/xmppbench#/tmp/xmppbench-production#g' "$d/servers/ejabberd.sh" "$d/ejabberd/ejabberdctl.cfg"
    sed -i -e 's/^\( *\)starttls: false/\1starttls: true/' \
           -e 's/^\( *\)starttls_required: false/\1starttls_required: true/' \
           -e 's/^auth_password_format: plain.*/auth_password_format: scram\nauth_scram_hash: sha256/' \
           -e '/^ *- "SCRAM-SHA-256"$/d' \
           "$d/ejabberd/ejabberd.yml"
    printf '\ncertfiles:\n  - "%s"\n' "$d/ejabberd/server.pem" >> "$d/ejabberd/ejabberd.yml"
  fi
  echo "$d"
}

start_server() {
  CURRENT="$1"
  case "$1" in
    meerkat|meerkat-modules)
      local cfg; cfg="$(meerkat_config)"
      ( exec "${PIN[@]}" "$MEERKAT_BIN" start --config "$cfg" ) </dev/null >>"$WORK/$CURRENT/node.log" 2>&1 &
      PID=$!
      wait_listening "$PID" || { tail -20 "$WORK/$CURRENT/node.log" >&2; die "meerkat did not start"; }
      ;;
    ejabberd)
      local dir="$PEER_BENCH_DIR"; [ "$MODE" = production ] && dir="$(ejabberd_production_dir)"
      [ -n "$PUBSUB" ] && dir="$(peer_pubsub_dir)"
      PID="$(CPUS="$SERVER_CPUS" "$dir/servers/ejabberd.sh" start | tail -1)"
      ;;
    prosody)
      local dir="$PEER_BENCH_DIR"; [ -n "$PUBSUB" ] && dir="$(peer_pubsub_dir)"
      PID="$(CPUS="$SERVER_CPUS" "$dir/servers/prosody.sh" start | tail -1)"
      ;;
  esac
  [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null || die "$1 did not start"
  sleep 3   # let it finish starting up before the idle RSS is read
  say "$1 started, pid $PID"
}

stop_server() {
  [ -n "$CURRENT" ] || return 0
  case "$CURRENT" in
    meerkat|meerkat-modules)
      if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PID" 2>/dev/null || true
      fi
      wait "$PID" 2>/dev/null || true
      ;;
    ejabberd)
      local dir="$PEER_BENCH_DIR"; [ "$MODE" = production ] && dir="$(ejabberd_production_dir)"
      [ -n "$PUBSUB" ] && dir="$(peer_pubsub_dir)"
      "$dir/servers/ejabberd.sh" stop || true
      ;;
    prosody)
      local dir="$PEER_BENCH_DIR"; [ -n "$PUBSUB" ] && dir="$(peer_pubsub_dir)"
      "$dir/servers/prosody.sh" stop || true
      ;;
  esac
  CURRENT=""; PID=""
  sleep 1
}
# The broker (RabbitMQ) off the server's core while this runs.
BROKER_PIDS="$(pgrep -f beam.smp || true)"
unpin_broker() {
  for p in $BROKER_PIDS; do taskset -a -cp "0-$(( $(nproc --all) - 1 ))" "$p" >/dev/null 2>&1 || true; done
}
if [ "$BROKER_CPUS" != all ] && [ -n "$BROKER_PIDS" ]; then
  for p in $BROKER_PIDS; do taskset -a -cp "$BROKER_CPUS" "$p" >/dev/null 2>&1 || say "could not pin RabbitMQ ($p)"; done
  say "RabbitMQ pinned to CPU $BROKER_CPUS for this run"
fi
trap 'stop_server; unpin_broker' EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ load

# load NAME RUN SCENARIO-ARGS...: one meerkat-load run; its JSON line goes to $OUT/NAME.jsonl
# and is echoed on stdout. A failed run is recorded and does not stop the script.
load() {
  local name="$1" run="$2"; shift 2
  local line rc=0
  line="$(timeout 3600 "${GEN[@]}" "$LOAD_BIN" --host "$HOST" --port "$PORT" --domain "$DOMAIN" "${AUTH[@]}" \
           --pid "$PID" --label "$name" --run "$run" --concurrency "$CONC" --json-out "$OUT/$name.jsonl" \
           "$@" | tee /dev/stderr | tail -1)" || rc=$?
  [ "$rc" = 0 ] || say "$name: meerkat-load $* exited $rc"
  echo "$line"
}

max() { printf '%s\n' "$@" | sort -n | tail -1; }

bench_server() {
  local name="$1"
  : > "$OUT/$name.jsonl"
  local maxu; maxu="$(max $LOGIN_NS $IDLE_NS "$CHAT_USERS")"
  local pfirst=$((maxu + 1))   # presence users get their own range: their rosters must not slow logins
  start_server "$name"
  say "$name: registering users 1..$((maxu + PRESENCE_USERS))"
  "${GEN[@]}" "$LOAD_BIN" --host "$HOST" --port "$PORT" --domain "$DOMAIN" "${AUTH[@]}" \
    --users $((maxu + PRESENCE_USERS)) --concurrency 50 register | tail -2 >&2 || die "$name: registration failed"
  stop_server
  for run in $(seq 1 "$RUNS"); do
    say "$name: run $run of $RUNS"
    if [[ " $SCENARIOS " == *" login "* ]]; then
      for n in $LOGIN_NS; do
        start_server "$name"
        load "$name" "$run" --users "$n" --settle 3 --source-ips "$SOURCE_IPS" login >/dev/null
        stop_server
      done
    fi
    if [[ " $SCENARIOS " == *" idle "* ]]; then
      for n in $IDLE_NS; do
        start_server "$name"
        load "$name" "$run" --users "$n" --warmup 3 --duration "$IDLE_DURATION" --source-ips "$SOURCE_IPS" idle >/dev/null
        stop_server
      done
    fi
    if [[ " $SCENARIOS " == *" chat "* || " $SCENARIOS " == *" steps "* || " $SCENARIOS " == *" presence "* ]]; then
      start_server "$name"
      if [[ " $SCENARIOS " == *" chat "* ]]; then
        load "$name" "$run" --users "$CHAT_USERS" --warmup "$WARMUP" --duration "$CHAT_DURATION" \
          chat --window "$CHAT_WINDOW" >/dev/null
      fi
      if [[ " $SCENARIOS " == *" steps "* ]]; then
        for r in $RATE_STEPS; do
          line="$(load "$name" "$run" --users "$CHAT_USERS" --warmup 3 --duration "$STEP_DURATION" chat --rate "$r")"
          ok="$(jq -r --argjson r "$r" --argjson b "$P99_BOUND_MS" \
                 'if (.latency_ms.p99 // 1e9) < $b and (.lost // 1) == 0 and (.delivered_per_s // 0) >= 0.9 * $r
                  then "yes" else "no" end' <<<"$line" 2>/dev/null || echo no)"
          [ "$ok" = yes ] || { say "$name: p99 bound of $P99_BOUND_MS ms passed at rate $r: stopping the steps"; break; }
          sleep 2
        done
      fi
      if [[ " $SCENARIOS " == *" presence "* ]]; then
        load "$name" "$run" --users "$PRESENCE_USERS" --first-index "$pfirst" --warmup 3 --duration "$PRESENCE_DURATION" \
          presence --contacts "$PRESENCE_CONTACTS" --rate "$PRESENCE_RATE" >/dev/null
      fi
      stop_server
    fi
    if [[ " $SCENARIOS " == *" pubsub "* ]]; then
      PUBSUB=1
      start_server "$name"
      local pusers=$((PUBSUB_SUBSCRIBERS + 1))
      "${GEN[@]}" "$LOAD_BIN" --host "$HOST" --port "$PORT" --domain "$DOMAIN" "${AUTH[@]}" \
        --users "$pusers" --concurrency 50 register | tail -1 >&2 || say "$name: pubsub users: registration failed"
      for r in $PUBSUB_RATES; do
        line="$(load "$name" "$run" --users "$pusers" --warmup 3 --duration "$PUBSUB_DURATION" \
                  pubsub --service "pubsub.$DOMAIN" --rate "$r")"
        ok="$(jq -r --argjson r "$r" --argjson n "$PUBSUB_SUBSCRIBERS" --argjson b "$PUBSUB_P99_BOUND_MS" \
               'if (.latency_ms.p99 // 1e9) < $b and (.lost // 1) == 0 and (.delivered_per_s // 0) >= 0.9 * $r * $n
                then "yes" else "no" end' <<<"$line" 2>/dev/null || echo no)"
        [ "$ok" = yes ] || { say "$name: pubsub p99 bound of $PUBSUB_P99_BOUND_MS ms passed at $r items/s: stopping"; break; }
        sleep 2
      done
      stop_server
      PUBSUB=""
    fi
  done
}

# ------------------------------------------------------------------ main

files=()
for s in $SERVERS; do
  case "$s" in
    meerkat|meerkat-modules) ;;
    ejabberd|prosody)
      installed "$s" || { say "$s is not installed: skipped (see $PEER_BENCH_DIR/README.md)"; continue; }
      [ -x "$PEER_BENCH_DIR/servers/$s.sh" ] || { say "no $PEER_BENCH_DIR/servers/$s.sh: $s skipped"; continue; }
      ;;
    *) die "unknown server $s" ;;
  esac
  bench_server "$s"
  files+=("$OUT/$s.jsonl")
done

[ "${#files[@]}" -gt 0 ] || die "no server was measured"
{
  echo "## meerkat-load comparison, MODE=$MODE, $RUNS run(s), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Server pinned to CPU $SERVER_CPUS, generator to CPU $GEN_CPUS; auth ${AUTH[*]}. Median (min..max, n) of the runs."
  echo
  "$LOAD_BIN" report --p99-bound-ms "$P99_BOUND_MS" "${files[@]}"
} | tee "$OUT/table.md"
say "results in $OUT"
