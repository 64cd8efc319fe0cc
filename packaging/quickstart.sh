#!/usr/bin/env bash
# Install berth on this node and run a real job with it:
#   sudo bash packaging/quickstart.sh
# Installs Debian's docker.io engine and starts it, builds small local test
# images (no registry needed), creates demo users and GPFS-like directories
# (/storage1/fs1, /scratch1/fs1), builds and installs berth to
# /usr/local/bin, installs /etc/berth/policy.toml if there is none, starts
# the broker (berth daemon) unless one answers, and runs a job as the
# unprivileged user berth-alice (not in the docker group), showing `id` from
# inside the container.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "quickstart: run as root" >&2; exit 1; }

bash tests/setup/testbed.sh up
cargo build --release --locked
install -D -m 0755 target/release/berth /usr/local/bin/berth
install -d -m 0755 /etc/berth
if [ ! -e /etc/berth/policy.toml ]; then
  install -m 0644 policy/quickstart.toml /etc/berth/policy.toml
fi
berth policy check /etc/berth/policy.toml

# The broker: unprivileged users start containers through it. Under systemd
# this is `systemctl enable --now berth`; here it is started by hand.
sock=/run/berth/berth.sock
if ! python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])" "$sock" 2>/dev/null; then
  setsid /usr/local/bin/berth daemon </dev/null >>/var/log/berth-daemon.log 2>&1 &
  echo $! > /run/berth-quickstart-daemon.pid
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  echo "== started the broker (pid $(cat /run/berth-quickstart-daemon.pid); stop it with: kill \$(cat /run/berth-quickstart-daemon.pid))"
fi

echo
echo "== a job as berth-alice (uid $(id -u berth-alice), groups: $(id -Gn berth-alice)), submitted from /storage1/fs1/alice:"
cd /storage1/fs1/alice
runuser -u berth-alice -- env -i LSB_JOBID=1 LSB_CONTAINER_IMAGE=berth-test/busybox:1 \
  /usr/local/bin/berth run -- 'id; echo "workdir: $(pwd)"; ls -ld /tmp'
echo "== berth explain shows the plan without running it:"
runuser -u berth-alice -- env -i LSB_JOBID=2 LSB_CONTAINER_IMAGE=berth-test/busybox:1 \
  /usr/local/bin/berth explain -- 'id'
