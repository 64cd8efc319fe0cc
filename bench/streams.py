#!/usr/bin/env python3
"""A job writing 1 GB to stdout: berth run versus plain docker run, on one machine.

    sudo python3 bench/streams.py [--runs 5] [--mb 1000] [--berth target/release/berth]

Needs the testbed. Both sides run `head -c N /dev/zero` in berth-test/busybox:1
as berth-alice; the reader counts bytes as fast as it can. "plain docker
run" is the `docker run` command `berth explain --json` prints for the same
job (per-job files prepared outside the timing). Interleaved; medians of
the rate in MB/s, and their ratio (berth / docker: target >= 0.80).
"""
import argparse, json, os, shutil, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--mb", type=int, default=1000)
ap.add_argument("--berth", default="target/release/berth")
ap.add_argument("--docker", default="/usr/bin/docker")
args = ap.parse_args()
berth = os.path.abspath(args.berth)
work = tempfile.mkdtemp(prefix="berth-streams-")
os.chmod(work, 0o755)
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
""")
os.chmod(policy, 0o644)
cwd = "/storage1/fs1/alice"
n = args.mb * 1_000_000
script = f"head -c {n} /dev/zero"
job = [5000]


def env():
    job[0] += 1
    return {"LSFUSER": "berth-alice", "LSB_JOBID": str(job[0]), "LSB_CONTAINER_IMAGE": "berth-test/busybox:1",
            "LS_SUBCWD": cwd, "PATH": "/usr/bin:/bin"}


def drain(argv, e):
    t = time.perf_counter()
    p = subprocess.Popen(argv, env=e, cwd=cwd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    got = 0
    while True:
        b = p.stdout.read1(1 << 20)
        if not b:
            break
        got += len(b)
    p.wait()
    dt = time.perf_counter() - t
    assert got == n and p.returncode == 0, (got, p.returncode)
    return n / dt / 1e6


def berth_rate():
    return drain([berth, "--policy", policy, "run", "--", script], env())


def docker_rate():
    e = env()
    p = json.loads(subprocess.run([berth, "--policy", policy, "explain", "--json", "--", script], env=e, cwd=cwd,
                                  check=True, capture_output=True, text=True).stdout)
    d = p["job_dir"]
    os.makedirs(os.path.join(d, "tmp"), mode=0o700)
    os.chown(os.path.join(d, "tmp"), p["user"]["uid"], p["user"]["gid"])
    for name in ("passwd", "group", "hosts"):
        if p.get(name) is not None:
            with open(os.path.join(d, name), "w") as f:
                f.write(p[name])
    argv = p["argv"]
    argv[0] = args.docker
    for m in p["mounts"]:
        if m.get("staged"):
            argv = [a.replace(f"src={m['staged']},", f"src={m['src']},") for a in argv]
    r = drain(argv, dict(e, DOCKER_HOST="unix:///var/run/docker.sock", HOME=d))
    shutil.rmtree(d)
    return r


berth_rate(); docker_rate()
b, d = [], []
for i in range(args.runs):
    if i % 2:
        b.append(berth_rate()); d.append(docker_rate())
    else:
        d.append(docker_rate()); b.append(berth_rate())
mb, md = statistics.median(b), statistics.median(d)
print(f"{args.mb} MB to stdout, medians of {args.runs}: docker run {md:.0f} MB/s, berth run {mb:.0f} MB/s, ratio {mb/md:.2f}")
shutil.rmtree(work, ignore_errors=True)
