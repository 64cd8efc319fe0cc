# Sourced by tests/setup/testbed.sh: a second Slurm, 24.11 from Debian 13
# (trixie), beside the host's 22.05. It is a debootstrapped trixie tree run
# chrooted on the host's kernel with its own munge, slurmctld and slurmd on
# their own ports, sharing with the host what a node shares: /proc, /sys
# (the cgroup hierarchies), /dev, the storage roots, /tmp (where the tests'
# beds, policies and broker sockets live) and the engine's socket. Its node
# is named trixie1, so its jobs' cgroups are /slurm_trixie1/… and never mix
# with the host's /slurm_<host>/… (24.11 hard-codes the prefix).
#
# Every Slurm client of that cluster runs inside the tree (its munge key
# and protocol are its own): `slurm24_exec USER CWD srun …`.
#
# A second node, trixie2, makes the cluster multi-node for MPI (SPEC §14,
# ../shared/notes/multinode.md): each slurmd runs in a mount namespace of
# its own (s24_start_slurmd), trixie2's with a private /dev/shm (two nodes'
# Open MPI segments would otherwise collide), on its own port, with its own
# SlurmdSpoolDir and TmpFS (`%n`). The spool directories are under /var/tmp/berth, which the
# host sees at the same path: the broker (on the host) checks a step's
# spool directory and the engine binds it from there. Partition `debug`
# is trixie1 alone (every single-node test), `mpi` is both.
# See ../shared/notes/slurm-24.11.md of the project for how this was found.

readonly S24_ROOT=/var/lib/berth-testbed/trixie
S24_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly S24_HERE
readonly S24_MIRROR=${BERTH_TESTBED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Open MPI, PMIx (Slurm's mpi/pmix plugin loads libpmix) and a compiler for
# tests/mpi/mpihello.c: the same Open MPI as the MPI image (ensure_mpi_image);
# automake is named because debootstrap resolves no virtual package
# (libltdl-dev depends on automake-1.17).
readonly S24_PACKAGES=slurmctld,slurmd,slurm-client,munge,openmpi-bin,libopenmpi-dev,libpmix-dev,automake,gcc,libc6-dev
readonly S24_NODE=trixie1
readonly S24_NODE2=trixie2
readonly S24_PORTS=(6917 6918 6919)   # slurmctld, slurmd trixie1, trixie2: the host's 22.05 has 6817/6818
readonly S24_DIR=/var/lib/berth-slurm   # inside the tree
readonly S24_MARK="$S24_ROOT/.berth-testbed-tree"
# Per node: SlurmdSpoolDir and TmpFS (`%n`), on the host's path too.
readonly S24_NODES_DIR=/var/tmp/berth/slurm24
# The MPI test program, built in the tree; and the image it runs in.
readonly S24_MPIHELLO=/usr/local/bin/mpihello
readonly MPI_IMAGE=berth-test/mpi:1
readonly MPI_IMAGE_ROOT=/var/lib/berth-testbed/mpi-image
# What the node shares with the host, bound at the same path.
readonly S24_SHARED=(/tmp /home /storage1 /storage1x /scratch1 /var/tmp/berth)

s24_running() { # NAME PIDFILE-inside-the-tree
  local pid
  pid=$(read_pid "$S24_ROOT$2")
  [[ -n $pid ]] && [[ $(readlink -f "/proc/$pid/root" 2>/dev/null) == "$S24_ROOT" ]] \
    && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

ensure_s24_tree() {
  local want
  want="trixie $S24_PACKAGES minbase v2"
  if [[ -f $S24_MARK && $(<"$S24_MARK") == "$want" ]]; then return 0; fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt_retry install -y -q --no-install-recommends debootstrap || die "apt-get install debootstrap failed"
  }
  stop_slurm24
  log "debootstrapping Debian 13 (trixie) with Slurm 24.11 into $S24_ROOT (~300 MB, ~1 min)"
  s24_unmount_tree "$S24_ROOT.tmp"
  s24_no_mounts "$S24_ROOT.tmp"
  s24_no_mounts "$S24_ROOT"
  rm -rf --one-file-system "$S24_ROOT.tmp"
  debootstrap --variant=minbase --include="$S24_PACKAGES" trixie "$S24_ROOT.tmp" "$S24_MIRROR" \
    >/var/log/berth-testbed-debootstrap.log 2>&1 \
    || { tail -n 20 /var/log/berth-testbed-debootstrap.log >&2; die "debootstrap of trixie failed (log /var/log/berth-testbed-debootstrap.log)"; }
  rm -rf --one-file-system "$S24_ROOT"
  mv "$S24_ROOT.tmp" "$S24_ROOT"
  printf '%s\n' "$want" >"$S24_MARK"
}

# The test users and groups, with the host's ids (jobs look them up in the
# tree's NSS), and the host's /etc/hosts.
s24_sync_users() {
  local f name tmp
  for f in passwd group; do
    tmp="$S24_ROOT/etc/$f.berth-tmp"
    grep -v '^berth-' "$S24_ROOT/etc/$f" >"$tmp" || true
    grep '^berth-' "/etc/$f" >>"$tmp" || true
    if ! cmp -s "$tmp" "$S24_ROOT/etc/$f"; then
      chmod 0644 "$tmp"
      mv -f "$tmp" "$S24_ROOT/etc/$f"
    else
      rm -f "$tmp"
    fi
  done
  cp -f /etc/hosts "$S24_ROOT/etc/hosts"
  name=$(slurm_host)
  grep -qw "$name" "$S24_ROOT/etc/hosts" || echo "127.0.1.1 $name" >>"$S24_ROOT/etc/hosts"
}

s24_mount() {
  local d
  mountpoint -q "$S24_ROOT/proc" || mount --bind /proc "$S24_ROOT/proc"
  # rslave every time (it is idempotent): a run killed between the bind
  # and this would leave mounts whose unmounting reaches the host's.
  for d in sys dev; do
    mountpoint -q "$S24_ROOT/$d" || mount --rbind "/$d" "$S24_ROOT/$d"
    mount --make-rslave "$S24_ROOT/$d"
  done
  # The tree's own /run (its munge socket, its pid files), with the host's
  # engine socket in it.
  if ! mountpoint -q "$S24_ROOT/run"; then
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$S24_ROOT/run"
  fi
  if [[ -S /run/docker.sock ]] && ! mountpoint -q "$S24_ROOT/run/docker.sock"; then
    touch "$S24_ROOT/run/docker.sock"
    mount --bind /run/docker.sock "$S24_ROOT/run/docker.sock"
  fi
  for d in "${S24_SHARED[@]}"; do
    [[ -d $d ]] || continue
    mkdir -p "$S24_ROOT$d"
    mountpoint -q "$S24_ROOT$d" || mount --rbind "$d" "$S24_ROOT$d"
    mount --make-rslave "$S24_ROOT$d"
  done
}

s24_unmount() { s24_unmount_tree "$S24_ROOT"; }

# Every mount under TREE, deepest first (-l for what a dying process may
# still hold). Removing a tree is always `rm --one-file-system` as well:
# /tmp is bound into it.
s24_unmount_tree() {
  local m
  [[ -d $1 ]] || return 0
  # Slave first, so that no unmount propagates to the host's own mounts.
  while read -r m; do
    mount --make-rslave "$m" 2>/dev/null || true
  done < <(s24_mounts_under "$1")
  while read -r m; do
    umount -R "$m" 2>/dev/null || umount -lR "$m" 2>/dev/null || true
  done < <(s24_mounts_under "$1" | sort -r)
}

s24_mounts_under() { awk -v r="$1/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo; }

# Refuse to go on while anything is mounted under TREE: `rm
# --one-file-system` does not stop at a bind mount of the same filesystem
# (/tmp, /home, the storage roots), so removing the tree then would remove
# the host's files.
s24_no_mounts() {
  local left
  left=$(s24_mounts_under "$1" | head -n 3)
  [[ -z $left ]] || die "still mounted under $1 (${left//$'\n'/, }): unmount it before the tree is replaced"
}

s24_slurm_conf() {
  local host
  host=$(slurm_host)
  cat <<CONF
$SLURM_MARK: Slurm 24.11 in the trixie tree, beside the host's 22.05.
ClusterName=berth24
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${S24_PORTS[0]}
SlurmdPort=${S24_PORTS[1]}
$(slurm_conf_common)
StateSaveLocation=$S24_DIR/state
SlurmdSpoolDir=$S24_NODES_DIR/spool-%n
TmpFS=$S24_NODES_DIR/tmp-%n
SlurmctldLogFile=$S24_DIR/log/slurmctld.log
SlurmdLogFile=$S24_DIR/log/slurmd-%n.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
GresTypes=gpu
NodeName=$S24_NODE NodeHostname=$host NodeAddr=127.0.0.1 Port=${S24_PORTS[1]} CPUs=$(nproc) RealMemory=1000 Gres=gpu:2 State=UNKNOWN
NodeName=$S24_NODE2 NodeHostname=$host NodeAddr=127.0.0.1 Port=${S24_PORTS[2]} CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$S24_NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
PartitionName=mpi Nodes=$S24_NODE,$S24_NODE2 Default=NO MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
CONF
}

# 24.11: CgroupAutomount is defunct (an error line), the rest as the host's.
s24_cgroup_conf() { cgroup_conf_text | grep -v '^CgroupAutomount='; }

# The GPUs are trixie1's only.
s24_gres_conf() { gres_conf_text | sed "s/^Name=gpu/NodeName=$S24_NODE Name=gpu/"; }

s24_in() { chroot "$S24_ROOT" "$@"; }

ensure_slurm24() {
  ensure_s24_tree
  s24_sync_users
  s24_mount
  install -d -m 0755 "$S24_ROOT/etc/slurm" "$S24_ROOT$S24_DIR"
  s24_in install -d -o slurm -g slurm -m 0755 "$S24_DIR/state" "$S24_DIR/log" "$S24_DIR/spool"
  local f want changed=0
  for f in slurm.conf cgroup.conf gres.conf; do
    case $f in
      slurm.conf) want=$(s24_slurm_conf) ;;
      cgroup.conf) want=$(s24_cgroup_conf) ;;
      gres.conf) want=$(s24_gres_conf) ;;
    esac
    if [[ ! -f $S24_ROOT/etc/slurm/$f || $(<"$S24_ROOT/etc/slurm/$f") != "$want" ]]; then
      printf '%s\n' "$want" >"$S24_ROOT/etc/slurm/$f"
      chmod 0644 "$S24_ROOT/etc/slurm/$f"
      changed=1
    fi
  done
  # A stale oci.conf naming a removed berth copy (a killed test) fails
  # every --container step: remove only such a file.
  local oci=$S24_ROOT/etc/slurm/oci.conf bin
  if [[ -f $oci ]]; then
    bin=$(sed -n 's/^RunTimeRun="\([^ "]*\).*/\1/p' "$oci" | head -n1)
    if [[ $bin == /tmp/* && ! -e $S24_ROOT$bin ]]; then rm -f "$oci"; fi
  fi

  # munge, with the tree's own key.
  if [[ ! -s $S24_ROOT/etc/munge/munge.key ]]; then
    s24_in mungekey --create >/dev/null 2>&1 || die "mungekey --create in the trixie tree failed"
  fi
  s24_in chown munge:munge /etc/munge/munge.key
  s24_in install -d -o munge -g munge -m 0755 /run/munge
  if ! s24_running munged /run/munge/munged.pid; then
    log "starting the trixie tree's munged"
    chroot --userspec=munge:munge "$S24_ROOT" /usr/sbin/munged 9>&- </dev/null >/dev/null 2>&1 \
      || die "munged (trixie) did not start"
  fi
  if ((changed)); then
    for n in "$S24_NODE" "$S24_NODE2"; do
      if s24_running slurmd "/run/slurmd-$n.pid"; then kill "$(read_pid "$S24_ROOT/run/slurmd-$n.pid")" || true; fi
    done
    if s24_running slurmctld /run/slurmctld.pid; then kill "$(read_pid "$S24_ROOT/run/slurmctld.pid")" || true; fi
    sleep 1
  fi
  if ! s24_running slurmctld /run/slurmctld.pid; then
    log "starting slurmctld 24.11 (log $S24_ROOT$S24_DIR/log/slurmctld.log)"
    rm -f "$S24_ROOT/run/slurmctld.pid"
    setsid chroot "$S24_ROOT" /usr/sbin/slurmctld 9>&- </dev/null >/dev/null 2>&1 || die "slurmctld 24.11 did not start"
  fi
  s24_node_dirs
  s24_start_slurmd "$S24_NODE" "$S24_NODE2" host
  s24_start_slurmd "$S24_NODE2" "$S24_NODE" private
  local n
  for n in "$S24_NODE" "$S24_NODE2"; do s24_wait_node "$n"; done
  s24_mca_params "$S24_ROOT"
  s24_mpihello
  ensure_mpi_image
  log "slurm 24.11 up: nodes $S24_NODE $S24_NODE2 $(s24_state) ($(s24_in sinfo -V 2>/dev/null))"
}

# s24_start_slurmd NODE OTHER SHM: NODE's slurmd, in a mount namespace of
# its own (slave: the host's later mounts still reach it) where the other
# node's spool directory is its own. On a real cluster every node has its
# spool at the same path; Slurm's PMIx plugin relies on it for a container
# step (it tells the other nodes' slurmd to forward to the *sender's*
# expanded `<spool>/oci-job<J>-<S>/stepd.slurm.pmix.<J>.<S>` socket, which
# here would be the sender's own). The host, the broker and the engine see
# each node's spool at its own `%n` path. SHM `private`: a /dev/shm of
# its own too (two nodes' Open MPI segments would collide in one).
s24_start_slurmd() {
  local node=$1 other=$2 shm=$3
  s24_running slurmd "/run/slurmd-$node.pid" && return 0
  local what="its own mount namespace"
  [[ $shm == private ]] && what+=" and /dev/shm"
  log "starting slurmd 24.11 as node $node, in $what (log $S24_ROOT$S24_DIR/log/slurmd-$node.log)"
  rm -f "$S24_ROOT/run/slurmd-$node.pid"
  # shellcheck disable=SC2016
  setsid unshare -m --propagation slave sh -c '
    set -e
    d=$1$2
    mount --bind "$d/spool-$3" "$d/spool-$4"
    if [ "$5" = private ]; then mount -t tmpfs -o mode=1777,nosuid,nodev,size=256m "berth-shm-$3" "$1/dev/shm"; fi
    exec chroot "$1" /usr/sbin/slurmd -N "$3"' \
    sh "$S24_ROOT" "$S24_NODES_DIR" "$node" "$other" "$shm" 9>&- </dev/null >/dev/null 2>&1 \
    || die "slurmd 24.11 ($node) did not start"
}

# SlurmdSpoolDir and TmpFS of each node: root's, inside root-owned parents
# nobody else may write (the broker trusts a step's spool directory only
# there, SPEC §14); TmpFS is a /tmp.
s24_node_dirs() {
  local n
  ensure_dir "$S24_NODES_DIR" root root 0755
  for n in "$S24_NODE" "$S24_NODE2"; do
    ensure_dir "$S24_NODES_DIR/spool-$n" root root 0755
    ensure_dir "$S24_NODES_DIR/tmp-$n" root root 1777
  done
}

# s24_state [NODE]: a node's state (the first node's when none is named).
s24_state() {
  timeout 10 chroot "$S24_ROOT" sinfo -h -N -n "${1:-$S24_NODE}" -o %T 2>/dev/null | head -n1 || true
}

s24_wait_node() {
  local node=$1 i st resumed=0
  for ((i = 0; i < 120; i++)); do
    st=$(s24_state "$node")
    case $st in
      idle | mixed | allocated) return 0 ;;
      down* | drain* | drained*)
        if ((!resumed && i >= 8)); then
          s24_in scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.25
  done
  tail -n 20 "$S24_ROOT$S24_DIR/log/slurmctld.log" "$S24_ROOT$S24_DIR/log/slurmd-$node.log" >&2 || true
  die "slurm 24.11 node $node state is '${st:-no answer}', not idle, after 30 s"
}

# Open MPI's TCP transport between the two "nodes": they are one host, whose
# other interfaces (docker0, a NAT) do not connect it to itself, so only
# the loopback (Open MPI leaves lo out by default). Bare metal (the tree)
# and the MPI image read the same file.
s24_mca_params() { # ROOT
  local f=$1/etc/openmpi/openmpi-mca-params.conf
  local want='# berth test bed (tests/setup/slurm24.sh): two nodes on one host talk over lo.
btl_tcp_if_include = lo'
  [[ -d ${f%/*} ]] || die "${f%/*} missing: no Open MPI in $1"
  grep -qxF 'btl_tcp_if_include = lo' "$f" 2>/dev/null && return 0
  # (Debian's file ends without a newline.)
  printf '\n%s\n' "$want" >>"$f"
}

# tests/mpi/mpihello.c, built with the tree's mpicc (rebuilt when the
# source changes); the MPI image carries the same binary.
s24_mpihello() {
  local src=$S24_HERE/../mpi/mpihello.c sum
  [[ -f $src ]] || die "$src missing"
  sum=$(sha256sum "$src" | cut -c1-16)
  if [[ -x $S24_ROOT$S24_MPIHELLO && $(cat "$S24_ROOT$S24_MPIHELLO.src" 2>/dev/null) == "$sum" ]]; then return 0; fi
  log "building mpihello with the trixie tree's mpicc"
  install -m 0644 "$src" "$S24_ROOT/tmp/berth-mpihello.c"
  s24_in mpicc -O2 -o "$S24_MPIHELLO.new" /tmp/berth-mpihello.c \
    || { rm -f "$S24_ROOT/tmp/berth-mpihello.c"; die "mpicc of mpihello.c failed"; }
  rm -f "$S24_ROOT/tmp/berth-mpihello.c"
  mv -f "$S24_ROOT$S24_MPIHELLO.new" "$S24_ROOT$S24_MPIHELLO"
  printf '%s\n' "$sum" >"$S24_ROOT$S24_MPIHELLO.src"
}

# berth-test/mpi:1: a minimal trixie with Open MPI's runtime and
# mpihello, made by debootstrap (no registry) and `docker import`; the
# debootstrapped tree is cached, the image rebuilt when its recipe (this
# function, the packages, mpihello) changes.
readonly MPI_IMAGE_PACKAGES=openmpi-bin,libpmix2t64
ensure_mpi_image() {
  local want have mark="$MPI_IMAGE_ROOT/.berth-testbed-tree" base="trixie $MPI_IMAGE_PACKAGES minbase v1"
  want=$({ declare -f ensure_mpi_image s24_mca_params; echo "$base"; cat "$S24_ROOT$S24_MPIHELLO.src"; } | sha256sum | cut -c1-16)
  have=$("$DOCKER" image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}" "$MPI_IMAGE" 2>/dev/null || true)
  if [[ $have == "$want" && ${BERTH_TESTBED_REBUILD:-0} != 1 ]]; then return 0; fi
  if [[ ! -f $mark || $(<"$mark") != "$base" ]]; then
    log "debootstrapping the MPI image's tree (trixie, Open MPI) into $MPI_IMAGE_ROOT (~1 min)"
    s24_no_mounts "$MPI_IMAGE_ROOT"
    rm -rf --one-file-system "$MPI_IMAGE_ROOT" "$MPI_IMAGE_ROOT.tmp"
    debootstrap --variant=minbase --include="$MPI_IMAGE_PACKAGES" trixie "$MPI_IMAGE_ROOT.tmp" "$S24_MIRROR" \
      >/var/log/berth-testbed-debootstrap-mpi.log 2>&1 \
      || { tail -n 20 /var/log/berth-testbed-debootstrap-mpi.log >&2; die "debootstrap of the MPI image failed (log /var/log/berth-testbed-debootstrap-mpi.log)"; }
    # What an image does not carry: apt's caches, logs.
    rm -rf "$MPI_IMAGE_ROOT.tmp"/var/cache/apt/archives/*.deb "$MPI_IMAGE_ROOT.tmp"/var/lib/apt/lists/* \
      "$MPI_IMAGE_ROOT.tmp"/var/log/*.log
    printf '%s\n' "$base" >"$MPI_IMAGE_ROOT.tmp/.berth-testbed-tree"
    mv "$MPI_IMAGE_ROOT.tmp" "$MPI_IMAGE_ROOT"
  fi
  install -m 0755 "$S24_ROOT$S24_MPIHELLO" "$MPI_IMAGE_ROOT$S24_MPIHELLO"
  s24_mca_params "$MPI_IMAGE_ROOT"
  [[ -n $have ]] && log "rebuilding $MPI_IMAGE (recipe changed or forced)" || log "building $MPI_IMAGE"
  local old_id
  old_id=$("$DOCKER" image inspect -f '{{.Id}}' "$MPI_IMAGE" 2>/dev/null || true)
  tar --numeric-owner --exclude=./.berth-testbed-tree -C "$MPI_IMAGE_ROOT" -c . \
    | "$DOCKER" import --change 'CMD ["/bin/sh"]' --change "LABEL $RECIPE_LABEL=$want" - "$MPI_IMAGE" >/dev/null \
    || die "docker import of $MPI_IMAGE failed"
  if [[ -n $old_id ]]; then "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true; fi
  "$DOCKER" run --rm --user 2001:2001 "$MPI_IMAGE" sh -c "test -x $S24_MPIHELLO && ompi_info --version" \
    >/dev/null 2>&1 || die "$MPI_IMAGE: no mpihello or no Open MPI inside"
}

stop_slurm24() {
  [[ -d $S24_ROOT ]] || return 0
  local n f pid i
  for n in "slurmd /run/slurmd-$S24_NODE2.pid" "slurmd /run/slurmd-$S24_NODE.pid" "slurmd /run/slurmd.pid" \
    "slurmctld /run/slurmctld.pid" "munged /run/munge/munged.pid"; do
    read -r f pid <<<"$n"
    if s24_running "$f" "$pid"; then
      pid=$(read_pid "$S24_ROOT$pid")
      log "stopping the trixie tree's $f pid $pid"
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 80; i++)); do
        [[ -e /proc/$pid ]] || break
        sleep 0.25
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  s24_unmount
}
