#!/usr/bin/env bash
# Build the Debian package of berth with nothing but dpkg-deb:
#
#   bash packaging/deb/build.sh [OUTDIR]        (default OUTDIR: target/packages)
#
# BERTH_BIN=path/to/berth uses a binary built beforehand; otherwise this runs
# `cargo build --release --locked`. The file layout comes from
# packaging/stage.sh; this adds the control files:
#   Depends   docker.io | docker-ce, and the libc the binary was linked against
#   conffiles /etc/berth/policy.toml (dpkg keeps the site's edits on upgrade)
#   postinst  /var/tmp/berth (0711) and /var/cache/berth (0755), root's;
#             berth.service is installed but neither enabled nor started
#   prerm     stops and disables berth.service on removal
#   postrm    removes /var/cache/berth on purge
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/target/packages}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' "$src/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
if [ -n "${BERTH_BIN:-}" ]; then
  bin=$(realpath "$BERTH_BIN")
else
  (cd "$src" && cargo build --release --locked)
  bin=$src/target/release/berth
fi
# Reproducible timestamps: the last commit's, when there is one.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
bash "$src/packaging/stage.sh" "$root" deb "$bin"
strip --strip-unneeded "$root/usr/bin/berth"
install -m 0644 "$src/packaging/deb/copyright" "$root/usr/share/doc/berth/copyright"

# The newest glibc symbol version the binary needs.
glibc=$(objdump -T "$root/usr/bin/berth" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
libc_dep=libc6${glibc:+ (>= $glibc)}

install -d -m 0755 "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: berth
Version: $version
Architecture: $arch
Maintainer: berth developers <berth@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: docker.io (>= 20.10) | docker-ce (>= 20.10), $libc_dep
Suggests: slurm-wlm
Section: admin
Priority: optional
Description: run HPC batch jobs in Docker containers, safely, as the job's user
 berth turns a batch job's request (IBM Spectrum LSF's bsub -a docker, or
 Slurm's sbatch --container) into one docker run command that the site
 policy (/etc/berth/policy.toml) allows, runs it as the job's user with
 their groups, and returns the container's exit code as the job's.
 .
 It is setuid-free: unprivileged job users reach Docker through the broker
 (berth daemon, berth.service), never through the docker group. The package
 ships the scheduler glue under /usr/share/berth/wrapper, man pages
 (berth(1), berth-policy(5)) and guides in /usr/share/doc/berth.
CONTROL
echo /etc/berth/policy.toml > "$root/DEBIAN/conffiles"

cat > "$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # tmp.base and the facts cache; /run/berth comes from tmpfiles or berth.
    install -d -o root -g root -m 0711 /var/tmp/berth
    install -d -o root -g root -m 0755 /var/cache/berth
    if [ -d /run/systemd/system ]; then
        systemd-tmpfiles --create berth.conf >/dev/null 2>&1 || true
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
SCRIPT
cat > "$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now berth.service >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
cat > "$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/cache/berth
    # Per-job directories of running jobs may remain; only an empty base goes.
    rmdir /var/tmp/berth 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

deb=$out/berth_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
