#!/usr/bin/env python3
"""A small Parsl workflow through berth, both container models.

    python3 workflow.py --model app    --provider local|slurm --image IMAGE
    python3 workflow.py --model worker --bundle /path/to/bundle [--partition P]

``--model app`` (Parsl's container model 2): the workers run on the node (or
in a Slurm job, ``--provider slurm``) and every app's command runs in a fresh
berth container (:func:`berth_parsl.berth_app`). ``--model worker`` (model
1): Parsl's SlurmProvider submits pilot jobs with ``--container=BUNDLE``, the
worker pool runs inside that one container, and the apps run in it; the
workers talk back to Parsl's interchange over the node's network, so the
site's policy must allow ``host`` in ``docker.networks`` (and the pilot asks
for it with ``LSF_DOCKER_NETWORK=host``).

The workflow: ``--apps N`` apps each square a number, one app gets
their outputs through their futures (a data dependency) and sums them, a last one
checks the sum. It prints one JSON object: the results, the uid and PID 1
each app saw, its hostname and /tmp. Run from a directory under an
allowed volume root: it is the apps' working directory.
"""

import argparse
import json
import os
import sys

import parsl
from parsl.app.app import bash_app, python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SingleNodeLauncher
from parsl.providers import LocalProvider, SlurmProvider

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import berth_parsl  # noqa: E402


def config(args):
    # The workers import berth_parsl (model 2) from this directory.
    init = f"export PYTHONPATH={HERE}"
    if args.model == "worker":
        # Inside the container: the image's Parsl first (the job's PATH is
        # the submitting shell's), and only the image's.
        init = "export PATH=/opt/parsl/bin:/usr/local/bin:/usr/bin:/bin; unset PYTHONPATH VIRTUAL_ENV"
    if args.provider == "local":
        provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=init)
    else:
        options = []
        if args.mem_mb:
            # (Parsl's mem_per_node is whole GB.)
            options.append(f"#SBATCH --mem={args.mem_mb}M")
        if args.model == "worker":
            options.append(f"#SBATCH --container={args.bundle}")
        provider = SlurmProvider(
            partition=args.partition,
            nodes_per_block=1,
            cores_per_node=args.cores,
            init_blocks=1,
            min_blocks=0,
            max_blocks=1,
            exclusive=False,
            walltime="00:10:00",
            scheduler_options="\n".join(options),
            worker_init=init,
            launcher=SingleNodeLauncher(),
            cmd_timeout=60,
        )
    htex = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        max_workers_per_node=args.workers,
        heartbeat_period=2,
        heartbeat_threshold=30,
        provider=provider,
    )
    return Config(executors=[htex], run_dir=os.path.join(os.getcwd(), "runinfo"), strategy="none" if args.provider == "local" else "simple")


def model_app(args):
    """Model 2: each app's command in its own berth container; results
    travel through the apps' futures (their standard output)."""
    opts = dict(image=args.image, berth=args.berth, policy=args.policy)

    @berth_parsl.berth_app(**opts)
    def square(i):
        # What the app saw, as one JSON line; /tmp/mine-<i> would show in
        # another app's /tmp if they shared one.
        return (
            "printf '{\"i\": %d, \"square\": %d, \"uid\": %d, \"pid1\": \"%s\", \"hostname\": \"%s\", \"tmp_entries\": %d}\\n' "
            f"{i} $(( {i} * {i} )) \"$(id -u)\" \"$(cat /proc/1/comm)\" \"$(hostname)\" \"$(ls -A /tmp | wc -l)\" "
            f"&& touch /tmp/mine-{i}"
        )

    @berth_parsl.berth_app(**opts)
    def total(*squares):
        # Runs once every square's future is done, with their outputs.
        import json

        values = [json.loads(s)["square"] for s in squares]
        return "echo $(( " + " + ".join(str(v) for v in values) + " ))"

    @berth_parsl.berth_app(**opts)
    def check(total, want):
        return f'test "{total.strip()}" = {want} && echo ok'

    squares = [square(i) for i in range(args.apps)]
    t = total(*squares)
    want = sum(i * i for i in range(args.apps))
    ok = check(t, want).result().strip()
    apps = [json.loads(s.result()) for s in squares]
    return dict(total=int(t.result()), want=want, check=ok, apps=apps)


def model_worker(args):
    """Model 1: the worker pool in one container, apps inside it."""

    @python_app
    def square(i):
        import os
        import socket

        return dict(
            i=i,
            square=i * i,
            uid=os.getuid(),
            pid1=open("/proc/1/comm").read().strip(),
            hostname=socket.gethostname(),
            parsl_image=os.path.isdir("/opt/parsl"),
        )

    @python_app
    def total(*squares):
        return sum(s["square"] for s in squares)

    @bash_app
    def check(s, want):
        return f"test {s} = {want}"

    squares = [square(i) for i in range(args.apps)]
    t = total(*squares)
    want = sum(i * i for i in range(args.apps))
    check(t, want).result()
    return dict(total=t.result(), want=want, apps=[s.result() for s in squares])


def model_deny(args):
    """Requests the policy refuses: each app fails at once with berth's
    reason (berth_app), or with exit 77 and the reason in its stderr file
    (a plain bash_app with berth_command)."""
    opts = dict(berth=args.berth, policy=args.policy)

    @berth_parsl.berth_app(image=args.denied_image, **opts)
    def bad_image():
        return "true"

    @berth_parsl.berth_app(image=args.image, volumes=[f"{args.denied_volume}:/data"], **opts)
    def bad_volume():
        return "ls /data"

    @berth_parsl.berth_app(image=args.image, **opts)
    def own_77():
        # The command's own exit 77 is its failure, not a denial.
        return "echo not a denial >&2; exit 77"

    @bash_app
    def plain(stderr=None):
        import berth_parsl  # on the worker: the app travels by value

        return berth_parsl.berth_command("true", image=args.denied_image, **opts)

    out = {}
    apps = [("image", bad_image()), ("volume", bad_volume()), ("own_77", own_77()), ("bash_app", plain(stderr=os.path.abspath("plain.err")))]
    for name, fut in apps:
        try:
            fut.result()
            out[name] = dict(error=None)
        except Exception as e:  # noqa: BLE001 - the point is to show it
            out[name] = dict(error=type(e).__name__, message=str(e), code=getattr(e, "code", None) or getattr(e, "exitcode", None))
    out["bash_app"]["stderr"] = open(os.path.abspath("plain.err")).read() if os.path.exists("plain.err") else None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["app", "worker", "deny"], default="app")
    p.add_argument("--provider", choices=["local", "slurm"], default="local")
    p.add_argument("--image", help="model app: the apps' image (a reference or bundle:NAME)")
    p.add_argument("--bundle", help="model worker: the bundle directory for --container")
    p.add_argument("--denied-image", default="docker.io/library/ubuntu:24.04", help="model deny")
    p.add_argument("--denied-volume", default="/etc", help="model deny")
    p.add_argument("--apps", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partition", default=None)
    p.add_argument("--cores", type=int, default=None)
    p.add_argument("--mem-mb", type=int, default=None, help="memory per pilot job (MB)")
    p.add_argument("--berth", default="berth")
    p.add_argument("--policy", default=None)
    args = p.parse_args()
    if args.model == "worker":
        args.provider = "slurm"
        if not args.bundle:
            p.error("--model worker needs --bundle")
    elif not args.image:
        p.error("--model app needs --image")
    parsl.load(config(args))
    try:
        result = {"app": model_app, "worker": model_worker, "deny": model_deny}[args.model](args)
    finally:
        parsl.dfk().cleanup()
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
