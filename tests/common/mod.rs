//! Shared helpers for berth's integration tests on a real Docker engine.
//!
//! The tests run as root against the testbed of `tests/setup/testbed.sh`
//! (users berth-alice 2001 …, trees under /storage1/fs1, /scratch1/fs1,
//! images berth-test/*:1). A missing engine FAILS a test, never skips it.
//!
//! Every test builds its own [`Bed`]: a root-owned temporary directory with
//! a policy file, a per-job tmp base, a facts cache, an audit log and an
//! engine recorder: a proxy on the bed's own socket, in front of dockerd,
//! that records every Engine API request berth sends (what the engine
//! actually got) and passes everything through unchanged. Jobs get unique `LSB_JOBID`s ([`next_job_id`]) so
//! tests can run in parallel threads on one shared dockerd, which no test
//! ever stops.
#![allow(dead_code)]

pub mod recorder;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Debian's 20.10 client; never /usr/local/bin/docker.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKER_SOCK: &str = "/var/run/docker.sock";
pub const ALICE: &str = "berth-alice";
pub const ALICE_UID: u32 = 2001;
pub const ALICE_GID: u32 = 2001;
/// Alice's directory on the fake GPFS (0755, owned by her).
pub const ALICE_DIR: &str = "/storage1/fs1/alice";
pub const IMAGE: &str = "berth-test/busybox:1";
/// A PATH for the caller's (scheduler's) environment.
pub const CALLER_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The berth binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

// ---------------------------------------------------------------------------
// engine and testbed preconditions
// ---------------------------------------------------------------------------

/// Panic (fail the test) unless the engine answers, the tests run as root
/// and the testbed's users and images exist. Checked once per process.
pub fn require_testbed() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("integration tests must run as root".into());
        }
        let out = docker(&["info", "--format", "{{.ServerVersion}}"]);
        if out.code != Some(0) || out.stdout.trim().is_empty() {
            return Err(format!(
                "the docker engine at {DOCKER_SOCK} does not answer ({}); run `bash tests/setup/testbed.sh up`",
                out.stderr.trim()
            ));
        }
        if nix::unistd::User::from_name(ALICE).ok().flatten().map(|u| u.uid.as_raw())
            != Some(ALICE_UID)
        {
            return Err(format!(
                "user {ALICE} ({ALICE_UID}) is missing; run `bash tests/setup/testbed.sh up`"
            ));
        }
        for img in [
            "berth-test/busybox:1",
            "berth-test/noshell:1",
            "berth-test/entry-other:1",
            "berth-test/entry-sh:1",
            "berth-test/group0:1",
            "berth-test/usrmerge:1",
        ] {
            if docker(&["image", "inspect", "--format", "{{.Id}}", img]).code != Some(0) {
                return Err(format!(
                    "image {img} is missing; run `bash tests/setup/testbed.sh up`"
                ));
            }
        }
        if !Path::new(ALICE_DIR).is_dir() {
            return Err(format!("{ALICE_DIR} is missing; run `bash tests/setup/testbed.sh up`"));
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("testbed not ready: {e}");
    }
}

/// A job id no other test (in this or a concurrently running test binary)
/// uses: this process's pid and a counter.
pub fn next_job_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{}{:04}", std::process::id(), n)
}

// ---------------------------------------------------------------------------
// processes
// ---------------------------------------------------------------------------

/// What a finished process did.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code; `None` when killed by a signal (see `signal`).
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(status: ExitStatus, stdout: Vec<u8>, stderr: Vec<u8>) -> Out {
        use std::os::unix::process::ExitStatusExt;
        Out {
            code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Assert the exit code, showing both streams on failure.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Out {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn expect_ok(&self) -> &Out {
        self.expect_code(0)
    }

    /// The lines of stdout, trimmed.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().map(str::trim).collect()
    }

    /// The value printed by the container as `KEY=value` (first match).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// The stderr lines that start with `berth: denied:`.
    pub fn denied_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("berth: denied:"))
            .collect()
    }

    /// Assert a denial: exit 77 and exactly one `berth: denied:` line on
    /// stderr that contains every needle.
    #[track_caller]
    pub fn expect_denied(&self, needles: &[&str]) -> &Out {
        self.expect_code(77);
        let lines = self.denied_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one `berth: denied:` line on stderr, got:\n{}",
            self.stderr
        );
        for n in needles {
            assert!(
                lines[0].contains(n),
                "the denial line does not name {n:?}:\n{}",
                lines[0]
            );
        }
        self
    }
}

/// Run the real docker client against the local engine.
pub fn docker(args: &[&str]) -> Out {
    let out = Command::new(DOCKER)
        .args(args)
        .env_clear()
        .env("PATH", CALLER_PATH)
        .env("DOCKER_HOST", format!("unix://{DOCKER_SOCK}"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {DOCKER}: {e}"));
    Out::from(out.status, out.stdout, out.stderr)
}

/// Poll `f` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a child with a deadline; `None` if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send a signal to a process by pid.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

// ---------------------------------------------------------------------------
// docker state
// ---------------------------------------------------------------------------

/// Ids of the containers labelled `berth.job=<job>` (`all`: stopped too).
pub fn containers(job: &str, all: bool) -> Vec<String> {
    let filter = format!("label=berth.job={job}");
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
    if all {
        args.push("-a");
    }
    let out = docker(&args);
    assert_eq!(out.code, Some(0), "docker ps failed: {}", out.stderr);
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Wait until exactly one container of the job is running; its id.
#[track_caller]
pub fn wait_running(job: &str, timeout: Duration) -> String {
    let mut found = Vec::new();
    let ok = wait_until(timeout, || {
        found = containers(job, false);
        found.len() == 1
    });
    assert!(
        ok,
        "no (single) running container for job {job} within {timeout:?}: {found:?}"
    );
    found.remove(0)
}

/// `docker inspect` of one container or image.
pub fn inspect(what: &str) -> serde_json::Value {
    let out = docker(&["inspect", what]);
    assert_eq!(out.code, Some(0), "docker inspect {what}: {}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("inspect JSON");
    v[0].clone()
}

/// The engine's id (`sha256:…`) of a local image.
pub fn image_id(image: &str) -> String {
    let out = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
    assert_eq!(out.code, Some(0), "image inspect {image}: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// Force-remove every container of a job (cleanup after a failed test).
pub fn remove_containers(job: &str) {
    for id in containers(job, true) {
        let _ = docker(&["rm", "-f", &id]);
    }
}

// ---------------------------------------------------------------------------
// host users
// ---------------------------------------------------------------------------

/// `id <flag> <user>` on the host, as numbers.
pub fn host_id(flag: &str, user: &str) -> Vec<u32> {
    let out = Command::new("/usr/bin/id")
        .args([flag, user])
        .env_clear()
        .output()
        .expect("id");
    assert!(out.status.success(), "id {flag} {user} failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().expect("numeric id"))
        .collect()
}

/// Parse whitespace-separated numbers (the output of `id -G`).
pub fn numbers(s: &str) -> Vec<u32> {
    let mut v: Vec<u32> = s
        .split_whitespace()
        .map(|x| {
            x.parse()
                .unwrap_or_else(|_| panic!("not a number: {x:?} in {s:?}"))
        })
        .collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------
// the test bed: policy, spy, tmp base, audit
// ---------------------------------------------------------------------------

pub use recorder::EngineCall;

/// A root-owned temporary directory holding one test's policy, docker spy,
/// per-job tmp base, facts cache and audit log. Removed on drop.
pub struct Bed {
    // The recorder stops before the directory holding its socket goes.
    recorder: recorder::Recorder,
    dir: tempfile::TempDir,
    pub policy: toml::Table,
}

impl Bed {
    /// A bed with the standard policy.
    pub fn new() -> Bed {
        Bed::with(|_| {})
    }

    /// A bed whose standard policy is changed by `edit` (see [`set`]).
    pub fn with(edit: impl FnOnce(&mut toml::Table)) -> Bed {
        require_testbed();
        let dir = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        // Root-owned and 0755: a trusted policy directory that job users can
        // still traverse (env files placed here must be readable by them).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let recorder = recorder::Recorder::start(&dir.path().join("engine.sock"), DOCKER_SOCK);
        let mut bed = Bed {
            recorder,
            dir,
            policy: toml::Table::new(),
        };
        bed.policy = bed.standard_policy();
        edit(&mut bed.policy);
        bed.write_policy();
        bed
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn policy_path(&self) -> PathBuf {
        self.path().join("policy.toml")
    }
    /// The bed's engine socket (the recorder in front of dockerd).
    pub fn engine_sock(&self) -> PathBuf {
        self.path().join("engine.sock")
    }
    pub fn jobs_dir(&self) -> PathBuf {
        self.path().join("jobs")
    }
    pub fn audit_path(&self) -> PathBuf {
        self.path().join("audit.log")
    }

    /// The policy every test starts from (SPEC §10 keys).
    pub fn standard_policy(&self) -> toml::Table {
        let d = self.path().display().to_string();
        let text = format!(
            r#"
[cgroup]
# Tests run jobs outside a scheduler too: a caller in no job runs
# unplaced (those in a Slurm or LSF job are placed in it).
require_job = false

[identity]
relays = ["berth-relay"]

[images]
allow = ["docker.io/berth-test/*"]
facts_cache = "{d}/facts"

[[volumes]]
root = "/storage1/fs1"
mode = "rw"

[[volumes]]
root = "/scratch1/fs1"
mode = "ro"

[tmp]
base = "{d}/jobs"

[docker]
socket = "{d}/engine.sock"

[audit]
log = "{d}/audit.log"
"#
        );
        toml::from_str(&text).expect("standard policy")
    }

    /// (Re)write the policy file from `self.policy`: root-owned, 0644.
    pub fn write_policy(&self) {
        let text = toml::to_string(&self.policy).expect("policy to TOML");
        let p = self.policy_path();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// The bed's engine recorder (to inject engine faults).
    pub fn recorder(&self) -> &recorder::Recorder {
        &self.recorder
    }

    /// Every Engine API request berth sent through this bed, in order.
    pub fn engine_calls(&self) -> Vec<EngineCall> {
        self.recorder.calls()
    }

    /// The container creates berth sent for job `job` (its `berth.job`
    /// label): one per launch.
    pub fn creates(&self, job: &str) -> Vec<EngineCall> {
        self.engine_calls()
            .into_iter()
            .filter(|c| c.is_create() && c.is_job(job))
            .collect()
    }

    /// The one create of job `job`.
    #[track_caller]
    pub fn create_of(&self, job: &str) -> EngineCall {
        let mut c = self.creates(job);
        assert_eq!(c.len(), 1, "job {job}: creates {c:?}");
        c.remove(0)
    }

    /// The audit log's records (JSON lines).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// The audit records of job `job`.
    pub fn audit_for(&self, job: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["job"].as_str() == Some(job))
            .collect()
    }

    /// The per-job directories of `job` under tmp.base (`berth-<job>-…`).
    pub fn job_dirs(&self, job: &str) -> Vec<PathBuf> {
        let prefix = format!("berth-{job}-");
        let Ok(rd) = std::fs::read_dir(self.jobs_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    /// Wait for the single per-job directory of a running job.
    #[track_caller]
    pub fn wait_job_dir(&self, job: &str, timeout: Duration) -> PathBuf {
        let mut dirs = Vec::new();
        assert!(
            wait_until(timeout, || {
                dirs = self.job_dirs(job);
                dirs.len() == 1
            }),
            "no per-job directory for job {job} under {}: {dirs:?}",
            self.jobs_dir().display()
        );
        dirs.remove(0)
    }

    /// A new job for berth-alice with the standard request.
    pub fn job(&self) -> Job<'_> {
        Job::new(self)
    }

    /// Assert that nothing of job `job` is left: no container (running or
    /// not) labelled with it, no per-job directory.
    #[track_caller]
    pub fn assert_no_leaks(&self, job: &str) {
        let c = containers(job, true);
        assert!(c.is_empty(), "job {job} left containers behind: {c:?}");
        let d = self.job_dirs(job);
        assert!(d.is_empty(), "job {job} left per-job directories: {d:?}");
    }

    /// Assert that everything of job `job` is gone within `timeout`.
    #[track_caller]
    pub fn assert_cleaned_within(&self, job: &str, timeout: Duration) {
        let gone = wait_until(timeout, || {
            containers(job, true).is_empty() && self.job_dirs(job).is_empty()
        });
        assert!(
            gone,
            "job {job} not cleaned up within {timeout:?}: containers {:?}, dirs {:?}",
            containers(job, true),
            self.job_dirs(job)
        );
    }

    /// Assert that job `job` never reached docker: no container create
    /// sent to the engine, no container, no per-job directory.
    #[track_caller]
    pub fn assert_not_started(&self, job: &str) {
        let runs: Vec<_> = self
            .engine_calls()
            .into_iter()
            .filter(|c| c.is_create() && !c.is_probe())
            .collect();
        assert!(runs.is_empty(), "a container was created: {runs:?}");
        self.assert_no_leaks(job);
    }

    /// Write a file in the bed (root-owned) with `mode`; its path.
    pub fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

/// Set a dotted key (`docker.pids_limit`) in a policy table, creating tables.
pub fn set(policy: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("key");
    let mut t = policy;
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{p} is not a table"));
    }
    t.insert(last.to_string(), value.into());
}

/// A directory for one test under alice's storage, owned by her; removed on
/// drop.
pub struct AliceDir {
    pub path: PathBuf,
}

impl AliceDir {
    pub fn new(tag: &str) -> AliceDir {
        let path = Path::new(ALICE_DIR).join(format!("berth-it-{tag}-{}", next_job_id()));
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        AliceDir { path }
    }
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for AliceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Owner uid and permission bits of a path (not following a symlink).
pub fn owner_mode(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.uid(), md.mode() & 0o7777)
}

// ---------------------------------------------------------------------------
// jobs
// ---------------------------------------------------------------------------

/// One berth invocation: a cleared environment holding only what a
/// scheduler would set, a chosen cwd, and the bed's policy.
pub struct Job<'a> {
    pub bed: &'a Bed,
    pub id: String,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// `--policy FILE`; `None` leaves the flag out.
    pub policy_flag: Option<PathBuf>,
}

impl<'a> Job<'a> {
    pub fn new(bed: &'a Bed) -> Job<'a> {
        let id = next_job_id();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("LSB_CONTAINER_IMAGE", IMAGE),
            ("LSB_JOBID", id.as_str()),
            ("LSFUSER", ALICE),
            ("LS_SUBCWD", ALICE_DIR),
            ("PATH", CALLER_PATH),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        Job {
            bed,
            id,
            env,
            cwd: PathBuf::from(ALICE_DIR),
            policy_flag: Some(bed.policy_path()),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }
    pub fn unset(mut self, k: &str) -> Self {
        self.env.remove(k);
        self
    }
    pub fn image(self, image: &str) -> Self {
        self.env("LSB_CONTAINER_IMAGE", image)
    }
    pub fn volumes(self, v: &str) -> Self {
        self.env("LSF_DOCKER_VOLUMES", v)
    }
    pub fn cwd(mut self, p: &str) -> Self {
        self.cwd = PathBuf::from(p);
        self
    }
    pub fn policy(mut self, p: Option<PathBuf>) -> Self {
        self.policy_flag = p;
        self
    }

    /// The berth command line: `berth [--policy F] <sub…> -- <cmd…>`.
    pub fn command(&self, sub: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(berth_bin());
        if let Some(p) = &self.policy_flag {
            c.arg("--policy").arg(p);
        }
        c.args(sub)
            .arg("--")
            .args(cmd)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        c
    }

    fn output(&self, mut c: Command) -> Out {
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", berth_bin()));
        Out::from(out.status, out.stdout, out.stderr)
    }

    /// `berth run -- SCRIPT` (one argument: a /bin/sh -c script).
    pub fn run(&self, script: &str) -> Out {
        self.output(self.command(&["run"], &[script]))
    }

    /// `berth explain [--json] -- SCRIPT`.
    pub fn explain(&self, json: bool, script: &str) -> Out {
        let sub: &[&str] = if json {
            &["explain", "--json"]
        } else {
            &["explain"]
        };
        self.output(self.command(sub, &[script]))
    }

    /// Start `berth run -- SCRIPT` in the background.
    pub fn spawn(&self, script: &str) -> Running {
        let child = self
            .command(&["run"], &[script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", berth_bin()));
        Running {
            child: Some(child),
            job: self.id.clone(),
        }
    }
}

/// A job script that waits (up to 60 s) until the file /tmp/release exists
/// in the container; see [`release`]. Exits 0 when released, 99 on timeout.
pub const HOLD: &str =
    "i=0; while [ ! -e /tmp/release ]; do i=$((i+1)); [ $i -gt 600 ] && exit 99; sleep 0.1; done";

/// Release a job running [`HOLD`] by creating /tmp/release in its per-job
/// tmp directory on the host.
pub fn release(job_dir: &Path) {
    std::fs::write(job_dir.join("tmp").join("release"), b"").unwrap();
}

/// A berth process started in the background. Dropping it kills berth and
/// removes the job's containers, so a failed test leaves nothing running.
pub struct Running {
    child: Option<Child>,
    pub job: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    /// Wait for berth to exit (at most `timeout`) and collect its output.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Out {
        let mut child = self.child.take().expect("child");
        let status = wait_child(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            remove_containers(&self.job);
            panic!("berth for job {} did not exit within {timeout:?}", self.job);
        }
        // The streams close when berth, docker and the reaper are gone.
        let out = child.wait_with_output().expect("wait_with_output");
        Out::from(out.status, out.stdout, out.stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
            remove_containers(&self.job);
        }
    }
}
