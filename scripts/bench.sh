#!/usr/bin/env bash
# Every performance figure of issue #5 in one command (not part of CI):
# the core's criterion micro-benchmarks, then examples/bench/ against a
# non-cassert PostgreSQL 17 with the ptrack patch (pgbench overhead, callgrind
# instruction counts, backup-side speed, checkpoint cost, false-positive
# simulation), then the plots. See benches/README.md.
#
#   scripts/bench.sh
#
# Results: benches/results/bench-YYYYMMDD.json (raw numbers and summaries),
# bench-YYYYMMDD.md (tables, machine description) and bench-YYYYMMDD-*.png.
#
# Environment:
#   BENCH_QUICK=1      tiny sizes and one round, to check that the harness works
#                      (a few minutes; files are named bench-YYYYMMDD-quick.*
#                      and say "quick")
#   BENCH_ONLY=a,b     only these sections: criterion, pgbench, callgrind,
#                      backup, checkpoint, startup, fidelity
#   PTRACK_PG_PREFIX   use this PostgreSQL install (with ptrack installed)
#                      instead of setup.sh's bench build
#   BENCH_ROUNDS, BENCH_ROUND_SECONDS, BENCH_PGBENCH_SCALE, BENCH_BACKUP_SCALE,
#   BENCH_CALLGRIND_N=N1,N2   override sizes (see examples/bench/options.rs)
#
# As root: servers run as the postgres user, the page cache is dropped. Run it
# on an otherwise idle machine; the full run takes about an hour on 2 cores.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'bench.sh: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }

sections=(criterion pgbench callgrind backup checkpoint startup fidelity)
only=${BENCH_ONLY:-}
if [ -n "$only" ]; then
	IFS=, read -r -a wanted <<<"$only"
	for s in "${wanted[@]}"; do
		[[ " ${sections[*]} " == *" $s "* ]] || { log "BENCH_ONLY: unknown section '$s' (${sections[*]})"; exit 1; }
	done
fi
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
quick=
case "${BENCH_QUICK:-}" in '' | 0) ;; *) quick=1 ;; esac
stem=bench-$(date +%Y%m%d)${quick:+-quick}
results=$repo/benches/results
mkdir -p "$results"

export DEBIAN_FRONTEND=noninteractive
apt_install() {
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$@" >&2 ||
		{ apt-get -o DPkg::Lock::Timeout=600 update >&2 && apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$@" >&2; }
}

# (1) PostgreSQL 17 without cassert, with the ptrack patch and the extension.
if [ -z "${PTRACK_PG_PREFIX:-}" ]; then
	log "PostgreSQL 17 bench build (scripts/setup.sh)"
	PTRACK_PG_PREFIX=$(PTRACK_PG_MAJOR=17 PTRACK_PG_FLAVOR=bench "$repo/scripts/setup.sh" | tail -n1)
elif [ ! -f "$("$PTRACK_PG_PREFIX/bin/pg_config" --pkglibdir)/ptrack.so" ]; then
	"$repo/scripts/install-extension.sh" "$PTRACK_PG_PREFIX"
fi
export PTRACK_PG_PREFIX
log "PostgreSQL: $PTRACK_PG_PREFIX"
if want callgrind && ! command -v valgrind >/dev/null; then
	log "installing valgrind"
	apt_install valgrind
fi

# (2) The core's criterion micro-benchmarks (target/criterion/...).
criterion_since=$(date +%s)
if want criterion; then
	log "cargo bench -p ptrack-core --bench core${quick:+ (quick)}"
	criterion_args=()
	[ -n "$quick" ] && criterion_args=(-- --quick --warm-up-time 0.2 --measurement-time 1)
	# The core needs no server: the default target directory, as a plain
	# `cargo bench` would use, so its results land in target/criterion.
	(cd "$repo" && env -u CARGO_TARGET_DIR cargo bench -p ptrack-core --bench core "${criterion_args[@]}" >&2)
fi

# (3) The server benchmarks, built like scripts/soak.sh builds the soak.
export PGRX_PG_CONFIG_PATH=$PTRACK_PG_PREFIX/bin/pg_config
major=$("$PGRX_PG_CONFIG_PATH" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/$(basename "$PTRACK_PG_PREFIX")}
cd "$repo"
cargo build --release --no-default-features --features "pg$major" --example bench >&2
status=0
"$CARGO_TARGET_DIR/release/examples/bench" --out-dir "$results" --stem "$stem" \
	--criterion-dir "$repo/target/criterion" --criterion-since "$criterion_since" || status=$?

# (4) The plots, with matplotlib in a venv of its own.
venv=${PTRACK_CACHE_DIR:-$HOME/.cache/ptrack}/venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
	log "creating $venv with matplotlib"
	if ! python3 -m venv "$venv" >&2; then
		apt_install python3-venv
		rm -rf "$venv"
		python3 -m venv "$venv" >&2
	fi
	"$venv/bin/pip" install --quiet matplotlib >&2
fi
if [ -f "$results/$stem.json" ]; then
	"$venv/bin/python" "$repo/benches/plot.py" "$results/$stem.json" || status=$?
fi
log "results: $results/$stem.{json,md} and $results/$stem-*.png"
exit "$status"
