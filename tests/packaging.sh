#!/usr/bin/env bash
# Packaging test, as root with the test bed up (tests/run.sh calls it):
# build the .deb and the .rpm, check both file lists, install the .deb with
# dpkg -i, check the installed files, and run a real job with the INSTALLED
# /usr/bin/berth. Afterwards the package is purged again, unless berth was
# installed as a package before the test (then the fresh build stays
# installed). A policy at /etc/berth/policy.toml that no package owned (e.g.
# from packaging/quickstart.sh) is put back as it was. Idempotent.
#
# Ends with the line `packaging: N passed, M failed`; exit 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "tests/packaging.sh: run as root" >&2; exit 1; }
# One packaging test at a time on a machine: they install and purge the
# same package.
exec 9>/run/berth-packaging-test.lock
flock 9

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}
has_line() { grep -qxF -- "$2" <<<"$1"; }

work=$(mktemp -d)
policy_backup=
was_installed=no
cleanup() {
  if [ "$was_installed" = no ] && dpkg-query -W berth >/dev/null 2>&1; then
    dpkg --purge berth >/dev/null 2>&1 || true
  fi
  if [ -n "$policy_backup" ]; then
    install -d -m 0755 /etc/berth
    install -m 0644 -o root -g root "$policy_backup" /etc/berth/policy.toml
  fi
  rm -rf "$work"
}
trap cleanup EXIT

version=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' Cargo.toml | head -1)
cargo build --release --locked
deb=$(BERTH_BIN=target/release/berth bash packaging/deb/build.sh "$work")
rpm=$(BERTH_BIN=target/release/berth bash packaging/rpm/build.sh "$work")
check "built $(basename "$deb")" test -s "$deb"
check "built $(basename "$rpm")" test -s "$rpm"

# What both packages must hold (generated pages follow man/).
common=(/usr/bin/berth /etc/berth/policy.toml /usr/share/man/man5/berth-policy.5.gz
  /usr/share/bash-completion/completions/berth /usr/share/fish/vendor_completions.d/berth.fish
  /usr/lib/tmpfiles.d/berth.conf /usr/libexec/berth
  /usr/share/berth/wrapper/systemd/berth.service /usr/share/berth/policy/example-site.toml
  /usr/share/doc/berth/troubleshooting.md /usr/share/doc/berth/policy.md)
for page in man/*.1; do common+=("/usr/share/man/man1/$(basename "$page").gz"); done
for f in wrapper/*/*; do common+=("/usr/share/berth/$f"); done

# --- the .deb, before installing it
listing=$(dpkg-deb -c "$deb")
check "deb: no setuid, setgid or world-writable entry" \
  test -z "$(awk '$1 ~ /^[^l].*[sS]/ || $1 ~ /^[^l].......w/' <<<"$listing")"
check "deb: policy.toml is root:root 0644" grep -qE '^-rw-r--r-- root/root .* \./etc/berth/policy\.toml$' <<<"$listing"
check "deb: berth is root:root 0755" grep -qE '^-rwxr-xr-x root/root .* \./usr/bin/berth$' <<<"$listing"
check "deb: conffiles lists /etc/berth/policy.toml" has_line "$(dpkg-deb -I "$deb" conffiles)" /etc/berth/policy.toml
check "deb: depends on docker.io | docker-ce" grep -q 'docker.io (>= 20.10) | docker-ce' <<<"$(dpkg-deb -f "$deb" Depends)"

# --- the .rpm's file list
rpm_files=$(rpm -qlp "$rpm" 2>/dev/null)
missing=0
for f in "${common[@]}" /usr/share/zsh/site-functions/_berth /usr/lib/systemd/system/berth.service; do
  has_line "$rpm_files" "$f" || { bad "rpm: holds $f"; missing=1; }
done
[ "$missing" = 1 ] || ok "rpm: binary, ${#common[@]} common files, zsh completion and unit"
rpm_long=$(rpm -qlvp "$rpm" 2>/dev/null)
check "rpm: no setuid, setgid or world-writable entry" \
  test -z "$(awk '$1 ~ /^[^l].*[sS]/ || $1 ~ /^[^l].......w/' <<<"$rpm_long")"
check "rpm: policy.toml is root root 0644" grep -qE '^-rw-r--r-- +1 root +root .* /etc/berth/policy\.toml$' <<<"$rpm_long"
check "rpm: policy.toml is a config file" has_line "$(rpm -qp --configfiles "$rpm" 2>/dev/null)" /etc/berth/policy.toml
check "rpm: requires a docker engine" grep -q 'docker-ce' <<<"$(rpm -qpR "$rpm" 2>/dev/null)"

# --- install the .deb
if dpkg-query -W -f='${Status}' berth 2>/dev/null | grep -q 'install ok installed'; then
  was_installed=yes
elif [ -f /etc/berth/policy.toml ]; then
  policy_backup=$work/policy.toml.before
  cp -p /etc/berth/policy.toml "$policy_backup"
fi
if dpkg -i --force-confdef --force-confold "$deb" >"$work/dpkg.log" 2>&1; then
  ok "dpkg -i $(basename "$deb")"
else
  bad "dpkg -i $(basename "$deb")"; cat "$work/dpkg.log"
fi
check "dpkg: berth $version is installed" test "$(dpkg-query -W -f='${Status} ${Version}' berth)" = "install ok installed $version"
installed=$(dpkg -L berth)
missing=0
for f in "${common[@]}" /usr/share/zsh/vendor-completions/_berth /lib/systemd/system/berth.service; do
  has_line "$installed" "$f" || { bad "dpkg -L: holds $f"; missing=1; }
done
[ "$missing" = 1 ] || ok "dpkg -L: binary, ${#common[@]} common files, zsh completion and unit"
check "dpkg: /etc/berth/policy.toml is a conffile" grep -q '^ /etc/berth/policy.toml ' <<<"$(dpkg-query -W -f='${Conffiles}\n' berth)"
check "installed policy.toml is root:root 0644" test "$(stat -c '%U:%G %a' /etc/berth/policy.toml)" = "root:root 644"
check "installed berth is root:root 0755" test "$(stat -c '%U:%G %a' /usr/bin/berth)" = "root:root 755"
setuid=$(while read -r f; do
  if [ -e "$f" ] && [ ! -L "$f" ]; then find "$f" -maxdepth 0 -perm /6000; fi
done <<<"$installed")
check "installed: nothing setuid or setgid" test -z "$setuid"
check "postinst: /var/tmp/berth is root:root 0711" test "$(stat -c '%U:%G %a' /var/tmp/berth)" = "root:root 711"
check "postinst: /var/cache/berth exists" test -d /var/cache/berth
check "/usr/libexec/berth/lsf leads to the glue" test -x /usr/libexec/berth/lsf/berth-starter
check "installed berth --version is $version" test "$(/usr/bin/berth --version)" = "berth $version"
check "installed man page berth-policy(5) renders" \
  bash -c 'zcat /usr/share/man/man5/berth-policy.5.gz | groff -man -Tutf8 -ww -z 2>&1 | (! grep .)'
check "bash completion loads" bash -c 'source /usr/share/bash-completion/completions/berth && complete -p berth'
if command -v systemd-analyze >/dev/null 2>&1; then
  check "systemd-analyze verify berth.service" bash -c \
    'out=$(systemd-analyze verify /lib/systemd/system/berth.service 2>&1); echo "$out"; test -z "$out"'
fi
check "the shipped default policy passes berth policy check" /usr/bin/berth policy check /etc/berth/policy.toml

# --- a real job with the installed binary, under a temporary policy
pol=$work/site/policy.toml
install -d -m 0755 "$work/site"
cat > "$pol" <<'EOF'
[cgroup]
require_job = false
[images]
allow = ["docker.io/berth-test/*"]
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[audit]
log = "none"
EOF
# The broker is not part of this test: a socket path of its own, in
# directories users can search (as /run/berth must be).
printf '[broker]\nsocket = "%s/site/berth.sock"\n' "$work" >> "$pol"
chmod 0755 "$work"
chmod 0644 "$pol"
doctor=$(/usr/bin/berth --policy "$pol" doctor 2>&1) && ok "installed berth doctor passes" || { bad "installed berth doctor passes"; echo "$doctor"; }
check "doctor finds the installed glue" grep -q '^ok    glue .*/usr/share/berth/wrapper' <<<"$doctor"
job_out=$(cd /storage1/fs1/alice && env -i PATH=/usr/bin:/bin LSFUSER=berth-alice LSB_JOBID=$$ \
  LSB_CONTAINER_IMAGE=berth-test/busybox:1 /usr/bin/berth --policy "$pol" run -- 'id -u; id -un; pwd' 2>&1) || true
if [ "$job_out" = "$(printf '2001\nberth-alice\n/storage1/fs1/alice')" ]; then
  ok "a job run by the installed berth runs as berth-alice (uid 2001) in /storage1/fs1/alice"
else
  bad "a job run by the installed berth runs as berth-alice (uid 2001)"; echo "$job_out"
fi
set +e
(cd /storage1/fs1/alice && env -i PATH=/usr/bin:/bin LSFUSER=berth-alice LSB_JOBID=$$ \
  LSB_CONTAINER_IMAGE=berth-test/busybox:1 LSF_DOCKER_VOLUMES=/etc:/data \
  /usr/bin/berth --policy "$pol" run -- true) >/dev/null 2>"$work/deny.err"
code=$?
set -e
check "the installed berth denies /etc as a volume (exit 77)" test "$code" = 77
check "the denial names its rule" grep -q 'rule volumes.source' "$work/deny.err"

# --- remove (or keep) it
if [ "$was_installed" = no ]; then
  dpkg --purge berth >/dev/null 2>&1 && ok "dpkg --purge berth" || bad "dpkg --purge berth"
  check "purged: /usr/bin/berth is gone" test ! -e /usr/bin/berth
  check "purged: no unit file left" test ! -e /lib/systemd/system/berth.service
else
  ok "berth was installed before this test: the fresh build stays installed"
fi

echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
