#!/usr/bin/env python3
"""berth run versus the plain docker run it replaces, on one machine, in one run.

    sudo python3 bench/launch.py [--runs 21] [--berth target/release/berth]

Needs the testbed (tests/setup/testbed.sh up). berth launches through the
Engine API (SPEC §13); "plain docker run" is the exact `docker run` command
`berth explain --json` prints for the same job (same user, groups, mounts,
caps, pids limit, --network, per-job /tmp, passwd/group/hosts files prepared
outside the timing), run by Debian's docker CLI. Interleaved, medians:

1. one job at a time, network none;
2. 32 jobs at 8-way concurrency, wall time, network none;
3. one job at a time, network bridge;
4. berth's own CPU per job: root `berth run` (getrusage of the child), and
   through the broker (client + the broker's /proc utime+stime);
5. placement on vs off (SPEC §11): `berth run` started inside an LSF-style
   v1 job cgroup (memory limit, cpuset) against the same job outside any.
"""
import argparse, concurrent.futures, json, os, pwd, resource, shutil, statistics, subprocess, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=21)
ap.add_argument("--berth", default="target/release/berth")
ap.add_argument("--image", default="berth-test/busybox:1")
ap.add_argument("--docker", default="/usr/bin/docker")
args = ap.parse_args()

berth = os.path.abspath(args.berth)
work = tempfile.mkdtemp(prefix="berth-bench-")
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
[docker]
networks = ["none", "bridge"]
[broker]
socket = "{work}/run/berth.sock"
[mounts]
pin_dir = "{work}/run/mnt"
""")
os.chmod(policy, 0o644)
os.makedirs(f"{work}/run", mode=0o755)
cwd = "/storage1/fs1/alice"
counter = [1000]


def env(net):
    counter[0] += 1
    e = {"LSFUSER": "berth-alice", "LSB_JOBID": str(counter[0]), "LSB_CONTAINER_IMAGE": args.image,
         "LS_SUBCWD": cwd, "PATH": "/usr/bin:/bin"}
    if net:
        e["LSF_DOCKER_NETWORK"] = net
    return e


def berth_run(net=None, cgroup=None):
    e = env(net)
    if cgroup and cgroup[1]:
        # The job id is the cgroup's: the environment must agree.
        e["LSB_JOBID"] = cgroup[1]
    def enter():
        for c in CONTROLLERS:
            with open(f"/sys/fs/cgroup/{c}/{cgroup[0]}/cgroup.procs", "w") as f:
                f.write("0")
    t = time.perf_counter()
    subprocess.run([berth, "--policy", policy, "run", "--", "true"], env=e, cwd=cwd, check=True,
                   stdin=subprocess.DEVNULL, preexec_fn=enter if cgroup else None)
    return time.perf_counter() - t


CONTROLLERS = ["memory", "cpuset", "cpuacct", "freezer"]


def make_job_cgroup(jobid):
    rel = f"lsf/berthbench/job.{jobid}.0.1"
    made = []
    for c in CONTROLLERS:
        d = f"/sys/fs/cgroup/{c}"
        for part in rel.split("/"):
            parent, d = d, f"{d}/{part}"
            if not os.path.isdir(d):
                os.mkdir(d)
                made.append(d)
                if c == "cpuset":
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        with open(f"{parent}/{f}") as src, open(f"{d}/{f}", "w") as dst:
                            dst.write(src.read().strip())
    with open(f"/sys/fs/cgroup/memory/{rel}/memory.limit_in_bytes", "w") as f:
        f.write(str(512 << 20))
    return rel, made


def prepared_docker(net=None):
    """The planned docker command for a job, with its per-job files made."""
    e = env(net)
    p = json.loads(subprocess.run([berth, "--policy", policy, "explain", "--json", "--", "true"], env=e,
                                  cwd=cwd, check=True, capture_output=True, text=True).stdout)
    d = p["job_dir"]
    os.makedirs(os.path.join(d, "tmp"), mode=0o700)
    os.chown(os.path.join(d, "tmp"), p["user"]["uid"], p["user"]["gid"])
    for name, text in (("passwd", p.get("passwd")), ("group", p.get("group")), ("hosts", p.get("hosts"))):
        if text is not None:
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
    argv = p["argv"]
    argv[0] = args.docker
    # Plain docker binds the real directories where berth binds its pins.
    for m in p["mounts"]:
        if m.get("staged"):
            argv = [a.replace(f"src={m['staged']},", f"src={m['src']},") for a in argv]
    cenv = dict(e, DOCKER_HOST="unix:///var/run/docker.sock", HOME=d)
    return argv, cenv, d


def docker_run(net=None):
    argv, cenv, d = prepared_docker(net)
    t = time.perf_counter()
    subprocess.run(argv, env=cenv, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
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


def concurrent_wall(kind, jobs=32, width=8):
    if kind == "docker":
        prepared = [prepared_docker() for _ in range(jobs)]
        def one(i):
            argv, cenv, _ = prepared[i]
            subprocess.run(argv, env=cenv, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
    else:
        envs = [env(None) for _ in range(jobs)]
        def one(i):
            subprocess.run([berth, "--policy", policy, "run", "--", "true"], env=envs[i], cwd=cwd, check=True,
                           stdin=subprocess.DEVNULL)
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(width) as ex:
        list(ex.map(one, range(jobs)))
    dt = time.perf_counter() - t
    if kind == "docker":
        for _, _, d in prepared:
            shutil.rmtree(d, ignore_errors=True)
    return dt


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# Warm up: image facts cached, page cache warm, engine warm.
for _ in range(2):
    berth_run(); docker_run(); berth_run("bridge"); docker_run("bridge")

mb, md = interleaved(berth_run, docker_run, args.runs)
cw_b, cw_d = [], []
for i in range(3):
    if i % 2:
        cw_b.append(concurrent_wall("berth")); cw_d.append(concurrent_wall("docker"))
    else:
        cw_d.append(concurrent_wall("docker")); cw_b.append(concurrent_wall("berth"))
bb, bd = interleaved(lambda: berth_run("bridge"), lambda: docker_run("bridge"), args.runs)

rel, made = make_job_cgroup(424242)
# The unplaced side starts in a cgroup too (one that is no job's): moving a
# process between v1 cgroups costs tens of ms (an RCU grace period), which
# a scheduler pays before any job starts, with or without berth.
other = "berthbench-nojob"
for c in CONTROLLERS:
    d = f"/sys/fs/cgroup/{c}/{other}"
    if not os.path.isdir(d):
        os.mkdir(d)
        made.insert(0, d)
        if c == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(f"/sys/fs/cgroup/cpuset/{f}") as src, open(f"{d}/{f}", "w") as dst:
                    dst.write(src.read().strip())
placed = lambda: berth_run(cgroup=(rel, "424242"))
unplaced = lambda: berth_run(cgroup=(other, None))
placed(); unplaced()
mp, mu = interleaved(placed, unplaced, args.runs)
for d in reversed(made):
    try:
        os.rmdir(d)
    except OSError:
        pass

n = 30
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
for _ in range(n):
    berth_run()
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
root_cpu = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n * 1000

# Through the broker, as berth-alice.
daemon = subprocess.Popen([berth, "--policy", policy, "daemon"], stderr=subprocess.DEVNULL)
sock = f"{work}/run/berth.sock"
for _ in range(100):
    if os.path.exists(sock):
        break
    time.sleep(0.05)
alice = pwd.getpwnam("berth-alice")
def as_alice():
    os.setgid(alice.pw_gid); os.setgroups(os.getgrouplist("berth-alice", alice.pw_gid)); os.setuid(alice.pw_uid)
def broker_run():
    e = env(None); del e["LSFUSER"]
    subprocess.run([berth, "--policy", policy, "run", "--", "true"], env=e, cwd=cwd, check=True,
                   stdin=subprocess.DEVNULL, preexec_fn=as_alice)
broker_run()
c0, r0 = proc_cpu(daemon.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
t = time.perf_counter()
for _ in range(n):
    broker_run()
broker_wall = (time.perf_counter() - t) / n * 1000
c1, r1 = proc_cpu(daemon.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
client_cpu = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n * 1000
broker_cpu = (c1 - c0) / n * 1000
daemon.terminate(); daemon.wait()

print(f"runs per side (medians):            {args.runs}")
print(f"network none: docker run {md*1000:.1f} ms, berth run {mb*1000:.1f} ms, ratio {mb/md:.3f}")
print(f"32 jobs at 8-way, wall (median of 3): docker {statistics.median(cw_d):.2f} s, berth {statistics.median(cw_b):.2f} s, ratio {statistics.median(cw_b)/statistics.median(cw_d):.3f}")
print(f"network bridge: docker run {bd*1000:.1f} ms, berth run {bb*1000:.1f} ms, ratio {bb/bd:.3f}")
print(f"placement in the job's cgroup: placed {mp*1000:.1f} ms, unplaced {mu*1000:.1f} ms, ratio {mp/mu:.3f}")
print(f"berth's own CPU per job: root berth run {root_cpu:.2f} ms; through the broker: client {client_cpu:.2f} ms + broker {broker_cpu:.2f} ms (wall {broker_wall:.1f} ms)")
shutil.rmtree(work, ignore_errors=True)
