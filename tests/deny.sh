#!/usr/bin/env bash
# cargo deny (deny.toml: advisories, licences, bans, sources), offline.
#
# These machines cannot fetch the RustSec database, so the check reads the
# snapshot in ../shared/advisory-db (beside the repository, as CI clones
# it) the way ../shared/notes/cargo-deny.md describes: cargo-deny wants a
# git checkout named advisory-db-<hash of the default URL> under db-path,
# so the snapshot is copied into a scratch directory under that name and
# committed there, and deny.toml's db-path is pointed at it. The snapshot
# ages: "advisories ok" means no advisory known on the snapshot's day.
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot=../shared/advisory-db
# cargo-deny's directory name for https://github.com/rustsec/advisory-db.
db_name=advisory-db-3157b0e258782691

if [ ! -d "$snapshot/crates" ]; then
    echo "tests/deny.sh: no RustSec snapshot at $snapshot (see ../shared/notes/cargo-deny.md)" >&2
    exit 1
fi
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install --locked cargo-deny
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/berth-deny.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp -R "$snapshot" "$scratch/$db_name"
git -C "$scratch/$db_name" init -q
git -C "$scratch/$db_name" add -A
git -C "$scratch/$db_name" -c user.name=berth-ci -c user.email=ci@berth.invalid \
    -c commit.gpgsign=false commit -q -m "RustSec advisory-db snapshot"

# Everything cargo metadata needs, so the offline check needs nothing more.
cargo fetch --locked
BERTH_ADVISORY_DBS="$scratch" cargo deny --offline check
