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
# The user's commands run in /: paths given relative to here, made absolute.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "${PWD%/}" "$1" ;; esac; }
berth_bin=$(abspath "$berth_bin")
BERTH_POLICY=$(abspath "$BERTH_POLICY")
EXAMPLE_STORAGE=$(abspath "$EXAMPLE_STORAGE")

# The user's commands start in / (never in root's working directory).
as_user() {
  local home
  home=$(getent passwd "$EXAMPLE_USER" | cut -d: -f6)
  # setsid: in a session of her own, without root's terminal as her
  # controlling tty (TIOCSTI could type into root's shell otherwise).
  (cd / && exec setsid --wait runuser -u "$EXAMPLE_USER" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$home" USER="$EXAMPLE_USER" LOGNAME="$EXAMPLE_USER" "$@")
}
# Root never opens, reads, lists or changes a path in the user's tree (she
# could have put a link or a FIFO there): every step on it runs as her.
# Text of the user's (her files, what her commands print) as root's
# terminal shows it: control characters made visible (cat -v).
vis() { printf '%s' "$1" | cat -v; }
# root_only DIR: DIR and every directory above it, up to /, are directories
# (no link) of root's that no one else can write (group or other write only
# with the sticky bit, as /tmp). Looked at by root, following no link;
# prints what fails.
root_only() {
  local p=$1 st u m t
  case $p in /*) ;; *) echo "$p is not an absolute path"; return 1 ;; esac
  case /$p/ in */./* | */../*) echo "$p has a . or .. in it"; return 1 ;; esac
  while :; do
    while [ "$p" != / ] && [ "${p%/}" != "$p" ]; do p=${p%/}; done
    if [ -L "$p" ]; then echo "$p is a symbolic link"; return 1; fi
    st=$(stat -c '%u %a %F' -- "$p") || { echo "cannot stat $p"; return 1; }
    read -r u m t <<<"$st"
    [ "$t" = directory ] || { echo "$p is not a directory ($t)"; return 1; }
    [ "$u" = 0 ] || { echo "$p is owned by uid $u, not root"; return 1; }
    if ((8#$m & 8#022)) && ! ((8#$m & 8#1000)); then echo "$p is writable by group or others (mode $m)"; return 1; fi
    [ "$p" != / ] || return 0
    p=${p%/*}
    p=${p:-/}
  done
}
# One character of the names mktemp makes (XXXXXX).
alnum='[ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789]'
# user_mktemp PARENT NAME VAR: a fresh directory of hers, PARENT/NAME.XXXXXX,
# its path put in VAR (and yes in VAR_by_root where root made it), not
# printed: the path is set before anything else can fail, for the cleanup.
# Made by her where she can write PARENT (what her mktemp prints must be
# such a name, or nothing is used); else, only where root_only PARENT,
# made by root and handed to her at once (chown -h: a link put in its place
# gets her uid, nothing else does); else none.
user_mktemp() {
  local um_d um_why
  printf -v "$3" '%s' ''
  printf -v "$3_by_root" '%s' no
  # shellcheck disable=SC2016 # expanded by the user's sh
  if as_user sh -c '[ -w "$1" ] && [ -x "$1" ]' user_mktemp "$1"; then
    um_d=$(as_user mktemp -d "$1/$2.XXXXXX") || return 1
    # shellcheck disable=SC2254 # $alnum is a pattern
    case $um_d in
      "$1/$2."$alnum$alnum$alnum$alnum$alnum$alnum) ;;
      *)
        printf '%s: mktemp as %s printed %s, not a name %s/%s.XXXXXX\n' \
          "$me" "$EXAMPLE_USER" "$(vis "$um_d")" "$1" "$2" >&2
        return 1
        ;;
    esac
    printf -v "$3" '%s' "$um_d"
  elif um_why=$(root_only "$1"); then
    um_d=$(mktemp -d "$1/$2.XXXXXX") || return 1
    printf -v "$3" '%s' "$um_d"
    printf -v "$3_by_root" '%s' yes
    chown -h "$uid:$gid" "$um_d" || return 1
  else
    printf '%s: %s cannot write %s, and root makes no directory for her there: %s\n' \
      "$me" "$EXAMPLE_USER" "$1" "$um_why" >&2
    return 1
  fi
  as_user chmod 0755 "$um_d" || return 1
}
# user_rmtree VAR: the directory user_mktemp put in VAR, and all in it,
# removed by the user; then, where root made it, by root with rmdir (which
# removes no link, nor a directory with anything left in it).
user_rmtree() {
  local by_root=$1_by_root
  [ -n "${!1}" ] || return 0
  if [ "${!by_root}" = yes ]; then
    # She cannot remove the directory itself (its parent is root's).
    as_user timeout 60 rm -rf -- "${!1}" 2>/dev/null || :
    rmdir -- "${!1}"
  else
    as_user timeout 60 rm -rf -- "${!1}"
  fi
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
# shellcheck disable=SC2034 # read by user_rmtree
work_by_root=no
cleanup() {
  local rc=$?
  set +e
  user_rmtree work
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
user_mktemp "$EXAMPLE_STORAGE" berth-example-results work ||
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
[ "$files" = "id.txt probes.txt summary.txt " ] || fail "the results folder holds: $(vis "$files")"
for f in id.txt probes.txt summary.txt; do
  owner=$(as_user stat -c %u:%g -- "$results/$f")
  [ "$owner" = "$uid:$gid" ] || fail "results/$f is owned by $(vis "$owner"), not $EXAMPLE_USER ($uid:$gid)"
done
summary=$(user_read "$results/summary.txt") || fail "cannot read results/summary.txt"
[ "$summary" = "rows=4
sum=40
max=20" ] || fail "wrong summary.txt: $(vis "$summary")"
ids=$(user_read "$results/id.txt") || fail "cannot read results/id.txt"
[ "$ids" = "uid=$uid gid=$gid" ] || fail "the job did not run as $EXAMPLE_USER: $(vis "$ids")"
say "results: $(printf '%s\n' "$summary" | tr '\n' ' ')(owned by $EXAMPLE_USER)"

# Nothing but the results folder took a write.
probes=$(user_read "$results/probes.txt") || fail "cannot read results/probes.txt"
if printf '%s' "$probes" | grep -v '^refused' | cat -v >&2; then
  fail "the job could write outside its results folder (above)"
fi
[ "$(printf '%s' "$probes" | grep -c '^refused')" -eq 30 ] ||
  fail "the job's write probes are incomplete: $(vis "$probes")"
[ "$(snapshot)" = "$before" ] || fail "the input folder changed:
$(snapshot | cat -v)
--- before:
$(vis "$before")"
leaked=$(as_user find "$work" -name '.berth-probe*' | head -5)
[ -z "$leaked" ] || fail "probe files reached the host: $(vis "$leaked")"
say "writes to the input, /, /etc, /opt, /usr and every other path were refused; the input is unchanged"
