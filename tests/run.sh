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
