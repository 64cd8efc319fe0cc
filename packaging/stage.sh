#!/usr/bin/env bash
# Lay out an installed berth under DESTDIR: the one description of what the
# Debian and RPM packages install (packaging/deb/build.sh and the %install
# of packaging/rpm/berth.spec both call it).
#
#   packaging/stage.sh DESTDIR deb|rpm BINARY
#
#   /usr/bin/berth                               the binary (0755, never setuid)
#   /etc/berth/policy.toml                       policy/default.toml (config file, root 0644)
#   /usr/share/man/man1/berth*.1.gz              generated from the clap definitions
#   /usr/share/man/man5/berth-policy.5.gz        hand-written
#   bash, zsh and fish completions
#   <unitdir>/berth.service                      the broker (berth daemon), not enabled
#   /usr/lib/tmpfiles.d/berth.conf               /var/tmp/berth, /var/cache/berth, /run/berth
#   /usr/share/berth/wrapper/                    scheduler glue (LSF, Slurm, Parsl, systemd)
#   /usr/libexec/berth -> ../share/berth/wrapper  the path the LSF profiles name
#   /usr/share/berth/policy/                     default and example policies
#   /usr/share/doc/berth/                        README and the sysadmin guides
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 DESTDIR deb|rpm BINARY" >&2
  exit 64
fi
dest=$1 flavor=$2 bin=$3
src=$(cd "$(dirname "$0")/.." && pwd)
case $flavor in
  deb) unitdir=/lib/systemd/system; zshdir=/usr/share/zsh/vendor-completions ;;
  rpm) unitdir=/usr/lib/systemd/system; zshdir=/usr/share/zsh/site-functions ;;
  *) echo "$0: flavor must be deb or rpm" >&2; exit 64 ;;
esac
[ -x "$bin" ] || { echo "$0: $bin is not an executable berth binary" >&2; exit 66; }

umask 022
install -D -m 0755 "$bin" "$dest/usr/bin/berth"

install -d -m 0755 "$dest/usr/share/man/man1" "$dest/usr/share/man/man5"
for page in "$src"/man/*.1; do
  gzip -9 -n -c "$page" > "$dest/usr/share/man/man1/$(basename "$page").gz"
done
gzip -9 -n -c "$src/man/berth-policy.5" > "$dest/usr/share/man/man5/berth-policy.5.gz"
chmod 0644 "$dest"/usr/share/man/man*/*.gz

install -D -m 0644 "$src/packaging/completions/berth.bash" "$dest/usr/share/bash-completion/completions/berth"
install -D -m 0644 "$src/packaging/completions/_berth" "$dest$zshdir/_berth"
install -D -m 0644 "$src/packaging/completions/berth.fish" "$dest/usr/share/fish/vendor_completions.d/berth.fish"

install -D -m 0644 "$src/policy/default.toml" "$dest/etc/berth/policy.toml"
install -D -m 0644 "$src/policy/default.toml" "$dest/usr/share/berth/policy/default.toml"
install -D -m 0644 "$src/policy/example-site.toml" "$dest/usr/share/berth/policy/example-site.toml"

install -D -m 0644 "$src/wrapper/systemd/berth.service" "$dest$unitdir/berth.service"
install -D -m 0644 "$src/wrapper/systemd/berth.tmpfiles.conf" "$dest/usr/lib/tmpfiles.d/berth.conf"

# Scheduler glue: scripts stay executable, everything else 0644, all root's.
install -d -m 0755 "$dest/usr/share/berth/wrapper"
(cd "$src/wrapper" && find . -type d) | while read -r d; do
  install -d -m 0755 "$dest/usr/share/berth/wrapper/$d"
done
(cd "$src/wrapper" && find . -type f) | while read -r f; do
  if [ -x "$src/wrapper/$f" ]; then mode=0755; else mode=0644; fi
  install -m "$mode" "$src/wrapper/$f" "$dest/usr/share/berth/wrapper/$f"
done
install -d -m 0755 "$dest/usr/libexec"
ln -sfn ../share/berth/wrapper "$dest/usr/libexec/berth"

install -d -m 0755 "$dest/usr/share/doc/berth"
install -m 0644 "$src/README.md" "$dest/usr/share/doc/berth/README.md"
for doc in "$src"/docs/*.md; do
  install -m 0644 "$doc" "$dest/usr/share/doc/berth/$(basename "$doc")"
done

# Nothing berth installs is ever setuid, setgid or group/world-writable.
bad=$(find "$dest" \( -perm /6000 -o \( -perm /022 ! -type l \) \) -print)
if [ -n "$bad" ]; then
  echo "$0: refusing to package setuid/setgid or writable files:" >&2
  echo "$bad" >&2
  exit 1
fi
