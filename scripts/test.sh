#!/usr/bin/env bash
# The test suite: sets everything up (scripts/setup.sh), then runs the pure
# core's unit and property tests and the cluster tests against the patched
# server, as the postgres user. As root, on a fresh machine:
#
#   scripts/test.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
major=${PTRACK_PG_MAJOR:-17}
prefix=$("$repo/scripts/setup.sh" | tail -n1)

export PTRACK_PG_PREFIX=$prefix
export PGRX_PG_CONFIG_PATH=$prefix/bin/pg_config
cd "$repo"
cargo test --release --workspace --no-default-features --features "pg$major" -- --test-threads=2
