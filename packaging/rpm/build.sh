#!/usr/bin/env bash
# Build the RPM of berth (for RHEL/Rocky/Alma; it builds on Debian too):
#
#   bash packaging/rpm/build.sh [OUTDIR]        (default OUTDIR: target/packages)
#
# BERTH_BIN=path/to/berth packages a binary built beforehand; otherwise
# rpmbuild compiles it with cargo (%build of berth.spec). Installs rpmbuild
# if it is missing: Debian's `rpm` package with apt-get, or `rpm-build` with
# dnf. On a system whose package database is not RPM's (Debian), build
# dependencies cannot be checked and are skipped (--nodeps).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/target/packages}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if ! command -v rpmbuild >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q rpm >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q rpm >/dev/null; }
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q rpm-build
  fi
fi
command -v rpmbuild >/dev/null 2>&1 || { echo "$0: rpmbuild is not installed" >&2; exit 69; }

version=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' "$src/Cargo.toml" | head -1)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{BUILD,BUILDROOT,RPMS,SOURCES,SPECS,SRPMS}
# What %build and %install need: the crate, and what stage.sh installs.
parts=()
for p in Cargo.toml Cargo.lock README.md src benches examples tests docs man packaging policy wrapper; do
  [ -e "$src/$p" ] && parts+=("$p")
done
tar -C "$src" --exclude=target --transform "s,^,berth-$version/," \
  -czf "$top/SOURCES/berth-$version.tar.gz" "${parts[@]}"
cp "$src/packaging/rpm/berth.spec" "$top/SPECS/"

args=(--define "_topdir $top" --define "berth_version $version")
if [ -n "${BERTH_BIN:-}" ]; then
  args+=(--define "berth_bin $(realpath "$BERTH_BIN")")
fi
if ! rpm -q rpm >/dev/null 2>&1; then
  args+=(--nodeps)
fi
rpmbuild -bb --quiet "${args[@]}" "$top/SPECS/berth.spec" >&2
find "$top/RPMS" -name 'berth-*.rpm' -exec cp {} "$out/" \;
find "$out" -maxdepth 1 -name "berth-$version-*.rpm" | sort | tail -1
