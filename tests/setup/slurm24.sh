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
# See ../shared/notes/slurm-24.11.md of the project for how this was found.

readonly S24_ROOT=/var/lib/berth-testbed/trixie
readonly S24_MIRROR=${BERTH_TESTBED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly S24_PACKAGES=slurmctld,slurmd,slurm-client,munge
readonly S24_NODE=trixie1
readonly S24_PORTS=(6917 6918)   # slurmctld, slurmd: the host's 22.05 has 6817/6818
readonly S24_DIR=/var/lib/berth-slurm   # inside the tree
readonly S24_MARK="$S24_ROOT/.berth-testbed-tree"
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
  want="trixie $S24_PACKAGES minbase v1"
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
SlurmdSpoolDir=$S24_DIR/spool
SlurmctldLogFile=$S24_DIR/log/slurmctld.log
SlurmdLogFile=$S24_DIR/log/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
GresTypes=gpu
NodeName=$S24_NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
CONF
}

# 24.11: CgroupAutomount is defunct (an error line), the rest as the host's.
s24_cgroup_conf() { cgroup_conf_text | grep -v '^CgroupAutomount='; }

s24_in() { chroot "$S24_ROOT" "$@"; }

s24_state() { timeout 10 chroot "$S24_ROOT" sinfo -h -o %T 2>/dev/null | head -n1 || true; }

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
      gres.conf) want=$(gres_conf_text) ;;
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
    if s24_running slurmd /run/slurmd.pid; then kill "$(read_pid "$S24_ROOT/run/slurmd.pid")" || true; fi
    if s24_running slurmctld /run/slurmctld.pid; then kill "$(read_pid "$S24_ROOT/run/slurmctld.pid")" || true; fi
    sleep 1
  fi
  if ! s24_running slurmctld /run/slurmctld.pid; then
    log "starting slurmctld 24.11 (log $S24_ROOT$S24_DIR/log/slurmctld.log)"
    rm -f "$S24_ROOT/run/slurmctld.pid"
    setsid chroot "$S24_ROOT" /usr/sbin/slurmctld 9>&- </dev/null >/dev/null 2>&1 || die "slurmctld 24.11 did not start"
  fi
  if ! s24_running slurmd /run/slurmd.pid; then
    log "starting slurmd 24.11 as node $S24_NODE (log $S24_ROOT$S24_DIR/log/slurmd.log)"
    rm -f "$S24_ROOT/run/slurmd.pid"
    setsid chroot "$S24_ROOT" /usr/sbin/slurmd -N "$S24_NODE" 9>&- </dev/null >/dev/null 2>&1 || die "slurmd 24.11 did not start"
  fi
  local i st resumed=0
  for ((i = 0; i < 120; i++)); do
    st=$(s24_state)
    case $st in
      idle | mixed | allocated) break ;;
      down* | drain* | drained*)
        if ((!resumed && i >= 8)); then
          s24_in scontrol update NodeName="$S24_NODE" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.25
  done
  case $st in
    idle | mixed | allocated) ;;
    *)
      tail -n 20 "$S24_ROOT$S24_DIR/log/slurmctld.log" "$S24_ROOT$S24_DIR/log/slurmd.log" >&2 || true
      die "slurm 24.11 node state is '${st:-no answer}', not idle, after 30 s"
      ;;
  esac
  log "slurm 24.11 up: node $S24_NODE $st ($(s24_in sinfo -V 2>/dev/null))"
}

stop_slurm24() {
  [[ -d $S24_ROOT ]] || return 0
  local n f pid i
  for n in "slurmd /run/slurmd.pid" "slurmctld /run/slurmctld.pid" "munged /run/munge/munged.pid"; do
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
