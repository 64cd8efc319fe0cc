#!/usr/bin/env python3
"""LSF parallel jobs' tasks (SPEC §14) against the docker commands they replace.

    sudo python3 bench/lsf_tasks.py [--runs 21] [--berth target/release/berth]

Needs the testbed (tests/setup/testbed.sh up). Starts its own broker; as
berth-alice (not in the docker group), through it, interleaved, medians:

1. a blaunch task on the job's first host: `berth run --scheduler lsf`
   with LSF_PM_TASKID set while the job's container runs (a `sleep`
   started by berth as the job), i.e. an exec in that container, against
   `docker exec -u 2001:2001 -w DIR CONTAINER true` as root;
2. the first task of a job on another host: no container of the job is
   there, so berth makes the host's container, execs the task in it and
   removes it after, against the same job's plain `docker run` (the command
   `berth explain --json` prints for it, its per-job files made outside
   the timing, as bench/launch.py does).

Each task runs `true`. The job's LSB_MCPU_HOSTS names one host (no fabric
devices, no memlock change).
"""
import argparse, json, os, pwd, shutil, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=21)
ap.add_argument("--berth", default="target/release/berth")
ap.add_argument("--image", default="berth-test/busybox:1")
ap.add_argument("--docker", default="/usr/bin/docker")
args = ap.parse_args()
if os.geteuid() != 0:
    raise SystemExit("bench/lsf_tasks.py: run as root")

work = tempfile.mkdtemp(prefix="berth-bench-lsf-")
os.chmod(work, 0o755)
berth = os.path.join(work, "berth")  # a copy the job user can run
shutil.copy(os.path.abspath(args.berth), berth)
os.chmod(berth, 0o755)
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
cwd = "/storage1/fs1/alice"
alice = pwd.getpwnam("berth-alice")
host = os.uname().nodename


def as_alice():
    os.setgid(alice.pw_gid)
    os.setgroups(os.getgrouplist("berth-alice", alice.pw_gid))
    os.setuid(alice.pw_uid)


def env(job, task=None):
    e = {"LSB_JOBID": str(job), "LSB_CONTAINER_IMAGE": args.image, "LS_SUBCWD": cwd,
         "PATH": "/usr/bin:/bin", "LSB_MCPU_HOSTS": f"{host} 2"}
    if task is not None:
        e["LSF_PM_TASKID"] = str(task)
    return e


def berth_cmd(e, cmd="true", **kw):
    return subprocess.run([berth, "--policy", policy, "run", "--scheduler", "lsf", "--", cmd], env=e, cwd=cwd,
                          stdin=subprocess.DEVNULL, preexec_fn=as_alice, **kw)


daemon = subprocess.Popen([berth, "--policy", policy, "daemon"], stderr=subprocess.DEVNULL)
sock = f"{work}/run/berth.sock"
for _ in range(200):
    if os.path.exists(sock):
        break
    time.sleep(0.05)

# The job: its container on this host, running.
JOB = 777001
job = subprocess.Popen([berth, "--policy", policy, "run", "--scheduler", "lsf", "--", "sleep 3600"],
                       env=env(JOB), cwd=cwd, stdin=subprocess.DEVNULL, preexec_fn=as_alice)
container = None
for _ in range(200):
    out = subprocess.run([args.docker, "ps", "-q", "--no-trunc", "--filter", f"label=berth.job={JOB}"],
                         capture_output=True, text=True).stdout.split()
    if out:
        container = out[0]
        break
    time.sleep(0.05)
assert container, "the job's container did not start"

counter = [800000]


def task_in_job():
    t = time.perf_counter()
    berth_cmd(env(JOB, 1), check=True)
    return time.perf_counter() - t


def docker_exec():
    t = time.perf_counter()
    subprocess.run([args.docker, "exec", "-u", f"{alice.pw_uid}:{alice.pw_gid}", "-w", cwd, container, "true"],
                   check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t


def first_task_elsewhere():
    counter[0] += 1
    t = time.perf_counter()
    berth_cmd(env(counter[0], 1), check=True)
    return time.perf_counter() - t


def docker_run():
    counter[0] += 1
    e = env(counter[0])
    # (root names the job's user, as LSF's root starter would.)
    p = json.loads(subprocess.run([berth, "--policy", policy, "explain", "--json", "--scheduler", "lsf", "--", "true"],
                                  env=dict(e, LSFUSER="berth-alice"), cwd=cwd, check=True, capture_output=True,
                                  text=True).stdout)
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
    t = time.perf_counter()
    subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "HOME": d}, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    shutil.rmtree(d)
    return dt


def interleaved(a, b, runs):
    xa, xb = [], []
    for i in range(runs):
        if i % 2:
            xa.append(a()); xb.append(b())
        else:
            xb.append(b()); xa.append(a())
    return statistics.median(xa), statistics.median(xb)


for _ in range(2):
    task_in_job(); docker_exec(); first_task_elsewhere(); docker_run()
te, de = interleaved(task_in_job, docker_exec, args.runs)
tf, dr = interleaved(first_task_elsewhere, docker_run, args.runs)

job.terminate()
job.wait()
daemon.terminate()
daemon.wait()
left = subprocess.run([args.docker, "ps", "-aq", "--filter", f"label=berth.job={JOB}"], capture_output=True,
                      text=True).stdout.split()
print(f"runs per side (medians):                  {args.runs}")
print(f"task in the job's container: docker exec {de*1000:.1f} ms, berth {te*1000:.1f} ms, ratio {te/de:.3f}")
print(f"first task on another host:  docker run  {dr*1000:.1f} ms, berth {tf*1000:.1f} ms, ratio {tf/dr:.3f}")
if left:
    print(f"LEFT: {left}")
shutil.rmtree(work, ignore_errors=True)
