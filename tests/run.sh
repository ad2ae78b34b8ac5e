#!/usr/bin/env bash
# The whole test suite: unit tests, the repository suite on SQLite, PostgreSQL
# and MariaDB, black-box tests against the real binary, and the slixmpp
# scenario. Needs PostgreSQL on 127.0.0.1:5432 (database "test", trust auth)
# and MariaDB on 127.0.0.1:3306 (root without a password), or the
# MEERKAT_TEST_PG_URL / MEERKAT_TEST_MYSQL_URL variables, Redis on
# 127.0.0.1:6379 for the routing table tests, and redis-server on the PATH
# for the tests that restart a private Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/meerkat-target}"
export MEERKAT_VENV="${MEERKAT_VENV:-/var/tmp/meerkat-venv}"

# Prosody (with libunbound, its resolver) and ejabberd as federation peers,
# and dnsmasq as the DNS server of their network namespaces (SRV records):
# the tests start and stop them; their packages must not start them on
# install, so a policy-rc.d that refuses is put in place if there is none.
s2s_peers_install() {
  local made=
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prosody lua-unbound ejabberd dnsmasq-base || rc=$?
  if [ -n "$made" ]; then rm -f /usr/sbin/policy-rc.d; fi
  return $rc
}
if [ ! -x /usr/bin/prosody ] || [ ! -x /usr/sbin/ejabberdctl ] || [ ! -e /usr/lib/x86_64-linux-gnu/lua/5.4/lunbound.so ] || [ ! -x /usr/sbin/dnsmasq ]; then
  s2s_peers_install || { apt-get update && s2s_peers_install; }
fi

# Third-party clients, pinned in tests/python/requirements.txt.
if [ ! -x "$MEERKAT_VENV/bin/python" ]; then
  python3 -m venv "$MEERKAT_VENV"
fi
if ! cmp -s tests/python/requirements.txt "$MEERKAT_VENV/.meerkat-requirements"; then
  "$MEERKAT_VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$MEERKAT_VENV/.meerkat-requirements"
fi

cargo fmt --all -- --check
cargo build --bin meerkat --bin meerkat-load
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
