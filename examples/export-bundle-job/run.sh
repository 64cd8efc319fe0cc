#!/usr/bin/env bash
# export -> bundle -> job: build an image locally, export a container of it
# to a flat tar, make a bundle of that tar both ways (the admin's
# `berth bundle create --from-export` as root, the user's own
# `berth bundle push --from-export`), and run one job from each bundle as
# the user, with code and data mounted from an allowed root. Checks each
# job's output file, that it ran as the user, and cleans up after itself.
#
#   sudo bash examples/export-bundle-job/run.sh
#
# Needs a broker (berth daemon) and a policy with [bundles] cache and
# [bundles] user_push = true. See README.md beside this file for the
# environment overrides.
set -euo pipefail

BERTH=${BERTH:-berth}
BERTH_POLICY=${BERTH_POLICY:-/etc/berth/policy.toml}
EXAMPLE_USER=${EXAMPLE_USER:-berth-alice}
EXAMPLE_STORAGE=${EXAMPLE_STORAGE:-/storage1/fs1}
EXAMPLE_BASE_IMAGE=${EXAMPLE_BASE_IMAGE:-berth-test/busybox:1}
EXAMPLE_JOBID=${EXAMPLE_JOBID:-$$}
DOCKER=${DOCKER:-docker}

me=export-bundle-job
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

[ "$(id -u)" -eq 0 ] || fail "run as root (admin steps run as root, the jobs as $EXAMPLE_USER)"
case $EXAMPLE_JOBID in '' | *[!0-9]*) fail "EXAMPLE_JOBID=$EXAMPLE_JOBID is not a number (it becomes LSB_JOBID)" ;; esac
berth_bin=$(command -v "$BERTH") || fail "berth not found (BERTH=$BERTH)"
docker_bin=$(command -v "$DOCKER") || fail "docker client not found (DOCKER=$DOCKER)"
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
"$docker_bin" image inspect "$EXAMPLE_BASE_IMAGE" >/dev/null 2>&1 ||
  fail "base image $EXAMPLE_BASE_IMAGE is not on this node's engine (EXAMPLE_BASE_IMAGE; the test bed builds berth-test/busybox:1)"

# Names of this run: unique per run, so two runs never share anything.
tag=berth-example/export-tool:$EXAMPLE_JOBID
site_bundle=berth-example-export-$EXAMPLE_JOBID
user_bundle=berth-example-push-$EXAMPLE_JOBID

berth() { "$berth_bin" --policy "$BERTH_POLICY" "$@"; }
# A command as the user, with a clean environment plus NAME=value pairs
# given first (as a scheduler's job starter would call berth), started in /
# (never in root's working directory).
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
# Root's own files (the build context, the export, what it reads back) are
# in a 0700 directory of its own under /tmp.
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
# The engine tags its loads of bundle NAME berth-bundle/<NAME as a docker name>.
bundle_repo() {
  local s
  s=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-')
  s=${s#-}
  s=${s%-}
  printf 'berth-bundle/%s' "${s:-x}"
}

build=''
work=''
# shellcheck disable=SC2034 # read by user_rmtree
work_by_root=no
cid=''
cleanup() {
  local rc=$?
  set +e
  [ -z "$cid" ] || "$docker_bin" rm -f "$cid" >/dev/null 2>&1
  berth bundle rm "$site_bundle" >/dev/null 2>&1
  berth bundle rm "$EXAMPLE_USER/$user_bundle" >/dev/null 2>&1
  # Untag (never remove by id: a load that was a hit tags an image that
  # others use) what this node loaded for the two bundles, then the build.
  local ref
  for repo in "$(bundle_repo "$site_bundle")" "$(bundle_repo "$EXAMPLE_USER/$user_bundle")"; do
    for ref in $("$docker_bin" images --format '{{.Repository}}:{{.Tag}}' "$repo" 2>/dev/null); do
      "$docker_bin" rmi "$ref" >/dev/null 2>&1
    done
  done
  "$docker_bin" rmi "$tag" >/dev/null 2>&1
  [ -z "$build" ] || rm -rf "$build"
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

berth bundle list >/dev/null ||
  fail "berth bundle list failed: this example needs [bundles] cache in $BERTH_POLICY (and user_push = true)"

# 1. Build an image on this node, no registry: the base image plus a tool.
build=$(mktemp -d /tmp/berth-example-build.XXXXXX)
cat >"$build/wordfreq" <<'EOF'
#!/bin/sh
# wordfreq FILE: how often each word occurs, most frequent first.
awk '{ for (i = 1; i <= NF; i++) n[$i]++ } END { for (w in n) print n[w], w }' "$1" |
  sort -k1,1nr -k2,2
EOF
cat >"$build/Dockerfile" <<EOF
FROM $EXAMPLE_BASE_IMAGE
COPY wordfreq /opt/tool/bin/wordfreq
RUN chmod 0755 /opt/tool/bin/wordfreq
EOF
say "docker build -t $tag (FROM $EXAMPLE_BASE_IMAGE)"
DOCKER_BUILDKIT=0 "$docker_bin" build -q -t "$tag" "$build" >/dev/null ||
  fail "docker build of $tag failed"

# 2. docker create + docker export: a flat root filesystem tar (no image
# config: ENV, WORKDIR and CMD are given again with --change below).
cid=$("$docker_bin" create "$tag" /bin/true)
"$docker_bin" export -o "$build/tool.tar" "$cid"
"$docker_bin" rm "$cid" >/dev/null
cid=''
[ -s "$build/tool.tar" ] || fail "docker export wrote no tar"
say "exported a container of $tag: $(wc -c <"$build/tool.tar") bytes"

changes=(--change 'ENV PATH=/opt/tool/bin:/usr/bin:/bin' --change 'ENV TOOL_HOME=/opt/tool'
  --change 'WORKDIR /opt/tool' --change 'CMD ["/bin/sh"]')

# 3a. The admin path: root publishes a site bundle from the export.
say "berth bundle create $site_bundle --from-export (as root)"
berth bundle create "$site_bundle" --from-export "$build/tool.tar" "${changes[@]}" ||
  fail "berth bundle create --from-export failed"

# The user's side: code, data and a results folder of theirs on the
# storage root, and their own copy of the tar (as if scp'd from a laptop),
# all made by the user (root only streams her the tar it exported).
user_mktemp "$EXAMPLE_STORAGE" berth-example-export work ||
  fail "cannot make a work directory in $EXAMPLE_STORAGE (EXAMPLE_STORAGE)"
as_user mkdir "$work/code" "$work/data" "$work/out-site" "$work/out-user"
user_write "$work/tool.tar" <"$build/tool.tar" || fail "cannot copy the export to $work/tool.tar as $EXAMPLE_USER"
user_write "$work/code/analyze.sh" <<'EOF'
# The job's code: count the words of the input with the image's tool.
set -eu
wordfreq "$1" > result.txt
printf 'uid=%s gid=%s user=%s tool=%s\n' "$(id -u)" "$(id -g)" "$(whoami)" "$TOOL_HOME" > whoami.txt
EOF
printf '%s\n' 'the quick brown fox' 'jumps over the lazy dog' 'the end' | user_write "$work/data/input.txt"

# 3b. The user path: the user pushes their own bundle from their tar.
say "berth bundle push $user_bundle --from-export (as $EXAMPLE_USER)"
as_user "${in_dir[@]}" "$work" "$berth_bin" --policy "$BERTH_POLICY" bundle push "$user_bundle" \
  --from-export "$work/tool.tar" "${changes[@]}" ||
  fail "berth bundle push failed as $EXAMPLE_USER (see above; users may push only with [bundles] user_push = true)"
as_user "${in_dir[@]}" "$work" "$berth_bin" --policy "$BERTH_POLICY" bundle list >"$build/list.txt" ||
  fail "berth bundle list failed as $EXAMPLE_USER"
grep -q "$EXAMPLE_USER/$user_bundle .*yours" "$build/list.txt" ||
  fail "the user's bundle list does not show $EXAMPLE_USER/$user_bundle as theirs: $(cat -v "$build/list.txt")"

expected='3 the
1 brown
1 dog
1 end
1 fox
1 jumps
1 lazy
1 over
1 quick'

# 4. One job from each bundle, as the job starter runs it.
n=0
for pair in "bundle:$site_bundle out-site" "bundle:~/$user_bundle out-user"; do
  image=${pair% *}
  out=${pair#* }
  n=$((n + 1))
  say "job $EXAMPLE_JOBID$n: LSB_CONTAINER_IMAGE=$image"
  rc=0
  as_user LSB_JOBID="$EXAMPLE_JOBID$n" LS_SUBCWD="$work" \
    LSB_CONTAINER_IMAGE="$image" \
    LSF_DOCKER_VOLUMES="$work/code:/code:ro $work/data:/data:ro $work/$out:/results" \
    LSF_DOCKER_WORKDIR=/results \
    "${in_dir[@]}" "$work" "$berth_bin" --policy "$BERTH_POLICY" run -- 'sh /code/analyze.sh /data/input.txt' || rc=$?
  [ "$rc" -eq 0 ] || fail "the job from $image exited $rc$(code_hint "$rc")"
  # Its outputs, read as the user.
  got=$(user_read "$work/$out/result.txt" 2>/dev/null) || fail "the job from $image wrote no result.txt"
  [ "$got" = "$expected" ] ||
    fail "the job from $image wrote a wrong result.txt:
$(vis "$got")
--- expected:
$expected"
  who=$(user_read "$work/$out/whoami.txt") || fail "the job from $image wrote no whoami.txt"
  [ "$who" = "uid=$uid gid=$gid user=$EXAMPLE_USER tool=/opt/tool" ] ||
    fail "the job from $image did not run as $EXAMPLE_USER ($uid:$gid) with the bundle's ENV: $(vis "$who")"
  owner=$(as_user stat -c %u:%g -- "$work/$out/result.txt")
  [ "$owner" = "$uid:$gid" ] || fail "result.txt of $image is owned by $(vis "$owner"), not $uid:$gid"
  say "  ran as $who; result.txt (owned $owner) is right"
done
