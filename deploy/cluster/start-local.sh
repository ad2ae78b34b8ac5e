#!/usr/bin/env bash
# Starts a local 3-node Meerkat cluster on this machine, in one command.
#
#   deploy/cluster/start-local.sh
#   MEERKAT_BIN=target/debug/meerkat deploy/cluster/start-local.sh
#   MEERKAT_DB_URL=postgres://meerkat@127.0.0.1:5432/meerkat deploy/cluster/start-local.sh
#   deploy/cluster/stop-local.sh                # SIGTERM to the three nodes
#
# Every node is its own `meerkat start` process with its own config file,
# data directory, log and pid file under the base directory:
#
#   node  c2s (STARTTLS)  c2s (direct TLS)  admin API  cluster transport
#   1     5222            5223              5288       7946   (bootstrap = true)
#   2     5232            5233              5298       7947
#   3     5242            5243              5308       7948
#
# All listeners are on 127.0.0.1; the XMPP domain is `localhost`; the nodes
# share one database. The cluster is formed the documented way: node 1
# bootstraps a new cluster, nodes 2 and 3 start with no cluster state and are
# added with `meerkat cluster join 127.0.0.1:7946`.
#
# Running it again (after stop-local.sh, or while nodes are still running) is
# safe: the config files are rewritten, running nodes are left alone, and a
# node that already belongs to the cluster is not joined again (it rejoins by
# itself when it starts). Only a node with no cluster state is joined.
#
# Environment (defaults):
#   MEERKAT_BIN          the meerkat binary: $MEERKAT_BIN, else
#                        <repository>/target/release/meerkat, else `meerkat` on PATH
#   MEERKAT_CLUSTER_DIR  base directory (./meerkat-cluster):
#                          nodeN.toml  nodeN/ (data_dir: admin.token, cluster/, tls/)
#                          nodeN.log   nodeN.pid   meerkat.db (the shared SQLite file)
#   MEERKAT_DB_URL       database of all three nodes (sqlite://<base>/meerkat.db);
#                        use PostgreSQL or MySQL to run the nodes on a real server
#   MEERKAT_CLUSTER_NAME cluster name (meerkat-local)
#   MEERKAT_XMPP_HOST    the XMPP domain served (localhost)
#   MEERKAT_WAIT         seconds to wait for each step (60)
#
# Afterwards, any node can be managed with its config, for example:
#   meerkat --config meerkat-cluster/node2.toml cluster status
#   meerkat --config meerkat-cluster/node1.toml user add alice@localhost --password secret
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)

if [[ -n "${MEERKAT_BIN:-}" ]]; then
    bin=$MEERKAT_BIN
elif [[ -x "$repo/target/release/meerkat" ]]; then
    bin=$repo/target/release/meerkat
elif command -v meerkat >/dev/null 2>&1; then
    bin=$(command -v meerkat)
else
    echo "start-local.sh: no meerkat binary: set MEERKAT_BIN, run 'cargo build --release', or put meerkat on PATH" >&2
    exit 1
fi
if [[ ! -x "$bin" ]]; then
    echo "start-local.sh: $bin is not an executable" >&2
    exit 1
fi

base=${MEERKAT_CLUSTER_DIR:-./meerkat-cluster}
mkdir -p "$base"
base=$(cd "$base" && pwd)
db_url=${MEERKAT_DB_URL:-sqlite://$base/meerkat.db}
cluster_name=${MEERKAT_CLUSTER_NAME:-meerkat-local}
xmpp_host=${MEERKAT_XMPP_HOST:-localhost}
wait_s=${MEERKAT_WAIT:-60}
seed=127.0.0.1:7946

c2s_port() { echo $((5222 + 10 * ($1 - 1))); }
admin_port() { echo $((5288 + 10 * ($1 - 1))); }
cluster_port() { echo $((7946 + $1 - 1)); }
cfg() { echo "$base/node$1.toml"; }

# A TOML basic string.
toml_str() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

write_config() {
    local n=$1 bootstrap=false
    [[ $n == 1 ]] && bootstrap=true
    cat >"$(cfg "$n")" <<EOF
# Node $n of the local cluster. Written by deploy/cluster/start-local.sh,
# which rewrites it on every run.

[general]
hosts = [$(toml_str "$xmpp_host")]
data_dir = $(toml_str "$base/node$n")

[[listen.c2s]]
port = $(c2s_port "$n")
ip_address = "127.0.0.1"
tls.mode = "starttls"

[[listen.c2s]]
port = $(($(c2s_port "$n") + 1))
ip_address = "127.0.0.1"
tls.mode = "tls"

[outgoing_pools.rdbms.default]
connection.url = $(toml_str "$db_url")

[admin]
ip_address = "127.0.0.1"
port = $(admin_port "$n")

[cluster]
name = $(toml_str "$cluster_name")
node_id = $n
listen = "127.0.0.1:$(cluster_port "$n")"
bootstrap = $bootstrap
EOF
}

running() {
    local pidfile=$base/node$1.pid pid
    [[ -f "$pidfile" ]] || return 1
    pid=$(cat "$pidfile")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && ps -p "$pid" -o args= 2>/dev/null | grep -qF -- "$(cfg "$1")"
}

start_node() {
    local n=$1
    if running "$n"; then
        echo "node $n: already running (pid $(cat "$base/node$n.pid"))"
        return
    fi
    mkdir -p "$base/node$n"
    nohup "$bin" --config "$(cfg "$n")" start >>"$base/node$n.log" 2>&1 </dev/null &
    echo $! >"$base/node$n.pid"
    echo "node $n: started (pid $!, log $base/node$n.log)"
}

# Runs `meerkat cluster status --json` against node $1.
status_json() {
    "$bin" --config "$(cfg "$1")" cluster status --json 2>/dev/null
}

# Waits until node $1 answers on its admin API.
wait_api() {
    local n=$1 deadline=$((SECONDS + wait_s))
    until status_json "$n" >/dev/null; do
        if ! running "$n"; then
            echo "node $n: exited during start; the end of $base/node$n.log:" >&2
            tail -n 20 "$base/node$n.log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "node $n: its admin API did not answer within ${wait_s}s (see $base/node$n.log)" >&2
            exit 1
        fi
        sleep 0.3
    done
}

# Waits until node $1 reports `"ready": true` (a member that registered with the cluster).
wait_ready() {
    local n=$1 deadline=$((SECONDS + wait_s))
    until status_json "$n" | grep -q '"ready": true'; do
        if ! running "$n"; then
            echo "node $n: exited; the end of $base/node$n.log:" >&2
            tail -n 20 "$base/node$n.log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "node $n: not ready within ${wait_s}s; it reports:" >&2
            "$bin" --config "$(cfg "$n")" cluster status >&2 || true
            exit 1
        fi
        sleep 0.3
    done
}

# How many members node $1 knows of (0: it has no cluster state and must be joined).
members() {
    status_json "$1" | grep -c '"role":' || true
}

for n in 1 2 3; do
    write_config "$n"
done

start_node 1
wait_api 1
if (($(members 1) <= 1)); then
    # A new cluster (or one that only has node 1): it can commit on its own.
    wait_ready 1
    echo "node 1: ready"
else
    # A restart of an existing cluster: node 1 needs a majority, so the
    # others start before anyone can become ready.
    echo "node 1: member of an existing cluster of $(members 1) nodes"
fi

for n in 2 3; do
    start_node "$n"
    wait_api "$n"
    if (($(members "$n") == 0)); then
        echo "node $n: no cluster state; joining through $seed"
        "$bin" --config "$(cfg "$n")" cluster join "$seed" >/dev/null
    else
        echo "node $n: already a member of the cluster; not joined again"
    fi
done

for n in 1 2 3; do
    wait_ready "$n"
done

echo
"$bin" --config "$(cfg 1)" cluster status
echo
for n in 1 2 3; do
    echo "node $n: c2s 127.0.0.1:$(c2s_port "$n") (direct TLS $(($(c2s_port "$n") + 1)))," \
        "admin http://127.0.0.1:$(admin_port "$n"), config $(cfg "$n"), pid $(cat "$base/node$n.pid")"
done
echo "database: $(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$db_url")"
echo "stop with: MEERKAT_CLUSTER_DIR=$base $script_dir/stop-local.sh"
