#!/usr/bin/env bash
# Build a patched PostgreSQL for ptrack development and testing.
#
# Usage: scripts/build-postgres.sh [MAJOR]        (MAJOR defaults to 17)
#
# Fetches the pinned upstream PostgreSQL source tarball from Debian's archive by
# its exact pool path and checks its sha256 (see "Upstream source" below for
# the fallbacks),
# applies patches/postgresql-MAJOR.patch, builds it and installs it into
#
#   ${PTRACK_CACHE_DIR:-$HOME/.cache/ptrack}/pg-<version>-<flavor>-<hash>
#
# where <hash> is the first 12 hex digits of the sha256 of the patch file
# followed by the configure flags.  A finished install is marked with a stamp
# file; if it exists the script does nothing.  Progress goes to stderr, the
# last line on stdout is the install prefix:
#
#   prefix=$(scripts/build-postgres.sh 17 | tail -n1)
#
# Environment:
#   PTRACK_CACHE_DIR   cache root (default: $HOME/.cache/ptrack)
#   PTRACK_PG_FLAVOR   "test" (default; --enable-cassert), "bench" (no cassert) or
#                      "segsize" (test + 64-block = 512 kB relation segments, so
#                      CI-sized relations span many segment files)
#   PTRACK_PG_VERSION  build this upstream version instead of the pinned one
#                      (it must be the version the Debian suite currently has)
#   PTRACK_PG_SOURCE   build from this tarball (postgresql-X.Y.tar.bz2 from any
#                      PostgreSQL mirror) instead of downloading one
#
#   scripts/build-postgres.sh --check-source MAJOR   only checks (a header
#   request) that the pinned tarball can still be downloaded
#   PTRACK_PG_JOBS     make parallelism (default: 2)
#
# Must run as root (it installs build dependencies with apt-get).  The result
# is readable by the "postgres" OS user.

set -euo pipefail

# The braces make bash parse the whole script before running it, so editing
# this file while a build is running does not break that build.
{

# All output except the final prefix goes to stderr.
exec 3>&1 1>&2

log() { printf 'build-postgres: %s\n' "$*"; }
die() { printf 'build-postgres: ERROR: %s\n' "$*"; exit 1; }

CHECK_SOURCE=0
if [ "${1:-}" = --check-source ]; then
	CHECK_SOURCE=1
	shift
fi
MAJOR=${1:-17}

# Per-major settings.  PG_VERSION is the upstream version we build and the one
# the patch is written against; PG_ORIG_SHA256 is the sha256 of Debian's
# postgresql-MAJOR_PG_VERSION.orig.tar.* (identical to the upstream tarball).
# To add a major: add a case here and a patches/postgresql-MAJOR.patch.
case "$MAJOR" in
	15)
		# bookworm itself (final point release, frozen), not bookworm-security:
		# the security suite moves with every minor release and its newer
		# sources (15.20 when this was written) were not downloadable from the
		# mirror, while its index still listed them.
		PG_VERSION=15.18
		PG_ORIG_SHA256=11df0df97fe3ea4ba9a791faaf39cee1d2fe571e78885b5b55d8517d27c323b4
		DEBIAN_SUITE=bookworm
		POOL_PATH=pool/main/p/postgresql-15/postgresql-15_15.18.orig.tar.bz2
		;;
	17)
		PG_VERSION=17.11
		PG_ORIG_SHA256=dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979
		DEBIAN_SUITE=trixie
		POOL_PATH=pool/main/p/postgresql-17/postgresql-17_17.11.orig.tar.bz2
		;;
	18)
		# sid's InRelease is signed by the 12/bookworm and 13/trixie archive
		# keys, so the machine's Debian 12 keyring verifies it too.
		PG_VERSION=18.6
		PG_ORIG_SHA256=555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f
		DEBIAN_SUITE=sid
		POOL_PATH=pool/main/p/postgresql-18/postgresql-18_18.6.orig.tar.bz2
		;;
	*)
		die "unsupported PostgreSQL major version '$MAJOR' (supported: 15, 17, 18)"
		;;
esac

if [ -n "${PTRACK_PG_VERSION:-}" ] && [ "$PTRACK_PG_VERSION" != "$PG_VERSION" ]; then
	PG_VERSION=$PTRACK_PG_VERSION
	PG_ORIG_SHA256=		# not pinned; apt's signed Sources index is the only check
fi
case "$PG_VERSION" in
	"$MAJOR".*) ;;
	*) die "version $PG_VERSION does not belong to major $MAJOR" ;;
esac

# PTRACK_DEBIAN_MIRROR: another Debian mirror (also how the error paths are tested).
DEBIAN_MIRROR=${PTRACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# --check-source: is the pinned tarball still downloadable?  A header request,
# seconds; CI runs it first so a vanished tarball is found the day it goes.
if [ "$CHECK_SOURCE" = 1 ]; then
	if curl -fsSI --retry 2 --connect-timeout 20 -o /dev/null "$DEBIAN_MIRROR/$POOL_PATH"; then
		log "pinned source of PostgreSQL $PG_VERSION is downloadable: $DEBIAN_MIRROR/$POOL_PATH"
		exit 0
	fi
	die "the pinned source of PostgreSQL $PG_VERSION is gone from $DEBIAN_MIRROR/$POOL_PATH.
Pin a version whose tarball exists (PG_VERSION, PG_ORIG_SHA256 and POOL_PATH in $0),
or provide a tarball by hand: PTRACK_PG_SOURCE=/path/to/postgresql-$PG_VERSION.tar.bz2"
fi
SRC_PKG=postgresql-$MAJOR
JOBS=${PTRACK_PG_JOBS:-2}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATCH_FILE=$REPO_ROOT/patches/postgresql-$MAJOR.patch
[ -f "$PATCH_FILE" ] || die "missing $PATCH_FILE"

FLAVOR=${PTRACK_PG_FLAVOR:-test}
case "$FLAVOR" in
	test)  CONFIGURE_FLAGS=(--enable-cassert --enable-debug --without-icu "CFLAGS=-O2 -g") ;;
	bench) CONFIGURE_FLAGS=(--enable-debug --without-icu "CFLAGS=-O2 -g") ;;
	segsize) CONFIGURE_FLAGS=(--enable-cassert --enable-debug --without-icu --with-segsize-blocks=64 "CFLAGS=-O2 -g") ;;
	*) die "unknown PTRACK_PG_FLAVOR '$FLAVOR' (expected: test, bench, segsize)" ;;
esac

CACHE_DIR=${PTRACK_CACHE_DIR:-$HOME/.cache/ptrack}
case "$CACHE_DIR" in
	/*) ;;
	*) CACHE_DIR=$PWD/$CACHE_DIR ;;
esac
BUILD_HASH=$({ cat "$PATCH_FILE"; printf '%s\n' "${CONFIGURE_FLAGS[@]}"; } |
	sha256sum | cut -c1-12)
PREFIX=$CACHE_DIR/pg-$PG_VERSION-$FLAVOR-$BUILD_HASH
STAMP=$PREFIX/.ptrack-build-complete

# contrib/amcheck, which the chain tests' pg_amcheck needs: built with PGXS
# against the finished install, from the tarball its stamp names, on every
# run that finds it missing, so installs cached before this step gain it
# without a rebuild of the server (and it stays out of the cache key).
ensure_amcheck() {
	local pkglibdir orig dir
	pkglibdir=$("$PREFIX/bin/pg_config" --pkglibdir)
	[ -f "$pkglibdir/amcheck.so" ] && return 0
	orig=${PTRACK_PG_SOURCE:-$CACHE_DIR/src/$(sed -n 's/^source=//p' "$STAMP")}
	[ -f "$orig" ] || die "amcheck is missing from $PREFIX and its source tarball $orig is gone"
	log "building contrib/amcheck (PGXS) into $PREFIX"
	mkdir -p "$CACHE_DIR/build"
	dir=$(mktemp -d "$CACHE_DIR/build/amcheck-$PG_VERSION.XXXXXX")
	tar -xf "$orig" -C "$dir" "postgresql-$PG_VERSION/contrib/amcheck"
	if ! make -C "$dir/postgresql-$PG_VERSION/contrib/amcheck" USE_PGXS=1 \
		PG_CONFIG="$PREFIX/bin/pg_config" -j"${PTRACK_PG_JOBS:-2}" install >"$dir/build.log" 2>&1; then
		tail -n 30 "$dir/build.log"
		die "building amcheck failed; full log: $dir/build.log"
	fi
	rm -rf "$dir"
}

finish() {
	ensure_amcheck
	log "PostgreSQL $PG_VERSION ($FLAVOR) is installed in $PREFIX"
	printf '%s\n' "$PREFIX" >&3
	exit 0
}

# Fast path: already built.
[ -f "$STAMP" ] && finish

[ "$(id -u)" -eq 0 ] || die "must run as root"
umask 022
mkdir -p "$CACHE_DIR"

# Serialize concurrent builds of the same major; re-check after the wait.
exec 9>"$CACHE_DIR/.build-pg-$MAJOR.lock"
if ! flock -n 9; then
	log "another build of PostgreSQL $MAJOR is running, waiting for it"
	flock 9
fi
[ -f "$STAMP" ] && finish

# ---------------------------------------------------------------------------
# Build dependencies
# ---------------------------------------------------------------------------
BUILD_DEPS=(build-essential bison flex perl patch bzip2 xz-utils zlib1g-dev curl
	libreadline-dev pkg-config ca-certificates debian-archive-keyring)

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
	if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
		missing+=("$pkg")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing build dependencies: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"; then
		apt-get -o DPkg::Lock::Timeout=600 update
		apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
	fi
fi

# ---------------------------------------------------------------------------
# Upstream source
# ---------------------------------------------------------------------------
# In order: a tarball given by hand (PTRACK_PG_SOURCE), the cache, the pinned
# version's file at its exact pool path (checked against the pinned sha256),
# and last the suite's current source package through apt, whose newer minor
# is accepted with a WARNING when the patch applies to it cleanly.  A suite's
# index moves on to a new minor before the mirror serves its files, while the
# pinned version's files stay at their pool path: so the pool path comes
# first and the index is never needed on an ordinary day.
SRC_CACHE=$CACHE_DIR/src
mkdir -p "$SRC_CACHE"
TRIED=()

find_orig() {
	local f
	for f in "$SRC_CACHE/${SRC_PKG}_$PG_VERSION".orig.tar.*; do
		[ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
	done
	return 1
}

sha256_ok() {
	local f=$1 sum
	[ -n "$PG_ORIG_SHA256" ] || return 0
	sum=$(sha256sum "$f" | cut -d' ' -f1)
	[ "$sum" = "$PG_ORIG_SHA256" ] && return 0
	log "WARNING: $f: sha256 $sum does not match the pinned $PG_ORIG_SHA256"
	return 1
}

no_source() {
	die "no usable source of PostgreSQL $MAJOR; tried: ${TRIED[*]}.
Download postgresql-$PG_VERSION.tar.bz2 (sha256 $PG_ORIG_SHA256) from any
PostgreSQL mirror and run again with PTRACK_PG_SOURCE=/path/to/postgresql-$PG_VERSION.tar.bz2"
}

fetch_pool() {
	local url=$DEBIAN_MIRROR/$POOL_PATH part=$SRC_CACHE/${POOL_PATH##*/}.part
	TRIED+=("$url")
	log "downloading $url"
	if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$part" "$url"; then
		rm -f "$part"
		log "WARNING: could not download $url"
		return 1
	fi
	sha256_ok "$part" || { rm -f "$part"; return 1; }
	mv "$part" "$SRC_CACHE/${POOL_PATH##*/}"
}

# Downloads the suite's current source package; prints its upstream version.
fetch_index() {
	local aptdir=$CACHE_DIR/apt/$DEBIAN_SUITE dl f got= apt_opts
	mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
	# Signatures are checked with the machine's debian-archive-keyring: the
	# InRelease files of trixie and sid are signed by the "12/bookworm" archive
	# key too, so any Debian 12 keyring verifies them.
	printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
		"$DEBIAN_MIRROR" "$DEBIAN_SUITE" >"$aptdir/sources.list"
	apt_opts=(
		-o "Dir::Etc::SourceList=$aptdir/sources.list"
		-o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$aptdir/lists"
		-o "Dir::Cache=$aptdir/cache"
		-o "Dir::Cache::Archives=$aptdir/cache/archives"
		-o APT::Sandbox::User=root
		-o APT::Get::Only-Source=true
		-o Acquire::Languages=none
	)
	log "updating private apt index for Debian $DEBIAN_SUITE sources"
	apt-get "${apt_opts[@]}" -q update >/dev/null || return 1
	dl=$(mktemp -d "$SRC_CACHE/download.XXXXXX")
	log "downloading Debian source package $SRC_PKG"
	if (cd "$dl" && apt-get "${apt_opts[@]}" -q source --download-only "$SRC_PKG" >/dev/null); then
		for f in "$dl/${SRC_PKG}"_*.orig.tar.*; do
			[ -f "$f" ] || continue
			got=${f##*/"${SRC_PKG}"_}
			got=${got%%.orig.tar.*}
			mv "$f" "$SRC_CACHE/"
		done
	fi
	rm -rf "$dl"
	[ -n "$got" ] || return 1
	printf '%s\n' "$got"
}

use_version() {
	PG_VERSION=$1
	PREFIX=$CACHE_DIR/pg-$PG_VERSION-$FLAVOR-$BUILD_HASH
	STAMP=$PREFIX/.ptrack-build-complete
}

if [ -n "${PTRACK_PG_SOURCE:-}" ]; then
	[ -f "$PTRACK_PG_SOURCE" ] || die "PTRACK_PG_SOURCE=$PTRACK_PG_SOURCE is not a file"
	ORIG=$PTRACK_PG_SOURCE
	sha256_ok "$ORIG" ||
		log "WARNING: building PostgreSQL $PG_VERSION from $ORIG, which is not the pinned tarball"
elif ORIG=$(find_orig) && sha256_ok "$ORIG"; then
	:
elif [ -n "$PG_ORIG_SHA256" ] && fetch_pool && ORIG=$(find_orig); then
	:
elif TRIED+=("the current $SRC_PKG source package of Debian $DEBIAN_SUITE") &&
	got=$(fetch_index) && [ "$got" = "$PG_VERSION" ] && ORIG=$(find_orig) && sha256_ok "$ORIG"; then
	:
elif [ -n "${got:-}" ] && [ "$got" != "$PG_VERSION" ] && case "$got" in "$MAJOR".*) true ;; *) false ;; esac; then
	log "WARNING: the pinned PostgreSQL $PG_VERSION could not be had; building Debian $DEBIAN_SUITE's current $got instead (if $PATCH_FILE applies to it cleanly)"
	PG_ORIG_SHA256=
	use_version "$got"
	[ -f "$STAMP" ] && finish
	ORIG=$(find_orig) || no_source
else
	no_source
fi
# A tarball given by hand names its version in its top directory.
top=$(tar -tf "$ORIG" 2>/dev/null | head -n1) || true
top=${top%%/*}
case "$top" in
	postgresql-"$PG_VERSION") ;;
	postgresql-"$MAJOR".*)
		log "WARNING: $ORIG holds ${top#postgresql-}, not the pinned $PG_VERSION"
		use_version "${top#postgresql-}"
		[ -f "$STAMP" ] && finish
		;;
	*) die "$ORIG is not a PostgreSQL $MAJOR source tarball (top directory '$top')" ;;
esac
log "upstream source: $ORIG"

# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
START=$(date +%s)
mkdir -p "$CACHE_DIR/build"
# Left over from a failed or interrupted build of the same configuration.
rm -rf "$CACHE_DIR/build/pg-$PG_VERSION-$FLAVOR-$BUILD_HASH".*
BUILD_DIR=$(mktemp -d "$CACHE_DIR/build/pg-$PG_VERSION-$FLAVOR-$BUILD_HASH.XXXXXX")
LOG=$BUILD_DIR/build.log

run() {
	if ! "$@" >>"$LOG" 2>&1; then
		tail -n 60 "$LOG"
		die "'$*' failed; full log: $LOG (build dir kept)"
	fi
}

log "build dir: $BUILD_DIR (log: $LOG)"
tar -xf "$ORIG" -C "$BUILD_DIR"
SRC=$BUILD_DIR/postgresql-$PG_VERSION
[ -d "$SRC" ] || die "tarball did not contain postgresql-$PG_VERSION/"

log "applying $PATCH_FILE"
if ! patch -d "$SRC" -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch \
	-i "$PATCH_FILE" >>"$LOG" 2>&1; then
	tail -n 30 "$LOG"
	die "$PATCH_FILE does not apply cleanly to PostgreSQL $PG_VERSION"
fi

# A stale or partial install from an interrupted run.
rm -rf "$PREFIX"

log "configure --prefix=$PREFIX ${CONFIGURE_FLAGS[*]}"
(cd "$SRC" && run ./configure --prefix="$PREFIX" "${CONFIGURE_FLAGS[@]}")

# Only what the server, the client tools and extension builds need.  This
# skips ecpg (whose preproc.y generation can race in a parallel make of a
# fresh tree), contrib (but amcheck: ensure_amcheck), docs and the test suites.  src/Makefile itself is
# .NOTPARALLEL, so the directories are built one after another, each with -j.
SUBDIRS=(
	src/common
	src/port
	src/timezone
	src/backend
	src/backend/utils/mb/conversion_procs
	src/backend/snowball
	src/include
	src/interfaces/libpq
	src/backend/replication/libpqwalreceiver
	src/backend/replication/pgoutput
	src/fe_utils
	src/bin
	src/pl/plpgsql
	src/makefiles
)
for d in "${SUBDIRS[@]}"; do
	log "make -j$JOBS -C $d"
	run make -C "$SRC/$d" -j"$JOBS"
done

log "installing into $PREFIX"
for d in "${SUBDIRS[@]}"; do
	run make -C "$SRC/$d" install
done
# PGXS support files (src/Makefile.global etc. and config/install-sh).
run make -C "$SRC/src" install-local
run make -C "$SRC/config" install

# ---------------------------------------------------------------------------
# Check the result
# ---------------------------------------------------------------------------
for b in postgres initdb pg_ctl psql pgbench pg_controldata pg_basebackup \
	pg_checksums pg_rewind pg_resetwal pg_waldump pg_config; do
	[ -x "$PREFIX/bin/$b" ] || die "$PREFIX/bin/$b is missing"
done
PKGLIBDIR=$("$PREFIX/bin/pg_config" --pkglibdir)
SHAREDIR=$("$PREFIX/bin/pg_config" --sharedir)
INCLUDEDIR_SERVER=$("$PREFIX/bin/pg_config" --includedir-server)
[ -f "$PKGLIBDIR/plpgsql.so" ] || die "plpgsql.so is missing"
[ -f "$SHAREDIR/timezone/UTC" ] || die "timezone data is missing"
[ -f "$INCLUDEDIR_SERVER/postgres.h" ] || die "server headers are missing"
[ -f "$INCLUDEDIR_SERVER/storage/md.h" ] || die "server headers are missing"
mkdir -p "$SHAREDIR/extension"
DYNSYMS=$(nm -D --defined-only "$PREFIX/bin/postgres")
for sym in mdwrite_hook mdextend_hook copydir_hook ProcessSyncRequests_hook; do
	grep -qw "$sym" <<<"$DYNSYMS" ||
		die "postgres does not export $sym: is the patch complete?"
done

# The tree must be usable by the postgres OS user.  The cache usually lives
# under /root (mode 0700), so grant search (not read) permission on the
# ancestors that lack it.
if id postgres >/dev/null 2>&1 &&
	! runuser -u postgres -- /usr/bin/test -x "$PREFIX/bin/postgres"; then
	d=
	IFS=/ read -ra parts <<<"${PREFIX#/}"
	for part in "${parts[@]}"; do
		d=$d/$part
		if ! runuser -u postgres -- /usr/bin/test -x "$d"; then
			log "granting search permission on $d to other users (chmod o+x)"
			chmod o+x "$d"
		fi
	done
	runuser -u postgres -- /usr/bin/test -x "$PREFIX/bin/postgres" ||
		die "$PREFIX is not accessible by the postgres user"
fi

ELAPSED=$(($(date +%s) - START))
{
	printf 'version=%s\n' "$PG_VERSION"
	printf 'flavor=%s\n' "$FLAVOR"
	printf 'configure=%s\n' "${CONFIGURE_FLAGS[*]}"
	printf 'patch_sha256=%s\n' "$(sha256sum "$PATCH_FILE" | cut -d' ' -f1)"
	printf 'source=%s\n' "${ORIG##*/}"
	printf 'build_seconds=%s\n' "$ELAPSED"
	printf 'built_at=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"

rm -rf "$BUILD_DIR"
log "build took ${ELAPSED}s"
finish
exit
}
