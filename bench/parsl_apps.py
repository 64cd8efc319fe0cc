#!/usr/bin/env python3
"""Parsl app throughput: each app `true` in a fresh container, through berth
versus plain `docker run` as root, on one machine, in one run.

    sudo python3 bench/parsl_apps.py [--apps 64] [--runs 5] [--berth target/release/berth]

Needs the test bed (tests/setup/testbed.sh up: the Parsl venv and images).
Both sides are the same Parsl workflow (wrapper/parsl/), a
HighThroughputExecutor with a LocalProvider at Parsl's default worker count
(one per core), `--apps` bash_apps submitted at once after a warm-up app:

* berth: as berth-alice (not in the docker group), each app's command is
  `berth_parsl.berth_command("true", image=IMAGE)`, i.e. `berth run` through
  the broker (network none, per-job /tmp, the user's uid and groups);
* docker: as root, each app's command is
  `docker run --rm --init --network=none --user 2001:2001 IMAGE true`
  (Debian's docker CLI, what a site without berth would have a bash_app run).

The two alternate, `--runs` times each; it prints apps per second (median)
and the ratio berth/docker (above 1: berth is faster).
"""
import argparse, json, os, shlex, shutil, statistics, subprocess, sys, tempfile, time

VENV = "/var/lib/berth-testbed/parsl-venv"
HERE = os.path.dirname(os.path.abspath(__file__))
WRAPPER = os.path.join(HERE, "..", "wrapper", "parsl")


def driver(a):
    """One timed workflow (run as the bench's user, in the Parsl venv)."""
    sys.path.insert(0, a.wrapper)
    import parsl
    from parsl.app.app import bash_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider
    import berth_parsl

    if a.kind == "berth":
        cmd = berth_parsl.berth_command("true", image=a.image, berth=a.berth, policy=a.policy)
    else:
        cmd = f"/usr/bin/docker run --rm --init --network=none --user 2001:2001 {shlex.quote(a.image)} true"

    @bash_app
    def app(command):
        return command

    htex = HighThroughputExecutor(label="htex", address="127.0.0.1",
                                  provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                                         worker_init=f"export PYTHONPATH={a.wrapper}"))
    parsl.load(Config(executors=[htex], run_dir=os.path.join(os.getcwd(), f"runinfo-{a.kind}"), strategy="none"))
    try:
        app(cmd).result()  # warm-up: workers up, image facts cached
        t = time.perf_counter()
        futures = [app(cmd) for _ in range(a.apps)]
        for f in futures:
            f.result()
        wall = time.perf_counter() - t
        # No max_workers_per_node: the pool starts one worker per core.
        workers = len(os.sched_getaffinity(0))
    finally:
        parsl.dfk().cleanup()
    print(json.dumps({"wall": wall, "apps": a.apps, "workers": workers}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--berth", default="target/release/berth")
    ap.add_argument("--image", default="berth-test/busybox:1")
    ap.add_argument("--driver", choices=["berth", "docker"], dest="kind")
    ap.add_argument("--policy")
    ap.add_argument("--wrapper", default=WRAPPER)
    a = ap.parse_args()
    if a.kind:
        return driver(a)

    work = tempfile.mkdtemp(prefix="berth-bench-parsl-")
    os.chmod(work, 0o755)
    berth = os.path.join(work, "berth")
    shutil.copy(os.path.abspath(a.berth), berth)
    os.chmod(berth, 0o755)
    wrapper = os.path.join(work, "parsl")
    shutil.copytree(os.path.abspath(WRAPPER), wrapper)
    os.system(f"chmod -R a+rX {shlex.quote(wrapper)}")
    policy = os.path.join(work, "policy.toml")
    with open(policy, "w") as f:
        f.write(f"""
[cgroup]
require_job = false
[images]
allow = ["docker.io/berth-test/*"]
facts_cache = "{work}/facts"
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[tmp]
base = "{work}/jobs"
[audit]
log = "{work}/audit.log"
[broker]
socket = "{work}/run/berth.sock"
[mounts]
pin_dir = "{work}/run/mnt"
""")
    os.chmod(policy, 0o644)
    os.makedirs(f"{work}/run", mode=0o755)
    daemon = subprocess.Popen([berth, "--policy", policy, "daemon"], stdin=subprocess.DEVNULL,
                              stderr=open(f"{work}/daemon.log", "w"))
    for _ in range(100):
        if os.path.exists(f"{work}/run/berth.sock"):
            break
        time.sleep(0.05)
    rundir = tempfile.mkdtemp(prefix="bench-parsl-", dir="/storage1/fs1/alice")
    os.chown(rundir, 2001, 2001)
    me = os.path.abspath(__file__)
    base = [f"{VENV}/bin/python3", me, "--apps", str(a.apps), "--image", a.image, "--wrapper", wrapper,
            "--berth", berth, "--policy", policy]
    env = {"PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": rundir}

    def once(kind):
        pre = ["/usr/sbin/runuser", "-u", "berth-alice", "--"] if kind == "berth" else []
        out = subprocess.run(pre + base + ["--driver", kind], env=env, cwd=rundir,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if out.returncode != 0:
            sys.exit(f"bench/parsl_apps.py: the {kind} run failed:\n{out.stderr.decode()[-3000:]}")
        return json.loads(out.stdout.decode().strip().splitlines()[-1])

    rates = {"berth": [], "docker": []}
    workers = None
    try:
        for _ in range(a.runs):
            for kind in ("docker", "berth"):
                r = once(kind)
                rates[kind].append(r["apps"] / r["wall"])
                workers = r["workers"]
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    b, d = statistics.median(rates["berth"]), statistics.median(rates["docker"])
    print(f"parsl apps/s ({a.apps} apps of `true`, {workers} workers, median of {a.runs}): "
          f"berth {b:.2f}, docker run {d:.2f}, ratio berth/docker {b / d:.3f}")
    print("  berth runs:  " + " ".join(f"{x:.2f}" for x in rates["berth"]))
    print("  docker runs: " + " ".join(f"{x:.2f}" for x in rates["docker"]))


if __name__ == "__main__":
    main()
