#!/usr/bin/env python3
"""The broker's and Slurm's added latency, on one machine, in one run.

    sudo python3 bench/broker.py [--runs 21] [--berth target/release/berth]

Needs the testbed with Slurm (tests/setup/testbed.sh up). Starts its own
broker (`berth daemon`) on a socket in a temporary directory, makes a bundle
of the image in a temporary cache, writes /etc/slurm/oci.conf pointing at
them (under the tests' lock; removed at the end), then measures, interleaved
round by round (the order rotates), the wall time of:

  direct   root: `berth run -- true` with LSFUSER=berth-alice (no broker)
  broker   berth-alice: `berth run -- true` (through the broker)
  docker   root: `docker run --rm --user 2001:2001 --network=none IMAGE true`
           (the network berth's jobs get by default; docker's own default,
           a bridge, costs ~60 ms more per start on the test machine)
  srun     berth-alice: `srun true` (Slurm alone, no container)
  srun-c   berth-alice: `srun --container=<bundle> true` (Slurm + berth)

and prints the medians and the ratios broker/direct and srun-c/docker.
"""
import argparse, fcntl, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=21)
ap.add_argument("--berth", default="target/release/berth")
ap.add_argument("--image", default="berth-test/busybox:1")
ap.add_argument("--user", default="berth-alice")
args = ap.parse_args()

if os.geteuid() != 0:
    sys.exit("bench/broker.py: run as root")
import grp, pwd

user = pwd.getpwnam(args.user)
groups = os.getgrouplist(args.user, user.pw_gid)
cwd = "/storage1/fs1/alice"
OCI_CONF = "/etc/slurm/oci.conf"
LOCK = "/run/berth-testbed/slurm-tests.lock"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

work = tempfile.mkdtemp(prefix="berth-bench-broker-")
os.chmod(work, 0o755)
berth = os.path.join(work, "berth")  # a copy job users can run
shutil.copy(os.path.abspath(args.berth), berth)
os.chmod(berth, 0o755)
cache = os.path.join(work, "cache")
os.mkdir(cache, 0o755)
sock = os.path.join(work, "sock", "berth.sock")
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
[bundles]
cache = "{cache}"
[broker]
socket = "{sock}"
[audit]
log = "{work}/audit.log"
""")
os.chmod(policy, 0o644)

lock = open(LOCK, "a")
fcntl.flock(lock, fcntl.LOCK_EX)
daemon = None
try:
    subprocess.run([berth, "--policy", policy, "bundle", "create", "bench", "--from-image", args.image],
                   check=True, stdout=subprocess.DEVNULL, env={"PATH": PATH})
    bundle = os.path.join(cache, "bench")
    daemon = subprocess.Popen([berth, "--policy", policy, "daemon"], env={"PATH": PATH},
                              stdin=subprocess.DEVNULL, stderr=open(os.path.join(work, "daemon.log"), "w"))
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(sock); s.close(); break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit("the broker did not start; see " + os.path.join(work, "daemon.log"))
    shipped = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "wrapper", "slurm", "oci.conf")).read()
    with open(OCI_CONF + ".bench", "w") as f:
        f.write(shipped.replace("/usr/bin/berth ", f"{berth} --policy {policy} "))
    os.chmod(OCI_CONF + ".bench", 0o644)
    os.rename(OCI_CONF + ".bench", OCI_CONF)

    image_id = subprocess.run(["/usr/bin/docker", "image", "inspect", "-f", "{{.Id}}", args.image],
                              check=True, capture_output=True, text=True).stdout.strip()

    def env(job):
        return {"PATH": PATH, "LSFUSER": args.user, "LSB_JOBID": str(job),
                "LSB_CONTAINER_IMAGE": args.image, "LS_SUBCWD": cwd}

    def as_user():
        return dict(user=user.pw_uid, group=user.pw_gid, extra_groups=groups)

    def timed(argv, **kw):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=cwd, **kw)
        return time.perf_counter() - t

    job = [1000]
    def next_job():
        job[0] += 1
        return job[0]

    slurm_env = {"PATH": PATH, "HOME": user.pw_dir, "USER": args.user}
    kinds = {
        "direct": lambda: timed([berth, "--policy", policy, "run", "--", "true"], env=env(next_job())),
        "broker": lambda: timed([berth, "--policy", policy, "run", "--", "true"], env=env(next_job()), **as_user()),
        "docker": lambda: timed(["/usr/bin/docker", "run", "--rm", "--user", f"{user.pw_uid}:{user.pw_gid}",
                                 "--network=none", image_id, "true"],
                                env={"PATH": PATH, "DOCKER_HOST": "unix:///var/run/docker.sock"}),
        "srun": lambda: timed(["/usr/bin/srun", "true"], env=slurm_env, **as_user()),
        "srun-c": lambda: timed(["/usr/bin/srun", f"--container={bundle}", "true"], env=slurm_env, **as_user()),
    }
    # Warm up every path (facts cache, page cache, slurmd).
    for k in kinds.values():
        k()
    times = {k: [] for k in kinds}
    order = list(kinds)
    load0 = os.getloadavg()
    t0 = time.time()
    for i in range(args.runs):
        rot = order[i % len(order):] + order[:i % len(order)]
        for k in rot:
            times[k].append(kinds[k]())
    elapsed = time.time() - t0
    load1 = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"berth {subprocess.run([berth, '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"{os.cpu_count()} CPUs, load average {load0[0]:.2f} before / {load1[0]:.2f} after, {elapsed:.0f} s")
    print(f"runs per kind: {args.runs} (interleaved), medians:")
    for k in kinds:
        v = sorted(times[k])
        print(f"  {k:7s} {med[k]*1000:7.1f} ms   (min {v[0]*1000:.1f}, max {v[-1]*1000:.1f})")
    print(f"ratio broker/direct:      {med['broker']/med['direct']:.3f}  "
          f"(+{(med['broker']-med['direct'])*1000:.1f} ms)")
    print(f"ratio srun-c/docker:      {med['srun-c']/med['docker']:.3f}  "
          f"(+{(med['srun-c']-med['docker'])*1000:.1f} ms)")
    print(f"ratio srun-c/srun:        {med['srun-c']/med['srun']:.3f}")
finally:
    try:
        if open(OCI_CONF).read().find(berth) >= 0:
            os.remove(OCI_CONF)
    except OSError:
        pass
    if daemon:
        daemon.terminate()
        daemon.wait(timeout=15)
    shutil.rmtree(work, ignore_errors=True)
