#!/usr/bin/env bash
# image + command + input file -> results folder: one job reads one input
# file from the user's storage, mounted read-only, and writes what it
# computes into a fresh results directory, the only place it can write
# that outlives it. Checks the results (content, owner), that the input is
# untouched, and that writes anywhere else failed inside the job.
#
#   sudo bash examples/input-to-results/run.sh
#
# Needs a broker (berth daemon); any policy with a read-write volume root
# (EXAMPLE_STORAGE is under it) and the image allowed. See README.md beside
# this file for the environment overrides.
set -euo pipefail

BERTH=${BERTH:-berth}
BERTH_POLICY=${BERTH_POLICY:-/etc/berth/policy.toml}
EXAMPLE_USER=${EXAMPLE_USER:-berth-alice}
EXAMPLE_STORAGE=${EXAMPLE_STORAGE:-/storage1/fs1}
EXAMPLE_IMAGE=${EXAMPLE_IMAGE:-berth-test/busybox:1}
EXAMPLE_JOBID=${EXAMPLE_JOBID:-$$}

me=input-to-results
say() { printf '== %s: %s\n' "$me" "$*"; }
fail() {
  printf '%s: FAILED: %s\n' "$me" "$*" >&2
  exit 1
}
# What berth's exit codes mean (berth(1)), for the failure messages.
code_hint() {
  case $1 in
    64) echo " (64: a malformed request)" ;;
    69) echo " (69: the broker or the engine is unreachable: is berth daemon running, and does the policy's [broker] socket name it?)" ;;
    70) echo " (70: berth's internal error)" ;;
    77) echo " (77: denied by the policy: see the berth: denied line above)" ;;
    78) echo " (78: invalid or unsafe policy or installation: see berth's message above)" ;;
  esac
}

[ "$(id -u)" -eq 0 ] || fail "run as root (it sets up the user's files; the job runs as $EXAMPLE_USER)"
case $EXAMPLE_JOBID in '' | *[!0-9]*) fail "EXAMPLE_JOBID=$EXAMPLE_JOBID is not a number (it becomes LSB_JOBID)" ;; esac
berth_bin=$(command -v "$BERTH") || fail "berth not found (BERTH=$BERTH)"
[ -f "$BERTH_POLICY" ] || fail "no policy at $BERTH_POLICY (BERTH_POLICY)"
uid=$(id -u "$EXAMPLE_USER" 2>/dev/null) || fail "no user $EXAMPLE_USER (EXAMPLE_USER)"
gid=$(id -g "$EXAMPLE_USER")
[ "$uid" -ne 0 ] || fail "EXAMPLE_USER must not be root"
[ -d "$EXAMPLE_STORAGE" ] || fail "EXAMPLE_STORAGE=$EXAMPLE_STORAGE is not a directory"

as_user() {
  local home
  home=$(getent passwd "$EXAMPLE_USER" | cut -d: -f6)
  runuser -u "$EXAMPLE_USER" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$home" USER="$EXAMPLE_USER" LOGNAME="$EXAMPLE_USER" "$@"
}
# Root never opens, reads, lists or changes a path in the user's tree (she
# could have put a link or a FIFO there): every step on it runs as her.
# user_mktemp PARENT NAME: a fresh directory of hers in PARENT, made by her;
# where she cannot write PARENT, made by root and handed to her at once
# (chown -h: a link put in its place gets her uid, nothing else does).
user_mktemp() {
  local d
  # shellcheck disable=SC2016 # expanded by the user's sh
  if as_user sh -c '[ -w "$1" ] && [ -x "$1" ]' user_mktemp "$1"; then
    d=$(as_user mktemp -d "$1/$2.XXXXXX") || return 1
  else
    d=$(mktemp -d "$1/$2.XXXXXX") || return 1
    chown -h "$uid:$gid" "$d" || return 1
  fi
  as_user chmod 0755 "$d" || return 1
  printf '%s\n' "$d"
}
# Standard input into FILE, written by the user.
# shellcheck disable=SC2016 # expanded by the user's sh
user_write() { as_user timeout 300 sh -c 'cat >"$1"' user_write "$1"; }
# FILE as the user reads it (at most 1 MiB and 30 s).
user_read() { as_user timeout 30 head -c 1048576 -- "$1"; }
# in_dir DIR CMD...: CMD in DIR, entered by the user (after as_user [NAME=value...]).
# shellcheck disable=SC2016 # expanded by the user's sh
in_dir=(sh -c 'cd -- "$1" && shift && exec "$@"' in_dir)

work=''
cleanup() {
  local rc=$?
  set +e
  [ -z "$work" ] || rm -rf "$work"
  if [ "$rc" -eq 0 ]; then
    say "OK (cleaned up)"
  else
    printf '%s: cleaned up after the failure\n' "$me" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The user's storage: an input folder with one file, and a fresh results
# folder for this job (D4Science's executor makes one per execution).
# All of it is made by the user.
work=$(user_mktemp "$EXAMPLE_STORAGE" berth-example-results) ||
  fail "cannot make a work directory in $EXAMPLE_STORAGE (EXAMPLE_STORAGE)"
as_user mkdir "$work/input"
printf '%s\n' 'station,temp' 'a,12' 'b,7' 'c,20' 'd,1' | user_write "$work/input/measurements.csv"
results=$work/results-$EXAMPLE_JOBID
as_user mkdir "$results"
[ -z "$(as_user ls -A -- "$results")" ] || fail "$results is not empty before the job"
# shellcheck disable=SC2016 # expanded by the user's sh
snapshot() { as_user timeout 30 sh -c 'cd -- "$1" && ls -la --time-style=+%s . && cksum ./*' snapshot "$work/input"; }
before=$(snapshot)

# The job's command. It computes a summary of the input into /results,
# then tries to write everywhere else it might and records what happened.
# Writes run in subshells so that a refusal is recorded, not fatal.
# shellcheck disable=SC2016 # expanded in the container
job='set -u
in=/input/measurements.csv
awk -F, "NR > 1 { n++; s += \$2; if (\$2 > m || n == 1) m = \$2 } END { print \"rows=\" n; print \"sum=\" s; print \"max=\" m }" "$in" > summary.txt
printf "uid=%s gid=%s\n" "$(id -u)" "$(id -g)" > id.txt
for d in /input / /etc /opt /usr /bin /sbin /root /var /home /mnt /srv /storage1 /scratch1 "$WORK_ON_HOST"; do
  if (echo x > "$d/.berth-probe") 2>/dev/null; then echo "writable $d"; else echo "refused $d"; fi
  if (mkdir "$d/.berth-probe.d") 2>/dev/null; then echo "writable-dir $d"; else echo "refused-dir $d"; fi
done > probes.txt
if (echo x > /input/measurements.csv) 2>/dev/null; then echo "overwrote the input" >> probes.txt; fi
if (rm -f /input/measurements.csv) 2>/dev/null && [ ! -e /input/measurements.csv ]; then echo "removed the input" >> probes.txt; fi
[ -e "$WORK_ON_HOST" ] && echo "host path $WORK_ON_HOST visible" >> probes.txt
exit 0'

say "job $EXAMPLE_JOBID: $EXAMPLE_IMAGE, input $work/input (ro), results $results"
rc=0
as_user LSB_JOBID="$EXAMPLE_JOBID" LS_SUBCWD="$work" WORK_ON_HOST="$work" \
  LSB_CONTAINER_IMAGE="$EXAMPLE_IMAGE" \
  LSF_DOCKER_VOLUMES="$work/input:/input:ro $results:/results" \
  LSF_DOCKER_WORKDIR=/results \
  "${in_dir[@]}" "$work" "$berth_bin" --policy "$BERTH_POLICY" run -- "$job" || rc=$?
[ "$rc" -eq 0 ] || fail "the job exited $rc$(code_hint "$rc")"

# The results folder holds exactly what the job wrote, owned by the user
# (all of it looked at as the user).
files=$(as_user find "$results" -mindepth 1 -printf '%f\n' | sort | tr '\n' ' ')
[ "$files" = "id.txt probes.txt summary.txt " ] || fail "the results folder holds: $files"
for f in id.txt probes.txt summary.txt; do
  owner=$(as_user stat -c %u:%g -- "$results/$f")
  [ "$owner" = "$uid:$gid" ] || fail "results/$f is owned by $owner, not $EXAMPLE_USER ($uid:$gid)"
done
summary=$(user_read "$results/summary.txt") || fail "cannot read results/summary.txt"
[ "$summary" = "rows=4
sum=40
max=20" ] || fail "wrong summary.txt: $summary"
ids=$(user_read "$results/id.txt") || fail "cannot read results/id.txt"
[ "$ids" = "uid=$uid gid=$gid" ] || fail "the job did not run as $EXAMPLE_USER: $ids"
say "results: $(printf '%s\n' "$summary" | tr '\n' ' ')(owned by $EXAMPLE_USER)"

# Nothing but the results folder took a write.
probes=$(user_read "$results/probes.txt") || fail "cannot read results/probes.txt"
if printf '%s' "$probes" | grep -v '^refused' >&2; then
  fail "the job could write outside its results folder (above)"
fi
[ "$(printf '%s' "$probes" | grep -c '^refused')" -eq 30 ] ||
  fail "the job's write probes are incomplete: $probes"
[ "$(snapshot)" = "$before" ] || fail "the input folder changed:
$(snapshot)
--- before:
$before"
leaked=$(as_user find "$work" -name '.berth-probe*' | head -5)
[ -z "$leaked" ] || fail "probe files reached the host: $leaked"
say "writes to the input, /, /etc, /opt, /usr and every other path were refused; the input is unchanged"
