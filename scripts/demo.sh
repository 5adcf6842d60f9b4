#!/usr/bin/env bash
# The demo: a real FULL backup and a real incremental one of a throwaway
# cluster with ptrack, the chain restored by PostgreSQL's own pg_combinebackup
# (and checked by pg_verifybackup), the restored server started and compared
# with the source. As root, on a fresh machine:
#
#   scripts/demo.sh
#
# Environment: DEMO_SCALE (pgbench scale, default 50 = ~750 MB),
# DEMO_TRANSACTIONS (pgbench transactions between the backups, default 2000:
# a few per cent of the blocks), DEMO_KEEP=1 keeps everything,
# PTRACK_PG_MAJOR (17 by default; 15 restores with ptrack-backup itself).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scale=${DEMO_SCALE:-50}
transactions=${DEMO_TRANSACTIONS:-2000}
prefix=$("$repo/scripts/setup.sh" | tail -n1)
bin=$prefix/bin
major=$("$bin/pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
echo "== building ptrack-backup"
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p ptrack-backup \
	--target-dir "$repo/target/tools"
tool=$repo/target/tools/release/ptrack-backup

work=$(mktemp -d /tmp/ptrack-demo.XXXXXX)
chown postgres: "$work"
chmod 0755 "$work"
pgdata=$work/data
restored=$work/restored
port=$((54000 + RANDOM % 1000))
restored_port=$((port + 1000))
as_pg() { runuser -u postgres -- "$@"; }
psql_at() { as_pg "$bin/psql" -X -h "$work" -p "$1" -d postgres -v ON_ERROR_STOP=1 -At "${@:2}"; }
stop_all() {
	# A clean stop writes the map; in hook mode the live map stays in
	# /dev/shm for the next start to resume.
	as_pg "$bin/pg_ctl" -D "$restored" -m fast stop >/dev/null 2>&1 || true
	as_pg "$bin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1 || true
}
# The live map of a data directory, named as ptrack names it:
# /dev/shm/ptrack.<system identifier>.<dev>.<inode of PGDATA>.map
live_map_of() {
	local sysid dev ino
	sysid=$(od -An -tu8 -N8 "$1/global/pg_control" | tr -d ' ')
	read -r dev ino < <(stat -c '%d %i' "$1")
	echo "/dev/shm/ptrack.$sysid.$dev.$ino.map"
}
cleanup() {
	stop_all
	[ "${DEMO_KEEP:-0}" = 1 ] && { echo "kept in $work (port $port)"; return; }
	for dir in "$pgdata" "$restored"; do
		[ -f "$dir/global/pg_control" ] && rm -f "$(live_map_of "$dir")"
	done
	rm -rf "$work"
}
trap cleanup EXIT
seconds_since() { echo "$(( $(date +%s%N) / 1000000 - $1 ))" | awk '{printf "%.1f s", $1 / 1000}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
mb() { du -sm "$1" | cut -f1; }
# A digest of every pgbench table, in key order: equal digests, equal data.
digest() {
	psql_at "$1" <<'SQL'
SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM (
  SELECT 'a' || aid || ':' || abalance AS t FROM pgbench_accounts
  UNION ALL SELECT 'b' || bid || ':' || bbalance FROM pgbench_branches
  UNION ALL SELECT 't' || tid || ':' || tbalance FROM pgbench_tellers
  UNION ALL SELECT 'h' || count(*) FROM pgbench_history) s;
SQL
}

echo "== a throwaway cluster with ptrack (PostgreSQL $major) in $pgdata"
as_pg "$bin/initdb" -D "$pgdata" -k -A trust >/dev/null
cat >>"$pgdata/postgresql.conf" <<CONF
shared_preload_libraries = 'ptrack'
ptrack.map_size = 64
listen_addresses = ''
unix_socket_directories = '$work'
port = $port
shared_buffers = 128MB
max_wal_size = 2GB
CONF
as_pg "$bin/pg_ctl" -D "$pgdata" -l "$work/server.log" -w start >/dev/null
psql_at "$port" -qc "CREATE EXTENSION ptrack"
conninfo="host=$work port=$port user=postgres dbname=postgres"

echo "== pgbench -i -s $scale"
as_pg "$bin/pgbench" -h "$work" -p "$port" -i -s "$scale" -q postgres 2>&1 | tail -n1
echo "   data directory: $(mb "$pgdata") MB (WAL included)"

echo "== FULL backup"
t=$(now_ms)
"$tool" backup --pgdata "$pgdata" --dbname "$conninfo" --output "$work/full" 2>"$work/full.log"
echo "   $(mb "$work/full") MB in $(seconds_since "$t")"

echo "== pgbench -t $transactions -c 2 (the changes since the FULL)"
as_pg "$bin/pgbench" -h "$work" -p "$port" -t "$((transactions / 2))" -c 2 -j 2 postgres 2>&1 |
	grep -E '^(tps|number of transactions actually)'
full_start=$(sed -n 's/^START WAL LOCATION: \([^ ]*\).*/\1/p' "$work/full/backup_label")
psql_at "$port" <<SQL | sed 's/^/   /'
SELECT format('ptrack: %s of %s blocks changed since the FULL started at %s (%s%%)',
              c.pages, (SELECT sum(pagecount) FROM ptrack_get_pagemapset('0/0')), '$full_start',
              round(100 * c.pages / (SELECT sum(pagecount) FROM ptrack_get_pagemapset('0/0')), 2))
  FROM ptrack_get_change_stat('$full_start') c;
SQL

echo "== incremental backup from the FULL"
t=$(now_ms)
"$tool" backup --pgdata "$pgdata" --dbname "$conninfo" --output "$work/inc" \
	--incremental-from "$work/full" 2>"$work/inc.log"
echo "   $(mb "$work/inc") MB in $(seconds_since "$t") (the FULL: $(mb "$work/full") MB)"
source_digest=$(digest "$port")

if [ "$major" -ge 17 ]; then
	echo "== pg_verifybackup each backup, pg_combinebackup the chain"
	for b in full inc; do
		"$bin/pg_verifybackup" -q "$work/$b" && echo "   $b: verified by pg_verifybackup"
	done
	t=$(now_ms)
	"$bin/pg_combinebackup" -o "$restored" "$work/full" "$work/inc"
	echo "   restored by pg_combinebackup in $(seconds_since "$t")"
else
	echo "== restoring the chain (PostgreSQL $major has no pg_combinebackup)"
	t=$(now_ms)
	"$tool" restore --output "$restored" "$work/full" "$work/inc" 2>"$work/restore.log"
	echo "   restored by ptrack-backup in $(seconds_since "$t")"
fi
chown -R postgres: "$restored"
chmod 0700 "$restored"
sed -i -e "s/^port = .*/port = $restored_port/" "$restored/postgresql.conf"

echo "== the restored server"
as_pg "$bin/pg_ctl" -D "$restored" -l "$work/restored.log" -w start >/dev/null
restored_digest=$(digest "$restored_port")
echo "   source   digest of the pgbench tables: $source_digest"
echo "   restored digest of the pgbench tables: $restored_digest"
if [ "$source_digest" != "$restored_digest" ]; then
	echo "demo: the restored server differs from the source" >&2
	exit 1
fi
psql_at "$restored_port" -c "CREATE EXTENSION IF NOT EXISTS amcheck" >/dev/null 2>&1 &&
	psql_at "$restored_port" -c "SELECT bt_index_check('pgbench_accounts_pkey', true)" >/dev/null &&
	echo "   amcheck: pgbench_accounts_pkey is sound"
echo "== the restored chain matches the source"
