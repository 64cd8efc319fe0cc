#!/usr/bin/env bash
# User bundle push benchmark (issue 16):
#
#   sudo bash bench/push.sh [RUNS] [MB]     (default 5 runs of a 500 MB tar)
#
# Needs the testbed (tests/setup/testbed.sh up: the berth-alice user) and a
# release build (cargo build --release). Builds locally an image of busybox
# plus MB megabytes of random data, `docker save`s it to a tar owned by
# berth-alice, starts a broker on a policy with user_push = true and a cache
# on the same filesystem, and times, interleaved, median of RUNS:
#  (a) `cp TAR CACHE/` (the page cache absorbs it: not durable);
#  (b) `cp TAR CACHE/ && sync -f` (the same bytes, durable, as a publish
#      must be before it is renamed into place);
#  (c) `berth bundle push` as berth-alice through the broker (hashes as it
#      writes, checks the written tar, fsyncs, publishes atomically);
#  (d) `berth bundle create --from-save` as root (the same writer, no
#      broker) for comparison.
# Prints MB/s and the ratios push/cp and push/(cp+sync) (throughput, higher
# is better). Everything it creates is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-5}
MB=${2:-500}
BERTH=$PWD/target/release/berth
DOCKER=/usr/bin/docker
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
[[ -x $BERTH ]] || { echo "build first: cargo build --release" >&2; exit 1; }
id berth-alice >/dev/null || { echo "run tests/setup/testbed.sh up first" >&2; exit 1; }

W=$(mktemp -d /var/tmp/berth-bench-push.XXXXXX)
chmod 755 "$W"
DAEMON=
IMG=
cleanup() {
  [[ -n $DAEMON ]] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
  [[ -n $IMG ]] && $DOCKER rmi -f "$IMG" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/ctx" "$W/cache" "$W/tars" "$W/copies"
chmod 755 "$W/cache" "$W/tars"
head -c "$((MB << 20))" /dev/urandom >"$W/ctx/blob"
printf 'FROM berth-test/busybox:1\nCOPY blob /blob\n' >"$W/ctx/Dockerfile"
IMG=$(DOCKER_BUILDKIT=0 $DOCKER build -q "$W/ctx" 2>/dev/null)
$DOCKER save -o "$W/tars/img.tar" "$IMG"
rm -rf "$W/ctx"
chown berth-alice: "$W/tars/img.tar"
SIZE=$(stat -c %s "$W/tars/img.tar")

cat >"$W/policy.toml" <<EOF
[cgroup]
require_job = false
[images]
allow = ["docker.io/berth-test/*"]
[tmp]
base = "$W/jobs"
[broker]
socket = "$W/sock/berth.sock"
[bundles]
cache = "$W/cache"
lock_dir = "$W/locks"
user_push = true
user_quota = "100g"
[audit]
log = "none"
EOF
chmod 644 "$W/policy.toml"
install -m 0755 "$BERTH" "$W/berth"
"$W/berth" --policy "$W/policy.toml" daemon 2>"$W/daemon.log" 9>&- &
DAEMON=$!
for _ in $(seq 50); do [[ -S $W/sock/berth.sock ]] && break; sleep 0.1; done

now() { date +%s.%N; }
declare -a T_CP T_SYNC T_PUSH T_CREATE
do_push() {
  t0=$(now)
  setpriv --reuid berth-alice --regid berth-alice --init-groups \
    "$W/berth" --policy "$W/policy.toml" bundle push "p$i" --from-save "$W/tars/img.tar" >/dev/null
  t1=$(now)
  T_PUSH+=("$(echo "$t1 - $t0" | bc)")
  # A new name each time, as cp writes a new file: no replaced bundle to
  # delete inside the timing; removed outside it.
  "$BERTH" --policy "$W/policy.toml" bundle rm "berth-alice/p$i" >/dev/null; sync
}
do_create() {
  t0=$(now)
  "$BERTH" --policy "$W/policy.toml" bundle create "c$i" --from-save "$W/tars/img.tar" >/dev/null
  t1=$(now)
  T_CREATE+=("$(echo "$t1 - $t0" | bc)")
  "$BERTH" --policy "$W/policy.toml" bundle rm "c$i" >/dev/null; sync
}
for i in $(seq "$RUNS"); do
  sync
  t0=$(now); cp "$W/tars/img.tar" "$W/copies/a"; t1=$(now)
  T_CP+=("$(echo "$t1 - $t0" | bc)"); rm -f "$W/copies/a"; sync
  t0=$(now); cp "$W/tars/img.tar" "$W/copies/b" && sync -f "$W/copies/b"; t1=$(now)
  T_SYNC+=("$(echo "$t1 - $t0" | bc)"); rm -f "$W/copies/b"; sync
  # Alternate which berth step comes first: on this VM the step right
  # after a removal of 500 MB pays about 1 s more, whatever it is.
  if (( i % 2 )); then
    do_push; do_create
  else
    do_create; do_push
  fi
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
cp_s=$(median "${T_CP[@]}"); sync_s=$(median "${T_SYNC[@]}")
push_s=$(median "${T_PUSH[@]}"); create_s=$(median "${T_CREATE[@]}")
rate() { echo "scale=1; $SIZE / 1048576 / $1" | bc; }
echo "tar: $SIZE bytes; $RUNS runs, medians; $(nproc) cores; $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %8.3f s %8s MB/s\n' "cp" "$cp_s" "$(rate "$cp_s")"
printf '%-34s %8.3f s %8s MB/s\n' "cp + sync -f (durable)" "$sync_s" "$(rate "$sync_s")"
printf '%-34s %8.3f s %8s MB/s\n' "berth bundle push (broker)" "$push_s" "$(rate "$push_s")"
printf '%-34s %8.3f s %8s MB/s\n' "berth bundle create (root)" "$create_s" "$(rate "$create_s")"
echo "runs (s): cp ${T_CP[*]}; cp+sync ${T_SYNC[*]}; push ${T_PUSH[*]}; create ${T_CREATE[*]}"
echo "best of $RUNS: cp $(best "${T_CP[@]}"), cp+sync $(best "${T_SYNC[@]}"), push $(best "${T_PUSH[@]}"), create $(best "${T_CREATE[@]}")"
echo "best push throughput / best (cp + sync -f): $(echo "scale=3; $(best "${T_SYNC[@]}") / $(best "${T_PUSH[@]}")" | bc)"
echo "push throughput / cp:               $(echo "scale=3; $cp_s / $push_s" | bc)"
echo "push throughput / (cp + sync -f):   $(echo "scale=3; $sync_s / $push_s" | bc)"
