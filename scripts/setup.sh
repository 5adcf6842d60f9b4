#!/usr/bin/env bash
# Everything the demo and the tests need, on a fresh Debian 12 machine:
# system packages, the `postgres` OS user, the patched PostgreSQL (built once
# and cached, see build-postgres.sh), and the ptrack extension built and
# installed into it. Idempotent; as root. Progress goes to stderr; the last line
# on stdout is the PostgreSQL install prefix.
#
#   prefix=$(scripts/setup.sh | tail -n1)
#
# Environment: PTRACK_PG_MAJOR (default 17), plus build-postgres.sh's.
# PTRACK_PG_FLAVOR=debian uses Debian's own, unpatched packages of that major
# (postgresql-15 on Debian 12) instead of building: ptrack then runs in WAL mode.
set -euo pipefail
exec 3>&1 1>&2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
major=${PTRACK_PG_MAJOR:-17}
log() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { log "run as root (PostgreSQL itself runs as the postgres user)"; exit 1; }

# pgrx runs bindgen, which needs libclang; the tests use runuser (util-linux).
packages=(libclang-dev util-linux ca-certificates)
missing=()
for package in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" ||
		{ apt-get -o DPkg::Lock::Timeout=600 update && apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"; }
fi

if ! id postgres >/dev/null 2>&1; then
	log "creating the postgres OS user"
	useradd --system --user-group --create-home --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if [ "${PTRACK_PG_FLAVOR:-}" = debian ]; then
	if ! dpkg-query -W -f='${Status}' "postgresql-server-dev-$major" 2>/dev/null | grep -q 'ok installed' ||
		! dpkg-query -W -f='${Status}' "postgresql-$major" 2>/dev/null | grep -q 'ok installed'; then
		log "installing Debian's postgresql-$major (no default cluster)"
		install -d /etc/postgresql-common
		grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
			echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
		export DEBIAN_FRONTEND=noninteractive
		apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "postgresql-$major" "postgresql-server-dev-$major" ||
			{ apt-get -o DPkg::Lock::Timeout=600 update && apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
				"postgresql-$major" "postgresql-server-dev-$major"; }
	fi
	prefix=/usr/lib/postgresql/$major
else
	prefix=$("$repo/scripts/build-postgres.sh" "$major" | tail -n1)
fi
log "PostgreSQL $major: $prefix"
"$repo/scripts/install-extension.sh" "$prefix"
printf '%s\n' "$prefix" >&3
