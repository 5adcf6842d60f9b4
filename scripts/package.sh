#!/usr/bin/env bash
# Builds the Debian package postgresql-MAJOR-ptrack for Debian's own, unpatched
# PostgreSQL of that major (ptrack runs in WAL mode there). As root on Debian 12
# when packages are missing; progress goes to stderr, the last stdout line is
# the path of the .deb.
#
#   deb=$(scripts/package.sh 15 [--output DIR] | tail -n1)   # DIR: target/deb
#
# The library is built exactly as install-extension.sh builds it (same cargo
# command and target directory, so the WAL-mode test run's build is reused),
# staged with its --destdir, and laid out the way Debian's own extension
# packages are. Environment: PTRACK_DEB_REVISION (default 1),
# PTRACK_DEB_MAINTAINER (default "ptrack developers <git's user.email>").
set -euo pipefail
exec 3>&1 1>&2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'package: %s\n' "$*"; }
die() { log "$*"; exit 1; }
usage="usage: package.sh MAJOR [--output DIR]"

major=
output=$repo/target/deb
while [ $# -gt 0 ]; do
	case $1 in
	--output) output=${2:?$usage}; shift 2 ;;
	--output=*) output=${1#--output=}; shift ;;
	[0-9]*) major=$1; shift ;;
	*) die "$usage" ;;
	esac
done
[ -n "$major" ] || die "$usage"

package=postgresql-$major-ptrack
prefix=/usr/lib/postgresql/$major
# Cargo.toml's [package] version is the upstream version; the Debian revision
# counts rebuilds of the same upstream version.
upstream=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$upstream" ] || die "no [package] version in Cargo.toml"
version=$upstream-${PTRACK_DEB_REVISION:-1}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# Debian's server and its headers (pg_config and the includes pgrx generates
# bindings from), libclang for pgrx's bindgen, dpkg-dev for dpkg-shlibdeps and
# binutils for strip. Same apt logic as setup.sh's debian flavour, without
# installing the extension into the live server.
missing=()
for p in "postgresql-$major" "postgresql-server-dev-$major" libclang-dev dpkg-dev binutils; do
	installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root to install them"
	log "installing ${missing[*]}"
	if ! installed "postgresql-$major"; then
		# A package build has no use for the main cluster Debian would create.
		install -d /etc/postgresql-common
		grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
			echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" ||
		{ apt-get -o DPkg::Lock::Timeout=600 update && apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"; }
fi

arch=$(dpkg --print-architecture)
mkdir -p "$output"
output=$(cd "$output" && pwd)
deb=$output/${package}_${version}_${arch}.deb
work=$(mktemp -d "${TMPDIR:-/tmp}/ptrack-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# The staged tree uses the very paths pg_config reports for Debian's server
# (/usr/lib/postgresql/MAJOR/lib, /usr/share/postgresql/MAJOR/extension).
"$repo/scripts/install-extension.sh" --destdir "$root" "$prefix"
so=$root$("$prefix/bin/pg_config" --pkglibdir)/ptrack.so
[ -f "$so" ] || die "install-extension.sh staged no $so"
# As dh_strip does: the release profile keeps line tables for backtraces, which
# triple the size and which Debian ships in -dbgsym packages, not here. A shared
# object is not run directly: Debian installs it 0644.
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$so"
chmod 0644 "$so"

doc=$root/usr/share/doc/$package
install -d -m 0755 "$doc"
install -m 0644 "$repo/README.md" "$doc/README.md"
# The year and commit make the package reproducible from a given commit.
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
maintainer=${PTRACK_DEB_MAINTAINER:-ptrack developers <$(git -C "$repo" config user.email 2>/dev/null || echo "root@$(hostname -f)")>}
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ptrack
Upstream-Contact: $maintainer

Files: *
Copyright: $(date -u -d "@$epoch" +%Y) ptrack developers
License: PostgreSQL

License: PostgreSQL
 Permission to use, copy, modify, and distribute this software and its
 documentation for any purpose, without fee, and without a written agreement
 is hereby granted, provided that the above copyright notice and this
 paragraph and the following two paragraphs appear in all copies.
 .
 IN NO EVENT SHALL THE PTRACK DEVELOPERS BE LIABLE TO ANY PARTY FOR DIRECT,
 INDIRECT, SPECIAL, INCIDENTAL, OR CONSEQUENTIAL DAMAGES, INCLUDING LOST
 PROFITS, ARISING OUT OF THE USE OF THIS SOFTWARE AND ITS DOCUMENTATION, EVEN
 IF THE PTRACK DEVELOPERS HAVE BEEN ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
 .
 THE PTRACK DEVELOPERS SPECIFICALLY DISCLAIM ANY WARRANTIES, INCLUDING, BUT
 NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A
 PARTICULAR PURPOSE. THE SOFTWARE PROVIDED HEREUNDER IS ON AN "AS IS" BASIS,
 AND THE PTRACK DEVELOPERS HAVE NO OBLIGATIONS TO PROVIDE MAINTENANCE,
 SUPPORT, UPDATES, ENHANCEMENTS, OR MODIFICATIONS.
EOF
chmod 0644 "$doc/copyright"
# Policy wants a changelog in every binary package with a Debian revision;
# gzip -n keeps the timestamp out so rebuilds are identical.
cat <<EOF | gzip -9n >"$doc/changelog.Debian.gz"
$package ($version) unstable; urgency=medium

  * Built by scripts/package.sh from commit $commit.

 -- $maintainer  $(date -u -R -d "@$epoch")
EOF
chmod 0644 "$doc/changelog.Debian.gz"

# Lintian's remarks that do not apply to this package (see each comment).
overrides=$root/usr/share/lintian/overrides
install -d -m 0755 "$overrides"
cat >"$overrides/$package" <<EOF
# Built outside Debian's archive: there is no ITP bug for a first entry to close.
$package: initial-upload-closes-no-bugs [usr/share/doc/$package/changelog.Debian.gz:1]
# Rust code: _FORTIFY_SOURCE applies to C compiled against glibc's headers.
$package: hardening-no-fortify-functions [usr/lib/postgresql/$major/lib/ptrack.so]
# Debian's own layout for PostgreSQL's pkglibdir (every postgresql-$major-* has it).
$package: repeated-path-segment lib [usr/lib/postgresql/$major/lib/]
EOF
chmod 0644 "$overrides/$package"

# libc6 and libgcc-s1 (Rust's unwinder) the way dpkg-shlibdeps finds them for
# any Debian package. It needs a debian/control to read; the undefined symbols
# the server binary provides are expected, hence --warnings=0.
mkdir -p "$work/src/debian"
printf 'Source: ptrack\n\nPackage: %s\nArchitecture: any\n' "$package" >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O --warnings=0 -e"$so" | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependencies for $so"

install -d -m 0755 "$root/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: postgresql-$major, $shlibs
Section: database
Priority: optional
Description: block-level change tracking for PostgreSQL $major incremental backups
 ptrack keeps a map of the data blocks changed since any WAL position, so
 that a backup tool copies only those blocks for an incremental backup
 instead of reading every data file. It provides the SQL API of ptrack 2.4,
 which pg_probackup's PTRACK mode uses.
 .
 On Debian's PostgreSQL server ptrack follows the WAL (WAL mode). Load it
 with shared_preload_libraries = 'ptrack' and wal_level = replica, then run
 CREATE EXTENSION ptrack.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
	>"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
# Directories made by install -d under a umask other than 022 would otherwise
# end up in the package as they are.
find "$root" -type d -exec chmod 0755 {} +

rm -f "$deb"
# dpkg-deb clamps the archive's timestamps to it: the same commit, the same .deb.
export SOURCE_DATE_EPOCH=$epoch
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
log "built $deb"
printf '%s\n' "$deb" >&3
