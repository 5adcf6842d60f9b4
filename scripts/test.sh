#!/usr/bin/env bash
# The test suite. As root, on a fresh machine:
#
#   scripts/test.sh
#
# For each PostgreSQL major in PTRACK_TEST_MAJORS (default: all supported) it
# sets everything up (scripts/setup.sh: packages, the patched server built once
# and cached, the extension built and installed into it) and runs the cluster
# tests against it as the postgres user; the full suite on 17, the lean one
# (API, map files, cold-copy checks) on the others. The pure core's unit and
# property tests run once. PTRACK_TEST_FILTER is passed to cargo test as a
# test-name filter.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
majors=${PTRACK_TEST_MAJORS:-17}
full_suite_major=17
lean_suite=(--test sql_api --test map_file --test cold_copy)
filter=(${PTRACK_TEST_FILTER:+"$PTRACK_TEST_FILTER"})

cargo test --release -p ptrack-core

for major in $majors; do
	echo "=== PostgreSQL $major (hook mode)"
	prefix=$(PTRACK_PG_MAJOR=$major "$repo/scripts/setup.sh" | tail -n1)
	export PTRACK_PG_PREFIX=$prefix
	export PGRX_PG_CONFIG_PATH=$prefix/bin/pg_config
	export CARGO_TARGET_DIR=$repo/target/$(basename "$prefix")
	if [ "$major" = "$full_suite_major" ]; then
		suite=(--tests)
	else
		suite=("${lean_suite[@]}")
	fi
	cargo test --release -p ptrack --no-default-features --features "pg$major" "${suite[@]}" \
		-- --test-threads=2 "${filter[@]}"
done
