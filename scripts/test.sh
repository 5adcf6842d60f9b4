#!/usr/bin/env bash
# The test suite. As root, on a fresh machine:
#
#   scripts/test.sh
#
# For each PostgreSQL major in PTRACK_TEST_MAJORS (default: 17 15 18) it sets
# everything up (scripts/setup.sh: packages, the patched server built once and
# cached, the extension built and installed into it) and runs the cluster tests
# against it as the postgres user: the whole suite on every major. Then the
# cold-copy checks and SQL API again on a 17 built with 512 kB relation
# segments, so relations span many segment files. The pure core's unit and
# property tests run first.
#
# WAL mode: the cold-copy checks, the SQL API and the standby tests run on
# Debian's own unpatched postgresql-15 (installed from apt; ptrack.mode auto
# picks WAL mode there) and, with ptrack.mode = wal, on the patched 17. The
# WAL follower's own tests (wal_mode.rs) are part of every whole-suite run.
#
# PTRACK_TEST_MAJORS="17" limits the majors; PTRACK_TEST_SEGSIZE=0 skips the
# small-segment run; PTRACK_TEST_WAL=0 skips the WAL-mode runs;
# PTRACK_TEST_PACKAGE=0 skips the Debian package test (scripts/test-package.sh);
# PTRACK_TEST_FILTER is a cargo test name filter.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
majors=${PTRACK_TEST_MAJORS:-17 15 18}
filter=(${PTRACK_TEST_FILTER:+"$PTRACK_TEST_FILTER"})

# A pinned source tarball that has vanished from the mirror fails here, in
# seconds, rather than in a build an hour from now.
for major in $(printf '%s\n' $majors 15 17 | sort -u); do
	bash "$repo/scripts/build-postgres.sh" --check-source "$major"
done

cargo test --release -p ptrack-core
# The backup client: its unit tests, and one build that every server's chain
# tests (tests/backup_chain.rs) use; it links no server code.
cargo test --release -p ptrack-backup
cargo build --release -p ptrack-backup --target-dir "$repo/target/tools"
export PTRACK_BACKUP_BIN=$repo/target/tools/release/ptrack-backup

# run_suite MODE MAJOR FLAVOR CARGO-TEST-TARGETS...
run_suite() {
	local mode=$1 major=$2 flavor=$3 prefix
	shift 3
	echo "=== PostgreSQL $major ($flavor build, $mode mode)"
	prefix=$(PTRACK_PG_MAJOR=$major PTRACK_PG_FLAVOR=$flavor "$repo/scripts/setup.sh" | tail -n1)
	PTRACK_TEST_MODE=$mode PTRACK_PG_PREFIX=$prefix \
		PGRX_PG_CONFIG_PATH=$prefix/bin/pg_config \
		CARGO_TARGET_DIR=$repo/target/$(basename "$prefix") \
		cargo test --release -p ptrack --no-default-features --features "pg$major" "$@" \
		-- --test-threads=2 "${filter[@]}"
}

for major in $majors; do
	run_suite hooks "$major" test --tests
done
if [ "${PTRACK_TEST_SEGSIZE:-1}" = 1 ]; then
	run_suite hooks 17 segsize --test cold_copy --test sql_api
fi
if [ "${PTRACK_TEST_WAL:-1}" = 1 ]; then
	wal_tests=(--test cold_copy --test sql_api --test standby --test wal_mode --test init_lsn
		--test backup_chain --test wal_follower_errors --test chain_rule --test map_resize)
	run_suite wal 15 debian "${wal_tests[@]}"
	run_suite wal 17 test "${wal_tests[@]}"
fi
# Last: the package replaces, then restores, the copy the debian-15 WAL run
# installed into /usr/lib/postgresql/15, and its build reuses that run's.
if [ "${PTRACK_TEST_PACKAGE:-1}" = 1 ]; then
	echo "=== Debian package postgresql-15-ptrack (Debian's unpatched 15, WAL mode)"
	"$repo/scripts/test-package.sh" 15
fi
