#!/usr/bin/env bash
# berth integration-test bed: Docker engine, test users/groups, fake GPFS
# trees and locally built test images, on a fresh Debian 12 machine (root).
#
#   testbed.sh up      install + start + build everything (idempotent)
#   testbed.sh down    stop only the daemons `up` started (by PID)
#   testbed.sh status  print what is up
#
# See tests/setup/README.md for the ids, paths and images it creates.
set -euo pipefail

# ---------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------
readonly DOCKER=/usr/bin/docker            # Debian's 20.10 client, never /usr/local/bin/docker (28.x)
readonly DOCKERD=/usr/sbin/dockerd
readonly RUNDIR=/run/berth-testbed
readonly DOCKERD_LOG=/var/log/berth-testbed-dockerd.log
readonly DOCKERD_PIDFILE=$RUNDIR/dockerd.pid
readonly CONTAINERD_PIDFILE=$RUNDIR/containerd.pid
readonly PACKAGES=(docker.io busybox-static tini libcap2-bin)   # setcap: tests/hostile.rs
readonly BUSYBOX=/bin/busybox              # from busybox-static
readonly RECIPE_LABEL=org.berth.testbed.recipe

# Talk to the local engine only, whatever the caller's environment says.
export DOCKER_HOST=unix:///var/run/docker.sock
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH || true
# dockerd finds runc, containerd and docker-init through PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}

# applets symlinked into every image (plus `sh` unless the image has no shell)
readonly APPLETS=(id cat ls echo sleep touch mkdir rm stat whoami env sed grep
  head tail printf true false test dd yes wc pwd kill ps awk cut tr seq mount
  readlink chmod ln cp mv date find xargs uname hostname basename dirname
  realpath tee sort timeout nproc)

# groups: name gid
readonly GROUPS_SPEC=(
  "berth-alice 2001" "berth-bob 2002" "berth-carol 2003"
  "berth-lab1 3001" "berth-lab2 3002" "berth-lab3 3003" "berth-shared 3010"
  "berth-relay 2010" "berth-low 500"
)
# users: name uid gid supplementary(comma list or -)
readonly USERS_SPEC=(
  "berth-alice 2001 2001 berth-lab1,berth-lab2,berth-lab3,berth-shared"
  "berth-bob 2002 2002 berth-shared"
  "berth-carol 2003 2003 -"
  "berth-relay 2010 2010 -"
  "berth-low 500 500 -"
)
# images: name|kind|Entrypoint(inspect json)|User  (WorkingDir is /opt/imgwork for all)
readonly IMAGES_SPEC=(
  "berth-test/busybox:1|busybox|null|"
  "berth-test/noshell:1|noshell|null|"
  "berth-test/entry-other:1|entry-other|[\"/bin/echo\",\"hijacked\"]|"
  "berth-test/entry-sh:1|entry-sh|[\"/bin/sh\"]|"
  "berth-test/group0:1|group0|null|"
  "berth-test/userroot:1|userroot|null|root"
  "berth-test/setuid:1|setuid|null|"
  "berth-test/usrmerge:1|usrmerge|null|"
  "berth-test/volume:1|volume|null|"
)

# /bin/suidprobe for berth-test/setuid:1: a 496-byte static x86_64 ELF built
# from the assembly below with
#   as -o p.o p.s && ld -static -n -N -s --build-id=none -o suidprobe p.o
#   # suidprobe: print "ruid=<getuid()> euid=<geteuid()>\n", exit 0. x86_64 Linux, no libc.
#           .globl _start
#           .text
#   _start:
#           mov     $102, %eax          # getuid
#           syscall
#           mov     %eax, %r12d
#           mov     $107, %eax          # geteuid
#           syscall
#           mov     %eax, %r13d
#           sub     $64, %rsp
#           mov     %rsp, %rdi          # rdi = write cursor
#           lea     s_ruid(%rip), %rsi
#           mov     $5, %ecx
#           rep movsb
#           mov     %r12d, %eax
#           call    putdec
#           lea     s_euid(%rip), %rsi
#           mov     $6, %ecx
#           rep movsb
#           mov     %r13d, %eax
#           call    putdec
#           movb    $10, (%rdi)
#           inc     %rdi
#           mov     %rdi, %rdx
#           sub     %rsp, %rdx          # len
#           mov     %rsp, %rsi
#           mov     $1, %edi
#           mov     $1, %eax            # write(1, buf, len)
#           syscall
#           xor     %edi, %edi
#           mov     $60, %eax           # exit(0)
#           syscall
#   # putdec: append decimal of eax at (rdi), advance rdi. clobbers rax rcx rdx r8
#   putdec:
#           lea     -24(%rsp), %r8      # scratch below our frame (red zone)
#           mov     %r8, %rcx
#           mov     $10, %r9d
#   1:      xor     %edx, %edx
#           div     %r9d
#           add     $'0', %dl
#           dec     %rcx
#           mov     %dl, (%rcx)
#           test    %eax, %eax
#           jnz     1b
#   2:      mov     (%rcx), %dl
#           mov     %dl, (%rdi)
#           inc     %rdi
#           inc     %rcx
#           cmp     %r8, %rcx
#           jne     2b
#           ret
#   s_ruid: .ascii "ruid="
#   s_euid: .ascii " euid="
readonly SUIDPROBE_SHA256=d8b5174d49fbb92a37e2408bb2fe2fe007dfbe31a755aaf0158b66d14328e64e
readonly SUIDPROBE_B64='f0VMRgIBAQAAAAAAAAAAAAIAPgABAAAAeABAAAAAAABAAAAAAAAAADABAAAAAAAAAAAAAEAAOAABAEAAAwACAAEAAAAHAAAAeAAAAAAAAAB4AEAAAAAAAHgAQAAAAAAApQAAAAAAAAClAAAAAAAAAAEAAAAAAAAAuGYAAAAPBUGJxLhrAAAADwVBicVIg+xASInnSI01eAAAALkFAAAA86REieDoOgAAAEiNNWcAAAC5BgAAAPOkRIno6CQAAADGBwpI/8dIifpIKeJIiea/AQAAALgBAAAADwUx/7g8AAAADwVMjUQk6EyJwUG5CgAAADHSQffxgMIwSP/JiBGFwHXvihGIF0j/x0j/wUw5wXXxw3J1aWQ9IGV1aWQ9AC5zaHN0cnRhYgAudGV4dAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAALAAAAAQAAAAcAAAAAAAAAeABAAAAAAAB4AAAAAAAAAKUAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAQAAAAMAAAAAAAAAAAAAAAAAAAAAAAAAHQEAAAAAAAARAAAAAAAAAAAAAAAAAAAAAQAAAAAAAAAAAAAAAAAAAA=='

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
log() { printf 'testbed: %s\n' "$*" >&2; }
die() { printf 'testbed: ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

lock() {
  mkdir -p "$RUNDIR"
  exec 9>"$RUNDIR/lock"
  flock -w 600 9 || die "another testbed.sh holds $RUNDIR/lock"
}

docker_ok() { timeout 10 "$DOCKER" info >/dev/null 2>&1; }

# pid_is PID EXE: PID is alive and runs EXE (guards against PID reuse)
pid_is() {
  local pid=$1 exe=$2
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -d /proc/$pid ]] || return 1
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]]
}

read_pid() { [[ -s $1 ]] && head -n1 "$1" || true; }

# ---------------------------------------------------------------------------
# 1. packages
# ---------------------------------------------------------------------------
pkg_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

apt_retry() {
  local i
  for i in 1 2 3 4 5; do
    if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; then
      return 0
    fi
    log "apt-get $* failed (attempt $i), retrying in 10 s"
    sleep 10
  done
  return 1
}

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_retry update -q || die "apt-get update failed"
    apt_retry install -y -q "${PACKAGES[@]}" || die "apt-get install failed"
  fi
  for p in "${PACKAGES[@]}"; do pkg_installed "$p" || die "package $p not installed"; done
  [[ -x $DOCKER && -x $DOCKERD && -x $BUSYBOX ]] || die "docker.io/busybox-static files missing"

  # docker-init (used by `docker run --init`): dockerd looks it up in PATH and
  # in /usr/libexec/docker etc. Debian's docker.io ships
  # /usr/bin/docker-init -> tini-static; recreate it if it is missing.
  if ! command -v docker-init >/dev/null 2>&1; then
    local tini
    for tini in /usr/bin/tini-static /usr/bin/tini; do
      if [[ -x $tini ]]; then
        log "docker-init missing, linking /usr/bin/docker-init -> $tini"
        ln -sfn "$(basename "$tini")" /usr/bin/docker-init
        break
      fi
    done
    command -v docker-init >/dev/null 2>&1 || die "no docker-init and no tini to link"
  fi
}

# ---------------------------------------------------------------------------
# 2. dockerd
# ---------------------------------------------------------------------------
ensure_dockerd() {
  mkdir -p "$RUNDIR"
  local pid
  pid=$(read_pid "$DOCKERD_PIDFILE")
  if [[ -n $pid ]] && ! pid_is "$pid" "$DOCKERD"; then
    log "removing stale $DOCKERD_PIDFILE (pid $pid gone)"
    rm -f "$DOCKERD_PIDFILE" "$CONTAINERD_PIDFILE"
  fi

  if docker_ok; then
    return 0
  fi

  # An engine we did not start may be starting up: wait for it, never start a second one.
  local other
  other=$(read_pid /var/run/docker.pid)
  if [[ -n $other ]] && pid_is "$other" "$DOCKERD"; then
    log "dockerd pid $other (not ours) is running but not answering yet; waiting"
    wait_docker 30 "$other" || die "dockerd pid $other does not answer"
    return 0
  fi

  log "starting $DOCKERD (log $DOCKERD_LOG)"
  # setsid: own session, so the caller's job control/process group kill does
  # not take the engine down with it.
  setsid "$DOCKERD" </dev/null >"$DOCKERD_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$DOCKERD_PIDFILE"
  if ! wait_docker 30 "$pid"; then
    log "dockerd did not answer within 30 s; last lines of $DOCKERD_LOG:"
    tail -n 40 "$DOCKERD_LOG" >&2 || true
    if pid_is "$pid" "$DOCKERD"; then kill -TERM "$pid" 2>/dev/null || true; fi
    rm -f "$DOCKERD_PIDFILE"
    exit 1
  fi
  # dockerd's own pid file is the authority (setsid normally execs in place).
  local real
  real=$(read_pid /var/run/docker.pid)
  if [[ -n $real && $real != "$pid" ]] && pid_is "$real" "$DOCKERD"; then
    echo "$real" >"$DOCKERD_PIDFILE"
    pid=$real
  fi
  # Debian's dockerd supervises its own containerd unless a system one runs
  # (/run/containerd/containerd.sock). Record the child so `down` can check it.
  local c
  c=$(pgrep -P "$pid" -x containerd | head -n1 || true)
  if [[ -n $c ]]; then
    echo "$c" >"$CONTAINERD_PIDFILE"
  else
    log "note: dockerd pid $pid has no containerd child (using a system containerd?)"
    rm -f "$CONTAINERD_PIDFILE"
  fi
  log "dockerd up, pid $pid${c:+, containerd pid $c}"
}

# wait_docker SECONDS PID: poll `docker info` while PID lives
wait_docker() {
  local secs=$1 pid=$2 i
  for ((i = 0; i < secs * 4; i++)); do
    docker_ok && return 0
    [[ -d /proc/$pid ]] || return 1
    sleep 0.25
  done
  return 1
}

# ---------------------------------------------------------------------------
# 3. users and groups
# ---------------------------------------------------------------------------
ensure_group() {
  local name=$1 gid=$2 ent cur
  if ent=$(getent group "$name"); then
    cur=$(cut -d: -f3 <<<"$ent")
    [[ $cur == "$gid" ]] || die "group $name exists with gid $cur, expected $gid"
  else
    if ent=$(getent group "$gid"); then
      die "gid $gid is taken by group $(cut -d: -f1 <<<"$ent"), cannot create $name"
    fi
    log "creating group $name ($gid)"
    groupadd -g "$gid" "$name"
  fi
}

ensure_user() {
  local name=$1 uid=$2 gid=$3 supp=$4 ent
  [[ $supp == - ]] && supp=""
  if ent=$(getent passwd "$name"); then
    local cu cg
    IFS=: read -r _ _ cu cg _ <<<"$ent"
    [[ $cu == "$uid" ]] || die "user $name exists with uid $cu, expected $uid"
    [[ $cg == "$gid" ]] || die "user $name exists with primary gid $cg, expected $gid"
  else
    if ent=$(getent passwd "$uid"); then
      die "uid $uid is taken by user $(cut -d: -f1 <<<"$ent"), cannot create $name"
    fi
    log "creating user $name ($uid:$gid)"
    useradd -u "$uid" -g "$gid" -M -d "/home/$name" -s /bin/bash \
      -c "berth test user" "$name"
  fi
  # re-apply shell, home and the EXACT supplementary list (drops docker/root)
  local want_home=/home/$name cur_home cur_shell cur_supp
  IFS=: read -r _ _ _ _ _ cur_home cur_shell <<<"$(getent passwd "$name")"
  if [[ $cur_home != "$want_home" || $cur_shell != /bin/bash ]]; then
    usermod -d "$want_home" -s /bin/bash "$name"
  fi
  cur_supp=$(id -Gn "$name" | tr ' ' '\n' | grep -vx "$(id -gn "$name")" | sort | paste -sd, || true)
  if [[ $cur_supp != "$(tr ',' '\n' <<<"$supp" | grep . | sort | paste -sd, || true)" ]]; then
    log "setting supplementary groups of $name to '${supp}'"
    usermod -G "$supp" "$name"
  fi
  if [[ ! -d $want_home ]]; then
    mkdir -p "$want_home"
    cp -a /etc/skel/. "$want_home"/ 2>/dev/null || true
    chown -R "$uid:$gid" "$want_home"
    chmod 0755 "$want_home"
  fi
  chown "$uid:$gid" "$want_home"
  # hard checks
  local g
  for g in $(id -G "$name"); do
    [[ $g != 0 ]] || die "user $name is in gid 0"
  done
  if id -Gn "$name" | tr ' ' '\n' | grep -qxE 'docker|root'; then
    die "user $name is in group docker or root"
  fi
}

ensure_users() {
  local s
  for s in "${GROUPS_SPEC[@]}"; do ensure_group $s; done
  for s in "${USERS_SPEC[@]}"; do ensure_user $s; done
}

# ---------------------------------------------------------------------------
# 4. fake GPFS trees
# ---------------------------------------------------------------------------
# ensure_dir PATH OWNER GROUP MODE(4 octal digits)
ensure_dir() {
  local p=$1 o=$2 g=$3 m=$4
  if [[ -L $p || (-e $p && ! -d $p) ]]; then die "$p exists and is not a directory"; fi
  [[ -d $p ]] || mkdir "$p"
  chown "$o:$g" "$p"
  chmod "0$m" "$p"   # leading 0: clears setgid/setuid on dirs (GNU chmod)
}

# ensure_file PATH OWNER GROUP MODE CONTENT
ensure_file() {
  local p=$1 o=$2 g=$3 m=$4 c=$5
  if [[ -L $p || (-e $p && ! -f $p) ]]; then die "$p exists and is not a regular file"; fi
  if [[ ! -f $p || $(<"$p") != "$c" ]]; then printf '%s\n' "$c" >"$p"; fi
  chown "$o:$g" "$p"
  chmod "$m" "$p"
}

# ensure_symlink PATH TARGET OWNER GROUP
ensure_symlink() {
  local p=$1 t=$2 o=$3 g=$4
  if [[ -e $p && ! -L $p ]]; then die "$p exists and is not a symlink"; fi
  [[ -L $p && $(readlink "$p") == "$t" ]] || ln -sfn "$t" "$p"
  chown -h "$o:$g" "$p"
}

ensure_trees() {
  local A=berth-alice B=berth-bob
  ensure_dir /storage1                    root root 0755
  ensure_dir /storage1/fs1                root root 0755
  ensure_dir /storage1/fs1/alice          $A $A 0755
  ensure_file /storage1/fs1/alice/hello.txt $A $A 0644 "hello from storage1"
  ensure_dir /storage1/fs1/alice/ro       $A $A 0755
  ensure_symlink /storage1/fs1/alice/link-out /etc                 $A $A
  ensure_symlink /storage1/fs1/alice/link-in  /storage1/fs1/alice/ro $A $A
  ensure_file /storage1/fs1/alice/afile   $A $A 0644 "afile"
  ensure_dir '/storage1/fs1/alice/we:ird' $A $A 0755
  ensure_dir '/storage1/fs1/alice/com,ma' $A $A 0755
  ensure_dir /storage1/fs1/bob-private    $B $B 0700
  ensure_dir /storage1/fs1/bob-private/open $B $B 0755
  ensure_file /storage1/fs1/bob-private/open/secret.txt $B $B 0644 "bob secret"
  ensure_dir /storage1/fs1/shared         root berth-shared 2775
  ensure_dir /scratch1                    root root 0755
  ensure_dir /scratch1/fs1                root root 0755
  ensure_dir /scratch1/fs1/alice          $A $A 0755
  ensure_dir /storage1x                   root root 0755
  ensure_dir /storage1x/fs1               root root 0755
  ensure_dir /storage1x/fs1/alice         $A $A 0755
  ensure_dir /var/tmp/berth               root root 0711
}

# ---------------------------------------------------------------------------
# 5. images (docker import from a busybox rootfs, no registry)
# ---------------------------------------------------------------------------
# make_rootfs DIR KIND
make_rootfs() {
  local r=$1 kind=$2 bindir a
  mkdir -p "$r"/{etc,proc,sys,dev,opt/imgwork,root}
  install -d -m 1777 "$r/tmp"
  if [[ $kind == usrmerge ]]; then
    mkdir -p "$r/usr/bin"
    ln -s usr/bin "$r/bin"          # /bin -> usr/bin
    bindir=$r/usr/bin
  else
    mkdir -p "$r/bin" "$r/usr/bin"
    bindir=$r/bin
  fi
  install -m 0755 "$BUSYBOX" "$bindir/busybox"
  for a in "${APPLETS[@]}"; do ln -s busybox "$bindir/$a"; done
  if [[ $kind != noshell ]]; then
    ln -s busybox "$bindir/sh"
  fi
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' >"$r/etc/group"
  case $kind in
    group0)
      printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
        'berth-alice:x:2001:2001::/home/berth-alice:/bin/sh' \
        'alice:x:2001:2001::/:/bin/sh' >"$r/etc/passwd"
      printf '%s\n' 'root:x:0:berth-alice,alice' 'wheel:x:10:berth-alice,alice' \
        'berth-alice:x:2001:' >"$r/etc/group"
      ;;
    setuid)
      install -m 4755 "$BUSYBOX" "$r/bin/suidbox"
      chmod 4755 "$r/bin/suidbox"
      # Busybox drops a setuid euid for ordinary applets, so /bin/suidbox alone
      # cannot show an escalation (and an /etc/busybox.conf keeping it makes
      # this busybox segfault in sh's forked applets). /bin/suidprobe (4755
      # root, x86_64 only) prints "ruid=R euid=E": euid=0 means the setuid
      # bit took effect (positive control), euid=R means it was neutralised.
      if [[ $(uname -m) == x86_64 ]]; then
        base64 -d <<<"$SUIDPROBE_B64" >"$r/bin/suidprobe"
        echo "$SUIDPROBE_SHA256  $r/bin/suidprobe" | sha256sum -c --quiet - \
          || die "suidprobe checksum mismatch"
        chmod 4755 "$r/bin/suidprobe"
      fi
      ;;
  esac
  chmod 0644 "$r/etc/passwd" "$r/etc/group"
}

# image_changes KIND -> one --change argument per line
image_changes() {
  echo 'WORKDIR /opt/imgwork'
  echo 'CMD ["/bin/sh"]'
  case $1 in
    entry-other) echo 'ENTRYPOINT ["/bin/echo","hijacked"]' ;;
    entry-sh) echo 'ENTRYPOINT ["/bin/sh"]' ;;
    userroot) echo 'USER root' ;;
    volume) echo 'VOLUME ["/data", "/var/cache/job"]' ;;
  esac
}

# recipe hash: rebuild an image when its recipe or busybox changes
recipe_hash() {
  { declare -f make_rootfs image_changes; declare -p APPLETS SUIDPROBE_SHA256; echo "$1"
    dpkg-query -W -f='${Version}' busybox-static; } | sha256sum | cut -c1-16
}

build_image() {
  local name=$1 kind=$2 want have tmp
  want=$(recipe_hash "$kind")
  have=$("$DOCKER" image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}" "$name" 2>/dev/null || true)
  if [[ $have == "$want" && ${BERTH_TESTBED_REBUILD:-0} != 1 ]]; then
    return 1   # up to date
  fi
  [[ -n $have ]] && log "rebuilding $name (recipe changed or forced)" || log "building $name"
  tmp=$(mktemp -d /tmp/berth-testbed-rootfs.XXXXXX)
  make_rootfs "$tmp/rootfs" "$kind"
  local args=() c
  while IFS= read -r c; do args+=(--change "$c"); done < <(image_changes "$kind")
  args+=(--change "LABEL $RECIPE_LABEL=$want")
  local old_id
  old_id=$("$DOCKER" image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)
  tar --numeric-owner --owner=0 --group=0 -C "$tmp/rootfs" -c . \
    | "$DOCKER" import "${args[@]}" - "$name" >/dev/null \
    || { rm -rf "$tmp"; die "docker import of $name failed"; }
  rm -rf "$tmp"
  # drop the replaced image (now untagged); kept if a container still uses it
  if [[ -n $old_id ]]; then "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true; fi
  return 0
}

ensure_images() {
  local s name kind built=0
  for s in "${IMAGES_SPEC[@]}"; do
    IFS='|' read -r name kind _ _ <<<"$s"
    if build_image "$name" "$kind"; then built=$((built + 1)); fi
  done
  IMAGES_BUILT=$built
}

verify_images() {
  local s name kind ep user got want
  for s in "${IMAGES_SPEC[@]}"; do
    IFS='|' read -r name kind ep user <<<"$s"
    got=$("$DOCKER" image inspect -f '{{json .Config.Entrypoint}}|{{.Config.WorkingDir}}|{{.Config.User}}' "$name") \
      || die "image $name missing"
    want="$ep|/opt/imgwork|$user"
    [[ $got == "$want" ]] || die "image $name: Entrypoint|WorkingDir|User is '$got', expected '$want'"
  done
}

# end-to-end smoke test: --init, numeric --user, no-shell image
smoke_test() {
  local out
  out=$("$DOCKER" run --rm --init --user 2001:2001 berth-test/busybox:1 sh -c 'id -u; id -g; cat /proc/1/comm' 2>&1) \
    || die "docker run --init failed: $out"
  [[ $out == $'2001\n2001\ndocker-init' ]] || die "unexpected smoke output: $out"
  out=$("$DOCKER" run --rm berth-test/noshell:1 /bin/id -u 2>&1) || die "noshell /bin/id failed: $out"
  [[ $out == 0 ]] || die "unexpected noshell output: $out"
}

# ---------------------------------------------------------------------------
# 6. Slurm: munge + a single-node slurmctld/slurmd (22.05 on Debian 12)
# ---------------------------------------------------------------------------
# The tests write /etc/slurm/oci.conf themselves (slurmstepd reads it for
# every step), pointing at the berth binary and policy under test; `up`
# never writes it.
readonly SLURM_PACKAGES=(slurmctld slurmd slurm-client munge)
readonly SLURM_DIR=/var/lib/berth-testbed/slurm
readonly SLURM_CONF=/etc/slurm/slurm.conf
readonly CGROUP_CONF=/etc/slurm/cgroup.conf
readonly GRES_CONF=/etc/slurm/gres.conf
# GPU-like device nodes (SPEC §12): NVIDIA's numbers, no driver behind them,
# so opening one the device cgroup allows fails with ENXIO and one it
# denies with EPERM. Real GPU nodes (a loaded nvidia driver) are left alone.
readonly GPU_NODES=("nvidia0 195 0" "nvidia1 195 1" "nvidiactl 195 255")
readonly SLURM_MARK='# managed by berth tests/setup/testbed.sh'
readonly SLURMCTLD=/usr/sbin/slurmctld SLURMD=/usr/sbin/slurmd MUNGED=/usr/sbin/munged
readonly MUNGE_KEY=/etc/munge/munge.key
readonly MUNGED_PIDFILE=$RUNDIR/munged.pid
readonly SLURMCTLD_PIDFILE=$RUNDIR/slurmctld.pid
readonly SLURMD_PIDFILE=$RUNDIR/slurmd.pid

# exe PATH: what /proc/PID/exe shows for PATH (Debian's alternatives links)
exe() { readlink -f "$1"; }

slurm_host() { hostname -s; }

ensure_slurm_packages() {
  local missing=() p
  for p in "${SLURM_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_retry update -q || die "apt-get update failed"
    apt_retry install -y -q --no-install-recommends "${SLURM_PACKAGES[@]}" || die "apt-get install of slurm failed"
  fi
  for p in "${SLURM_PACKAGES[@]}"; do pkg_installed "$p" || die "package $p not installed"; done
  getent passwd slurm >/dev/null || die "user slurm missing after installing slurmctld"
  getent passwd munge >/dev/null || die "user munge missing after installing munge"
}

munge_ok() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }

ensure_munge() {
  if [[ ! -s $MUNGE_KEY ]]; then
    log "creating $MUNGE_KEY"
    install -d -o munge -g munge -m 0700 /etc/munge
    (umask 077; dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none)
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 0400 "$MUNGE_KEY"
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge

  local pid
  pid=$(read_pid "$MUNGED_PIDFILE")
  if [[ -n $pid ]] && ! pid_is "$pid" "$MUNGED"; then rm -f "$MUNGED_PIDFILE"; fi
  munge_ok && return 0
  local other
  other=$(read_pid /run/munge/munged.pid)
  if [[ -n $other ]] && pid_is "$other" "$MUNGED"; then
    die "munged pid $other (not ours) runs but does not answer"
  fi
  log "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- "$MUNGED" 9>&- </dev/null || die "munged did not start"
  local i
  for ((i = 0; i < 40; i++)); do
    munge_ok && break
    sleep 0.25
  done
  munge_ok || die "munged does not answer"
  pid=$(read_pid /run/munge/munged.pid)
  [[ -n $pid ]] && echo "$pid" >"$MUNGED_PIDFILE"
  log "munged up, pid ${pid:-?}"
}

# What both test-bed Slurms (22.05 here, 24.11 in tests/setup/slurm24.sh)
# run with: real enforcement and accounting through cgroups, memory as a
# consumable, quick turnover.
slurm_conf_common() {
  cat <<CONF
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=task=1
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
CONF
}

slurm_conf_text() {
  local host
  host=$(slurm_host)
  cat <<CONF
$SLURM_MARK: a single-node cluster for berth's integration tests.
ClusterName=berthtest
SlurmctldHost=$host(127.0.0.1)
$(slurm_conf_common)
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
CONF
}

# Real enforcement (SPEC §11): cgroup v1 (this machine is a v1 hybrid and
# Slurm refuses mixed mode, so it is named), cores, memory and devices
# constrained, as a production node would have them.
cgroup_conf_text() {
  cat <<CONF
$SLURM_MARK: cgroup enforcement for berth's integration tests.
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainDevices=yes
CONF
}

# Two GPUs as GRES (no AutoDetect: there is no driver), constrained by
# ConstrainDevices like a production GPU node.
gres_conf_text() {
  cat <<CONF
$SLURM_MARK: two GPU-like device nodes (ensure_gpu_nodes) as GRES.
AutoDetect=off
Name=gpu File=/dev/nvidia[0-1]
CONF
}

ensure_gpu_nodes() {
  local spec name maj min path
  if [[ -d /proc/driver/nvidia ]]; then
    log "an NVIDIA driver is loaded: using the node's own /dev/nvidia* nodes"
    return 0
  fi
  for spec in "${GPU_NODES[@]}"; do
    read -r name maj min <<<"$spec"
    path=/dev/$name
    if [[ -e $path || -L $path ]]; then
      [[ -c $path && ! -L $path && $(stat -c '%t:%T' "$path") == "$(printf '%x:%x' "$maj" "$min")" ]] \
        || die "$path exists but is not the character device $maj:$min; remove it"
      continue
    fi
    log "creating GPU-like device node $path ($maj:$min, no driver)"
    mknod -m 0666 "$path" c "$maj" "$min" || die "mknod $path"
  done
}

slurm_state() { timeout 10 sinfo -h -o %T 2>/dev/null | head -n1 || true; }

ensure_slurm() {
  ensure_slurm_packages
  ensure_munge
  install -d -o root -g root -m 0755 /var/lib/berth-testbed "$SLURM_DIR" "$SLURM_DIR/spool" "$SLURM_DIR/run"
  install -d -o slurm -g slurm -m 0755 "$SLURM_DIR/state" "$SLURM_DIR/log"
  install -d -o root -g root -m 0755 /etc/slurm
  if [[ -e $SLURM_CONF ]] && ! grep -qF "$SLURM_MARK" "$SLURM_CONF"; then
    die "$SLURM_CONF exists and was not written by this script; move it away"
  fi
  # A test or benchmark that was killed leaves its oci.conf pointing at a
  # berth copy in a removed temporary directory: every --container step
  # would fail. Remove only such a file.
  local oci=/etc/slurm/oci.conf bin
  if [[ -f $oci ]]; then
    bin=$(sed -n 's/^RunTimeRun="\([^ "]*\).*/\1/p' "$oci" | head -n1)
    if [[ $bin == /tmp/berth-* && ! -e $bin ]]; then
      log "removing stale $oci (its berth $bin is gone)"
      rm -f "$oci"
    fi
  fi
  local want changed=0 f
  for f in "$CGROUP_CONF" "$GRES_CONF"; do
    if [[ -e $f ]] && ! grep -qF "$SLURM_MARK" "$f"; then
      die "$f exists and was not written by this script; move it away"
    fi
  done
  ensure_gpu_nodes
  for f in "$SLURM_CONF" "$CGROUP_CONF" "$GRES_CONF"; do
    case $f in
      "$SLURM_CONF") want=$(slurm_conf_text) ;;
      "$CGROUP_CONF") want=$(cgroup_conf_text) ;;
      *) want=$(gres_conf_text) ;;
    esac
    if [[ ! -f $f || $(<"$f") != "$want" ]]; then
      log "writing $f"
      printf '%s\n' "$want" >"$f.tmp"
      chmod 0644 "$f.tmp"
      mv -f "$f.tmp" "$f"
      changed=1
    fi
  done

  local ctld d
  ctld=$(read_pid "$SLURMCTLD_PIDFILE")
  d=$(read_pid "$SLURMD_PIDFILE")
  if [[ -n $ctld ]] && ! pid_is "$ctld" "$(exe "$SLURMCTLD")"; then rm -f "$SLURMCTLD_PIDFILE"; ctld=; fi
  if [[ -n $d ]] && ! pid_is "$d" "$(exe "$SLURMD")"; then rm -f "$SLURMD_PIDFILE"; d=; fi
  if ((changed)) && [[ -n $ctld$d ]]; then
    log "slurm.conf changed: restarting the slurm daemons started by testbed"
    stop_pid slurmd "$SLURMD_PIDFILE" "$(exe "$SLURMD")"
    stop_pid slurmctld "$SLURMCTLD_PIDFILE" "$(exe "$SLURMCTLD")"
    ctld= d=
  fi
  if [[ -z $ctld ]]; then
    local other
    other=$(read_pid "$SLURM_DIR/run/slurmctld.pid")
    if [[ -n $other ]] && pid_is "$other" "$(exe "$SLURMCTLD")"; then
      die "slurmctld pid $other runs but was not started by testbed; stop it first"
    fi
    log "starting slurmctld (log $SLURM_DIR/log/slurmctld.log)"
    rm -f "$SLURM_DIR/run/slurmctld.pid"
    setsid "$SLURMCTLD" 9>&- </dev/null >/dev/null 2>&1 || die "slurmctld did not start"
    wait_pidfile "$SLURM_DIR/run/slurmctld.pid" "$(exe "$SLURMCTLD")" >"$SLURMCTLD_PIDFILE" \
      || { tail -n 30 "$SLURM_DIR/log/slurmctld.log" >&2 || true; die "slurmctld did not stay up"; }
  fi
  if [[ -z $d ]]; then
    local other
    other=$(read_pid "$SLURM_DIR/run/slurmd.pid")
    if [[ -n $other ]] && pid_is "$other" "$(exe "$SLURMD")"; then
      die "slurmd pid $other runs but was not started by testbed; stop it first"
    fi
    log "starting slurmd (log $SLURM_DIR/log/slurmd.log)"
    rm -f "$SLURM_DIR/run/slurmd.pid"
    setsid "$SLURMD" 9>&- </dev/null >/dev/null 2>&1 || die "slurmd did not start"
    wait_pidfile "$SLURM_DIR/run/slurmd.pid" "$(exe "$SLURMD")" >"$SLURMD_PIDFILE" \
      || { tail -n 30 "$SLURM_DIR/log/slurmd.log" >&2 || true; die "slurmd did not stay up"; }
  fi

  local i st resumed=0
  for ((i = 0; i < 120; i++)); do
    st=$(slurm_state)
    case $st in
      idle | mixed | allocated) break ;;
      down* | drain* | drained*)
        if ((!resumed && i >= 8)); then
          log "node is $st: resuming it"
          scontrol update NodeName="$(slurm_host)" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.25
  done
  case $st in
    idle | mixed | allocated) ;;
    *)
      tail -n 20 "$SLURM_DIR/log/slurmctld.log" "$SLURM_DIR/log/slurmd.log" >&2 || true
      die "slurm node state is '${st:-no answer}', not idle, after 30 s"
      ;;
  esac
  log "slurm up: node $(slurm_host) $st"
}

# wait_pidfile FILE EXE: print the pid in FILE once it names a live EXE
wait_pidfile() {
  local f=$1 exe=$2 i pid
  for ((i = 0; i < 80; i++)); do
    pid=$(read_pid "$f")
    if [[ -n $pid ]] && pid_is "$pid" "$exe"; then
      sleep 0.5
      pid_is "$pid" "$exe" || return 1
      echo "$pid"
      return 0
    fi
    sleep 0.25
  done
  return 1
}

# ---------------------------------------------------------------------------
# 7. Slurm 24.11 beside it, in a trixie tree (tests/setup/slurm24.sh)
# ---------------------------------------------------------------------------
# shellcheck source=tests/setup/slurm24.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm24.sh"
slurm24_wanted() { [[ ${BERTH_TESTBED_SLURM24:-1} != 0 ]]; }

# ---------------------------------------------------------------------------
# 8. Parsl: an image and a host venv with one pinned Parsl (tests/setup/parsl.sh)
# ---------------------------------------------------------------------------
# shellcheck source=tests/setup/parsl.sh
source "$(dirname "${BASH_SOURCE[0]}")/parsl.sh"

# ---------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------
cmd_up() {
  need_root
  lock
  local t0=$SECONDS
  IMAGES_BUILT=0
  ensure_packages
  ensure_dockerd
  ensure_users
  ensure_trees
  ensure_images
  verify_images
  smoke_test
  PARSL_SUMMARY=
  if parsl_wanted; then ensure_parsl; fi
  ensure_slurm   # after ensure_users: slurmctld caches group lists
  if slurm24_wanted; then ensure_slurm24; fi
  local pid how
  pid=$(read_pid "$DOCKERD_PIDFILE")
  if [[ -n $pid ]]; then how="started by testbed, pid $pid"; else how="not started by testbed"; fi
  printf 'testbed up: docker %s (%s); %d users, %d groups; trees under /storage1 /storage1x /scratch1 /var/tmp/berth; %d images (%d built now); %ds\n' \
    "$("$DOCKER" version -f '{{.Server.Version}}')" "$how" "${#USERS_SPEC[@]}" \
    "${#GROUPS_SPEC[@]}" "${#IMAGES_SPEC[@]}" "$IMAGES_BUILT" $((SECONDS - t0))
  printf 'testbed up: slurm %s, node %s %s (munged pid %s, slurmctld pid %s, slurmd pid %s)\n' \
    "$(sinfo -V 2>/dev/null | awk '{print $2}')" "$(slurm_host)" "$(slurm_state)" \
    "$(read_pid "$MUNGED_PIDFILE")" "$(read_pid "$SLURMCTLD_PIDFILE")" "$(read_pid "$SLURMD_PIDFILE")"
  if slurm24_wanted; then
    printf 'testbed up: slurm %s in %s, node %s %s (ports %s)\n' \
      "$(s24_in sinfo -V 2>/dev/null | awk '{print $2}')" "$S24_ROOT" "$S24_NODE" "$(s24_state)" "${S24_PORTS[*]}"
  fi
  if [[ -n $PARSL_SUMMARY ]]; then printf 'testbed up: %s\n' "$PARSL_SUMMARY"; fi
}

# stop_pid NAME PIDFILE EXE
stop_pid() {
  local what=$1 file=$2 exe=$3 pid i
  pid=$(read_pid "$file")
  [[ -n $pid ]] || return 0
  if ! pid_is "$pid" "$exe"; then
    log "$what pid $pid already gone"
    rm -f "$file"
    return 0
  fi
  log "stopping $what pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 80; i++)); do
    pid_is "$pid" "$exe" || break
    sleep 0.25
  done
  if pid_is "$pid" "$exe"; then
    log "$what pid $pid still alive after 20 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$file"
}

cmd_down() {
  need_root
  lock
  local had=0
  [[ -s $DOCKERD_PIDFILE || -s $CONTAINERD_PIDFILE ]] && had=1
  [[ -s $SLURMD_PIDFILE || -s $SLURMCTLD_PIDFILE || -s $MUNGED_PIDFILE ]] && had=1
  # Slurm first (its steps may hold containers), then munge, then the engine.
  [[ -d $S24_ROOT/proc ]] && mountpoint -q "$S24_ROOT/proc" && had=1
  stop_slurm24
  stop_pid slurmd "$SLURMD_PIDFILE" "$(exe "$SLURMD")"
  stop_pid slurmctld "$SLURMCTLD_PIDFILE" "$(exe "$SLURMCTLD")"
  stop_pid munged "$MUNGED_PIDFILE" "$MUNGED"
  stop_pid dockerd "$DOCKERD_PIDFILE" "$DOCKERD"
  # dockerd stops its supervised containerd itself; only clean up a leftover.
  stop_pid containerd "$CONTAINERD_PIDFILE" /usr/bin/containerd
  if ((had)); then echo "testbed down: stopped daemons started by testbed"; else
    echo "testbed down: nothing started by testbed is running"; fi
}

cmd_status() {
  local pid c rc=0
  pid=$(read_pid "$DOCKERD_PIDFILE")
  c=$(read_pid "$CONTAINERD_PIDFILE")
  if docker_ok; then
    local ver
    ver=$("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo '?')
    if [[ -n $pid ]] && pid_is "$pid" "$DOCKERD"; then
      echo "dockerd:    up, docker $ver, started by testbed (pid $pid${c:+, containerd pid $c})"
    else
      echo "dockerd:    up, docker $ver, NOT started by testbed"
    fi
  else
    echo "dockerd:    down${pid:+ (stale pid file: $pid)}"
    rc=1
  fi
  echo "docker-init: $(command -v docker-init || echo missing)"
  local s name miss=()
  for s in "${USERS_SPEC[@]}"; do
    name=${s%% *}
    getent passwd "$name" >/dev/null || miss+=("$name")
  done
  if ((${#miss[@]})); then echo "users:      missing ${miss[*]}"; rc=1; else
    echo "users:      ${#USERS_SPEC[@]} present ($(for s in "${USERS_SPEC[@]}"; do set -- $s; printf '%s=%s ' "$1" "$2"; done))"; fi
  miss=()
  for s in /storage1/fs1/alice/hello.txt /storage1/fs1/bob-private/open/secret.txt \
    /storage1/fs1/shared /scratch1/fs1/alice /storage1x/fs1/alice /var/tmp/berth; do
    [[ -e $s ]] || miss+=("$s")
  done
  if ((${#miss[@]})); then echo "trees:      missing ${miss[*]}"; rc=1; else echo "trees:      present"; fi
  if docker_ok; then
    miss=()
    local have=()
    for s in "${IMAGES_SPEC[@]}"; do
      name=${s%%|*}
      if "$DOCKER" image inspect "$name" >/dev/null 2>&1; then have+=("$name"); else miss+=("$name"); fi
    done
    echo "images:     ${#have[@]}/${#IMAGES_SPEC[@]} present${miss:+; missing ${miss[*]}}"
    ((${#miss[@]} == 0)) || rc=1
  else
    echo "images:     unknown (engine down)"
  fi
  local m ctld d st
  m=$(read_pid "$MUNGED_PIDFILE"); ctld=$(read_pid "$SLURMCTLD_PIDFILE"); d=$(read_pid "$SLURMD_PIDFILE")
  if munge_ok; then echo "munged:     up${m:+, started by testbed (pid $m)}"; else echo "munged:     down"; rc=1; fi
  st=$(slurm_state)
  if [[ $st == idle || $st == mixed || $st == allocated ]]; then
    echo "slurm:      node $(slurm_host) $st${ctld:+, slurmctld pid $ctld}${d:+, slurmd pid $d}"
  else
    echo "slurm:      ${st:-down}${ctld:+ (slurmctld pid $ctld)}${d:+ (slurmd pid $d)}"
    rc=1
  fi
  if slurm24_wanted; then
    st=$(s24_state)
    if [[ $st == idle || $st == mixed || $st == allocated ]]; then
      echo "slurm 24.11: node $S24_NODE $st (trixie tree $S24_ROOT)"
    else
      echo "slurm 24.11: ${st:-down} (trixie tree $S24_ROOT)"; rc=1
    fi
  fi
  parsl_status || rc=1
  return $rc
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
