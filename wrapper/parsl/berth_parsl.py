"""Run Parsl apps in berth containers: one fresh container per app.

Parsl's "container model 2": every app's command runs through ``berth run``,
so it gets what any berth job gets (the site's policy, the user's own uid
and groups, a private /tmp, only volumes under allowed roots, and, when the
worker runs inside a Slurm or LSF job, that job's cgroup: the container is
counted in the job's allocation). Nothing here needs root or the docker
group; berth's broker does the rest.

Two ways in, both documented in wrapper/parsl/README.md:

* :func:`berth_command` builds the command line for a plain Parsl
  ``bash_app``::

      @bash_app
      def count(path, stdout=None):
          return berth_command(f"wc -l {path}", image="docker.io/lab/tool:1",
                               volumes=["/storage1/fs1/alice:/data:ro"])

  A denial then fails the app with Parsl's ``BashExitFailure`` (exit code
  77) and berth's one-line reason in the app's stderr file.

* :func:`berth_app` is a decorator like ``bash_app`` (the function returns
  the command to run) whose failures carry berth's reason: a denial raises
  :class:`BerthDenied` with berth's ``berth: denied: ... [rule ...]`` line,
  a container that exits non-zero raises :class:`BerthJobFailed` with its
  exit code and the end of its stderr. The app's future resolves to the
  command's standard output (text; with ``stdout=FILE``, to 0 and the
  output in FILE). Data dependencies work as for any Parsl app: arguments
  that are futures are resolved before the command is built, on the
  worker, so one app's output can be the next one's argument.

The module must be importable where the workers run (put this directory on
PYTHONPATH in the executor's ``worker_init``): Parsl sends the app's
function by reference.
"""

import os
import shlex
import subprocess

__all__ = [
    "berth_command",
    "berth_app",
    "berth_env",
    "BerthError",
    "BerthDenied",
    "BerthJobFailed",
    "BerthUnavailable",
]

# berth's exit codes (berth(1), SPEC §3) that mean "berth did not run the
# command", as opposed to the container's own exit code.
MALFORMED = 64
UNAVAILABLE = 69
INTERNAL = 70
DENIED = 77
INVALID_POLICY = 78
BERTH_CODES = {MALFORMED, UNAVAILABLE, INTERNAL, DENIED, INVALID_POLICY}


class BerthError(Exception):
    """berth did not run the app's command, or the command failed.

    ``code`` is berth's exit code, ``reason`` berth's one-line message (the
    last ``berth:`` line of stderr) or the end of the job's stderr.
    Picklable, so it crosses from the worker to the Parsl client intact.
    """

    def __init__(self, code, reason):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self):
        return self.reason


class BerthDenied(BerthError):
    """The site's policy refused the request (exit 77) or it was malformed
    (64): fix the request; retrying will not help."""


class BerthUnavailable(BerthError):
    """The engine or berth's broker was unreachable (69): safe to retry."""


class BerthJobFailed(BerthError):
    """The container ran and its command exited non-zero (``code``)."""


def _volume(v):
    if isinstance(v, str):
        return v
    src, dst, *mode = v
    return ":".join([str(src), str(dst), *mode])


def berth_env(
    image,
    volumes=(),
    workdir=None,
    network=None,
    preserve_environment=None,
    env_files=(),
    job_id=None,
    job_index=None,
):
    """The request variables (SPEC §4) for one app, as a dict.

    ``volumes`` are ``"SRC:DST[:ro]"`` strings or ``(src, dst[, "ro"])``
    tuples; ``network`` is a network mode the site's policy allows;
    ``job_id``/``job_index`` name the container (``LSB_JOBID``,
    ``LSB_JOBINDEX``) when the app does not run inside a scheduler's job.
    """
    if not image:
        raise ValueError("berth_env: an image is needed (a reference or bundle:NAME)")
    env = {"LSB_CONTAINER_IMAGE": str(image)}
    vols = [_volume(v) for v in volumes]
    for v in vols:
        # berth refuses such values itself (exit 64); say it here, where the
        # caller can see which volume.
        if any(c.isspace() for c in v):
            raise ValueError(f"berth_env: volume {v!r} contains white space")
    if vols:
        env["LSF_DOCKER_VOLUMES"] = " ".join(vols)
    if workdir is not None:
        env["LSF_DOCKER_WORKDIR"] = str(workdir)
    if network is not None:
        env["LSF_DOCKER_NETWORK"] = str(network)
    if preserve_environment is not None:
        env["LSF_DOCKER_PRESERVE_ENVIRONMENT"] = "true" if preserve_environment else "false"
    if env_files:
        files = [str(f) for f in env_files]
        for f in files:
            if not f or any(c.isspace() for c in f):
                raise ValueError(f"berth_env: env file {f!r} is empty or contains white space")
        env["LSF_DOCKER_ENV_FILE"] = " ".join(files)
    if job_id is not None:
        env["LSB_JOBID"] = str(job_id)
    if job_index is not None:
        env["LSB_JOBINDEX"] = str(job_index)
    return env


def _berth_argv(berth, policy):
    if "=" in str(berth):
        # `env` would take it for an assignment.
        raise ValueError(f"berth binary {berth!r}: a path with '=' is not supported")
    argv = [str(berth)]
    if policy:
        argv += ["--policy", str(policy)]
    # `--scheduler env`: the caller is the job's owner. berth still finds the
    # scheduler's job (and places the container in it) from the caller's
    # cgroup, never from these variables.
    return argv + ["run", "--scheduler", "env", "--"]


def berth_command(command, image, berth="berth", policy=None, **request):
    """A shell command line that runs ``command`` (a ``/bin/sh -c`` script)
    in a fresh berth container; for a Parsl ``bash_app`` to return.

    ``request`` takes the keyword arguments of :func:`berth_env`.
    """
    env = berth_env(image, **request)
    assign = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    argv = _berth_argv(berth, policy) + [command]
    # `env` with the request variables only: a request variable the
    # worker's own environment has (a stale LSF_DOCKER_VOLUMES) is replaced.
    unset = [f"-u {k}" for k in _REQUEST_VARS if k not in env]
    return " ".join(["env", *unset, *assign, *(shlex.quote(a) for a in argv)])


_REQUEST_VARS = (
    "LSB_CONTAINER_IMAGE",
    # The worker's cwd is the app's working directory, not the directory
    # an LSF pilot was submitted from.
    "LS_SUBCWD",
    "LSF_DOCKER_RUN_RAW_ARGS",
    "LSF_DOCKER_RUN_LOGLEVEL",
    "LSF_DOCKER_VOLUMES",
    "LSF_DOCKER_WORKDIR",
    "LSF_DOCKER_NETWORK",
    "LSF_DOCKER_IPC",
    "LSF_DOCKER_SHM_SIZE",
    "LSF_DOCKER_PORTS",
    "LSF_DOCKER_ENV_FILE",
    "LSF_DOCKER_PRESERVE_ENVIRONMENT",
    "LSF_DOCKER_ENTRYPOINT",
    "LSF_DOCKER_ADD_HOST",
)


def _reason(tail):
    """(berth's own last words or None, the end of stderr).

    berth's verdict is its last line: a ``berth:`` line anywhere else (a
    warning before the job ran) says nothing about how the job ended."""
    lines = [l for l in tail.decode(errors="replace").splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    return (last if last.startswith("berth:") else None), "\n".join(lines[-5:])


def _open_log(spec, default):
    """A ``stdout``/``stderr`` as Parsl takes them: a path, or
    ``(path, mode)`` with mode ``"w"`` or ``"a"``."""
    if isinstance(spec, (tuple, list)):
        path, mode = spec
        if mode not in ("w", "a"):
            raise ValueError(f"{spec!r}: the mode must be 'w' or 'a'")
        return open(path, ("wb+" if mode == "w" else "ab+") if "+" in default else mode + "b")
    return open(os.fspath(spec), default)


# What is read back of the job's stderr for the reason: berth's own line
# is its last words, the job's end is what a failure message wants.
_TAIL = 64 << 10


def run_in_berth(command, image, berth="berth", policy=None, stdout=None, stderr=None, timeout=None, **request):
    """Run ``command`` in a fresh berth container and wait.

    Returns the command's standard output as text, or 0 when ``stdout``
    names a file (the output is appended there, as with ``bash_app``: use
    it for large outputs). ``stderr`` is a file the container's stderr is
    appended to (else a temporary file); its end is read back for the
    reason. Raises :class:`BerthError` when berth did not run the command
    or the command failed.
    """
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in _REQUEST_VARS}
    env.update(berth_env(image, **request))
    argv = _berth_argv(berth, policy) + [command]
    out = _open_log(stdout, "ab") if stdout else subprocess.PIPE
    err = _open_log(stderr, "ab+") if stderr else tempfile.TemporaryFile()
    try:
        start = err.seek(0, os.SEEK_END)
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, timeout=timeout)
        end = err.seek(0, os.SEEK_END)
        err.seek(max(start, end - _TAIL))
        tail = err.read()
    finally:
        err.close()
        if stdout:
            out.close()
    if p.returncode == 0:
        return 0 if stdout else p.stdout.decode(errors="replace")
    own, end = _reason(tail)
    # berth's own codes come with its one `berth:` line, last; the same
    # code without it is the command's own exit status.
    code = p.returncode
    if own is not None:
        if code == DENIED and own.startswith("berth: denied:") or code == MALFORMED:
            raise BerthDenied(code, own)
        if code == UNAVAILABLE:
            raise BerthUnavailable(code, own)
        if code in (INTERNAL, INVALID_POLICY):
            raise BerthError(code, own)
    raise BerthJobFailed(code, f"the container exited with {code}: {end}")


def _app_task(fn_dill, opts, *args, stdout=None, stderr=None, **kwargs):
    # Runs on the worker, after Parsl resolved every future among the
    # arguments: build the command from the values, then run it.
    import dill

    fn = dill.loads(fn_dill)
    command = fn(*args, **kwargs)
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"{fn.__name__}: a berth_app must return its command as a non-empty string")
    return run_in_berth(command, stdout=stdout, stderr=stderr, **opts)


def berth_app(image, executors="all", cache=False, berth="berth", policy=None, **request):
    """Decorator: like Parsl's ``bash_app``, but the returned command runs in
    a fresh berth container, and failures raise :class:`BerthError`
    subclasses carrying berth's reason. Keyword arguments: those of
    :func:`berth_env` (``volumes``, ``workdir``, ``network``, …), ``berth``
    (the binary) and ``policy`` (a policy file other than berth's default).
    The app's future resolves to the command's standard output, or to 0
    with ``stdout=FILE``."""
    from parsl.app.app import python_app

    opts = dict(image=image, berth=berth, policy=policy, **request)
    berth_env(image, **request)  # refuse bad options when decorating
    task = python_app(_app_task, executors=executors, cache=cache)

    def decorate(fn):
        # By value (dill, a Parsl dependency): the workflow's own functions
        # live in its __main__, which the worker cannot import.
        import dill

        fn_dill = dill.dumps(fn, recurse=True)

        def app(*args, **kwargs):
            return task(fn_dill, opts, *args, **kwargs)

        app.__name__ = fn.__name__
        app.__qualname__ = fn.__qualname__
        app.__doc__ = fn.__doc__
        return app

    return decorate
