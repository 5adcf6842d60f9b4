#!/usr/bin/env bash
# The demo: sets everything up (scripts/setup.sh), starts a throwaway cluster
# with ptrack, runs a pgbench workload, and shows what an incremental backup
# since the workload's start would copy, and how long ptrack took to say so.
# As root, on a fresh machine:
#
#   scripts/demo.sh
#
# Environment: DEMO_SCALE (pgbench scale, default 50 = ~750 MB),
# DEMO_SECONDS (workload duration, default 30), DEMO_KEEP=1 keeps the cluster.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scale=${DEMO_SCALE:-50}
seconds=${DEMO_SECONDS:-30}
prefix=$("$repo/scripts/setup.sh" | tail -n1)
bin=$prefix/bin

work=$(mktemp -d /tmp/ptrack-demo.XXXXXX)
chown postgres: "$work"
pgdata=$work/data
port=$((54000 + RANDOM % 1000))
as_pg() { runuser -u postgres -- "$@"; }
psql_demo() { as_pg "$bin/psql" -X -h "$work" -p "$port" -d postgres -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
	# A clean stop writes the map and frees the live map in /dev/shm.
	as_pg "$bin/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1 || true
	[ "${DEMO_KEEP:-0}" = 1 ] && { echo "cluster kept in $work (port $port)"; return; }
	rm -rf "$work"
}
trap cleanup EXIT

echo "== a throwaway cluster with ptrack in $pgdata"
as_pg "$bin/initdb" -D "$pgdata" -k -A trust >/dev/null
cat >>"$pgdata/postgresql.conf" <<CONF
shared_preload_libraries = 'ptrack'
ptrack.map_size = 64
listen_addresses = ''
unix_socket_directories = '$work'
port = $port
shared_buffers = 128MB
max_wal_size = 2GB
synchronous_commit = off
CONF
as_pg "$bin/pg_ctl" -D "$pgdata" -l "$work/server.log" -w start >/dev/null
psql_demo -qc "CREATE EXTENSION ptrack"

echo "== pgbench -i -s $scale (the 'full backup' state)"
as_pg "$bin/pgbench" -h "$work" -p "$port" -i -s "$scale" -q postgres 2>&1 | tail -n1
psql_demo -qc "CHECKPOINT"
start_lsn=$(psql_demo -Atc "SELECT pg_current_wal_insert_lsn()")
echo "   start LSN of the imagined previous backup: $start_lsn"

echo "== pgbench -T $seconds -c 2 (the changes since then)"
as_pg "$bin/pgbench" -h "$work" -p "$port" -T "$seconds" -c 2 -j 2 postgres 2>&1 | grep -E '^(tps|number of transactions actually)'
psql_demo -qc "CHECKPOINT"

echo "== what an incremental backup since $start_lsn would copy"
psql_demo -At -F ' ' <<SQL
SELECT format('   cluster: %s relation files, %s blocks, %s MB',
              count(*), sum(pagecount), round(sum(pagecount) * 8192 / 1048576.0, 1))
  FROM ptrack_get_pagemapset('0/0');
SELECT format('   changed: %s files, %s blocks, %s MB (%s%% of the blocks)',
              c.files, c.pages, round(c."size, MB", 1),
              round(100 * c.pages / (SELECT sum(pagecount) FROM ptrack_get_pagemapset('0/0')), 2))
  FROM ptrack_get_change_stat('$start_lsn') c;
SQL
elapsed=$(psql_demo -At <<SQL | grep -E '^Time:' | tail -n1
\\timing on
SELECT count(*) FROM ptrack_get_pagemapset('$start_lsn');
SQL
)
echo "   ptrack_get_pagemapset('$start_lsn'): ${elapsed#Time: }"
echo "== first rows, as pg_probackup reads them"
psql_demo -c "SELECT path, pagecount, length(pagemap) AS bitmap_bytes FROM ptrack_get_pagemapset('$start_lsn') ORDER BY pagecount DESC LIMIT 5"
