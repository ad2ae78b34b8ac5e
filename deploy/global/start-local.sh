#!/usr/bin/env bash
# Starts a local demo of global distribution in one command: two data
# centers, each a cluster of two nodes, all on 127.0.0.1, serving one XMPP
# domain together.
#
#   deploy/global/start-local.sh
#   MEERKAT_BIN=target/debug/meerkat deploy/global/start-local.sh
#   deploy/global/stop-local.sh                 # SIGTERM to the four nodes
#
# Every node is its own `meerkat start` process with its own config file,
# data directory, log and pid file under the base directory:
#
#   node       c2s (STARTTLS)  c2s (direct TLS)  admin API  cluster  global link
#   dc1-node1  6222            6223              6288       7950     5555  (bootstrap = true)
#   dc1-node2  6232            6233              6298       7951     5556
#   dc2-node1  6242            6243              6308       7960     5565  (bootstrap = true)
#   dc2-node2  6252            6253              6318       7961     5566
#
# Both data centers serve global_host `example.com`; their local_host is
# dc1.example.com and dc2.example.com. Each data center is one cluster,
# formed as deploy/cluster/start-local.sh does it: node 1 bootstraps, node 2
# starts with no cluster state and is joined with `meerkat cluster join`.
#
# What the data centers share:
#   - the routing table: the local Redis, database index 5 (in production,
#     Dynomite replicates it between data centers; see dynomite-dc*.yml.example);
#   - the user data: one SQLite file for all four nodes (in production, a
#     PostgreSQL or MySQL database every data center reaches).
#
# Running it again (after stop-local.sh, or while nodes are still running) is
# safe: the config files are rewritten, running nodes are left alone, and a
# node that already belongs to its cluster is not joined again.
#
# Environment (defaults):
#   MEERKAT_BIN         the meerkat binary: $MEERKAT_BIN, else
#                       <repository>/target/release/meerkat, else `meerkat` on PATH
#   MEERKAT_GLOBAL_DIR  base directory (./meerkat-global):
#                         dcD-nodeN.toml  dcD-nodeN/ (data_dir)  dcD-nodeN.log
#                         dcD-nodeN.pid   meerkat.db (the shared SQLite file)
#   MEERKAT_DB_URL      database of all four nodes (sqlite://<base>/meerkat.db)
#   MEERKAT_REDIS_HOST  Redis host (127.0.0.1)
#   MEERKAT_REDIS_PORT  Redis port (6379)
#   MEERKAT_REDIS_DB    Redis database index (5), so the demo keeps to its own keys
#   MEERKAT_WAIT        seconds to wait for each step (60)
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

base=${MEERKAT_GLOBAL_DIR:-./meerkat-global}
mkdir -p "$base"
base=$(cd "$base" && pwd)
db_url=${MEERKAT_DB_URL:-sqlite://$base/meerkat.db}
redis_host=${MEERKAT_REDIS_HOST:-127.0.0.1}
redis_port=${MEERKAT_REDIS_PORT:-6379}
redis_db=${MEERKAT_REDIS_DB:-5}
wait_s=${MEERKAT_WAIT:-60}
global_host=example.com
nodes=(dc1-node1 dc1-node2 dc2-node1 dc2-node2)

# Ports of node $1 (dcD-nodeN).
dc_of() { local x=${1#dc}; echo "${x%%-*}"; }
n_of() { echo "${1##*node}"; }
index() { echo $((2 * ($(dc_of "$1") - 1) + $(n_of "$1") - 1)); }
c2s_port() { echo $((6222 + 10 * $(index "$1"))); }
admin_port() { echo $((6288 + 10 * $(index "$1"))); }
cluster_port() { echo $((7950 + 10 * ($(dc_of "$1") - 1) + $(n_of "$1") - 1)); }
global_port() { echo $((5555 + 10 * ($(dc_of "$1") - 1) + $(n_of "$1") - 1)); }
cfg() { echo "$base/$1.toml"; }

# A TOML basic string.
toml_str() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

# The routing table must be reachable before the nodes start: a node refuses
# to start without it.
redis_ping() {
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -h "$redis_host" -p "$redis_port" -n "$redis_db" ping 2>/dev/null | grep -q PONG
    else
        # Without redis-cli: an inline PING over bash's /dev/tcp.
        exec 3<>"/dev/tcp/$redis_host/$redis_port" 2>/dev/null || return 1
        printf 'PING\r\n' >&3
        local reply
        read -r -t 2 reply <&3 || true
        exec 3>&-
        [[ $reply == +PONG* || $reply == -NOAUTH* ]]
    fi
}
if ! redis_ping; then
    echo "start-local.sh: no Redis answers at $redis_host:$redis_port (start one, e.g. 'redis-server --daemonize yes'," \
        "or set MEERKAT_REDIS_HOST/MEERKAT_REDIS_PORT)" >&2
    exit 1
fi

write_config() {
    local node=$1 d n bootstrap=false
    d=$(dc_of "$node")
    n=$(n_of "$node")
    [[ $n == 1 ]] && bootstrap=true
    cat >"$(cfg "$node")" <<EOF
# Node $n of data center dc$d in the local global-distribution demo. Written
# by deploy/global/start-local.sh, which rewrites it on every run.

[general]
hosts = [$(toml_str "$global_host")]
data_dir = $(toml_str "$base/$node")

[[listen.c2s]]
port = $(c2s_port "$node")
ip_address = "127.0.0.1"
tls.mode = "starttls"

[[listen.c2s]]
port = $(($(c2s_port "$node") + 1))
ip_address = "127.0.0.1"
tls.mode = "tls"

# User data, shared by every data center.
[outgoing_pools.rdbms.default]
connection.url = $(toml_str "$db_url")

[admin]
ip_address = "127.0.0.1"
port = $(admin_port "$node")

# A demo: meerkat-load (deploy/bench/global-latency.sh) creates its users
# in-band, all from this machine.
[modules.mod_register]
registration_timeout = 0

# One cluster per data center.
[cluster]
name = "meerkat-dc$d"
node_id = $n
listen = "127.0.0.1:$(cluster_port "$node")"
bootstrap = $bootstrap

[global_distribution]
global_host = $(toml_str "$global_host")
local_host = "dc$d.$global_host"

[global_distribution.redis]
pool = "global_distrib"

[global_distribution.connections]
endpoints = [{ host = "127.0.0.1", port = $(global_port "$node") }]
# Find the other data center quickly in a demo (the default is 3000).
hosts_refresh_interval = 1000

[outgoing_pools.redis.global_distrib.connection]
host = $(toml_str "$redis_host")
port = $redis_port
database = $redis_db
EOF
}

running() {
    local pidfile=$base/$1.pid pid
    [[ -f "$pidfile" ]] || return 1
    pid=$(cat "$pidfile")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && ps -p "$pid" -o args= 2>/dev/null | grep -qF -- "$(cfg "$1")"
}

start_node() {
    local node=$1
    if running "$node"; then
        echo "$node: already running (pid $(cat "$base/$node.pid"))"
        return
    fi
    mkdir -p "$base/$node"
    nohup "$bin" --config "$(cfg "$node")" start >>"$base/$node.log" 2>&1 </dev/null &
    echo $! >"$base/$node.pid"
    echo "$node: started (pid $!, log $base/$node.log)"
}

status_json() {
    "$bin" --config "$(cfg "$1")" cluster status --json 2>/dev/null
}

global_json() {
    "$bin" --config "$(cfg "$1")" global status --json 2>/dev/null
}

died() {
    echo "$1: exited; the end of $base/$1.log:" >&2
    tail -n 20 "$base/$1.log" >&2
    exit 1
}

# Waits until node $1 answers on its admin API.
wait_api() {
    local node=$1 deadline=$((SECONDS + wait_s))
    until status_json "$node" >/dev/null; do
        running "$node" || died "$node"
        if ((SECONDS >= deadline)); then
            echo "$node: its admin API did not answer within ${wait_s}s (see $base/$node.log)" >&2
            exit 1
        fi
        sleep 0.3
    done
}

# Waits until node $1 reports `"ready": true` in its cluster.
wait_ready() {
    local node=$1 deadline=$((SECONDS + wait_s))
    until status_json "$node" | grep -q '"ready": true'; do
        running "$node" || died "$node"
        if ((SECONDS >= deadline)); then
            echo "$node: not ready within ${wait_s}s; it reports:" >&2
            "$bin" --config "$(cfg "$node")" cluster status >&2 || true
            exit 1
        fi
        sleep 0.3
    done
}

# Waits until node $1 has a connected link to both nodes of the other data center.
wait_links() {
    local node=$1 deadline=$((SECONDS + wait_s))
    until (($(global_json "$node" | grep -c '"connected": true' || true) >= 2)); do
        running "$node" || died "$node"
        if ((SECONDS >= deadline)); then
            echo "$node: no links to the other data center within ${wait_s}s; it reports:" >&2
            "$bin" --config "$(cfg "$node")" global status >&2 || true
            exit 1
        fi
        sleep 0.3
    done
}

members() {
    status_json "$1" | grep -c '"role":' || true
}

for node in "${nodes[@]}"; do
    write_config "$node"
done

for d in 1 2; do
    first=dc$d-node1
    second=dc$d-node2
    start_node "$first"
    wait_api "$first"
    if (($(members "$first") <= 1)); then
        wait_ready "$first"
        echo "$first: ready"
    else
        echo "$first: member of an existing cluster of $(members "$first") nodes"
    fi
    start_node "$second"
    wait_api "$second"
    if (($(members "$second") == 0)); then
        echo "$second: no cluster state; joining through 127.0.0.1:$(cluster_port "$first")"
        "$bin" --config "$(cfg "$second")" cluster join "127.0.0.1:$(cluster_port "$first")" >/dev/null
    else
        echo "$second: already a member of its cluster; not joined again"
    fi
done

for node in "${nodes[@]}"; do
    wait_ready "$node"
done
for node in "${nodes[@]}"; do
    wait_links "$node"
done

echo
"$bin" --config "$(cfg dc1-node1)" global status
echo
"$bin" --config "$(cfg dc2-node1)" global status
echo
for node in "${nodes[@]}"; do
    echo "$node: c2s 127.0.0.1:$(c2s_port "$node") (direct TLS $(($(c2s_port "$node") + 1)))," \
        "admin http://127.0.0.1:$(admin_port "$node"), link 127.0.0.1:$(global_port "$node"), config $(cfg "$node")"
done
echo "user data: $(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$db_url")"
echo "routing table: redis://$redis_host:$redis_port/$redis_db"
cat <<EOF

To try it, create two accounts (any node: the database is shared) and log in
one client to each data center, with the domain $global_host and the server
address set by hand (no DNS is involved; the certificate is self-signed):

  $bin --config $(cfg dc1-node1) user add alice@$global_host --password secret
  $bin --config $(cfg dc1-node1) user add bob@$global_host --password secret
  alice: server 127.0.0.1, port $(c2s_port dc1-node1) (dc1)
  bob:   server 127.0.0.1, port $(c2s_port dc2-node1) (dc2)

Messages between them cross the link between the data centers; watch it with
  $bin --config $(cfg dc1-node1) global status

stop with: MEERKAT_GLOBAL_DIR=$base $script_dir/stop-local.sh
EOF
