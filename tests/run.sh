#!/usr/bin/env bash
# The whole test suite, on a real Docker engine, as root:
#   sudo bash tests/run.sh
# Brings up the testbed (Debian's docker.io engine, munge and a one-node
# Slurm 22.05, a second one-node Slurm 24.11 in a Debian 13 tree, test
# users, GPFS-like trees, locally built images), runs every test (the Slurm
# tests once per Slurm), and stops the daemons it started. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: run as root (the tests create users' containers and per-job directories)" >&2
  exit 1
fi

bash tests/setup/testbed.sh up
# Stop the daemons this run started (BERTH_TESTBED_KEEP=1 leaves them up,
# for developers running the suite repeatedly).
[ -n "${BERTH_TESTBED_KEEP:-}" ] || trap 'bash tests/setup/testbed.sh down' EXIT

# Fail, never skip, when the engine or Slurm is missing.
/usr/bin/docker info >/dev/null
sinfo -h -o %T | grep -qxE 'idle|mixed|allocated'
chroot /var/lib/berth-testbed/trixie sinfo -h -o %T | grep -qxE 'idle|mixed|allocated'

cargo build --locked --all-targets
cargo test --locked --no-fail-fast -- --test-threads="${BERTH_TEST_THREADS:-4}"
# The Slurm tests again, against Slurm 24.11 (tests/setup/slurm24.sh) with
# the 23.02+ oci.conf.
BERTH_SLURM=24.11 cargo test --locked --no-fail-fast --test slurm -- --test-threads="${BERTH_TEST_THREADS:-4}"

# Build the .deb and .rpm, install the .deb, run a real job with the
# installed /usr/bin/berth, then purge it again.
bash tests/packaging.sh

# A short libFuzzer run of every fuzz target (20 s each; skipped, not
# failed, when cargo-fuzz cannot be installed in time).
bash tests/fuzz-smoke.sh
