#!/usr/bin/env bash
# Builds the ptrack extension against the PostgreSQL at PREFIX and installs it
# there: the library into pkglibdir, the control and SQL files into
# sharedir/extension. Plain cargo with PGRX_PG_CONFIG_PATH: no cargo-pgrx needed.
# Each server build gets its own cargo target directory (target/<prefix name>),
# because pgrx's bindings are generated per server.
#
#   scripts/install-extension.sh [--destdir DIR] PREFIX
#
# --destdir DIR stages the same files under DIR (DIR/<pkglibdir>/ptrack.so, ...)
# instead of the live server, as packaging wants (scripts/package.sh): the
# paths stay those pg_config names, only rooted elsewhere.
set -euo pipefail
destdir=
if [ "${1:-}" = --destdir ]; then
	destdir=${2:?usage: install-extension.sh [--destdir DIR] PREFIX}
	shift 2
fi
prefix=${1:?usage: install-extension.sh [--destdir DIR] PREFIX}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pg_config=$prefix/bin/pg_config
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')

export PGRX_PG_CONFIG_PATH=$pg_config
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/$(basename "$prefix")}
cargo build --manifest-path "$repo/Cargo.toml" --release --lib \
	--no-default-features --features "pg$major" >&2

pkglibdir=$destdir$("$pg_config" --pkglibdir)
extension_dir=$destdir$("$pg_config" --sharedir)/extension
install -d "$pkglibdir" "$extension_dir"
install -m 0755 "$CARGO_TARGET_DIR/release/libptrack.so" "$pkglibdir/ptrack.so"
install -m 0644 "$repo/ptrack.control" "$repo"/sql/ptrack--*.sql "$extension_dir/"
printf 'install-extension: ptrack (pg%s) installed into %s\n' "$major" "$destdir$prefix" >&2
