#!/usr/bin/env bash
# Bundle benchmark (issue 3), all in one run on one machine:
#
#   sudo bash bench/bundles.sh [RUNS]        (default RUNS=3; results on stdout)
#
# Needs the testbed (tests/setup/testbed.sh up) and a release build
# (cargo build --release). Builds locally a ~500 MB image (busybox + five
# 100 MB layers of random data) and a ~5 MB one, makes bundles of both in a
# temporary cache on local disk, and measures:
#  (a) a cold bundle load (berth bundle load, and a whole cold berth run job)
#      versus `docker load -i` of the same image.tar alone;
#  (b) the warm start decision for the 500 MB and the 5 MB bundle (the
#      time berth spends deciding the image is there: printed by
#      `berth bundle load`, plus the process's wall time);
#  (c) 8 concurrent cold starts versus one cold start (loads alone, and
#      whole berth run jobs);
#  (d) `docker pull` of the same image from a local registry (Debian's
#      docker-registry, installed if missing, run by this script on
#      127.0.0.1:5055 and stopped after) versus the bundle load.
# Everything it creates is removed at the end (images by id, the registry
# it started by pid, the temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
DOCKER=/usr/bin/docker
BERTH=$PWD/target/release/berth
REG_PORT=5055
export DOCKER_HOST=unix:///var/run/docker.sock
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
[[ -x $BERTH ]] || { echo "build first: cargo build --release" >&2; exit 1; }
$DOCKER info >/dev/null

# Debian's docker-registry (and curl, to see it answer), for (d); installed
# here, before the long steps, so a failed install costs nothing. The
# package would also start (and under systemd enable) a registry of its own
# on :5000: that one is kept stopped, (d) runs its own on
# 127.0.0.1:$REG_PORT.
need_registry() {
  local pkgs=()
  [[ -x /usr/bin/docker-registry ]] || pkgs+=(docker-registry)
  command -v curl >/dev/null || pkgs+=(curl)
  [[ ${#pkgs[@]} == 0 ]] && return 0
  echo "installing ${pkgs[*]}..." >&2
  local rc=/usr/sbin/policy-rc.d made= ok=1
  if [[ ! -e $rc ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$rc"; chmod 755 "$rc"; made=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2; } \
    || ok=
  if [[ -n $made ]]; then rm -f "$rc"; fi
  [[ -n $ok && -x /usr/bin/docker-registry ]] || { echo "cannot install ${pkgs[*]}" >&2; exit 1; }
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
}

# Start a registry storing under $1 on 127.0.0.1:$REG_PORT (REG_PID); fail
# with its log if it does not answer within 10 s.
start_registry() {
  [[ -d $1 ]] || { echo "start_registry: no directory $1" >&2; exit 1; }
  mkdir -p "$1/registry"
  cat >"$1/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $1/registry
http:
  addr: 127.0.0.1:$REG_PORT
log:
  level: error
EOF
  /usr/bin/docker-registry serve "$1/registry.yml" >"$1/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && return 0
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "the registry did not come up on 127.0.0.1:$REG_PORT:" >&2
  cat "$1/registry.log" >&2
  exit 1
}

stop_registry() {
  if [[ -n $REG_PID ]]; then
    kill "$REG_PID" 2>/dev/null
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=
  fi
}

need_registry

W=$(mktemp -d /tmp/berth-bench-bundles.XXXXXX)
chmod 755 "$W"
mkdir -p "$W/cache" "$W/jobs"
chmod 755 "$W/cache"
chmod 711 "$W/jobs"
REG_PID=
cleanup() {
  set +e
  stop_registry
  for t in bench-bundles/big:1 bench-bundles/small:1 127.0.0.1:$REG_PORT/bench-bundles/big:1; do
    $DOCKER rmi "$t" >/dev/null 2>&1
  done
  [[ -n ${BIG_ID:-} ]] && $DOCKER rmi -f "$BIG_ID" >/dev/null 2>&1
  [[ -n ${SMALL_ID:-} ]] && $DOCKER rmi -f "$SMALL_ID" >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT

cat >"$W/policy.toml" <<EOF
[cgroup]
require_job = false
[images]
allow = ["docker.io/berth-test/*"]
facts_cache = "$W/facts"
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[tmp]
base = "$W/jobs"
[bundles]
cache = "$W/cache"
lock_dir = "$W/locks"
[audit]
log = "$W/audit.log"
EOF
B=("$BERTH" --policy "$W/policy.toml")

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
fmt() { printf '%.3f' "$1"; }

# ---------------------------------------------------------------- images
echo "building images (random data from /dev/urandom)..." >&2
mkdir -p "$W/ctx"
for i in 1 2 3 4 5; do head -c 100M /dev/urandom >"$W/ctx/r$i"; done
head -c 3M /dev/urandom >"$W/ctx/s1"
cat >"$W/ctx/Dockerfile.big" <<'EOF'
FROM berth-test/busybox:1
COPY r1 /data/r1
COPY r2 /data/r2
COPY r3 /data/r3
COPY r4 /data/r4
COPY r5 /data/r5
EOF
cat >"$W/ctx/Dockerfile.small" <<'EOF'
FROM berth-test/busybox:1
COPY s1 /data/s1
EOF
$DOCKER build -q -f "$W/ctx/Dockerfile.big" -t bench-bundles/big:1 "$W/ctx" >/dev/null
$DOCKER build -q -f "$W/ctx/Dockerfile.small" -t bench-bundles/small:1 "$W/ctx" >/dev/null
rm -f "$W"/ctx/r* "$W"/ctx/s1

t=$(now); "${B[@]}" bundle create big --from-image bench-bundles/big:1 >&2; CREATE_BIG=$(since "$t")
"${B[@]}" bundle create small --from-image bench-bundles/small:1 >&2
BIG_ID=$(sed -n 's/^image_id = "\(.*\)"/\1/p' "$W/cache/big/bundle.toml")
SMALL_ID=$(sed -n 's/^image_id = "\(.*\)"/\1/p' "$W/cache/small/bundle.toml")
BIG_TAR=$W/cache/big/image.tar
BIG_SIZE=$(stat -c %s "$BIG_TAR")
SMALL_SIZE=$(stat -c %s "$W/cache/small/image.tar")
$DOCKER rmi bench-bundles/big:1 bench-bundles/small:1 >/dev/null

# Remove an image completely (berth's tag, any tag, the image by id).
drop() {
  local id=$1
  $DOCKER rmi -f "$id" >/dev/null 2>&1 || true
  ! $DOCKER image inspect "$id" >/dev/null 2>&1
}
# Read the tar once so every cold run starts from the page cache alike.
cat "$BIG_TAR" >/dev/null

job() { # job ID SCRIPT
  (cd /storage1/fs1/alice && env -i PATH=/usr/bin:/bin LSFUSER=berth-alice LSB_JOBID="$1" \
    LSB_CONTAINER_IMAGE=bundle:big "${B[@]}" run --scheduler lsf -- "$2")
}

# ---------------------------------------------------------------- (a)
echo "(a) cold load, $RUNS rounds..." >&2
: >"$W/a_docker"; : >"$W/a_berth"; : >"$W/a_job"; : >"$W/a_dockerrun"
for ((r = 0; r < RUNS; r++)); do
  drop "$BIG_ID"
  t=$(now); $DOCKER load -q -i "$BIG_TAR" >/dev/null; since "$t" >>"$W/a_docker"
  drop "$BIG_ID"
  t=$(now); "${B[@]}" bundle load big >/dev/null; since "$t" >>"$W/a_berth"
  drop "$BIG_ID"
  t=$(now); job "7710$r" true; since "$t" >>"$W/a_job"
  # the same with docker alone: load, then run by id
  drop "$BIG_ID"
  t=$(now); $DOCKER load -q -i "$BIG_TAR" >/dev/null
  $DOCKER run --rm --user 2001:2001 "$BIG_ID" true; since "$t" >>"$W/a_dockerrun"
done
A_DOCKER=$(median <"$W/a_docker"); A_BERTH=$(median <"$W/a_berth")
A_JOB=$(median <"$W/a_job"); A_DRUN=$(median <"$W/a_dockerrun")

# ---------------------------------------------------------------- (b)
echo "(b) warm decision..." >&2
"${B[@]}" bundle load big >/dev/null
"${B[@]}" bundle load small >/dev/null
: >"$W/b_big"; : >"$W/b_small"; : >"$W/b_big_wall"; : >"$W/b_small_wall"
for ((r = 0; r < 21; r++)); do
  for n in big small; do
    t=$(now)
    out=$("${B[@]}" bundle load $n)
    since "$t" >>"$W/b_${n}_wall"
    [[ $out == *"already loaded"* ]] || { echo "not a hit: $out" >&2; exit 1; }
    sed -n 's/.*(\([0-9]*\) us).*/\1/p' <<<"$out" >>"$W/b_$n"
  done
done
B_BIG=$(median <"$W/b_big"); B_SMALL=$(median <"$W/b_small")
B_BIG_W=$(median <"$W/b_big_wall"); B_SMALL_W=$(median <"$W/b_small_wall")

# ---------------------------------------------------------------- (c)
echo "(c) 8 concurrent cold starts, $RUNS rounds..." >&2
: >"$W/c_one"; : >"$W/c_eight"; : >"$W/c_job1"; : >"$W/c_job8"
LOADS_BEFORE=$(grep -c '"event":"load","[^}]*"decision":"allow"' "$W/audit.log" || true)
for ((r = 0; r < RUNS; r++)); do
  drop "$BIG_ID"
  t=$(now); "${B[@]}" bundle load big >/dev/null; since "$t" >>"$W/c_one"
  drop "$BIG_ID"
  t=$(now)
  for i in 1 2 3 4 5 6 7 8; do "${B[@]}" bundle load big >/dev/null & done
  wait
  since "$t" >>"$W/c_eight"
  drop "$BIG_ID"
  t=$(now); job "7720$r" true; since "$t" >>"$W/c_job1"
  drop "$BIG_ID"
  t=$(now)
  pids=()
  for i in 1 2 3 4 5 6 7 8; do job "773$r$i" true & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  since "$t" >>"$W/c_job8"
done
LOADS=$(( $(grep -c '"event":"load","[^}]*"decision":"allow"' "$W/audit.log") - LOADS_BEFORE ))
C_ONE=$(median <"$W/c_one"); C_EIGHT=$(median <"$W/c_eight")
C_JOB1=$(median <"$W/c_job1"); C_JOB8=$(median <"$W/c_job8")

# ---------------------------------------------------------------- (d)
echo "(d) local registry..." >&2
start_registry "$W"
REF=127.0.0.1:$REG_PORT/bench-bundles/big:1
drop "$BIG_ID"
"${B[@]}" bundle load big >/dev/null
$DOCKER tag "$BIG_ID" "$REF"
$DOCKER push -q "$REF" >/dev/null
: >"$W/d_pull"; : >"$W/d_berth"
for ((r = 0; r < RUNS; r++)); do
  drop "$BIG_ID"
  t=$(now); $DOCKER pull -q "$REF" >/dev/null; since "$t" >>"$W/d_pull"
  PULLED_ID=$($DOCKER image inspect -f '{{.Id}}' "$REF")
  drop "$BIG_ID"
  t=$(now); "${B[@]}" bundle load big >/dev/null; since "$t" >>"$W/d_berth"
done
D_PULL=$(median <"$W/d_pull"); D_BERTH=$(median <"$W/d_berth")
stop_registry

# ---------------------------------------------------------------- report
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
cat <<EOF
## Results ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, docker $($DOCKER version -f '{{.Server.Version}}'), $RUNS rounds, medians)

Bundles: big = $BIG_SIZE bytes ($BIG_ID), small = $SMALL_SIZE bytes; cache on local disk ($W).
Creating the big bundle (docker save, copy, SHA-256 + BLAKE3, layer digests checked): $(fmt "$CREATE_BIG") s.

| | measure | berth | reference | ratio | target |
|---|---|---|---|---|---|
| (a) | cold load: \`berth bundle load\` vs \`docker load -i image.tar\` | $(fmt "$A_BERTH") s | $(fmt "$A_DOCKER") s | $(ratio "$A_BERTH" "$A_DOCKER") | <= 1.05 |
| (a) | cold job: \`berth run\` (load + run \`true\`) vs \`docker load -i\` + \`docker run --rm\` | $(fmt "$A_JOB") s | $(fmt "$A_DRUN") s | $(ratio "$A_JOB" "$A_DRUN") | |
| (b) | warm decision, 500 MB bundle (inside berth; process wall time) | $B_BIG us ($(fmt "$B_BIG_W") s) | | | < 10 ms |
| (b) | warm decision, 5 MB bundle (inside berth; process wall time) | $B_SMALL us ($(fmt "$B_SMALL_W") s) | | $(ratio "$B_BIG" "$B_SMALL") (500 MB / 5 MB) | equal |
| (c) | 8 concurrent cold \`berth bundle load\` vs one | $(fmt "$C_EIGHT") s | $(fmt "$C_ONE") s | $(ratio "$C_EIGHT" "$C_ONE") | <= 1.3 |
| (c) | 8 concurrent cold \`berth run\` jobs vs one | $(fmt "$C_JOB8") s | $(fmt "$C_JOB1") s | $(ratio "$C_JOB8" "$C_JOB1") | |
| (d) | \`docker pull\` from a local registry vs \`berth bundle load\` | $(fmt "$D_BERTH") s | $(fmt "$D_PULL") s (pull) | $(ratio "$D_BERTH" "$D_PULL") | |

Loads recorded in the audit log during (c): $LOADS (expected $((4 * RUNS)): one per cold round of each of the four kinds — single load, 8 concurrent loads, single job, 8 concurrent jobs).
EOF
