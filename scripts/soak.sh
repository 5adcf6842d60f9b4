#!/usr/bin/env bash
# Soak test of the no-false-negative guarantee (not part of the CI suite):
# N iterations of a randomized workload with crashes, each ending in the
# block-by-block cold-copy check (examples/soak/). Results:
# benches/results/soak-YYYYMMDD.json; exits non-zero on any false negative.
#
#   scripts/soak.sh [ITERATIONS] [extra soak options: --seed S --out PATH]
#
# With PTRACK_PG_PREFIX set, the extension already installed there is used as
# is (re-install with scripts/install-extension.sh after changing it);
# otherwise scripts/setup.sh builds and installs everything first.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
iterations=${1:-200}
[ $# -gt 0 ] && shift
if [ -z "${PTRACK_PG_PREFIX:-}" ]; then
	PTRACK_PG_PREFIX=$("$repo/scripts/setup.sh" | tail -n1)
elif [ ! -f "$("$PTRACK_PG_PREFIX/bin/pg_config" --pkglibdir)/ptrack.so" ]; then
	"$repo/scripts/install-extension.sh" "$PTRACK_PG_PREFIX"
fi
export PTRACK_PG_PREFIX
export PGRX_PG_CONFIG_PATH=$PTRACK_PG_PREFIX/bin/pg_config
major=$("$PGRX_PG_CONFIG_PATH" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
# One cargo target directory per server build, as install-extension.sh does.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/$(basename "$PTRACK_PG_PREFIX")}
cd "$repo"
cargo build --release --no-default-features --features "pg$major" --example soak >&2
exec "$CARGO_TARGET_DIR/release/examples/soak" --iterations "$iterations" \
	--out "$repo/benches/results/soak-$(date +%Y%m%d).json" "$@"
