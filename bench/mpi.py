#!/usr/bin/env python3
"""MPI start-up and a small Allreduce loop in berth containers against
bare metal, on the test bed's two Slurm 24.11 nodes (SPEC §14).

    sudo python3 bench/mpi.py [--runs 11] [--loop 200] [--berth target/release/berth]

Needs the test bed with its Slurm 24.11 (tests/setup/testbed.sh up: nodes
trixie1 and trixie2, partition `mpi`, berth-test/mpi:1, mpihello). Starts
its own broker on a socket in a temporary directory with a policy that
passes PMIx and allows the host network, writes the trixie tree's
/etc/slurm/oci.conf from wrapper/slurm/oci.conf.23.02-ignore-config-json
pointing at it (under the Slurm tests' lock; removed at the end), then
times, interleaved round by round (the order alternates), as berth-alice:

  bare    srun -p mpi -N2 -n4 --mpi=pmix mpihello --loop L
  berth   srun -p mpi -N2 -n4 --mpi=pmix --container=docker.io/berth-test/mpi:1 mpihello --loop L

(`--ntasks N` for -nN; `--ranks container` for a container per rank,
`--ipc host|private` for the other sharing modes.) Each is checked (every rank `ok`, spread over both
nodes). It prints the medians of the
wall time of srun (start-up, the Allreduce and ring checks, the loop and
teardown) and of the loop alone (rank 0's MPI_Wtime), and their ratios.
"""
import argparse, fcntl, os, shutil, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=11)
ap.add_argument("--loop", type=int, default=200, help="allreduces timed after the checks (0: start-up only)")
ap.add_argument("--ipc", default="step", help="the policy's mpi.ipc: step (a container per step and node), host or private")
ap.add_argument("--ranks", default="exec", help="the policy's mpi.ranks: exec (each rank a process of its step's container) or container")
ap.add_argument("--nodes", type=int, default=2, choices=(1, 2), help="1: every rank on trixie1")
ap.add_argument("--ntasks", type=int, default=4, help="ranks, over the 2 nodes")
ap.add_argument("--berth", default="target/release/berth")
args = ap.parse_args()
if os.geteuid() != 0:
    sys.exit("bench/mpi.py: run as root")
import pwd

TREE = "/var/lib/berth-testbed/trixie"
OCI_CONF = os.path.join(TREE, "etc/slurm/oci.conf")
LOCK = "/run/berth-testbed/slurm-tests.lock"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
HERE = os.path.dirname(os.path.abspath(__file__))
user = pwd.getpwnam("berth-alice")
groups = os.getgrouplist("berth-alice", user.pw_gid)

work = tempfile.mkdtemp(prefix="berth-bench-mpi-")
os.chmod(work, 0o755)
berth = os.path.join(work, "berth")  # a copy the job user can run
shutil.copy(os.path.abspath(args.berth), berth)
os.chmod(berth, 0o755)
sock = os.path.join(work, "sock", "berth.sock")
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
[docker]
networks = ["none", "host"]
[gpus]
mode = "none"
[mpi]
pmix = true
ipc = "{args.ipc}"
ranks = "{args.ranks}"
[broker]
socket = "{sock}"
[audit]
log = "{work}/audit.log"
""")
os.chmod(policy, 0o644)


def srun(container):
    cmd = ["/usr/sbin/chroot", f"--userspec={user.pw_uid}:{user.pw_gid}",
           "--groups=" + ",".join(map(str, groups)), TREE, "/bin/sh", "-c",
           'cd /storage1/fs1/alice && exec "$@"', "sh", "/usr/bin/srun", "-p", "mpi",
           f"-N{args.nodes}", f"-n{args.ntasks}", "--mpi=pmix"] + (["-w", "trixie1"] if args.nodes == 1 else [])
    if container:
        cmd.append("--container=docker.io/berth-test/mpi:1")
    cmd += ["/usr/local/bin/mpihello"] + (["--loop", str(args.loop)] if args.loop else [])
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={"PATH": PATH, "HOME": "/storage1/fs1/alice", "USER": "berth-alice"})
    wall = time.monotonic() - t
    ok = [l.split() for l in p.stdout.splitlines() if l.startswith("mpihello rank ") and l.endswith(" ok")]
    nodes = sorted(w[6] for w in ok)
    if args.nodes == 1:
        want = ["trixie1"] * args.ntasks
    else:
        want = sorted(["trixie1", "trixie2"] * (args.ntasks // 2) + ["trixie1"] * (args.ntasks % 2))
    if p.returncode != 0 or nodes != want:
        sys.exit(f"bench/mpi.py: {'berth' if container else 'bare'} run failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    loop = next((float(l.split()[4]) for l in p.stdout.splitlines() if l.startswith("mpihello loop ")), 0.0)
    return wall, loop


lock = open(LOCK, "a")
fcntl.flock(lock, fcntl.LOCK_EX)
daemon = None
try:
    daemon = subprocess.Popen([berth, "--policy", policy, "daemon"], env={"PATH": PATH},
                              stdin=subprocess.DEVNULL, stderr=open(os.path.join(work, "daemon.log"), "w"))
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    shipped = open(os.path.join(HERE, "..", "wrapper/slurm/oci.conf.23.02-ignore-config-json")).read()
    with open(OCI_CONF + ".bench", "w") as f:
        f.write(shipped.replace("/usr/bin/berth ", f"{berth} --policy {policy} "))
    os.chmod(OCI_CONF + ".bench", 0o644)
    os.rename(OCI_CONF + ".bench", OCI_CONF)
    srun(False), srun(True)  # warm-up: page cache, image facts
    res = {False: [], True: []}
    for i in range(args.runs):
        for c in ((False, True) if i % 2 == 0 else (True, False)):
            res[c].append(srun(c))
    med = lambda c, k: statistics.median(r[k] for r in res[c])
    bw, cw, bl, cl = med(False, 0), med(True, 0), med(False, 1), med(True, 1)
    print(f"runs {args.runs}, loop {args.loop} allreduces, {args.ntasks} ranks on {args.nodes} node(s), mpi.ipc {args.ipc}, mpi.ranks {args.ranks}, load {os.getloadavg()[0]:.1f}")
    print(f"wall  bare {bw*1000:.1f} ms  berth {cw*1000:.1f} ms  ratio {cw/bw:.3f}")
    if args.loop:
        print(f"loop  bare {bl*1000:.1f} ms  berth {cl*1000:.1f} ms  ratio {cl/bl:.3f}")
    print(f"minima: wall bare {min(r[0] for r in res[False])*1000:.1f} berth {min(r[0] for r in res[True])*1000:.1f} ms")
finally:
    try:
        if open(OCI_CONF).read().find(berth) >= 0:
            os.unlink(OCI_CONF)
    except FileNotFoundError:
        pass
    if daemon:
        daemon.terminate()
        daemon.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)
