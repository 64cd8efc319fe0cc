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
last=$((EXAMPLE_CHUNKS - 1))

berth() { "$berth_bin" --policy "$BERTH_POLICY" "$@"; }
# A clean environment for the user's commands, plus what each one adds.
user_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$(getent passwd "$EXAMPLE_USER" | cut -d: -f6)"
  USER="$EXAMPLE_USER" LOGNAME="$EXAMPLE_USER")
as_user() { runuser -u "$EXAMPLE_USER" -- "${user_env[@]}" "$@"; }
# Root never opens, reads, lists or changes a path in the user's trees (she
# could have put a link or a FIFO there): every step on them runs as her.
# Root's own files (the elements' logs, what it gathers) are in a 0700
# directory of its own under /tmp.
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
priv=''
slurm_job=''
lsf_pids=()
cleanup() {
  local rc=$?
  set +e
  local p
  for p in ${lsf_pids[@]+"${lsf_pids[@]}"}; do kill "$p" 2>/dev/null; done
  [ -z "$slurm_job" ] || scancel "$slurm_job" 2>/dev/null
  if [ "$slurm" = yes ]; then
    berth bundle rm "$bundle" >/dev/null 2>&1
    # Untag only: the bundle's image is $EXAMPLE_IMAGE's, which stays.
    local ref
    for ref in $("${DOCKER}" images --format '{{.Repository}}:{{.Tag}}' "$(bundle_repo "$bundle")" 2>/dev/null); do
      "$DOCKER" rmi "$ref" >/dev/null 2>&1
    done
  fi
  [ -z "$work" ] || rm -rf "$work"
  [ -z "$chunks" ] || rm -rf "$chunks"
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
chunks=$(user_mktemp "$EXAMPLE_SCRATCH" berth-example-chunks) ||
  fail "cannot make a chunk directory in $EXAMPLE_SCRATCH (EXAMPLE_SCRATCH)"
for k in $(seq 0 "$last"); do
  seq $((k * 10 + 1)) $((k * 10 + 10)) | user_write "$chunks/chunk.$k"
done

# The code and the outputs, on the storage root (the Slurm array's logs
# too: slurmstepd writes them as the user).
work=$(user_mktemp "$EXAMPLE_STORAGE" berth-example-chunks) ||
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
    fail "$mode array: chunks processed $(printf '%s' "$claims" | sort -n | tr '\n' ' ')instead of each of 0..$last once"
  for k in $(seq 0 "$last"); do
    part=$(user_read "$o/part.$k" 2>/dev/null) || fail "$mode array: no output for chunk $k"
    [ "$part" = "chunk=$k sum=$((100 * k + 55)) uid=$uid tmp_before=0 tmp_after=element.$k " ] ||
      fail "$mode array: chunk $k: $part (want sum=$((100 * k + 55)) uid=$uid, an empty /tmp of its own)"
    [ "$(as_user stat -c %u -- "$o/part.$k")" = "$uid" ] || fail "$mode array: part.$k is not owned by $EXAMPLE_USER"
    c=$(user_read "$o/container.$k") || fail "$mode array: no container.$k"
    printf '%s\n' "$c" | tr '\n' ' ' >>"$priv/containers.$mode"
    echo >>"$priv/containers.$mode"
  done
  # A container per element: no two elements share one.
  local dup
  dup=$(sort "$priv/containers.$mode" | uniq -d)
  [ -z "$dup" ] || fail "$mode array: two elements ran in one container: $dup"
  # Gathered: every part.* there is (as the user lists and reads them).
  # shellcheck disable=SC2016 # expanded by the user's sh
  as_user timeout 30 sh -c 'cat -- "$1"/part.* | head -c 1048576' gather "$o" >"$priv/$mode.gathered" ||
    fail "$mode array: cannot gather the parts"
  local total
  total=$(awk '{ sub("sum=", "", $2); s += $2 } END { print s }' "$priv/$mode.gathered")
  [ "$total" -eq $((100 * last * (last + 1) / 2 + 55 * EXAMPLE_CHUNKS)) ] ||
    fail "$mode array: the gathered sum is $total"
  say "$mode array: $EXAMPLE_CHUNKS chunks, each once, in $EXAMPLE_CHUNKS containers with their own /tmp; gathered sum $total"
}

# 1. LSF: `bsub -J "chunks[1-N]"` runs N elements of one job id, with
# LSB_JOBINDEX 1..N; LSF's job starter runs `berth run` for each, as the
# user, at the same time. Element i processes chunk i-1.
say "LSF-style array: job $EXAMPLE_JOBID, LSB_JOBINDEX 1..$EXAMPLE_CHUNKS, image $EXAMPLE_IMAGE"
for i in $(seq 1 "$EXAMPLE_CHUNKS"); do
  # Its log is root's, in $priv.
  # shellcheck disable=SC2016 # expanded in the container
  (exec runuser -u "$EXAMPLE_USER" -- "${user_env[@]}" LSB_JOBID="$EXAMPLE_JOBID" LSB_JOBINDEX="$i" LS_SUBCWD="$work" \
    LSB_CONTAINER_IMAGE="$EXAMPLE_IMAGE" LSF_DOCKER_VOLUMES="$volumes" \
    "${in_dir[@]}" "$work" "$berth_bin" --policy "$BERTH_POLICY" run -- 'sh /code/element.sh lsf $((LSB_JOBINDEX - 1))') \
    >"$priv/lsf.$i.log" 2>&1 &
  lsf_pids+=("$!")
done
i=0
for p in "${lsf_pids[@]}"; do
  i=$((i + 1))
  rc=0
  wait "$p" || rc=$?
  [ "$rc" -eq 0 ] || fail "LSF-style element $i exited $rc$(code_hint "$rc"):
$(cat "$priv/lsf.$i.log")"
done
lsf_pids=()
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
slurm_job=$(as_user LSF_DOCKER_VOLUMES="$volumes" "${in_dir[@]}" "$work" sbatch --parsable \
  --array="0-$last" --job-name=berth-example-chunks --output="$work/logs/slurm.%a.log" \
  ${extra[@]+"${extra[@]}"} --container="$EXAMPLE_BUNDLE_CACHE/$bundle" \
  --wrap 'sh /code/element.sh slurm $SLURM_ARRAY_TASK_ID') || fail "sbatch failed"
slurm_job=${slurm_job%%;*}
say "sbatch --array=0-$last --container=$EXAMPLE_BUNDLE_CACHE/$bundle: job $slurm_job"
deadline=$((SECONDS + EXAMPLE_SLURM_TIMEOUT))
while [ -n "$(squeue -h -j "$slurm_job" -o %i 2>/dev/null)" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "Slurm array $slurm_job still running after ${EXAMPLE_SLURM_TIMEOUT}s"
  sleep 1
done
# Every element ended COMPLETED with exit 0 (while Slurm still knows it).
states=$(scontrol -o show job "$slurm_job" 2>/dev/null |
  grep -o 'JobState=[A-Z_]* .*ExitCode=[0-9:]*' | sed 's/ .*ExitCode=/ /' | sort | uniq -c) || true
if [ -n "$states" ] && ! printf '%s\n' "$states" | grep -q "^ *$EXAMPLE_CHUNKS JobState=COMPLETED 0:0\$"; then
  for k in $(seq 0 "$last"); do user_read "$work/logs/slurm.$k.log" >&2 2>/dev/null || true; done
  fail "Slurm array $slurm_job: elements ended $states"
fi
slurm_job=''
check slurm

# The two arrays ran the same image in 2N containers, none shared.
# (root's copies of container.K, from check)
dup=$(cat "$priv"/containers.* | sort | uniq -d)
[ -z "$dup" ] || fail "an LSF-style and a Slurm element shared a container: $dup"
