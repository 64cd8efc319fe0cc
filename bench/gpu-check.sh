#!/bin/bash
# bench/gpu-check.sh — a GPU job through berth on a real GPU node (SPEC §12).
#
#   sudo bash bench/gpu-check.sh [--berth PATH] [--gpu N] [--user NAME]
#                                [--mode nvidia|devices] [--runs N]
#
# Needs: root, docker, and for --mode nvidia (the default) an NVIDIA GPU with
# its driver (nvidia-smi) and the NVIDIA container toolkit
# (nvidia-container-runtime-hook). No network: the image is made here from
# the host's /bin/sh and the libraries nvidia-smi needs.
#
# What it does, in under 4 minutes:
#  1. emulates a Slurm job step holding GPU N only: a Slurm-style job cgroup
#     (v1 or v2) for the caller, and, as [gpus] scontrol, a stand-in that
#     prints Slurm's record of that job (GRES=gpu:1(IDX:N)). berth reads the
#     allocation from there exactly as on a Slurm node whose device cgroup
#     cannot tell (cgroup v2, or no ConstrainDevices);
#  2. runs `nvidia-smi -L` in a berth job and checks that it lists exactly
#     the host's GPU N (same UUID), with CUDA_VISIBLE_DEVICES=0 inside;
#  3. times a job start, berth against `docker run --gpus device=N`
#     (interleaved, medians).
# It prints its result on one line:
#   gpu-check: PASS ... | gpu-check: FAIL <why>
#
# --mode devices runs the same check with berth's `devices` mode (the GPU
# node passed as a device): on a node without a driver (this project's test
# bed has GPU-like nodes 195:0 and 195:1) the allocated node must be the
# only /dev/nvidiaN inside.
set -euo pipefail

BERTH=target/release/berth
GPU=
USER_NAME=nobody
MODE=nvidia
RUNS=5
while (($#)); do
  case $1 in
    --berth) BERTH=$2; shift 2 ;;
    --gpu) GPU=$2; shift 2 ;;
    --user) USER_NAME=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: FAIL unknown argument $1" >&2; exit 2 ;;
  esac
done

fail() { echo "gpu-check: FAIL $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "must run as root (it makes cgroups and talks to dockerd)"
[[ -x $BERTH ]] || fail "no berth at $BERTH (cargo build --release, or --berth PATH)"
BERTH=$(readlink -f "$BERTH")
command -v docker >/dev/null || fail "no docker CLI"
docker info >/dev/null 2>&1 || fail "dockerd does not answer"
case $MODE in
  nvidia)
    command -v nvidia-smi >/dev/null || fail "no nvidia-smi: not a GPU node with the NVIDIA driver"
    command -v nvidia-container-runtime-hook >/dev/null \
      || fail "no nvidia-container-runtime-hook: install the NVIDIA container toolkit"
    mapfile -t HOST_GPUS < <(nvidia-smi -L)
    ;;
  devices)
    mapfile -t HOST_GPUS < <(ls /dev/nvidia[0-9]* 2>/dev/null | sort -V)
    ;;
  *) fail "--mode must be nvidia or devices" ;;
esac
((${#HOST_GPUS[@]})) || fail "no GPU found on this node"
# The last GPU by default: "only GPU N" then differs from "GPU 0 by default".
if [[ -z $GPU ]]; then
  if [[ $MODE == nvidia ]]; then GPU=$((${#HOST_GPUS[@]} - 1)); else GPU=${HOST_GPUS[-1]#/dev/nvidia}; fi
fi
uid=$(id -u "$USER_NAME") || fail "no user $USER_NAME (--user NAME)"
gid=$(id -g "$USER_NAME")

WORK=$(mktemp -d /var/tmp/berth-gpu-check.XXXXXX)
chmod 0755 "$WORK"
JOB=$((4000000000 + RANDOM))
CG=
cleanup() {
  local d
  if [[ -n $CG ]]; then
    # Leaf first; the emulated step holds no process any more.
    d=$CG
    while [[ $d != "$CG_TOP" && $d == "$CG_TOP"/* ]]; do rmdir "$d" 2>/dev/null || true; d=${d%/*}; done
    rmdir "$CG_TOP" 2>/dev/null || true
  fi
  docker rm -f $(docker ps -aq --filter "label=berth.job=$JOB") >/dev/null 2>&1 || true
  [[ -n ${IMAGE-} ]] && docker rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The job: a Slurm-style cgroup, and Slurm's record of it.
if [[ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
  CG_TOP=/sys/fs/cgroup/memory/slurm_berthcheck
  CG=$CG_TOP/uid_$uid/job_$JOB/step_0/task_0
else
  CG_TOP=/sys/fs/cgroup/berth-gpu-check
  CG=$CG_TOP/slurmstepd.scope/job_$JOB/step_0/user/task_0
fi
mkdir -p "$CG"
cat >"$WORK/scontrol" <<EOF
#!/bin/sh
# Slurm's record of the emulated job: GPU $GPU on this node.
echo "JobId=$JOB JobName=gpu-check UserId=$USER_NAME($uid) JobState=RUNNING NodeList=berthcheck NumNodes=1 JOB_GRES=gpu:1   Nodes=berthcheck CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:$GPU) Features=(null)"
EOF
chmod 0755 "$WORK/scontrol"

# The image: /bin/sh and what it and nvidia-smi link against (the toolkit
# mounts nvidia-smi and the driver's libraries in at start).
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,tmp,etc,proc,sys,dev} "$WORK/home"
chmod 1777 "$ROOTFS/tmp"
files=("$(readlink -f /bin/sh)")
for b in /bin/sh /bin/cat $(command -v nvidia-smi || true); do
  files+=("$(readlink -f "$b")")
  while read -r lib; do [[ -n $lib ]] && files+=("$lib"); done < <(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' || true)
done
for f in "${files[@]}"; do cp --parents -L "$f" "$ROOTFS" 2>/dev/null || true; done
cp -L "$(readlink -f /bin/sh)" "$ROOTFS/bin/sh"
cp -L "$(readlink -f /bin/cat)" "$ROOTFS/bin/cat"
IMAGE=berth-gpu-check/sh:$JOB
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null || fail "docker import of the check image"
chown "$uid:$gid" "$WORK/home"

cat >"$WORK/policy.toml" <<EOF
# bench/gpu-check.sh: a throwaway policy.
[cgroup]
placement = "none"       # the check is about GPUs; dockerd may use the systemd driver
require_job = false
[gpus]
mode = "$MODE"
scontrol = "$WORK/scontrol"
[images]
allow = ["docker.io/berth-gpu-check/*"]
pull = "never"
facts_cache = "$WORK/facts"
[[volumes]]
root = "$WORK/home"
mode = "rw"
[tmp]
base = "$WORK/jobs"
[mounts]
pin_dir = "$WORK/pins"
[audit]
log = "$WORK/audit.log"
EOF
install -d -m 0711 "$WORK/jobs"
"$BERTH" --policy "$WORK/policy.toml" policy check >/dev/null || fail "the check's policy is refused: $("$BERTH" --policy "$WORK/policy.toml" policy check 2>&1 | tail -n1)"

# berth_job CMD: a berth job started inside the emulated step.
berth_job() {
  sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" \
    env -i PATH=/usr/bin:/bin LSFUSER="$USER_NAME" LSB_JOBID="$JOB" \
    LSB_CONTAINER_IMAGE="$IMAGE" LS_SUBCWD="$WORK/home" \
    "$BERTH" --policy "$WORK/policy.toml" run -- "$1"
}

# 2. What the job sees.
if [[ $MODE == nvidia ]]; then
  out=$(berth_job 'nvidia-smi -L; echo CUDA=$CUDA_VISIBLE_DEVICES' 2>&1) || fail "the berth job failed: $out"
  inside=$(grep '^GPU ' <<<"$out" || true)
  n=$(grep -c '^GPU ' <<<"$out" || true)
  want_uuid=$(grep -o 'UUID: [^)]*' <<<"${HOST_GPUS[$GPU]}")
  ((n == 1)) || fail "nvidia-smi -L inside lists $n GPUs, want only GPU $GPU: $out"
  grep -qF "$want_uuid" <<<"$inside" || fail "inside is $inside, want ${HOST_GPUS[$GPU]}"
  seen="nvidia-smi -L inside = host GPU $GPU (${want_uuid#UUID: }) only"
else
  out=$(berth_job 'echo NODES=$(cd /dev && echo nvidia[0-9]*); echo CUDA=$CUDA_VISIBLE_DEVICES' 2>&1) || fail "the berth job failed: $out"
  nodes=$(sed -n 's/^NODES=//p' <<<"$out")
  [[ $nodes == "nvidia$GPU" ]] || fail "inside are /dev/{$nodes}, want only /dev/nvidia$GPU: $out"
  seen="/dev/nvidia$GPU is the only GPU node inside"
fi
grep -q '^CUDA=0$' <<<"$out" || fail "CUDA_VISIBLE_DEVICES inside is not 0: $out"

# 3. A job start: berth against plain docker run with the same GPU.
if [[ $MODE == nvidia ]]; then plain=(--gpus "device=$GPU"); else plain=(--device "/dev/nvidia$GPU"); fi
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1 || return 1; t1=$(date +%s%N); echo $(((t1 - t0) / 1000000)); }
b=() d=()
for ((i = 0; i < RUNS; i++)); do
  d+=("$(ms docker run --rm --network=none --user "$uid:$gid" "${plain[@]}" "$IMAGE" /bin/sh -c true)") || fail "plain docker run failed"
  b+=("$(ms berth_job true)") || fail "a timed berth job failed"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${b[@]}") md=$(median "${d[@]}")
ratio=$(awk -v b="$mb" -v d="$md" 'BEGIN {printf "%.2f", (d > 0 ? b / d : 0)}')
echo "gpu-check: PASS mode $MODE: $seen, CUDA_VISIBLE_DEVICES=0; start berth $mb ms vs docker run ${plain[*]} $md ms (ratio $ratio, medians of $RUNS, $(hostname -s), $(date -u +%FT%TZ))"
