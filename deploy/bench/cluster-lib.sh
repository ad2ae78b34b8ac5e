# Shared by cluster-logins.sh and idle-cluster.sh (sourced, not run): start
# and stop Meerkat nodes of one Raft cluster on this machine, on one
# PostgreSQL database. Needs MEERKAT_BIN, WORK, PG_URL, DB, DB_URL and die;
# sourcing it creates the database DB and sets the EXIT trap that stops the
# nodes and drops it.

PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  stop_all
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql "$PG_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $DB" || die "cannot create database $DB on $PG_URL"

# config N SETUP: writes node N's config and prints its path.
config() {
  local n="$1" setup="$2" dir="$WORK/$2/node$1"
  mkdir -p "$dir"
  {
    cat <<EOF
[general]
hosts = ["localhost"]
data_dir = "$dir/data"
shutdown_grace_period = 5

[[listen.c2s]]
port = $((5300 + n))
ip_address = "127.0.0.1"
tls.mode = "none"

[auth]
allow_plain_without_tls = true
password.format = "plain"
sasl_mechanisms = ["plain"]

[admin]
ip_address = "127.0.0.1"
port = $((5400 + n))

[outgoing_pools.rdbms.default]
workers = 10
connection.url = "$DB_URL"

[log]
level = "warn"

[session]
idle_timeout = 3600

[modules.mod_register]
enabled = true
# The generator creates its users in-band, all from one address.
registration_timeout = 0
EOF
    if [ "$setup" != single ]; then
      cat <<EOF

[cluster]
name = "bench-$$"
node_id = $n
listen = "127.0.0.1:$((7400 + n))"
bootstrap = $([ "$n" = 1 ] && echo true || echo false)
EOF
    fi
  } > "$dir/meerkat.toml"
  echo "$dir/meerkat.toml"
}

start_node() {
  local cfg="$1"
  "$MEERKAT_BIN" start --config "$cfg" </dev/null >>"${cfg%/*}/node.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    "$MEERKAT_BIN" --config "$cfg" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "${cfg%/*}/node.log" >&2
  die "node $cfg did not start"
}

wait_ready() {
  local cfg="$1"
  for _ in $(seq 1 300); do
    "$MEERKAT_BIN" --config "$cfg" cluster status --json 2>/dev/null | grep -q '"ready": true' && return 0
    sleep 0.1
  done
  die "node $cfg is not ready"
}

# sessions CFG: bound sessions in the table, as that node's admin API reports them.
sessions() { "$MEERKAT_BIN" --config "$1" status | sed -n 's/.*"sessions": \([0-9]*\).*/\1/p'; }

# start_setup SETUP N: N nodes (SETUP "single": one node without [cluster]).
start_setup() {
  local setup="$1" n="$2"
  CFGS=()
  for i in $(seq 1 "$n"); do CFGS+=("$(config "$i" "$setup")"); done
  start_node "${CFGS[0]}"
  [ "$setup" = single ] || wait_ready "${CFGS[0]}"
  for i in $(seq 2 "$n"); do
    start_node "${CFGS[$((i - 1))]}"
    "$MEERKAT_BIN" --config "${CFGS[$((i - 1))]}" cluster join "127.0.0.1:7401" >/dev/null
    wait_ready "${CFGS[$((i - 1))]}"
  done
  [ "$setup" = single ] || "$MEERKAT_BIN" --config "${CFGS[0]}" cluster status >&2
}

