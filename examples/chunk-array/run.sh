#!/usr/bin/env bash
# One image, one container per data chunk: the data is split into chunk
# files on a shared scratch root, and a job array processes them, each
# element in its own container with its own /tmp. Twice: as an LSF job
# array (LSB_JOBID shared, LSB_JOBINDEX 1..N, each element a `berth run` as
# LSF's job starter runs it) and, where Slurm runs berth as its OCI
# runtime, as `sbatch --array=0-(N-1) --container=<bundle dir>`. The
# outputs are gathered and checked: every chunk processed exactly once and
# right, as the user, each element in a container and /tmp of its own.
#
#   sudo bash examples/chunk-array/run.sh
#
# Needs a broker (berth daemon), a policy with a read-write volume root
# (EXAMPLE_STORAGE is under it), a volume root for the chunks
# (EXAMPLE_SCRATCH; read-only is enough) and the image allowed; the Slurm
# part also [bundles] cache and /etc/slurm/oci.conf naming berth
# (wrapper/slurm/). See README.md beside this file for the overrides.
set -euo pipefail

BERTH=${BERTH:-berth}
BERTH_POLICY=${BERTH_POLICY:-/etc/berth/policy.toml}
EXAMPLE_USER=${EXAMPLE_USER:-berth-alice}
EXAMPLE_STORAGE=${EXAMPLE_STORAGE:-/storage1/fs1}
EXAMPLE_SCRATCH=${EXAMPLE_SCRATCH:-/scratch1/fs1}
EXAMPLE_IMAGE=${EXAMPLE_IMAGE:-berth-test/busybox:1}
EXAMPLE_JOBID=${EXAMPLE_JOBID:-$$}
EXAMPLE_CHUNKS=${EXAMPLE_CHUNKS:-4}
# auto: run the Slurm array when sbatch is here and oci.conf names berth;
# yes: it must run; no: LSF-style array only.
EXAMPLE_SLURM=${EXAMPLE_SLURM:-auto}
EXAMPLE_SLURM_ARGS=${EXAMPLE_SLURM_ARGS:-}
EXAMPLE_SLURM_TIMEOUT=${EXAMPLE_SLURM_TIMEOUT:-300}
EXAMPLE_BUNDLE_CACHE=${EXAMPLE_BUNDLE_CACHE:-}
OCI_CONF=${OCI_CONF:-/etc/slurm/oci.conf}
DOCKER=${DOCKER:-docker}

me=chunk-array
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

[ "$(id -u)" -eq 0 ] || fail "run as root (it sets up the user's files; the jobs run as $EXAMPLE_USER)"
case $EXAMPLE_JOBID in '' | *[!0-9]*) fail "EXAMPLE_JOBID=$EXAMPLE_JOBID is not a number (it becomes LSB_JOBID)" ;; esac
case $EXAMPLE_CHUNKS in '' | *[!0-9]* | 0 | 1) fail "EXAMPLE_CHUNKS=$EXAMPLE_CHUNKS: give a number of chunks, at least 2" ;; esac
berth_bin=$(command -v "$BERTH") || fail "berth not found (BERTH=$BERTH)"
[ -f "$BERTH_POLICY" ] || fail "no policy at $BERTH_POLICY (BERTH_POLICY)"
uid=$(id -u "$EXAMPLE_USER" 2>/dev/null) || fail "no user $EXAMPLE_USER (EXAMPLE_USER)"
gid=$(id -g "$EXAMPLE_USER")
[ "$uid" -ne 0 ] || fail "EXAMPLE_USER must not be root"
[ -d "$EXAMPLE_STORAGE" ] || fail "EXAMPLE_STORAGE=$EXAMPLE_STORAGE is not a directory"
[ -d "$EXAMPLE_SCRATCH" ] || fail "EXAMPLE_SCRATCH=$EXAMPLE_SCRATCH is not a directory"
# The user's commands run in /: paths given relative to here, made absolute.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "${PWD%/}" "$1" ;; esac; }
berth_bin=$(abspath "$berth_bin")
BERTH_POLICY=$(abspath "$BERTH_POLICY")
EXAMPLE_STORAGE=$(abspath "$EXAMPLE_STORAGE")
EXAMPLE_SCRATCH=$(abspath "$EXAMPLE_SCRATCH")
last=$((EXAMPLE_CHUNKS - 1))

berth() { "$berth_bin" --policy "$BERTH_POLICY" "$@"; }
# A clean environment for the user's commands, plus what each one adds;
# they start in / (never in root's working directory).
user_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$(getent passwd "$EXAMPLE_USER" | cut -d: -f6)"
  USER="$EXAMPLE_USER" LOGNAME="$EXAMPLE_USER")
# setsid: in a session of her own, without root's terminal as her
# controlling tty (TIOCSTI could type into root's shell otherwise).
as_user() { (cd / && exec setsid --wait runuser -u "$EXAMPLE_USER" -- "${user_env[@]}" "$@"); }
# Root never opens, reads, lists or changes a path in the user's trees (she
# could have put a link or a FIFO there): every step on them runs as her.
# Root's own files (the elements' logs, what it gathers) are in a 0700
# directory of its own under /tmp.
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
bundle_repo() {
  local s
  s=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-')
  s=${s#-}
  s=${s%-}
  printf 'berth-bundle/%s' "${s:-x}"
}
# [bundles] cache of the policy (a plain `cache = "..."` line).
policy_bundle_cache() {
  awk '
    /^[[:space:]]*\[/ { sec = $0; gsub(/[[:space:]]/, "", sec); next }
    sec == "[bundles]" && /^[[:space:]]*cache[[:space:]]*=/ {
      v = $0; sub(/^[^=]*=[[:space:]]*/, "", v); sub(/[[:space:]]*(#.*)?$/, "", v)
      gsub(/^["\047]|["\047]$/, "", v); print v; exit
    }' "$BERTH_POLICY"
}

# Should the Slurm array run?
slurm=no
slurm_why=''
case $EXAMPLE_SLURM in
  no) slurm_why="EXAMPLE_SLURM=no" ;;
  auto | yes)
    if ! command -v sbatch >/dev/null 2>&1; then
      slurm_why="no sbatch on this node"
    elif ! grep -qs 'berth' "$OCI_CONF"; then
      slurm_why="$OCI_CONF does not name berth as Slurm's OCI runtime (wrapper/slurm/oci.conf)"
    elif [ -z "${EXAMPLE_BUNDLE_CACHE:=$(policy_bundle_cache)}" ]; then
      slurm_why="no [bundles] cache in $BERTH_POLICY (Slurm 22.05 runs bundle directories)"
    else
      slurm=yes
      EXAMPLE_BUNDLE_CACHE=$(abspath "$EXAMPLE_BUNDLE_CACHE")
    fi
    if [ "$slurm" = no ] && [ "$EXAMPLE_SLURM" = yes ]; then
      fail "EXAMPLE_SLURM=yes, but $slurm_why"
    fi
    ;;
  *) fail "EXAMPLE_SLURM=$EXAMPLE_SLURM: use auto, yes or no" ;;
esac

bundle=berth-example-chunks-$EXAMPLE_JOBID
work=''
chunks=''
# shellcheck disable=SC2034 # read by user_rmtree
work_by_root=no chunks_by_root=no
priv=''
# A job id sbatch printed, digits only (checked before it is kept here).
slurm_job=''
# The LSF-style elements not yet waited for.
lsf_pids=()
cleanup() {
  local rc=$?
  set +e
  # Only the elements still running (a pid that has ended may be reused).
  local p running
  running=" $(jobs -rp | tr '\n' ' ') "
  for p in ${lsf_pids[@]+"${lsf_pids[@]}"}; do
    case $running in *" $p "*) kill "$p" 2>/dev/null ;; esac
  done
  # As the user: whatever the id, it can reach only her own jobs.
  [ -z "$slurm_job" ] || as_user scancel -- "$slurm_job" 2>/dev/null
  if [ "$slurm" = yes ]; then
    berth bundle rm "$bundle" >/dev/null 2>&1
    # Untag only: the bundle's image is $EXAMPLE_IMAGE's, which stays.
    local ref
    for ref in $("${DOCKER}" images --format '{{.Repository}}:{{.Tag}}' "$(bundle_repo "$bundle")" 2>/dev/null); do
      "$DOCKER" rmi "$ref" >/dev/null 2>&1
    done
  fi
  user_rmtree work
  user_rmtree chunks
  [ -z "$priv" ] || rm -rf "$priv"
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

# Root's own directory (0700).
priv=$(mktemp -d /tmp/berth-example-chunks.XXXXXX)

# The data, split into chunks on the scratch root: chunk.K holds the
# numbers K*10+1 .. K*10+10 (their sum is 100*K + 55). Made by the user,
# as is everything in her trees below.
user_mktemp "$EXAMPLE_SCRATCH" berth-example-chunks chunks ||
  fail "cannot make a chunk directory in $EXAMPLE_SCRATCH (EXAMPLE_SCRATCH)"
for k in $(seq 0 "$last"); do
  seq $((k * 10 + 1)) $((k * 10 + 10)) | user_write "$chunks/chunk.$k"
done

# The code and the outputs, on the storage root (the Slurm array's logs
# too: slurmstepd writes them as the user).
user_mktemp "$EXAMPLE_STORAGE" berth-example-chunks work ||
  fail "cannot make a work directory in $EXAMPLE_STORAGE (EXAMPLE_STORAGE)"
as_user mkdir -p "$work/code" "$work/logs" "$work/out/lsf" "$work/out/slurm"
user_write "$work/code/element.sh" <<'EOF'
# element.sh MODE CHUNK: one array element's work, in its own container.
set -eu
mode=$1
k=$2
out=/out/$mode
# Its own /tmp: no element's file in it at the start, and only this
# element's at the end, although the other elements run at the same time.
# (Under Slurm, /tmp also holds slurm/, where berth puts the batch script.)
tmp_before=$(ls -A /tmp | grep -c '^element' || true)
echo "$mode $k" > "/tmp/element.$k"
sleep 2
tmp_after=$(ls -A /tmp | grep '^element' | tr '\n' ' ')
sum=$(awk '{ s += $1 } END { print s }' "/chunks/chunk.$k")
# What identifies this container from the inside: its root filesystem
# (the engine's per-container layer) and its cgroup.
{ awk '$5 == "/"' /proc/self/mountinfo; head -1 /proc/self/cgroup; } > "$out/container.$k"
printf 'chunk=%s sum=%s uid=%s tmp_before=%s tmp_after=%s\n' \
  "$k" "$sum" "$(id -u)" "$tmp_before" "$tmp_after" > "$out/part.$k"
# One line per chunk processed, by whichever element did it.
echo "$k" >> "$out/claims"
EOF
volumes="$work/code:/code:ro $chunks:/chunks:ro $work/out:/out"

# Check the outputs of one array: each chunk exactly once, right, as the
# user, in /tmp and a container of its own. The outputs are read as the
# user; what root keeps of them (the container ids, the gathered parts) is
# in $priv.
check() {
  local mode=$1 k part want claims c
  local o=$work/out/$mode
  claims=$(user_read "$o/claims" 2>/dev/null) || fail "$mode array: no element wrote anything"
  want=$(seq 0 "$last")
  [ "$(printf '%s' "$claims" | sort -n)" = "$want" ] ||
    fail "$mode array: chunks processed $(printf '%s' "$claims" | sort -n | tr '\n' ' ' | cat -v)instead of each of 0..$last once"
  for k in $(seq 0 "$last"); do
    part=$(user_read "$o/part.$k" 2>/dev/null) || fail "$mode array: no output for chunk $k"
    [ "$part" = "chunk=$k sum=$((100 * k + 55)) uid=$uid tmp_before=0 tmp_after=element.$k " ] ||
      fail "$mode array: chunk $k: $(vis "$part") (want sum=$((100 * k + 55)) uid=$uid, an empty /tmp of its own)"
    [ "$(as_user stat -c %u -- "$o/part.$k")" = "$uid" ] || fail "$mode array: part.$k is not owned by $EXAMPLE_USER"
    c=$(user_read "$o/container.$k") || fail "$mode array: no container.$k"
    printf '%s\n' "$c" | tr '\n' ' ' >>"$priv/containers.$mode"
    echo >>"$priv/containers.$mode"
  done
  # A container per element: no two elements share one.
  local dup
  dup=$(sort "$priv/containers.$mode" | uniq -d)
  [ -z "$dup" ] || fail "$mode array: two elements ran in one container: $(vis "$dup")"
  # Gathered: every part.* there is (as the user lists and reads them).
  # shellcheck disable=SC2016 # expanded by the user's sh
  as_user timeout 30 sh -c 'cat -- "$1"/part.* | head -c 1048576' gather "$o" >"$priv/$mode.gathered" ||
    fail "$mode array: cannot gather the parts"
  local total
  total=$(awk '{ sub("sum=", "", $2); s += $2 } END { print s }' "$priv/$mode.gathered")
  [ "$total" -eq $((100 * last * (last + 1) / 2 + 55 * EXAMPLE_CHUNKS)) ] ||
    fail "$mode array: the gathered sum is $(vis "$total")"
  say "$mode array: $EXAMPLE_CHUNKS chunks, each once, in $EXAMPLE_CHUNKS containers with their own /tmp; gathered sum $total"
}

# 1. LSF: `bsub -J "chunks[1-N]"` runs N elements of one job id, with
# LSB_JOBINDEX 1..N; LSF's job starter runs `berth run` for each, as the
# user, at the same time. Element i processes chunk i-1.
say "LSF-style array: job $EXAMPLE_JOBID, LSB_JOBINDEX 1..$EXAMPLE_CHUNKS, image $EXAMPLE_IMAGE"
for i in $(seq 1 "$EXAMPLE_CHUNKS"); do
  # Its log is root's, in $priv; it starts in / (as as_user's do).
  # shellcheck disable=SC2016 # expanded in the container
  (cd / && exec setsid --wait runuser -u "$EXAMPLE_USER" -- "${user_env[@]}" LSB_JOBID="$EXAMPLE_JOBID" LSB_JOBINDEX="$i" LS_SUBCWD="$work" \
    LSB_CONTAINER_IMAGE="$EXAMPLE_IMAGE" LSF_DOCKER_VOLUMES="$volumes" \
    "${in_dir[@]}" "$work" "$berth_bin" --policy "$BERTH_POLICY" run -- 'sh /code/element.sh lsf $((LSB_JOBINDEX - 1))') \
    >"$priv/lsf.$i.log" 2>&1 &
  lsf_pids+=("$!")
done
i=0
while [ "${#lsf_pids[@]}" -gt 0 ]; do
  i=$((i + 1))
  rc=0
  wait "${lsf_pids[0]}" || rc=$?
  # Waited for: no longer one for the cleanup to kill.
  lsf_pids=("${lsf_pids[@]:1}")
  [ "$rc" -eq 0 ] || fail "LSF-style element $i exited $rc$(code_hint "$rc"):
$(cat -v "$priv/lsf.$i.log")"
done
check lsf

# 2. Slurm: one sbatch of an array; each element is a job of its own whose
# batch step Slurm runs through berth in the bundle's container.
if [ "$slurm" = no ]; then
  say "Slurm array skipped: $slurm_why"
  exit 0
fi
say "berth bundle create $bundle --from-image $EXAMPLE_IMAGE (as root, in $EXAMPLE_BUNDLE_CACHE)"
berth bundle create "$bundle" --from-image "$EXAMPLE_IMAGE" || fail "berth bundle create failed"
[ -f "$EXAMPLE_BUNDLE_CACHE/$bundle/config.json" ] ||
  fail "no bundle directory $EXAMPLE_BUNDLE_CACHE/$bundle (EXAMPLE_BUNDLE_CACHE)"
read -r -a extra <<<"$EXAMPLE_SLURM_ARGS"
# shellcheck disable=SC2016 # expanded in the container
submitted=$(as_user LSF_DOCKER_VOLUMES="$volumes" "${in_dir[@]}" "$work" sbatch --parsable \
  --array="0-$last" --job-name=berth-example-chunks --output="$work/logs/slurm.%a.log" \
  ${extra[@]+"${extra[@]}"} --container="$EXAMPLE_BUNDLE_CACHE/$bundle" \
  --wrap 'sh /code/element.sh slurm $SLURM_ARRAY_TASK_ID') || fail "sbatch failed"
# What her sbatch printed: a job id is digits and nothing else. Squeue,
# scontrol and scancel run as her too.
case ${submitted%%;*} in
  '' | *[!0-9]*) fail "sbatch --parsable printed $(vis "$submitted"), not a job id" ;;
esac
slurm_job=${submitted%%;*}
say "sbatch --array=0-$last --container=$EXAMPLE_BUNDLE_CACHE/$bundle: job $slurm_job"
deadline=$((SECONDS + EXAMPLE_SLURM_TIMEOUT))
while [ -n "$(as_user squeue -h -j "$slurm_job" -o %i 2>/dev/null)" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "Slurm array $slurm_job still running after ${EXAMPLE_SLURM_TIMEOUT}s"
  sleep 1
done
# Every element ended COMPLETED with exit 0 (while Slurm still knows it).
states=$(as_user scontrol -o show job "$slurm_job" 2>/dev/null |
  grep -o 'JobState=[A-Z_]* .*ExitCode=[0-9:]*' | sed 's/ .*ExitCode=/ /' | sort | uniq -c) || true
if [ -n "$states" ] && ! printf '%s\n' "$states" | grep -q "^ *$EXAMPLE_CHUNKS JobState=COMPLETED 0:0\$"; then
  for k in $(seq 0 "$last"); do user_read "$work/logs/slurm.$k.log" 2>/dev/null | cat -v >&2 || true; done
  fail "Slurm array $slurm_job: elements ended $(vis "$states")"
fi
slurm_job=''
check slurm

# The two arrays ran the same image in 2N containers, none shared.
# (root's copies of container.K, from check)
dup=$(cat "$priv"/containers.* | sort | uniq -d)
[ -z "$dup" ] || fail "an LSF-style and a Slurm element shared a container: $(vis "$dup")"
