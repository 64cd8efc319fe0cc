# shellcheck shell=bash
# Sourced by tests/setup/testbed.sh: one Parsl, twice.
#
#   berth-test/parsl:1                Debian 12 (bookworm, minbase) with
#                                     python3 and a venv /opt/parsl holding
#                                     parsl==$PARSL_VERSION, `docker import`ed
#                                     (no registry); the workers' image.
#   /var/lib/berth-testbed/parsl-venv the same Parsl in a venv of the host's
#                                     /usr/bin/python3; the test users run
#                                     the DataFlowKernel and interchange from it.
#
# Parsl's interchange refuses a worker whose Python major.minor or Parsl
# version differ from its own, so both are installed from one set of wheels
# (downloaded once, with the host's pip, into /var/lib/berth-testbed/parsl-wheels)
# with `pip install --no-index`, and both Pythons are Debian 12's 3.11.
# Every part is cached, with its recipe's hash beside it, and rebuilt when
# the hash changes: the wheels (PARSL_VERSION), the debootstrapped tree, the
# image (label $RECIPE_LABEL) and the venv (a marker file written last).
# BERTH_TESTBED_REBUILD=1 re-imports the image and rebuilds the venv.

readonly PARSL_VERSION=2026.10.26
readonly PARSL_IMAGE=berth-test/parsl:1
readonly PARSL_IMAGE_ROOT=/var/lib/berth-testbed/parsl-image
readonly PARSL_VENV=/var/lib/berth-testbed/parsl-venv
readonly PARSL_WHEELS=/var/lib/berth-testbed/parsl-wheels
# Parsl's dependencies pinned too, with their wheels' hashes: a fresh
# machine gets the set a cached one has, whatever PyPI released since.
PARSL_REQUIREMENTS=$(dirname "${BASH_SOURCE[0]}")/parsl-requirements.txt
readonly PARSL_REQUIREMENTS
readonly PARSL_MIRROR=${BERTH_TESTBED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly PARSL_SUITE=bookworm
readonly PARSL_IMAGE_PACKAGES=python3,python3-venv
readonly PARSL_HOST_PACKAGES=(python3 python3-venv)
readonly PARSL_IMAGE_PATH=/opt/parsl/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The image's "parsl <version> python <x.y.z>", for `status` and the checks.
readonly PARSL_INFO_LABEL=org.berth.testbed.parsl
readonly PARSL_LOG=/var/log/berth-testbed-parsl.log
# What every build step's python and pip run with: nothing of the caller's
# (PYTHONPATH, PIP_FIND_LINKS, a user site), no pip cache.
readonly PARSL_CLEAN_ENV=(/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONNOUSERSITE=1)
# Prints "X.Y.Z" of the python it runs in.
readonly PARSL_PYVER='import sys; print("%d.%d.%d" % sys.version_info[:3])'
# Prints "X.Y.Z PARSL name==version…" (pip and setuptools left out: a
# venv's own, not Parsl's) of the python it runs in.
readonly PARSL_PROBE='import sys, importlib.metadata as m, parsl
d = sorted({"%s==%s" % (x.metadata["Name"].lower(), x.version) for x in m.distributions()})
print("%d.%d.%d" % sys.version_info[:3], parsl.__version__, " ".join(x for x in d if x.split("==")[0] not in ("pip", "setuptools")))'

parsl_wanted() { [[ ${BERTH_TESTBED_PARSL:-1} != 0 ]]; }
parsl_mm() { echo "${1%.*}"; }   # 3.11.2 -> 3.11
parsl_forced() { [[ ${BERTH_TESTBED_REBUILD:-0} == 1 ]]; }

parsl_no_mounts() {
  local left
  left=$(awk -v r="$1/" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | head -n 3)
  [[ -z $left ]] || die "still mounted under $1 (${left//$'\n'/, }): unmount it first"
}

parsl_host_python() {
  local missing=() p
  for p in "${PARSL_HOST_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_retry update -q || die "apt-get update failed"
    apt_retry install -y -q --no-install-recommends "${PARSL_HOST_PACKAGES[@]}" || die "apt-get install ${PARSL_HOST_PACKAGES[*]} failed"
  fi
  [[ -x /usr/bin/python3 ]] || die "/usr/bin/python3 missing after installing python3"
  PARSL_HOST_PY=$("${PARSL_CLEAN_ENV[@]}" /usr/bin/python3 -I -c "$PARSL_PYVER") || die "/usr/bin/python3 does not run"
}

# The wheels of parsl==$PARSL_VERSION and its dependencies for the host's
# python (binary only: nothing is built), fetched with a throwaway venv's
# pip (the host needs no python3-pip). The caller's pip settings (index,
# proxy, certificate) apply to this one download. $PARSL_WHEELS/.digest:
# the set's hash, part of every recipe below.
ensure_parsl_wheels() {
  local want tmp=$PARSL_WHEELS.tmp mark=$PARSL_WHEELS/.berth-testbed-wheels
  [[ -f $PARSL_REQUIREMENTS ]] || die "$PARSL_REQUIREMENTS is missing"
  grep -qx "parsl==$PARSL_VERSION --hash=sha256:[0-9a-f]*" "$PARSL_REQUIREMENTS" \
    || die "$PARSL_REQUIREMENTS does not pin parsl==$PARSL_VERSION"
  want="python$(parsl_mm "$PARSL_HOST_PY") only-binary v2 $(sha256sum <"$PARSL_REQUIREMENTS" | cut -c1-16)"
  if [[ -f $mark && $(<"$mark") == "$want" && -s $PARSL_WHEELS/.digest ]]; then
    PARSL_DIGEST=$(<"$PARSL_WHEELS/.digest")
    return 0
  fi
  log "downloading parsl==$PARSL_VERSION and its dependencies (wheels) from PyPI into $PARSL_WHEELS"
  rm -rf "$tmp"
  install -d -m 0755 "$tmp"
  "${PARSL_CLEAN_ENV[@]}" /usr/bin/python3 -m venv "$tmp/.pip" >>"$PARSL_LOG" 2>&1 \
    || die "python3 -m venv failed (log $PARSL_LOG)"
  env -u PYTHONPATH -u PYTHONHOME -u PIP_FIND_LINKS -u PIP_NO_INDEX -u PIP_NO_BINARY PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$tmp/.pip/bin/python3" -m pip download --no-cache-dir --only-binary=:all: --no-deps --require-hashes \
      -d "$tmp" -r "$PARSL_REQUIREMENTS" \
    >>"$PARSL_LOG" 2>&1 \
    || { tail -n 20 "$PARSL_LOG" >&2; die "pip download parsl==$PARSL_VERSION failed (log $PARSL_LOG)"; }
  rm -rf "$tmp/.pip"
  [[ -n $(compgen -G "$tmp/parsl-$PARSL_VERSION-*.whl") ]] || die "no parsl $PARSL_VERSION wheel downloaded"
  (cd "$tmp" && sha256sum -- *.whl) | sha256sum | cut -c1-16 >"$tmp/.digest"
  printf '%s\n' "$want" >"$tmp/.berth-testbed-wheels"
  chmod -R a+rX,go-w "$tmp"
  rm -rf "$PARSL_WHEELS"
  mv "$tmp" "$PARSL_WHEELS"
  PARSL_DIGEST=$(<"$PARSL_WHEELS/.digest")
  log "wheels: $(cd "$PARSL_WHEELS" && printf '%s\n' *.whl | sed 's/-py.*\|-cp.*//' | paste -sd ' ')"
}

# The recipes (hashes) of the tree, the image and the venv.
parsl_recipes() {
  PARSL_TREE_WANT=$({ declare -f parsl_build_tree; echo "$PARSL_SUITE $PARSL_IMAGE_PACKAGES minbase $PARSL_VERSION $PARSL_DIGEST"; } \
    | sha256sum | cut -c1-16)
  PARSL_IMAGE_WANT=$({ echo "$PARSL_TREE_WANT"; declare -f parsl_import_image; echo "$PARSL_IMAGE_PATH"; } \
    | sha256sum | cut -c1-16)
  PARSL_VENV_WANT=$({ declare -f parsl_build_venv; echo "$PARSL_VERSION $PARSL_DIGEST $PARSL_HOST_PY"; } \
    | sha256sum | cut -c1-16)
}

# The image's tree: debootstrapped into $PARSL_IMAGE_ROOT.tmp, the venv
# /opt/parsl made and filled by the tree's own python (chroot, no /proc,
# no network: nothing to mount or clean up), then renamed into place.
parsl_build_tree() {
  local tmp=$PARSL_IMAGE_ROOT.tmp mark=.berth-testbed-tree py
  if [[ -f $PARSL_IMAGE_ROOT/$mark && $(<"$PARSL_IMAGE_ROOT/$mark") == "$PARSL_TREE_WANT" ]]; then return 0; fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt_retry install -y -q --no-install-recommends debootstrap || die "apt-get install debootstrap failed"
  }
  log "debootstrapping the Parsl image's tree (Debian 12, python3) into $PARSL_IMAGE_ROOT (~1 min)"
  parsl_no_mounts "$tmp"
  parsl_no_mounts "$PARSL_IMAGE_ROOT"
  rm -rf --one-file-system "$tmp"
  debootstrap --variant=minbase --include="$PARSL_IMAGE_PACKAGES" "$PARSL_SUITE" "$tmp" "$PARSL_MIRROR" \
    >/var/log/berth-testbed-debootstrap-parsl.log 2>&1 \
    || { tail -n 20 /var/log/berth-testbed-debootstrap-parsl.log >&2; die "debootstrap of the Parsl image failed (log /var/log/berth-testbed-debootstrap-parsl.log)"; }
  py=$(chroot "$tmp" "${PARSL_CLEAN_ENV[@]}" /usr/bin/python3 -I -c "$PARSL_PYVER") || die "python3 does not run in $tmp"
  [[ $(parsl_mm "$py") == $(parsl_mm "$PARSL_HOST_PY") ]] \
    || die "Python of the Parsl image ($py, Debian $PARSL_SUITE) and of the host's /usr/bin/python3 ($PARSL_HOST_PY) differ in major.minor: Parsl's interchange would refuse the image's workers"
  install -d -m 0755 "$tmp/opt/imgwork"
  install -d -m 0755 "$tmp/tmp/berth-parsl-wheels"
  cp "$PARSL_WHEELS"/*.whl "$tmp/tmp/berth-parsl-wheels/"
  cp "$PARSL_REQUIREMENTS" "$tmp/tmp/berth-parsl-wheels/requirements.txt"
  {
    chroot "$tmp" "${PARSL_CLEAN_ENV[@]}" /usr/bin/python3 -m venv /opt/parsl \
      && chroot "$tmp" "${PARSL_CLEAN_ENV[@]}" /opt/parsl/bin/python3 -m pip install --no-index \
        --find-links /tmp/berth-parsl-wheels --require-hashes -r /tmp/berth-parsl-wheels/requirements.txt
  } >>"$PARSL_LOG" 2>&1 || { tail -n 20 "$PARSL_LOG" >&2; die "installing parsl in the image's tree failed (log $PARSL_LOG)"; }
  # What an image does not carry: the wheels, apt's and pip's caches, logs,
  # manual pages and message translations (~40 MB; /usr/share/doc stays).
  rm -rf "$tmp/tmp/berth-parsl-wheels" "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/cache/apt/*.bin \
    "$tmp"/var/lib/apt/lists/* "$tmp"/var/log/*.log "$tmp"/root/.cache \
    "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/*
  printf '%s\n' "$py" >"$tmp/.berth-testbed-python"
  printf '%s\n' "$PARSL_TREE_WANT" >"$tmp/$mark"
  rm -rf --one-file-system "$PARSL_IMAGE_ROOT"
  mv "$tmp" "$PARSL_IMAGE_ROOT"
}

parsl_import_image() {
  local py old_id
  py=$(<"$PARSL_IMAGE_ROOT/.berth-testbed-python")
  old_id=$("$DOCKER" image inspect -f '{{.Id}}' "$PARSL_IMAGE" 2>/dev/null || true)
  tar --numeric-owner --exclude=./.berth-testbed-tree --exclude=./.berth-testbed-python -C "$PARSL_IMAGE_ROOT" -c . \
    | "$DOCKER" import --change 'WORKDIR /opt/imgwork' --change 'CMD ["/bin/sh"]' \
      --change "ENV PATH=$PARSL_IMAGE_PATH" \
      --change "LABEL $RECIPE_LABEL=$PARSL_IMAGE_WANT" \
      --change "LABEL $PARSL_INFO_LABEL=\"parsl $PARSL_VERSION python $py\"" - "$PARSL_IMAGE" >/dev/null \
    || die "docker import of $PARSL_IMAGE failed"
  if [[ -n $old_id ]]; then "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true; fi
}

# The image's labels "recipe|info".
parsl_image_labels() {
  "$DOCKER" image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}|{{index .Config.Labels \"$PARSL_INFO_LABEL\"}}" \
    "$PARSL_IMAGE" 2>/dev/null || true
}

ensure_parsl_image() {
  local have
  have=$(parsl_image_labels)
  if [[ ${have%%|*} == "$PARSL_IMAGE_WANT" ]] && ! parsl_forced; then return 0; fi
  parsl_build_tree
  if [[ -n ${have%%|*} ]]; then log "rebuilding $PARSL_IMAGE (recipe changed or forced)"; else log "building $PARSL_IMAGE"; fi
  parsl_import_image
  PARSL_BUILT=1
}

# The host's venv. A venv has its path written into its scripts (parsl's
# interchange.py and process_worker_pool.py are run by that path), so it
# is built in place, after removing the old one; the marker, written
# last, says it is complete.
parsl_build_venv() {
  log "building $PARSL_VENV (parsl $PARSL_VERSION, /usr/bin/python3 $PARSL_HOST_PY)"
  parsl_no_mounts "$PARSL_VENV"
  rm -rf --one-file-system "$PARSL_VENV"
  install -d -m 0755 "${PARSL_VENV%/*}"
  {
    "${PARSL_CLEAN_ENV[@]}" /usr/bin/python3 -m venv "$PARSL_VENV" \
      && "${PARSL_CLEAN_ENV[@]}" "$PARSL_VENV/bin/python3" -m pip install --no-index \
        --find-links "$PARSL_WHEELS" --require-hashes -r "$PARSL_REQUIREMENTS"
  } >>"$PARSL_LOG" 2>&1 || { tail -n 20 "$PARSL_LOG" >&2; die "building $PARSL_VENV failed (log $PARSL_LOG)"; }
  chown -R root:root "$PARSL_VENV"
  chmod -R u+rwX,go+rX,go-w "$PARSL_VENV"
}

ensure_parsl_venv() {
  local mark=$PARSL_VENV/.berth-testbed-venv
  if [[ -f $mark && $(<"$mark") == "$PARSL_VENV_WANT" ]] && ! parsl_forced; then return 0; fi
  parsl_build_venv
  printf '%s\n' "$PARSL_VENV_WANT" >"$mark.tmp"
  chmod 0644 "$mark.tmp"
  mv -f "$mark.tmp" "$mark"
  PARSL_BUILT=1
}

# Both sides, as the test user would run them: the pinned Parsl, one
# Python major.minor, the same distributions.
parsl_verify() {
  local img host
  img=$("$DOCKER" run --rm --user 2001:2001 "$PARSL_IMAGE" python3 -c "$PARSL_PROBE" 2>&1) \
    || die "$PARSL_IMAGE: python3 -c 'import parsl' as 2001:2001 failed: $img"
  host=$(cd / && runuser -u berth-alice -- "$PARSL_VENV/bin/python3" -c "$PARSL_PROBE" 2>&1) \
    || die "$PARSL_VENV: python3 -c 'import parsl' as berth-alice failed: $host"
  local ipy iparsl idists hpy hparsl hdists
  read -r ipy iparsl idists <<<"$img"
  read -r hpy hparsl hdists <<<"$host"
  [[ $iparsl == "$PARSL_VERSION" ]] || die "$PARSL_IMAGE has parsl '$iparsl', not $PARSL_VERSION"
  [[ $hparsl == "$PARSL_VERSION" ]] || die "$PARSL_VENV has parsl '$hparsl', not $PARSL_VERSION"
  [[ $(parsl_mm "$ipy") == $(parsl_mm "$hpy") ]] \
    || die "Python of $PARSL_IMAGE ($ipy) and of $PARSL_VENV ($hpy) differ in major.minor: Parsl's interchange would refuse the image's workers"
  [[ $idists == "$hdists" ]] || die "$PARSL_IMAGE and $PARSL_VENV hold different distributions: image '$idists', venv '$hdists'"
  PARSL_SUMMARY="parsl $PARSL_VERSION: image $PARSL_IMAGE (python $ipy), venv $PARSL_VENV (python $hpy)"
}

ensure_parsl() {
  install -d -m 0755 /var/lib/berth-testbed
  parsl_host_python
  ensure_parsl_wheels
  parsl_recipes
  local built=0 info
  # (Not `if ensure_…`: that would turn off set -e inside the builders.)
  PARSL_BUILT=0
  ensure_parsl_image
  # The image's Python, from its label (a cached image's tree may be gone).
  info=$(parsl_image_labels)
  info=${info#*|}
  [[ $info == "parsl $PARSL_VERSION python "* ]] || die "$PARSL_IMAGE: label $PARSL_INFO_LABEL is '$info'"
  [[ $(parsl_mm "${info##* }") == $(parsl_mm "$PARSL_HOST_PY") ]] \
    || die "Python of $PARSL_IMAGE (${info##* }) and of the host's /usr/bin/python3 ($PARSL_HOST_PY) differ in major.minor: Parsl's interchange would refuse the image's workers"
  ensure_parsl_venv
  built=$PARSL_BUILT
  parsl_verify
  ((built)) && log "$PARSL_SUMMARY; image $("$DOCKER" image inspect -f '{{.Size}}' "$PARSL_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
  return 0
}

# One line for `testbed.sh status`; returns 1 if something is missing.
parsl_status() {
  local img venv v py rc=0 labels
  if ! parsl_wanted; then echo "parsl:      left out (BERTH_TESTBED_PARSL=0)"; return 0; fi
  if docker_ok; then
    labels=$(parsl_image_labels)
    if [[ -n $labels && $labels != "|" ]]; then
      img="image $PARSL_IMAGE (${labels#*|})"
      [[ ${labels#*|} == "parsl $PARSL_VERSION "* ]] || rc=1
    else
      img="image $PARSL_IMAGE missing"; rc=1
    fi
  else
    img="image unknown (engine down)"
  fi
  if [[ -s $PARSL_VENV/.berth-testbed-venv && -x $PARSL_VENV/bin/python3 ]]; then
    v=$(compgen -G "$PARSL_VENV/lib/python3*/site-packages/parsl-*.dist-info" | head -n1 || true)
    v=${v##*/parsl-}; v=${v%.dist-info}
    py=$(sed -n 's/^version *= *//p' "$PARSL_VENV/pyvenv.cfg" 2>/dev/null | head -n1)
    venv="venv $PARSL_VENV (parsl ${v:-?} python ${py:-?})"
    [[ $v == "$PARSL_VERSION" ]] || rc=1
  else
    venv="venv $PARSL_VENV missing"; rc=1
  fi
  echo "parsl:      pinned $PARSL_VERSION; $img; $venv"
  return $rc
}
