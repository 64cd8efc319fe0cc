#!/usr/bin/env python3
"""berth run versus the plain docker run it generates, on one machine, in one run.

    sudo python3 bench/launch.py [--runs 21] [--berth target/release/berth]

Needs the testbed (tests/setup/testbed.sh up). For each round it runs, in
alternating order, `berth run -- true` and the exact docker argv berth
planned for that job (from `berth explain --json`), with the same per-job
files prepared by hand, and reports medians and their ratio. It also
reports berth's own CPU time per decision (`berth explain`, which plans
exactly as `run` does, with engine round-trips but no launch) from
getrusage of the children.
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=21)
ap.add_argument("--berth", default="target/release/berth")
ap.add_argument("--image", default="berth-test/busybox:1")
args = ap.parse_args()

berth = os.path.abspath(args.berth)
work = tempfile.mkdtemp(prefix="berth-bench-")
os.chmod(work, 0o755)
policy = os.path.join(work, "policy.toml")
with open(policy, "w") as f:
    f.write(f"""
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

def env(job):
    return {"LSFUSER": "berth-alice", "LSB_JOBID": str(job), "LSB_CONTAINER_IMAGE": args.image, "LS_SUBCWD": cwd}

def berth_run(job):
    t = time.perf_counter()
    subprocess.run([berth, "--policy", policy, "run", "--", "true"], env=env(job), cwd=cwd, check=True)
    return time.perf_counter() - t

def planned_argv(job):
    out = subprocess.run([berth, "--policy", policy, "explain", "--json", "--", "true"], env=env(job), cwd=cwd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)

def docker_run(job):
    p = planned_argv(job)
    # Prepare the same per-job files berth's launcher would (outside the timing).
    d = p["job_dir"]
    os.makedirs(os.path.join(d, "tmp"), mode=0o700)
    os.makedirs(os.path.join(d, ".docker"), mode=0o700)
    os.chown(os.path.join(d, "tmp"), p["user"]["uid"], p["user"]["gid"])
    for name, text in (("passwd", p.get("passwd") or ""), ("group", p.get("group") or ""), ("env", "")):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    e = {"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": os.path.join(d, ".docker"), "DOCKER_HOST": "unix:///var/run/docker.sock"}
    # Plain docker binds the real directories where berth binds its pins.
    argv = p["argv"]
    for m in p["mounts"]:
        if m.get("staged"):
            argv = [a.replace(f"src={m['staged']},", f"src={m['src']},") for a in argv]
    t = time.perf_counter()
    subprocess.run(argv, env=e, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    shutil.rmtree(d)
    return dt

# Warm up: image facts cached, page cache warm.
berth_run(1); docker_run(2)
b, d = [], []
for i in range(args.runs):
    if i % 2:
        b.append(berth_run(100 + i)); d.append(docker_run(200 + i))
    else:
        d.append(docker_run(200 + i)); b.append(berth_run(100 + i))

# berth's own CPU per decision.
n = 50
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
for i in range(n):
    planned_argv(1000 + i)
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_ms = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n * 1000
t = time.perf_counter()
for i in range(n):
    planned_argv(2000 + i)
wall_ms = (time.perf_counter() - t) / n * 1000

mb, md = statistics.median(b), statistics.median(d)
print(f"runs per side:              {args.runs}")
print(f"plain docker run, median:   {md*1000:.1f} ms")
print(f"berth run, median:          {mb*1000:.1f} ms")
print(f"ratio berth/docker:         {mb/md:.3f}")
print(f"berth explain CPU/decision: {cpu_ms:.2f} ms (user+sys, whole process incl. startup)")
print(f"berth explain wall/decision:{wall_ms:.2f} ms")
shutil.rmtree(work)
