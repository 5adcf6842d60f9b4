#!/usr/bin/env bash
# Tests the Debian package end to end, as a user would meet it: builds it
# (package.sh), installs it with apt, and runs a throwaway cluster of Debian's
# own, unpatched server with it, where ptrack must pick WAL mode. As root.
#
#   scripts/test-package.sh 15
#
# The machine is left as it was: the package is removed again, and files it
# replaced that belonged to no package (install-extension.sh's copy, which the
# WAL-mode suite of test.sh installs into the same directories) are put back.
set -euo pipefail
# The summary line goes to the real stdout even from inside $(...).
exec 3>&1

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
major=${1:?usage: test-package.sh MAJOR}
package=postgresql-$major-ptrack
bindir=/usr/lib/postgresql/$major/bin
log() { printf 'test-package: %s\n' "$*" >&2; }
fail() {
	printf 'test-package: FAILED: %s\n' "$*" >&2
	echo 'package test: 0 passed, 1 failed' >&3
	exit 1
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

[ "$(id -u)" -eq 0 ] || fail "run as root (apt-get, and the cluster runs as the postgres user)"
export DEBIAN_FRONTEND=noninteractive

work=$(mktemp -d /tmp/ptrack-package-test.XXXXXX)
data=$work/data
we_installed=0
cleanup() {
	local rc=$?
	set +e
	if [ -f "$data/postmaster.pid" ]; then
		runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 ||
			runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
	fi
	# Any stop leaves the live map on tmpfs in hook mode (an immediate one in
	# WAL mode too); this data directory is going away.
	[ -n "${sysid:-}" ] && rm -f /dev/shm/ptrack."$sysid".*
	if [ "$we_installed" = 1 ] && installed "$package"; then
		apt-get -o DPkg::Lock::Timeout=600 remove -y "$package" >"$work/remove.log" 2>&1 ||
			{ cat "$work/remove.log" >&2; log "could not remove $package"; rc=1; }
	fi
	# Back what the package displaced, with its modes.
	if [ -d "$work/displaced" ]; then
		cp -a "$work/displaced/." / || { log "could not restore the files the package replaced"; rc=1; }
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

# A leftover of a run that was killed before its cleanup.
if installed "$package"; then
	log "removing $package left installed by an earlier run"
	apt-get -o DPkg::Lock::Timeout=600 remove -y "$package" >&2
fi

deb=$("$repo/scripts/package.sh" "$major" | tail -n1)
[ -f "$deb" ] || fail "package.sh printed no .deb path (got '$deb')"
log "testing $deb"

# dpkg overwrites files no package owns without a word, and removing the package
# deletes them: keep a copy to put back.
mapfile -t files < <(dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -n 's|^\./|/|; \|[^/]$|p')
for f in "${files[@]}"; do
	if [ -e "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1; then
		mkdir -p "$work/displaced$(dirname "$f")"
		cp -a "$f" "$work/displaced$f"
	fi
done

we_installed=1
apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$deb" >"$work/install.log" 2>&1 ||
	{ cat "$work/install.log" >&2; fail "apt-get -o DPkg::Lock::Timeout=600 install $deb failed"; }
installed "$package" || fail "$package is not installed after apt-get -o DPkg::Lock::Timeout=600 install"

listed=$(dpkg -L "$package")
for f in "/usr/lib/postgresql/$major/lib/ptrack.so" \
	"/usr/share/postgresql/$major/extension/ptrack.control" \
	"/usr/share/postgresql/$major/extension/ptrack--2.4.sql" \
	"/usr/share/doc/$package/README.md" \
	"/usr/share/doc/$package/copyright"; do
	grep -qxF "$f" <<<"$listed" || fail "dpkg -L $package does not list $f"
	[ -f "$f" ] || fail "$f is listed but not on disk"
done

# A private socket directory and listen_addresses = '': nothing else on the
# machine can collide with this cluster, or reach it. The port only names the
# socket; a 56xxx one still in use on TCP is skipped so logs are unambiguous.
port=
for _ in $(seq 50); do
	candidate=$((56000 + RANDOM % 1000))
	if ! (exec 9<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
		port=$candidate
		break
	fi
done
[ -n "$port" ] || fail "no free port in 56000-56999"

chown postgres: "$work"
runuser -u postgres -- "$bindir/initdb" -D "$data" -U postgres -A trust --no-sync >"$work/initdb.log" 2>&1 ||
	{ cat "$work/initdb.log" >&2; fail "initdb failed"; }
sysid=$(runuser -u postgres -- "$bindir/pg_controldata" "$data" | sed -n 's/^Database system identifier: *//p')
cat >>"$data/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'ptrack'
wal_level = replica
wal_log_hints = on
ptrack.map_size = 16
EOF
runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -l "$work/server.log" -w start >/dev/null ||
	{ cat "$work/server.log" >&2; fail "the server did not start with ptrack preloaded"; }

sql() {
	runuser -u postgres -- "$bindir/psql" -X -A -t -q -v ON_ERROR_STOP=1 \
		-h "$work" -p "$port" -U postgres -d postgres -c "$1" ||
		{ cat "$work/server.log" >&2; fail "SQL failed: $1"; }
}

sql 'CREATE EXTENSION ptrack' >/dev/null
version=$(sql 'SELECT ptrack_version()')
[ "$version" = 2.4 ] || fail "ptrack_version() = '$version', expected 2.4"
mode=$(sql 'SELECT mode FROM ptrack_status()')
[ "$mode" = wal ] || fail "ptrack_status() mode = '$mode', expected wal on Debian's unpatched server"

# The map starts (init LSN) before both tables exist, so the answer for the LSN
# below is the tracked one and not "every block". The old table is frozen and
# left out of autovacuum, so nothing writes WAL for it after that LSN.
init_lsn=$(sql 'SELECT ptrack_init_lsn()')
sql "CREATE TABLE untouched WITH (autovacuum_enabled = off) AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 2000) g" >/dev/null
sql 'VACUUM (FREEZE) untouched' >/dev/null
sql 'CHECKPOINT' >/dev/null
lsn=$(sql 'SELECT pg_current_wal_lsn()')
sql "CREATE TABLE written (id int, pad text)" >/dev/null
sql "INSERT INTO written SELECT g, repeat('y', 100) FROM generate_series(1, 2000) g" >/dev/null
[ "$(sql "SELECT '$lsn'::pg_lsn >= '$init_lsn'::pg_lsn")" = t ] ||
	fail "LSN $lsn is before the init LSN $init_lsn"

written=$(sql "SELECT pg_relation_filepath('written')")
untouched=$(sql "SELECT pg_relation_filepath('untouched')")
set_rows=$(sql "SELECT path || ' ' || pagecount FROM ptrack_get_pagemapset('$lsn')")
log "pagemapset since $lsn: $(wc -l <<<"$set_rows") files; written = $written, untouched = $untouched"
pages=$(awk -v p="$written" '$1 == p { print $2 }' <<<"$set_rows")
[ -n "$pages" ] && [ "$pages" -gt 0 ] ||
	fail "$written (table written after $lsn) is not in ptrack_get_pagemapset('$lsn')"
# The main fork, any segment (base/D/R, base/D/R.1): its _fsm and _vm forks are
# reported in full on every call by design (README, guarantees).
if awk -v p="$untouched" '$1 == p || (index($1, p ".") == 1 && substr($1, length(p) + 2) ~ /^[0-9]+$/)' \
	<<<"$set_rows" | grep -q .; then
	fail "$untouched (table untouched since $lsn) is in ptrack_get_pagemapset('$lsn')"
fi

runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null ||
	fail "the server did not stop"
apt-get -o DPkg::Lock::Timeout=600 remove -y "$package" >"$work/remove.log" 2>&1 ||
	{ cat "$work/remove.log" >&2; fail "apt-get -o DPkg::Lock::Timeout=600 remove $package failed"; }
! installed "$package" || fail "$package is still installed after apt-get -o DPkg::Lock::Timeout=600 remove"
log "ok: $written has $pages changed pages since $lsn, $untouched none; $package removed"
echo 'package test: 1 passed, 0 failed'
