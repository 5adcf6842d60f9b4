#!/usr/bin/env bash
# Builds the ptrack extension against the PostgreSQL at PREFIX and installs it
# there: the library into pkglibdir, the control and SQL files into
# sharedir/extension. Plain cargo with PGRX_PG_CONFIG_PATH: no cargo-pgrx needed.
# Each server build gets its own cargo target directory (target/<prefix name>),
# because pgrx's bindings are generated per server.
#
#   scripts/install-extension.sh PREFIX
set -euo pipefail
prefix=${1:?usage: install-extension.sh PREFIX}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pg_config=$prefix/bin/pg_config
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')

export PGRX_PG_CONFIG_PATH=$pg_config
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/$(basename "$prefix")}
cargo build --manifest-path "$repo/Cargo.toml" --release --lib \
	--no-default-features --features "pg$major" >&2

pkglibdir=$("$pg_config" --pkglibdir)
extension_dir=$("$pg_config" --sharedir)/extension
install -d "$pkglibdir" "$extension_dir"
install -m 0755 "$CARGO_TARGET_DIR/release/libptrack.so" "$pkglibdir/ptrack.so"
install -m 0644 "$repo/ptrack.control" "$repo"/sql/ptrack--*.sql "$extension_dir/"
printf 'install-extension: ptrack (pg%s) installed into %s\n' "$major" "$prefix" >&2
