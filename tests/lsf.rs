//! LSF end to end, on a real Docker engine, with a "fake LSF" that hands
//! each script exactly what LSF documents (notes/lsf.md):
//!
//! * at submission, `esub.docker` runs as the submitting user with the
//!   image as its argument, `LSB_SUB_PARM_FILE` (quoted `LSB_SUB_*` lines),
//!   `LSB_SUB_MODIFY_ENVFILE`, `LSB_SUB_MODIFY_FILE`, `LSB_SUB_ABORT_VALUE`;
//! * at dispatch, the starter runs under `/bin/sh -c '<starter> <jobfile>'`
//!   (EXEC_DRIVER) or `/bin/sh -c '<starter> "<command>"'` (JOB_STARTER
//!   "%USRCMD"), with LSB_JOBID, LSB_JOBINDEX, LSFUSER, LS_SUBCWD,
//!   LSB_JOBFILENAME …, and the esub's LSB_CONTAINER_IMAGE;
//! * the controller and monitor run with the job's LSB_JOBID/LSB_JOBINDEX.
//!
//! The scripts are the real ones from wrapper/lsf/, with only their two
//! site lines (BERTH=, POLICY=) pointed at this build and a test policy.
//! Root, the testbed's users and images, and a reachable engine are
//! required: a missing engine FAILS, never skips. Every job id is unique
//! (this process's pid and a counter) and every test cleans up.

#[path = "common/gpu.rs"]
mod gpu;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "berth-test/busybox:1";
const ALICE: &str = "berth-alice";
const ALICE_DIR: &str = "/storage1/fs1/alice";
const ABORT: i32 = 97;
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn berth() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fail (never skip) unless root, the engine and the testbed are there.
fn require_testbed() {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("the LSF integration tests must run as root".into());
        }
        let out = docker(&["info", "--format", "{{.ServerVersion}}"]);
        if out.code != Some(0) {
            return Err(format!(
                "the docker engine does not answer ({}); run tests/setup/testbed.sh up",
                out.stderr.trim()
            ));
        }
        for u in [ALICE, "berth-bob", "berth-relay", "berth-low"] {
            if nix::unistd::User::from_name(u).ok().flatten().is_none() {
                return Err(format!(
                    "user {u} is missing; run tests/setup/testbed.sh up"
                ));
            }
        }
        if docker(&["image", "inspect", IMAGE]).code != Some(0) {
            return Err(format!(
                "image {IMAGE} is missing; run tests/setup/testbed.sh up"
            ));
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("testbed not ready: {e}");
    }
}

fn job_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{:03}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn expect(&self, code: i32) -> &Out {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    fn field(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
    }
}

fn output(child: Child) -> Out {
    let o = child.wait_with_output().expect("wait");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn docker(args: &[&str]) -> Out {
    let child = Command::new(DOCKER)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker");
    output(child)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
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

/// A command that runs as `user` (uid, primary and supplementary groups,
/// like LSF's res/sbatchd would set them) with exactly `env`, from `cwd`.
fn command_as(user: Option<&str>, argv: &[&str], env: &[(String, String)], cwd: &str) -> Command {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(name) = user {
        let u = nix::unistd::User::from_name(name).unwrap().unwrap();
        let cname = std::ffi::CString::new(name).unwrap();
        let groups = nix::unistd::getgrouplist(&cname, u.gid).unwrap();
        let (uid, gid) = (u.uid, u.gid);
        // SAFETY: only setgroups/setresgid/setresuid between fork and exec.
        unsafe {
            c.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setresgid(gid, gid, gid)?;
                nix::unistd::setresuid(uid, uid, uid)?;
                Ok(())
            });
        }
    }
    c
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// the bed: policy, scripts, broker
// ---------------------------------------------------------------------------

struct Bed {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Bed {
    /// A root-owned directory with a policy and the wrapper/lsf scripts.
    fn new(raw_args: bool) -> Bed {
        Self::with_docker(raw_args, "")
    }

    /// As [`Bed::new`], with `docker` lines added to the policy's [docker].
    fn with_docker(raw_args: bool, docker: &str) -> Bed {
        require_testbed();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/berth-lsf-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("bundles")).unwrap();
        for d in [&dir, &dir.join("run"), &dir.join("bundles")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let d = dir.display();
        let policy = format!(
            r#"
[cgroup]
require_job = false
[identity]
relays = ["berth-relay"]
[images]
allow = ["docker.io/berth-test/*"]
raw_args = {raw_args}
facts_cache = "{d}/facts"
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[[volumes]]
root = "/scratch1/fs1"
mode = "rw"
[tmp]
base = "{d}/jobs"
[docker]
stop_timeout = 3
{docker}
[bundles]
cache = "{d}/bundles"
[gpus]
mode = "devices"
[broker]
socket = "{d}/run/berth.sock"
[audit]
log = "{d}/audit.log"
"#
        );
        write(&dir.join("policy.toml"), &policy, 0o644);
        let bed = Bed { dir, daemon: None };
        for s in [
            "esub.docker",
            "berth-starter",
            "berth-control",
            "berth-monitor",
        ] {
            bed.install(s);
        }
        bed
    }

    /// Copy a wrapper/lsf script, pointing only its site lines here.
    fn install(&self, name: &str) {
        let text = std::fs::read_to_string(repo().join("wrapper/lsf").join(name)).unwrap();
        let mut n = 0;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("BERTH=") {
                    n += 1;
                    format!("BERTH={}\n", berth())
                } else if l.starts_with("POLICY=") {
                    n += 1;
                    format!("POLICY={}\n", self.policy().display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_eq!(
            n, 2,
            "{name} must have exactly one BERTH= and one POLICY= line"
        );
        write(&self.script(name), &text, 0o755);
    }

    fn policy(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    fn script(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn jobs(&self) -> PathBuf {
        self.dir.join("jobs")
    }

    /// Start the broker (berth daemon) on this bed's socket.
    fn start_broker(&mut self) {
        self.start_broker_on(None)
    }

    /// The broker of another host of a parallel job: the same engine, in a
    /// UTS namespace of its own named `host` (the name berth reads).
    fn start_broker_on(&mut self, host: Option<&str>) {
        let sock = self.dir.join("run/berth.sock");
        let mut c = Command::new(berth());
        c.args(["--policy", self.policy().to_str().unwrap(), "daemon"])
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(h) = host {
            let h = h.to_string();
            // SAFETY: unshare and sethostname between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
                    nix::unistd::sethostname(&h)?;
                    Ok(())
                });
            }
        }
        let child = c.spawn().unwrap();
        self.daemon = Some(child);
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "the broker did not come up on {}",
            sock.display()
        );
    }

    /// Audit records of one job.
    fn audit(&self, job: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["job"] == job)
            .collect()
    }

    /// The container name the launch record of job[index] names.
    fn container(&self, job: &str, index: u32) -> String {
        let mut name = None;
        wait_until(Duration::from_secs(20), || {
            name = self
                .audit(job)
                .iter()
                .find(|r| r["event"] == "launch" && r["index"] == index)
                .and_then(|r| r["container"].as_str().map(str::to_string));
            name.is_some()
        });
        name.unwrap_or_else(|| panic!("no launch record for {job}[{index}]"))
    }

    /// Run the esub as `user`, as mesub would. Returns (result, env file,
    /// modify file), each file `None` when it was never created.
    fn esub(
        &self,
        user: &str,
        argv: &[&str],
        parm: &str,
        env: &[(&str, &str)],
        cwd: &str,
        abort: Option<i32>,
    ) -> (Out, Option<String>, Option<String>) {
        let script = self.script("esub.docker");
        let mut v = vec![script.to_str().unwrap()];
        v.extend_from_slice(argv);
        self.esub_command(user, &v, parm, env, cwd, abort)
    }

    /// As [`Bed::esub`], with `command` run instead of esub.docker (a
    /// site's own esub line).
    fn esub_command(
        &self,
        user: &str,
        command: &[&str],
        parm: &str,
        env: &[(&str, &str)],
        cwd: &str,
        abort: Option<i32>,
    ) -> (Out, Option<String>, Option<String>) {
        // bsub makes a private directory for the esub's files.
        let sub = self.dir.join(format!("esub-{}", job_id()));
        std::fs::create_dir(&sub).unwrap();
        let u = nix::unistd::User::from_name(user).unwrap().unwrap();
        nix::unistd::chown(&sub, Some(u.uid), Some(u.gid)).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        let parm_file = sub.join("parm");
        std::fs::write(&parm_file, parm).unwrap();
        nix::unistd::chown(&parm_file, Some(u.uid), Some(u.gid)).unwrap();
        let envfile = sub.join("envfile");
        let modfile = sub.join("modfile");
        let mut e = pairs(&[
            ("PATH", PATH),
            ("USER", user),
            ("LOGNAME", user),
            ("PWD", cwd),
        ]);
        e.push(("HOME".into(), u.dir.display().to_string()));
        e.push(("LSB_SUB_PARM_FILE".into(), parm_file.display().to_string()));
        e.push((
            "LSB_SUB_MODIFY_ENVFILE".into(),
            envfile.display().to_string(),
        ));
        e.push(("LSB_SUB_MODIFY_FILE".into(), modfile.display().to_string()));
        if let Some(a) = abort {
            e.push(("LSB_SUB_ABORT_VALUE".into(), a.to_string()));
        }
        e.extend(pairs(env));
        let out = output(command_as(Some(user), command, &e, cwd).spawn().unwrap());
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let r = (out, read(&envfile), read(&modfile));
        let _ = std::fs::remove_dir_all(&sub);
        r
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(p: &Path, text: &str, mode: u32) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The parameter file bsub would write for `bsub -a 'docker(IMAGE)' CMD`.
fn parm_file(image: &str, command: &str) -> String {
    let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "LSB_SUB_QUEUE=\"normal\"\nLSB_SUB_JOB_NAME=\"{}\"\nLSB_SUB_ADDITIONAL=\"docker({image})\"\nLSB_SUB_COMMAND_LINE=\"{}\"\nLSB_SUB_NUM_PROCESSORS=1\nLSB_SUB_MAX_NUM_PROCESSORS=1\n",
        q(command),
        q(command)
    )
}

// ---------------------------------------------------------------------------
// the job side: job file, environment, starter
// ---------------------------------------------------------------------------

/// An LSF job on this host: its id, index, owner and files.
struct Job {
    id: String,
    index: u32,
    user: String,
    cwd: String,
    image: String,
    extra: Vec<(String, String)>,
    job_file: Option<PathBuf>,
}

impl Job {
    fn new(user: &str, image: &str) -> Job {
        Job {
            id: job_id(),
            index: 0,
            user: user.into(),
            cwd: ALICE_DIR.into(),
            image: image.into(),
            extra: Vec::new(),
            job_file: None,
        }
    }

    fn env(mut self, k: &str, v: &str) -> Job {
        self.extra.push((k.into(), v.into()));
        self
    }

    /// The job file LSF writes in the owner's ~/.lsbatch (mode 0700): the
    /// user's command between LSF's markers.
    fn write_job_file(&mut self, command: &str) -> PathBuf {
        let u = nix::unistd::User::from_name(&self.user).unwrap().unwrap();
        let spool = u.dir.join(".lsbatch");
        // Jobs started side by side (array elements) race to make it.
        match std::fs::create_dir(&spool) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("{}: {e}", spool.display()),
        }
        nix::unistd::chown(&spool, Some(u.uid), Some(u.gid)).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
        self.write_job_file_in(&spool, command)
    }

    /// As [`Job::write_job_file`], in `spool` (lsb.params JOB_SPOOL_DIR).
    fn write_job_file_in(&mut self, spool: &Path, command: &str) -> PathBuf {
        let u = nix::unistd::User::from_name(&self.user).unwrap().unwrap();
        // One file per element of an array (berth reads whatever
        // LSB_JOBFILENAME names; elements must not share one).
        let path = match self.index {
            0 => spool.join(format!("1795238400.{}", self.id)),
            i => spool.join(format!("1795238400.{}.{i}", self.id)),
        };
        let text = format!(
            "#! /bin/sh\n\n$LSB_TRAPSIGS\n$LSB_RCP1\n$LSB_RCP2\n$LSB_RCP3\n# LSBATCH: User input\n{command}\nExitStat=$?\nwait\n# LSBATCH: End user input\ntrue\nexit `expr $ExitStat`\n"
        );
        write(&path, &text, 0o700);
        nix::unistd::chown(&path, Some(u.uid), Some(u.gid)).unwrap();
        self.job_file = Some(path.clone());
        path
    }

    /// The environment sbatchd gives the job (and so the starter).
    fn lsf_env(&self) -> Vec<(String, String)> {
        let u = nix::unistd::User::from_name(&self.user).unwrap().unwrap();
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        let mut e = pairs(&[
            ("PATH", PATH),
            ("USER", &self.user),
            ("LOGNAME", &self.user),
            ("LSFUSER", &self.user),
            ("LSB_JOBID", &self.id),
            ("LSB_JOBINDEX", &self.index.to_string()),
            ("LSB_JOBNAME", "lsf-test"),
            ("LSB_QUEUE", "normal"),
            ("LSB_HOSTS", &host),
            ("LSB_MCPU_HOSTS", &format!("{host} 1")),
            ("LSB_SUB_HOST", &host),
            ("LS_SUBCWD", &self.cwd),
            ("LSB_TRAPSIGS", "trap # 15 10 12 2 1"),
            ("LSB_CONTAINER_IMAGE", &self.image),
        ]);
        e.push(("HOME".into(), u.dir.display().to_string()));
        if let Some(f) = &self.job_file {
            e.push(("LSB_JOBFILENAME".into(), f.display().to_string()));
        }
        e.extend(self.extra.iter().cloned());
        e
    }

    /// `/bin/sh -c '<starter> <args>'` as `caller` (None: root), the way
    /// sbatchd runs a job starter or an EXEC_DRIVER starter.
    fn start(&self, bed: &Bed, caller: Option<&str>, starter_args: &str) -> Child {
        let line = format!("{} {starter_args}", bed.script("berth-starter").display());
        command_as(
            caller,
            &["/bin/sh", "-c", &line],
            &self.lsf_env(),
            &self.cwd,
        )
        .spawn()
        .unwrap()
    }

    /// EXEC_DRIVER style: the starter's argument is the job file.
    fn start_job_file(&mut self, bed: &Bed, caller: Option<&str>, command: &str) -> Child {
        let f = self.write_job_file(command);
        self.start(bed, caller, &f.display().to_string())
    }

    /// JOB_STARTER = starter "%USRCMD": LSF puts the command in the quotes.
    fn start_usrcmd(&self, bed: &Bed, caller: Option<&str>, command: &str) -> Child {
        self.start(bed, caller, &format!("\"{command}\""))
    }

    /// berth-control / berth-monitor with the job's environment.
    fn tool(&self, bed: &Bed, caller: Option<&str>, script: &str, args: &[&str]) -> Out {
        let s = bed.script(script);
        let mut v = vec![s.to_str().unwrap()];
        v.extend_from_slice(args);
        output(
            command_as(caller, &v, &self.lsf_env(), "/")
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(f) = &self.job_file {
            let _ = std::fs::remove_file(f);
        }
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.job={}", self.id),
        ]);
        for id in ids.stdout.split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
}

fn containers_of(job: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label=berth.job={job}")])
        .stdout
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn wait_child(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// esub
// ---------------------------------------------------------------------------

#[test]
fn esub_accepts_and_writes_exactly_the_image() {
    let bed = Bed::new(true);
    // bsub -a 'docker(berth-test/busybox:1)' 'echo "hi there"'
    let parm = parm_file(IMAGE, "echo \"hi there\"");
    let (out, envfile, modfile) = bed.esub(
        ALICE,
        &[IMAGE],
        &parm,
        &[(
            "LSF_DOCKER_VOLUMES",
            "/storage1/fs1/alice:/data:ro /scratch1/fs1/alice",
        )],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(out.stderr, "", "an accepted submission prints nothing");
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"berth-test/busybox:1\"\n")
    );
    // esub.docker routes -a docker jobs to the "docker" profile.
    assert_eq!(modfile.as_deref(), Some("LSB_SUB_APP_NAME=\"docker\"\n"));

    // Without an argument the image comes from LSB_SUB_ADDITIONAL; a
    // profile the user chose is kept.
    let parm =
        format!("LSB_SUB_APP_NAME=\"mine\"\nLSB_SUB_ADDITIONAL=\"license(a,b) docker({IMAGE})\"\n");
    let (out, envfile, modfile) = bed.esub(ALICE, &[], &parm, &[], ALICE_DIR, Some(ABORT));
    out.expect(0);
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"berth-test/busybox:1\"\n")
    );
    assert_eq!(modfile, None);

    // docker(bundle:NAME): the bundle is the node's business.
    let (out, envfile, _) = bed.esub(
        ALICE,
        &["bundle:pt2"],
        &parm_file("bundle:pt2", "true"),
        &[],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"bundle:pt2\"\n")
    );
}

/// (what, bed, user, esub argv, submission env, cwd, command, needle)
type Case<'a> = (
    &'a str,
    &'a Bed,
    &'a str,
    Vec<&'a str>,
    Vec<(&'a str, &'a str)>,
    &'a str,
    &'a str,
    &'a str,
);

#[test]
fn esub_rejects_at_submission_and_writes_nothing() {
    let bed = Bed::new(true);
    let noraw = Bed::new(false);
    let v = |s: &'static str| vec![("LSF_DOCKER_VOLUMES", s)];
    let bob_vol: &'static str = "/storage1/fs1/bob-private/open:/data";
    // (what, bed, user, esub argv, submission env, cwd, command, needle)
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("image not allowed", &bed, ALICE, vec!["alpine"], vec![], ALICE_DIR, "true", "images.allow"),
        ("volume outside the roots", &bed, ALICE, vec![IMAGE], v("/etc:/data"), ALICE_DIR, "true", "not under an allowed root"),
        ("prefix look-alike root", &bed, ALICE, vec![IMAGE], v("/storage1x/fs1/alice:/data"), ALICE_DIR, "true", "volumes.source"),
        ("symlink leaving the root", &bed, ALICE, vec![IMAGE], v("/storage1/fs1/alice/link-out:/data"), ALICE_DIR, "true", "outside its root"),
        ("a file, not a directory", &bed, ALICE, vec![IMAGE], v("/storage1/fs1/alice/afile:/data"), ALICE_DIR, "true", "not a directory"),
        ("colon in the path", &bed, ALICE, vec![IMAGE], v("/storage1/fs1/alice/we:ird:/data"), ALICE_DIR, "true", "':'"),
        ("reserved destination", &bed, ALICE, vec![IMAGE], v("/storage1/fs1/alice:/etc"), ALICE_DIR, "true", "mounts.reserved"),
        // Resolved with alice's own credentials: bob's 0700 tree is closed.
        ("another user's private tree", &bed, ALICE, vec![IMAGE], v(bob_vol), ALICE_DIR, "true", "cannot reach"),
        ("cwd outside the roots", &bed, ALICE, vec![IMAGE], vec![], "/home/berth-alice", "true", "workdir.root"),
        ("network not allowed", &bed, ALICE, vec![IMAGE], vec![("LSF_DOCKER_NETWORK", "host")], ALICE_DIR, "true", "docker.networks"),
        ("malformed ports", &bed, ALICE, vec![IMAGE], vec![("LSF_DOCKER_PORTS", "80")], ALICE_DIR, "true", "LSF_DOCKER_PORTS"),
        ("malformed bool", &bed, ALICE, vec![IMAGE], vec![("LSF_DOCKER_PRESERVE_ENVIRONMENT", "maybe")], ALICE_DIR, "true", "malformed"),
        ("unreadable env file", &bed, ALICE, vec![IMAGE], vec![("LSF_DOCKER_ENV_FILE", "/storage1/fs1/bob-private/open/secret.txt")], ALICE_DIR, "true", "env file"),
        ("raw args not allowed", &noraw, ALICE, vec![IMAGE], vec![("LSF_DOCKER_RUN_RAW_ARGS", "1")], ALICE_DIR, "LSB_DOCKER_PLACE_HOLDER", "images.raw_args"),
        ("no image", &bed, ALICE, vec![], vec![], ALICE_DIR, "true", "no image"),
        ("two images", &bed, ALICE, vec!["a,b"], vec![], ALICE_DIR, "true", "exactly one"),
        ("bad bundle name", &bed, ALICE, vec!["bundle:../x"], vec![], ALICE_DIR, "true", "bundle name"),
        ("system account", &bed, "berth-low", vec![IMAGE], vec![], "/", "true", "identity.min_uid"),
    ];
    for (what, b, user, argv, env, cwd, cmd, needle) in cases {
        let parm = format!("LSB_SUB_COMMAND_LINE=\"{cmd}\"\n");
        let (out, envfile, modfile) = b.esub(user, &argv, &parm, &env, cwd, Some(ABORT));
        assert_eq!(out.code, Some(ABORT), "{what}: {out:?}");
        assert!(
            out.stderr.starts_with("berth: job rejected: ") && out.stderr.contains(needle),
            "{what}: the message does not name {needle:?}: {}",
            out.stderr
        );
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{what}: one line: {}",
            out.stderr
        );
        assert_eq!((envfile, modfile), (None, None), "{what}: nothing written");
    }

    // A parameter file that does not parse rejects the job too.
    let (out, envfile, _) = bed.esub(
        ALICE,
        &[IMAGE],
        "LSB_SUB_COMMAND_LINE=\"unterminated\n",
        &[],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(ABORT);
    assert!(out.stderr.contains("parameter file"), "{}", out.stderr);
    assert_eq!(envfile, None);

    // An output file that cannot be opened rejects the job before anything
    // is written to the other.
    let (out, envfile, _) = bed.esub(
        ALICE,
        &[IMAGE],
        "",
        &[("LSB_SUB_MODIFY_FILE", "/nonexistent/modfile")],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(ABORT);
    assert!(
        out.stderr.contains("/nonexistent/modfile"),
        "{}",
        out.stderr
    );
    assert_eq!(envfile, None);

    // Without LSB_SUB_ABORT_VALUE, berth's own codes: 77 denied, 64 malformed.
    let (out, envfile, _) = bed.esub(ALICE, &["alpine"], "", &[], ALICE_DIR, None);
    out.expect(77);
    assert_eq!(envfile, None);
    let (out, _, _) = bed.esub(
        ALICE,
        &[IMAGE],
        "",
        &[("LSF_DOCKER_PORTS", "x")],
        ALICE_DIR,
        None,
    );
    out.expect(64);
}

/// LSF accepts a job whose esub exits with anything but
/// LSB_SUB_ABORT_VALUE, so a command line berth cannot parse (a site's
/// esub line with an unknown option, a missing value, an older berth)
/// must reject the submission like any other failure (issue 17, item 11).
#[test]
fn esub_usage_errors_reject_the_job() {
    let bed = Bed::new(true);
    let policy = bed.policy();
    let p = policy.to_str().unwrap();
    let b = berth();
    let parm = parm_file(IMAGE, "true");
    #[rustfmt::skip]
    let cases: &[(&str, Vec<&str>)] = &[
        ("unknown option", vec![b, "--policy", p, "lsf", "esub", "--bogus", IMAGE]),
        ("unknown option after --app", vec![b, "--policy", p, "lsf", "esub", "--app", "docker", "-x", "--", IMAGE]),
        ("missing value", vec![b, "--policy", p, "lsf", "esub", "--app"]),
        ("empty --app=", vec![b, "--policy", p, "lsf", "esub", "--app=", IMAGE]),
        ("global option after the subcommand", vec![b, "lsf", "esub", "--policy", p, "--nope", IMAGE]),
        ("missing --policy value", vec![b, "lsf", "esub", IMAGE, "--policy"]),
        // LSF runs the esub to check a submission; help is no check.
        ("help", vec![b, "--policy", p, "lsf", "esub", "--help"]),
        ("version", vec![b, "--policy", p, "lsf", "esub", "-V"]),
    ];
    for (what, command) in cases {
        let (out, envfile, modfile) =
            bed.esub_command(ALICE, command, &parm, &[], ALICE_DIR, Some(ABORT));
        assert_eq!(out.code, Some(ABORT), "{what}: {out:?}");
        assert!(
            out.stderr.starts_with("berth: job rejected: ") && out.stderr.lines().count() == 1,
            "{what}: one `berth: job rejected:` line: {}",
            out.stderr
        );
        assert_eq!((envfile, modfile), (None, None), "{what}: nothing written");
    }

    // Without LSB_SUB_ABORT_VALUE (not LSF): 64, an unknown option (SPEC §3);
    // help is help.
    let (out, envfile, _) = bed.esub_command(
        ALICE,
        &[b, "--policy", p, "lsf", "esub", "--bogus", IMAGE],
        &parm,
        &[],
        ALICE_DIR,
        None,
    );
    out.expect(64);
    assert_eq!(envfile, None);
    let (out, _, _) = bed.esub_command(
        ALICE,
        &[b, "lsf", "esub", "--help"],
        &parm,
        &[],
        ALICE_DIR,
        None,
    );
    out.expect(0);
    assert!(out.stdout.contains("Usage:"), "{}", out.stdout);

    // The same line with the site's esub.docker still works.
    let (out, envfile, _) = bed.esub_command(
        ALICE,
        &[
            b, "--policy", p, "lsf", "esub", "--app", "docker", "--", IMAGE,
        ],
        &parm,
        &[],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"berth-test/busybox:1\"\n")
    );
}

#[test]
fn esub_parameter_file_quoting() {
    let bed = Bed::new(true);
    // Escaped quotes, backslashes, $ and a newline inside values, two
    // esubs in LSB_SUB_ADDITIONAL, and the placeholder command.
    let parm = concat!(
        "LSB_SUB_JOB_NAME=\"say \\\"hi\\\" \\\\ \\$HOME\"\n",
        "LSB_SUB_COMMAND_LINE=\"LSB_DOCKER_PLACE_HOLDER\"\n",
        "LSB_SUB_OUT_FILE=\"/storage1/fs1/alice/out\n.%J\"\n",
        "LSB_SUB_ADDITIONAL=\"license(x,y) docker(berth-test/busybox:1)\"\n",
        "LSB_SUB_PROJECT_NAME='single \"quoted\"'\n",
        "LSB_SUB_RES_REQ=select[docker]\n",
    );
    let (out, envfile, _) = bed.esub(
        ALICE,
        &[],
        parm,
        &[("LSF_DOCKER_RUN_RAW_ARGS", "1")],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"berth-test/busybox:1\"\n")
    );
    // With raw args refused, the same file is rejected: the placeholder was
    // read from the escaped command line.
    let noraw = Bed::new(false);
    let (out, envfile, _) = noraw.esub(
        ALICE,
        &[],
        parm,
        &[("LSF_DOCKER_RUN_RAW_ARGS", "1")],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(ABORT);
    assert!(out.stderr.contains("images.raw_args"), "{}", out.stderr);
    assert_eq!(envfile, None);
}

// ---------------------------------------------------------------------------
// starter
// ---------------------------------------------------------------------------

/// bsub -a 'docker(IMAGE)' → esub → dispatch: the job runs in the image as
/// LSFUSER, from its job file, under /bin/sh -c, in the submission cwd.
#[test]
fn submitted_job_runs_in_the_image_as_lsfuser() {
    let bed = Bed::new(true);
    let cmd = "id -u; id -g; whoami; pwd; echo \"job=$0\"; test -d /opt/imgwork && echo in-image; echo \"tmp=$(stat -c %u:%a /tmp)\"";
    let (out, envfile, _) = bed.esub(
        ALICE,
        &[IMAGE],
        &parm_file(IMAGE, cmd),
        &[],
        ALICE_DIR,
        Some(ABORT),
    );
    out.expect(0);
    let image = envfile
        .unwrap()
        .trim()
        .strip_prefix("LSB_CONTAINER_IMAGE=\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap()
        .to_string();
    let mut job = Job::new(ALICE, &image);
    // EXEC_DRIVER with context[user(root)]: the starter runs as root and
    // LSFUSER names the owner.
    let out = output(job.start_job_file(&bed, None, cmd));
    out.expect(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[..4],
        &["2001", "2001", ALICE, ALICE_DIR],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("job=/tmp/.lsbatch/1795238400."),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("in-image"), "{}", out.stdout);
    assert!(out.stdout.contains("tmp=2001:700"), "{}", out.stdout);
    // Audited as alice's job, launched by root; nothing left behind.
    let recs = bed.audit(&job.id);
    assert!(
        recs.iter()
            .any(|r| r["event"] == "launch" && r["user"] == ALICE && r["index"] == 0),
        "{recs:?}"
    );
    assert!(recs
        .iter()
        .any(|r| r["event"] == "exit" && r["exit_code"] == 0));
    assert!(containers_of(&job.id).is_empty());
    assert_eq!(std::fs::read_dir(bed.jobs()).unwrap().count(), 0);

    // The job's exit code is LSF's: the script's own.
    let mut job = Job::new(ALICE, IMAGE);
    output(job.start_job_file(&bed, None, "exit 3")).expect(3);

    // JOB_STARTER = berth-starter "%USRCMD": the command itself.
    let job = Job::new(ALICE, IMAGE);
    let out = output(job.start_usrcmd(&bed, None, "echo usrcmd $((6*7)) | tr a-z A-Z; id -un"));
    out.expect(0);
    assert_eq!(out.stdout, format!("USRCMD 42\n{ALICE}\n"));
}

/// LSFUSER counts only from root or a relay in identity.relays; through the
/// broker the caller is the kernel's SO_PEERCRED, as in the EXEC_DRIVER
/// style with context[user(lsfadmin)].
#[test]
fn lsfuser_is_honoured_only_from_a_trusted_relay() {
    let mut bed = Bed::new(true);
    bed.start_broker();
    let who = "id -un; id -u";
    // The relay (berth-relay, our lsfadmin) starts alice's job.
    let mut job = Job::new(ALICE, IMAGE);
    let out = output(job.start_job_file(&bed, Some("berth-relay"), who));
    out.expect(0);
    assert_eq!(out.stdout, format!("{ALICE}\n2001\n"));
    // bob names alice as the owner: ignored, the job is bob's.
    let mut job = Job::new(ALICE, IMAGE).env("LSFUSER", ALICE);
    job.user = "berth-bob".into();
    let out = output(job.start_usrcmd(&bed, Some("berth-bob"), who));
    out.expect(0);
    assert_eq!(out.stdout, "berth-bob\n2002\n");
    let recs = bed.audit(&job.id);
    assert!(recs.iter().all(|r| r["user"] == "berth-bob"), "{recs:?}");

    // The same rule in the identity layer, with the node's NSS.
    let policy = berth::core::policy::Policy::load(&bed.policy()).unwrap();
    let relay = nix::unistd::User::from_name("berth-relay")
        .unwrap()
        .unwrap();
    let id = berth::core::identity::resolve(
        &berth::sys::nss::Nss,
        &policy,
        relay.uid.as_raw(),
        Some(ALICE),
    )
    .unwrap();
    assert_eq!(id.uid, 2001);
    let id =
        berth::core::identity::resolve(&berth::sys::nss::Nss, &policy, 2002, Some(ALICE)).unwrap();
    assert_eq!(id.uid, 2002);
    let id =
        berth::core::identity::resolve(&berth::sys::nss::Nss, &policy, 0, Some(ALICE)).unwrap();
    assert_eq!(id.uid, 2001);
}

// ---------------------------------------------------------------------------
// control and monitor
// ---------------------------------------------------------------------------

fn counter(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("tmp/count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[test]
fn control_suspends_resumes_and_terminates() {
    let bed = Bed::new(true);
    let mut job = Job::new(ALICE, IMAGE);
    let mut child = job.start_job_file(
        &bed,
        None,
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done",
    );
    let name = bed.container(&job.id, 0);
    let dir = bed.jobs().join(&name);
    assert!(
        wait_until(Duration::from_secs(20), || counter(&dir)
            .is_some_and(|c| c > 3)),
        "the job never made progress"
    );
    let m = job.tool(&bed, None, "berth-monitor", &[]);
    m.expect(0);
    assert_eq!(m.field("CONTAINER"), Some(name.as_str()));
    assert_eq!(m.field("STATE"), Some("running"));
    assert!(
        m.field("NPROCS").unwrap().parse::<u64>().unwrap() >= 2,
        "{}",
        m.stdout
    );
    assert!(
        m.field("MEM_USED").unwrap().parse::<u64>().unwrap() > 0,
        "{}",
        m.stdout
    );
    assert!(
        m.field("PID").unwrap().parse::<u64>().unwrap() > 1,
        "{}",
        m.stdout
    );

    // SUSPEND, as the EXEC_DRIVER controller gets it: no more progress.
    job.tool(&bed, None, "berth-control", &["SIGSTOP"])
        .expect(0);
    let a = counter(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let b = counter(&dir).unwrap();
    assert_eq!(a, b, "a suspended job kept running");
    let m = job.tool(&bed, None, "berth-monitor", &["--json"]);
    m.expect(0);
    let v: serde_json::Value = serde_json::from_str(m.stdout.trim()).unwrap();
    assert_eq!(v["state"], "paused");
    // Suspending twice is fine.
    job.tool(&bed, None, "berth-control", &["suspend"])
        .expect(0);

    // RESUME: progress again.
    job.tool(&bed, None, "berth-control", &["resume"]).expect(0);
    assert!(
        wait_until(Duration::from_secs(10), || counter(&dir)
            .is_some_and(|c| c > b + 3)),
        "a resumed job made no progress"
    );

    // TERMINATE while suspended: gone, and so is its /tmp.
    job.tool(&bed, None, "berth-control", &["suspend"])
        .expect(0);
    let t = Instant::now();
    job.tool(&bed, None, "berth-control", &["terminate"])
        .expect(0);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "terminate took {:?}",
        t.elapsed()
    );
    let status = wait_child(&mut child, Duration::from_secs(20)).expect("starter still running");
    assert_ne!(status.code(), Some(0), "a terminated job does not succeed");
    assert!(
        containers_of(&job.id).is_empty(),
        "the container is still there"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !dir.exists()),
        "{} (the job's /tmp) is still there",
        dir.display()
    );
    // The actions were audited.
    let details: Vec<String> = bed
        .audit(&job.id)
        .iter()
        .filter(|r| r["event"] == "control")
        .map(|r| r["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        details,
        vec!["suspend", "suspend", "resume", "suspend", "terminate"]
    );

    // Afterwards: terminate is done already, suspend has nothing to act on,
    // and the monitor says so.
    job.tool(&bed, None, "berth-control", &["terminate"])
        .expect(0);
    let out = job.tool(&bed, None, "berth-control", &["SIGTSTP"]);
    out.expect(1);
    assert!(
        out.stderr.contains("no running container"),
        "{}",
        out.stderr
    );
    let m = job.tool(&bed, None, "berth-monitor", &[]);
    m.expect(0);
    assert_eq!(m.field("STATE"), Some("none"));
    // Not an action at all.
    job.tool(&bed, None, "berth-control", &["SIGSEGV"])
        .expect(64);
}

/// The EXEC_DRIVER controller and monitor run as the context user (a
/// relay), JOB_CONTROLS as the job's owner: neither needs Docker access,
/// the broker acts for them, and nobody else may.
#[test]
fn control_and_monitor_through_the_broker() {
    let mut bed = Bed::new(true);
    bed.start_broker();
    let mut job = Job::new(ALICE, IMAGE);
    let mut child = job.start_job_file(
        &bed,
        Some("berth-relay"),
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done",
    );
    let name = bed.container(&job.id, 0);
    let dir = bed.jobs().join(&name);
    assert!(
        wait_until(Duration::from_secs(20), || counter(&dir)
            .is_some_and(|c| c > 3)),
        "the job never made progress"
    );
    // bob may neither suspend nor watch alice's job.
    let out = job.tool(&bed, Some("berth-bob"), "berth-control", &["suspend"]);
    out.expect(77);
    assert!(out.stderr.contains("lsf.control"), "{}", out.stderr);
    job.tool(&bed, Some("berth-bob"), "berth-monitor", &[])
        .expect(77);
    // The relay suspends, the owner watches and resumes, the relay ends it.
    job.tool(&bed, Some("berth-relay"), "berth-control", &["SIGSTOP"])
        .expect(0);
    let a = counter(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(counter(&dir), Some(a), "a suspended job kept running");
    let m = job.tool(&bed, Some(ALICE), "berth-monitor", &[]);
    m.expect(0);
    assert_eq!(
        (m.field("CONTAINER"), m.field("STATE")),
        (Some(name.as_str()), Some("paused"))
    );
    job.tool(&bed, Some(ALICE), "berth-control", &["resume"])
        .expect(0);
    assert!(
        wait_until(Duration::from_secs(10), || counter(&dir)
            .is_some_and(|c| c > a + 3)),
        "a resumed job made no progress"
    );
    job.tool(&bed, Some("berth-relay"), "berth-control", &["SIGTERM"])
        .expect(0);
    let status = wait_child(&mut child, Duration::from_secs(20)).expect("starter still running");
    assert_ne!(status.code(), Some(0));
    assert!(containers_of(&job.id).is_empty());
    assert!(
        wait_until(Duration::from_secs(5), || !dir.exists()),
        "the job's /tmp is still there"
    );
    let callers: Vec<(String, u64)> = bed
        .audit(&job.id)
        .iter()
        .filter(|r| r["event"] == "control")
        .map(|r| {
            (
                r["detail"].as_str().unwrap().to_string(),
                r["caller_uid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        callers,
        vec![
            ("suspend".into(), 2010),
            ("resume".into(), 2001),
            ("terminate".into(), 2010)
        ]
    );
}

// ---------------------------------------------------------------------------
// arrays and raw args
// ---------------------------------------------------------------------------

#[test]
fn array_elements_run_side_by_side() {
    let bed = Bed::new(true);
    let id = job_id();
    let script =
        "echo $LSB_JOBINDEX > /tmp/me; sleep 8; echo \"me=$(cat /tmp/me) n=$(ls /tmp | wc -l)\"";
    // Both elements share the job id: the Job values (whose drop removes
    // the job's containers) live until both are done.
    let (jobs, children): (Vec<Job>, Vec<Child>) = (1..=2)
        .map(|i| {
            let mut j = Job::new(ALICE, IMAGE);
            j.id = id.clone();
            j.index = i;
            let c = j.start_job_file(&bed, None, script);
            (j, c)
        })
        .unzip();
    // Both run at once, each in its own container and /tmp.
    let names: Vec<String> = (1..=2).map(|i| bed.container(&id, i)).collect();
    assert_ne!(names[0], names[1]);
    assert!(
        names[0].starts_with(&format!("berth-{id}-1-")),
        "{}",
        names[0]
    );
    assert!(
        names[1].starts_with(&format!("berth-{id}-2-")),
        "{}",
        names[1]
    );
    assert!(
        wait_until(Duration::from_secs(10), || containers_of(&id).len() == 2),
        "the two elements did not run side by side"
    );
    // Controls reach one element only.
    jobs[1]
        .tool(&bed, None, "berth-control", &["suspend"])
        .expect(0);
    let m0 = jobs[0].tool(&bed, None, "berth-monitor", &[]);
    let m1 = jobs[1].tool(&bed, None, "berth-monitor", &[]);
    assert_eq!(
        (m0.field("STATE"), m1.field("STATE")),
        (Some("running"), Some("paused")),
        "{m0:?} {m1:?}"
    );
    jobs[1]
        .tool(&bed, None, "berth-control", &["resume"])
        .expect(0);
    let outs: Vec<Out> = children.into_iter().map(output).collect();
    for (i, o) in outs.iter().enumerate() {
        o.expect(0);
        // Each element saw only its own /tmp (its /tmp/me and .lsbatch).
        assert_eq!(o.stdout, format!("me={} n=1\n", i + 1));
    }
    let recs = bed.audit(&id);
    for i in 1..=2 {
        assert!(
            recs.iter()
                .any(|r| r["event"] == "exit" && r["index"] == i && r["exit_code"] == 0),
            "no exit record for [{i}]: {recs:?}"
        );
    }
    assert_eq!(std::fs::read_dir(bed.jobs()).unwrap().count(), 0);
}

/// LSF_DOCKER_RUN_RAW_ARGS=1 with LSB_DOCKER_PLACE_HOLDER: the image's own
/// entrypoint/cmd runs (here CMD ["/bin/sh"], which reads the job's stdin).
#[test]
fn raw_args_run_the_images_own_command() {
    let bed = Bed::new(true);
    let raw = |mut job: Job, bed: &Bed, via_job_file: bool| -> Out {
        job = job.env("LSF_DOCKER_RUN_RAW_ARGS", "1");
        let line = if via_job_file {
            let f = job.write_job_file("LSB_DOCKER_PLACE_HOLDER");
            format!("{} {}", bed.script("berth-starter").display(), f.display())
        } else {
            format!(
                "{} \"LSB_DOCKER_PLACE_HOLDER\"",
                bed.script("berth-starter").display()
            )
        };
        let mut c = command_as(None, &["/bin/sh", "-c", &line], &job.lsf_env(), &job.cwd);
        c.stdin(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"echo raw-$((6*7)); id -u\n")
            .unwrap();
        output(child)
    };
    for via_job_file in [false, true] {
        let out = raw(Job::new(ALICE, IMAGE), &bed, via_job_file);
        out.expect(0);
        assert_eq!(out.stdout, "raw-42\n2001\n", "job file: {via_job_file}");
    }
    // A site that does not allow it refuses it, before anything starts.
    let noraw = Bed::new(false);
    let job = Job::new(ALICE, IMAGE);
    let id = job.id.clone();
    let out = raw(job, &noraw, false);
    out.expect(77);
    assert!(out.stderr.contains("images.raw_args"), "{}", out.stderr);
    assert!(containers_of(&id).is_empty());
}

// ---------------------------------------------------------------------------
// the job's allocation: LSF's documented v1 job cgroup, as LSF makes it
// (`/sys/fs/cgroup/<ctrl>/lsf/<cluster>/job.<id>.<index>.<time>`), with a
// memory limit, and the starter started inside it

/// An emulated LSF job cgroup under the controllers LSF uses; removed on drop.
struct LsfCgroup {
    rel: String,
    dirs: Vec<PathBuf>,
    ctrls: Vec<&'static str>,
}

const LSF_CONTROLLERS: &[&str] = &["memory", "cpuset", "cpuacct", "freezer"];

impl LsfCgroup {
    fn new(job: &Job, memory: u64) -> LsfCgroup {
        Self::with_devices(job, memory, None)
    }

    /// With LSF's GPU enforcement (`LSB_RESOURCE_ENFORCE="gpu"`): a devices
    /// cgroup denying `deny` (the GPUs the job was not given). `None`: no
    /// devices cgroup, as without enforcement.
    fn with_devices(job: &Job, memory: u64, deny: Option<&[&str]>) -> LsfCgroup {
        Self::make(job, memory, deny, 0)
    }

    /// The job's cgroup on the `n`th other host of a parallel job: this
    /// machine plays every host, so each has its own creation time.
    fn on_host(job: &Job, memory: u64, n: u32) -> LsfCgroup {
        Self::make(job, memory, None, n)
    }

    fn make(job: &Job, memory: u64, deny: Option<&[&str]>, n: u32) -> LsfCgroup {
        let rel = format!(
            "lsf/berthtest/job.{}.{}.{}",
            job.id,
            job.index,
            1795238400 + n
        );
        let mut dirs = Vec::new();
        let mut ctrls = LSF_CONTROLLERS.to_vec();
        if deny.is_some() {
            ctrls.push("devices");
        }
        for c in &ctrls {
            let root = Path::new("/sys/fs/cgroup").join(c);
            let mut d = root.clone();
            for part in rel.split('/') {
                d.push(part);
                if !d.exists() {
                    match std::fs::create_dir(&d) {
                        Ok(()) => {}
                        // Another test's job made the shared parent first.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => panic!("{}: {e}", d.display()),
                    }
                    dirs.push(d.clone());
                    if *c == "cpuset" {
                        // A v1 cpuset starts empty: LSF gives the job its CPUs.
                        let parent = d.parent().unwrap();
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            // (A parent another test just made gets its value a moment later.)
                            let mut v = String::new();
                            wait_until(Duration::from_secs(2), || {
                                v = std::fs::read_to_string(parent.join(f)).unwrap();
                                !v.trim().is_empty()
                            });
                            std::fs::write(d.join(f), v.trim()).unwrap();
                        }
                    }
                }
            }
        }
        let mem = Path::new("/sys/fs/cgroup/memory").join(&rel);
        std::fs::write(mem.join("memory.limit_in_bytes"), memory.to_string()).unwrap();
        let _ = std::fs::write(mem.join("memory.memsw.limit_in_bytes"), memory.to_string());
        for rule in deny.unwrap_or_default() {
            let f = Path::new("/sys/fs/cgroup/devices")
                .join(&rel)
                .join("devices.deny");
            std::fs::write(&f, rule).unwrap_or_else(|e| panic!("{rule} > {}: {e}", f.display()));
        }
        LsfCgroup { rel, dirs, ctrls }
    }

    /// The cgroup.procs files a process joins to enter the job.
    fn procs(&self) -> Vec<std::ffi::CString> {
        self.ctrls
            .iter()
            .map(|c| {
                std::ffi::CString::new(format!("/sys/fs/cgroup/{c}/{}/cgroup.procs", self.rel))
                    .unwrap()
            })
            .collect()
    }

    /// Every directory of this job's cgroup under any controller.
    fn left(&self) -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = e.path().join(&self.rel);
            if p.exists() {
                // Only what is below the job's own directory counts.
                if std::fs::read_dir(&p)
                    .unwrap()
                    .flatten()
                    .any(|x| x.path().is_dir())
                {
                    v.push(p.display().to_string());
                }
            }
        }
        v
    }
}

impl Drop for LsfCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = e.path().join(&self.rel);
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// Enter the cgroups whose `cgroup.procs` files are `procs` (in a child
/// between fork and exec: open, write and close only).
fn join_cgroups(procs: &[std::ffi::CString]) -> std::io::Result<()> {
    for p in procs {
        // SAFETY: a NUL-terminated path, a 1-byte buffer, a descriptor
        // closed once.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if ok != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// sbatchd's start of a starter, as root, inside the job's cgroup.
fn start_in_cgroup(job: &Job, bed: &Bed, cg: &LsfCgroup, command: &str) -> Child {
    let line = format!("{} \"{command}\"", bed.script("berth-starter").display());
    let mut c = command_as(None, &["/bin/sh", "-c", &line], &job.lsf_env(), &job.cwd);
    let procs = cg.procs();
    // SAFETY: open/write/close of paths built before the fork.
    unsafe {
        c.pre_exec(move || {
            join_cgroups(&procs)?;
            Ok(())
        });
    }
    c.spawn().unwrap()
}

#[test]
fn an_lsf_job_runs_inside_its_job_cgroup_and_is_oom_killed_there() {
    let bed = Bed::new(false);
    let job = Job::new(ALICE, IMAGE);
    let cg = LsfCgroup::new(&job, 64 << 20);
    let out = output(start_in_cgroup(
        &job,
        &bed,
        &cg,
        "grep :memory: /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ));
    out.expect(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].contains(&format!(":/{}/", cg.rel)),
        "not inside the LSF job's cgroup: {}",
        out.stdout
    );
    assert_eq!(lines[1].trim(), (64u64 << 20).to_string());
    let rec = bed.audit(&job.id);
    assert!(
        rec.iter()
            .any(|r| r["cgroup"].as_str() == Some(&format!("/{}", cg.rel))),
        "{rec:?}"
    );
    // 200 MB in a 64 MB job: killed, and nothing is left.
    let job2 = Job::new(ALICE, IMAGE);
    let cg2 = LsfCgroup::new(&job2, 64 << 20);
    let out = output(start_in_cgroup(
        &job2,
        &bed,
        &cg2,
        "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null && echo survived",
    ));
    assert_ne!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("survived"));
    assert!(containers_of(&job2.id).is_empty());
    assert!(
        wait_until(Duration::from_secs(10), || cg2.left().is_empty()),
        "{:?}",
        cg2.left()
    );
}

#[test]
fn control_still_works_for_a_job_in_its_cgroup() {
    let bed = Bed::new(false);
    let job = Job::new(ALICE, IMAGE);
    let cg = LsfCgroup::new(&job, 256 << 20);
    let mut child = start_in_cgroup(&job, &bed, &cg, "sleep 300");
    let name = bed.container(&job.id, 0);
    assert!(wait_until(Duration::from_secs(20), || inspect_name(&name)
        ["State"]["Running"]
        == true));
    let c = inspect_name(&name);
    assert_eq!(c["HostConfig"]["CgroupParent"], format!("/{}", cg.rel));
    job.tool(&bed, None, "berth-control", &["suspend"])
        .expect(0);
    assert_eq!(inspect_name(&name)["State"]["Paused"], true);
    job.tool(&bed, None, "berth-control", &["resume"]).expect(0);
    assert_eq!(inspect_name(&name)["State"]["Paused"], false);
    job.tool(&bed, None, "berth-control", &["terminate"])
        .expect(0);
    assert!(wait_child(&mut child, Duration::from_secs(30)).is_some());
    assert!(wait_until(Duration::from_secs(10), || containers_of(
        &job.id
    )
    .is_empty()));
    assert!(
        wait_until(Duration::from_secs(10), || cg.left().is_empty()),
        "{:?}",
        cg.left()
    );
}

/// tests/common/gpu.rs's probe as the starter's `"…"` argument: expanded
/// in the container, not by the starter's shell.
fn gpu_script() -> String {
    gpu::GPU_PROBE.replace('$', "\\$").replace('"', "\\\"")
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn an_lsf_gpu_job_gets_the_gpu_its_device_cgroup_allows_and_no_other() {
    let bed = Bed::new(false);
    // LSF gave the job GPU 1: its device cgroup denies GPU 0.
    let job = Job::new(ALICE, IMAGE)
        .env("CUDA_VISIBLE_DEVICES", "0,1")
        .env("NVIDIA_VISIBLE_DEVICES", "all")
        .env("LSB_GPU_ALLOC_INFO", "0,1");
    let cg = LsfCgroup::with_devices(&job, 256 << 20, Some(&["c 195:0 rwm"]));
    let out = output(start_in_cgroup(&job, &bed, &cg, &gpu_script()));
    out.expect(0);
    let t = &out.stdout;
    assert_eq!(field(t, "GPU0"), Some("absent"), "{t}");
    assert_eq!(field(t, "GPU1"), Some("enxio"), "{t}");
    assert_eq!(field(t, "CUDA"), Some("0"), "{t}");
    assert_eq!(field(t, "NV"), Some("void"), "{t}");
    let rec = bed.audit(&job.id);
    assert!(
        rec.iter()
            .any(|r| r["gpus"] == serde_json::json!(["/dev/nvidia1"])),
        "{rec:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || cg.left().is_empty()),
        "{:?}",
        cg.left()
    );
    // Without GPU enforcement the allocation cannot be known: none, not all.
    let job = Job::new(ALICE, IMAGE);
    let cg = LsfCgroup::with_devices(&job, 256 << 20, None);
    let out = output(start_in_cgroup(&job, &bed, &cg, &gpu_script()));
    out.expect(0);
    let t = &out.stdout;
    assert_eq!(field(t, "GPU0"), Some("absent"), "{t}");
    assert_eq!(field(t, "GPU1"), Some("absent"), "{t}");
    assert_eq!(field(t, "CUDA"), Some("unset"), "{t}");
}

fn inspect_name(name: &str) -> serde_json::Value {
    let out = docker(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v[0].clone()
}

// ---------------------------------------------------------------------------
// workflow systems (docs/workflows-lsf.md): the submissions Nextflow's LSF
// executor and Cromwell's LSF backend make, fed to the esub and the starter
// exactly as LSF hands them over. Neither tool runs here; what they submit
// is reproduced from their sources, cited beside each case.
// ---------------------------------------------------------------------------

/// A directory tree of alice's (a workflow's launch or work directory),
/// removed on drop.
struct AliceTree(PathBuf);

impl AliceTree {
    /// Under /storage1/fs1/alice, an allowed root.
    fn new(what: &str) -> AliceTree {
        Self::under(ALICE_DIR, what)
    }

    fn under(base: &str, what: &str) -> AliceTree {
        let t = AliceTree(Path::new(base).join(format!("lsf-{what}-{}", job_id())));
        let _ = std::fs::remove_dir_all(&t.0);
        t.mkdir("");
        t
    }

    /// `rel` and its parents inside the tree, alice's, mode 0755.
    fn mkdir(&self, rel: &str) -> PathBuf {
        let mut d = self.0.clone();
        let parts = std::iter::once("").chain(rel.split('/').filter(|p| !p.is_empty()));
        for part in parts {
            d.push(part);
            if !d.exists() {
                std::fs::create_dir(&d).unwrap();
            }
            std::os::unix::fs::chown(&d, Some(2001), Some(2001)).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        d
    }

    /// A file of alice's at `rel`.
    fn file(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.0.join(rel);
        write(&p, text, mode);
        std::os::unix::fs::chown(&p, Some(2001), Some(2001)).unwrap();
        p
    }
}

impl Drop for AliceTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `LSB_SUB_PARM_FILE` lines (`NAME="value"`, `"` and `\` escaped) for the
/// options LSF parsed from a submission.
fn parm_lines(options: &[(&str, &str)]) -> String {
    options
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{k}=\"{v}\"\n")
        })
        .collect()
}

/// What LSF's bsub does with a script read from standard input (`bsub <
/// script`, Nextflow's way): the user input of the job file writes the
/// script to `$LSB_CHKFILENAME.shell` and runs that, so the script's own
/// `#!` line picks its shell. From bsub's parseScript() in OpenLava, LSF's
/// open-source ancestor (github.com/zjma/openlava,
/// lsbatch/cmd/cmd.sub.c); sbatchd sets LSB_CHKFILENAME to the job file.
fn stdin_script_job(script: &str) -> String {
    format!(
        "( cat <<_USER_\\SCRIPT_\n{script}\n_USER_SCRIPT_\n) > $LSB_CHKFILENAME.shell\nchmod u+x $LSB_CHKFILENAME.shell\n$LSB_JOBFILENAME.shell\nsaveExit=$?\n/bin/rm -f $LSB_JOBFILENAME.shell\n(exit $saveExit)\n"
    )
}

/// The `.command.run` Nextflow's LSF executor writes in a task's work
/// directory and submits with `bsub < .command.run`, run from that
/// directory, for a task `hello (1)` with `cpus 2`, `memory '2 GB'` and
/// `process.clusterOptions = { "-a 'docker(${task.container})'" }`.
///
/// The `#BSUB` lines are byte for byte what LsfExecutor.getDirectives()
/// and AbstractGridExecutor.getHeaders() produce (nextflow-io/nextflow,
/// modules/nextflow/src/main/groovy/nextflow/executor/): `-o` the task's
/// .command.log, `-n`/`span[hosts=1]` for cpus > 1, `-M` the memory divided
/// by the cpus (LSF's default per-process limit) in MB, the select/rusage
/// `-R`, `-J nf-<task name>` with blanks made `_`, then clusterOptions,
/// split like a shell line and unquoted (getHeaders quotes only values
/// holding one of ` []|&!<>`), then `NXF_CHDIR`. The rest of Nextflow's
/// wrapper is a bash script (command-run.txt); the test image has no bash,
/// so here it is `#!/bin/sh` and the same steps in sh: cd to NXF_CHDIR,
/// mark the start, run .command.sh into .command.out and .command.err,
/// write .exitcode and exit with it.
fn nextflow_command_run(workdir: &Path, image: &str) -> String {
    let w = workdir.display();
    format!(
        "#!/bin/sh
#BSUB -o {w}/.command.log
#BSUB -n 2
#BSUB -R \"span[hosts=1]\"
#BSUB -M 1024MB
#BSUB -R \"select[mem>=2048MB] rusage[mem=2048MB]\"
#BSUB -J nf-hello_(1)
#BSUB -a docker({image})
NXF_CHDIR={w}
### ---
### name: 'hello (1)'
set -u
[ \"${{NXF_CHDIR:-}}\" ] && cd \"$NXF_CHDIR\"
touch .command.begin
/bin/sh -ue .command.sh > .command.out 2> .command.err
nxf_main_ret=$?
printf -- $nxf_main_ret > .exitcode
exit $nxf_main_ret"
    )
}

/// The parameter file bsub writes for that script: its `#BSUB` options
/// (names from IBM's esub documentation; `-M` in KB, LSF's default unit),
/// the `-a` string as LSB_SUB_ADDITIONAL. What LSF records as the command
/// of a script read from stdin is not documented; here it is the script.
fn nextflow_parm(workdir: &Path, image: &str, script: &str) -> String {
    let log = format!("{}/.command.log", workdir.display());
    let docker = format!("docker({image})");
    parm_lines(&[
        ("LSB_SUB_JOB_NAME", "nf-hello_(1)"),
        ("LSB_SUB_OUT_FILE", &log),
        (
            "LSB_SUB_RES_REQ",
            "span[hosts=1] select[mem>=2048MB] rusage[mem=2048MB]",
        ),
        ("LSB_SUB_RLIMIT_RSS", "1048576"),
        ("LSB_SUB_NUM_PROCESSORS", "2"),
        ("LSB_SUB_MAX_NUM_PROCESSORS", "2"),
        ("LSB_SUB_ADDITIONAL", &docker),
        ("LSB_SUB_COMMAND_LINE", script),
    ])
}

/// A Nextflow run under `tree`: `work/` (the work directory) and `data/`
/// (the pipeline's input), an earlier task's output in
/// `work/5a/0c81…/out.txt`, and the LSF_DOCKER_VOLUMES the user exports
/// before `nextflow run` (bsub copies the submission environment), which
/// mounts both at their own paths so that staged symlinks resolve.
struct NextflowRun {
    tree: AliceTree,
    volumes: String,
}

impl NextflowRun {
    fn new(tree: AliceTree) -> NextflowRun {
        tree.mkdir("data");
        tree.file("data/reads.txt", "reads\n", 0o644);
        tree.mkdir("work/5a/0c81e2b7d4f69a3e5c1d8b7a2f4e6c");
        tree.file(
            "work/5a/0c81e2b7d4f69a3e5c1d8b7a2f4e6c/out.txt",
            "from-prev\n",
            0o644,
        );
        let volumes = format!(
            "{w}:{w} {d}:{d}:ro",
            w = tree.0.join("work").display(),
            d = tree.0.join("data").display()
        );
        NextflowRun { tree, volumes }
    }

    /// A task's work directory `work/<2 hex>/<30 hex>` with its
    /// .command.sh, .command.run and its inputs staged as Nextflow's
    /// stage_cmd does: symlinks to the data and to the earlier task's
    /// output. Returns the directory and the .command.run.
    fn task(&self, hash: &str, image: &str, task_script: &str) -> (PathBuf, String) {
        let rel = format!("work/{}/{}", &hash[..2], &hash[2..]);
        let wd = self.tree.mkdir(&rel);
        self.tree
            .file(&format!("{rel}/.command.sh"), task_script, 0o644);
        let run = nextflow_command_run(&wd, image);
        self.tree.file(&format!("{rel}/.command.run"), &run, 0o644);
        for (link, target) in [
            ("reads.txt", "data/reads.txt"),
            ("out.txt", "work/5a/0c81e2b7d4f69a3e5c1d8b7a2f4e6c/out.txt"),
        ] {
            let l = wd.join(link);
            std::os::unix::fs::symlink(self.tree.0.join(target), &l).unwrap();
            std::os::unix::fs::lchown(&l, Some(2001), Some(2001)).unwrap();
        }
        (wd, run)
    }

    /// Dispatch of the task: LSF's job file for `bsub < .command.run` in
    /// `spool` (None: the default, the owner's ~/.lsbatch), LSB_CHKFILENAME
    /// naming it as sbatchd does, run by the EXEC_DRIVER starter (as root,
    /// LSFUSER alice) with LS_SUBCWD the work directory and the submission's
    /// LSF_DOCKER_VOLUMES. `extra_volume`: one more `SRC:DST` mount.
    fn dispatch(
        &self,
        bed: &Bed,
        wd: &Path,
        run: &str,
        spool: Option<&Path>,
        extra_volume: Option<String>,
        extra_env: &[(&str, &str)],
    ) -> (Job, Out) {
        let volumes = match extra_volume {
            Some(v) => format!("{} {v}", self.volumes),
            None => self.volumes.clone(),
        };
        let mut job = Job::new(ALICE, IMAGE)
            .env("LSF_DOCKER_VOLUMES", &volumes)
            .env("LSB_JOBNAME", "nf-hello_(1)");
        for (k, v) in extra_env {
            job = job.env(k, v);
        }
        job.cwd = wd.display().to_string();
        let command = stdin_script_job(run);
        let jf = match spool {
            Some(s) => job.write_job_file_in(s, &command),
            None => job.write_job_file(&command),
        };
        job.extra
            .push(("LSB_CHKFILENAME".into(), jf.display().to_string()));
        let out = output(job.start(bed, None, &jf.display().to_string()));
        (job, out)
    }
}

/// Nextflow with `process.executor = 'lsf'`: the esub accepts the task's
/// submission as bsub hands it over, from the task's work directory with
/// the environment `nextflow run` was started in; and refuses, at bsub
/// time, a work directory outside the allowed roots (Nextflow's default
/// `./work` of a run started in the home directory) and an image the
/// policy does not allow.
#[test]
fn nextflow_lsf_task_is_checked_at_submission() {
    let bed = Bed::new(true);
    let nf = NextflowRun::new(AliceTree::new("nf"));
    let (wd, run) = nf.task(
        "3f9c1a7e2b4d6f80a1c3e5b7d9f2a4",
        IMAGE,
        "#!/bin/sh -ue\ntrue\n",
    );
    let cwd = wd.to_str().unwrap();
    let (out, envfile, modfile) = bed.esub(
        ALICE,
        &[IMAGE],
        &nextflow_parm(&wd, IMAGE, &run),
        &[
            ("LSF_DOCKER_VOLUMES", &nf.volumes),
            ("NXF_HOME", "/home/berth-alice/.nextflow"),
        ],
        cwd,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(out.stderr, "", "an accepted submission prints nothing");
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"berth-test/busybox:1\"\n")
    );
    assert_eq!(modfile.as_deref(), Some("LSB_SUB_APP_NAME=\"docker\"\n"));

    // `nextflow run` started in the home directory: the task's work
    // directory (LS_SUBCWD) cannot be mounted.
    let home = NextflowRun::new(AliceTree::under("/home/berth-alice", "nf"));
    let (hwd, hrun) = home.task(
        "77e0b1c2d3e4f5a6b7c8d9e0f1a2b3",
        IMAGE,
        "#!/bin/sh -ue\ntrue\n",
    );
    let data = format!("{d}:{d}:ro", d = nf.tree.0.join("data").display());
    // An image the site does not allow (a BioContainers image).
    let samtools = "quay.io/biocontainers/samtools:1.19--h50ea8bc_0";
    let (swd, srun) = nf.task(
        "9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c",
        samtools,
        "#!/bin/sh -ue\ntrue\n",
    );
    for (what, image, workdir, script, volumes, rule) in [
        (
            "work dir in $HOME",
            IMAGE,
            &hwd,
            &hrun,
            &data,
            "workdir.root",
        ),
        (
            "image not allowed",
            samtools,
            &swd,
            &srun,
            &nf.volumes,
            "images.allow",
        ),
    ] {
        let (out, envfile, modfile) = bed.esub(
            ALICE,
            &[image],
            &nextflow_parm(workdir, image, script),
            &[("LSF_DOCKER_VOLUMES", volumes)],
            workdir.to_str().unwrap(),
            Some(ABORT),
        );
        assert_eq!(out.code, Some(ABORT), "{what}: {out:?}");
        assert!(
            out.stderr.starts_with("berth: job rejected: ")
                && out.stderr.trim_end().ends_with(&format!("[rule {rule}]"))
                && out.stderr.lines().count() == 1,
            "{what}: not one line naming {rule}: {}",
            out.stderr
        );
        assert_eq!((envfile, modfile), (None, None), "{what}: nothing written");
    }
}

/// The task LSF dispatches runs .command.run, through the `.shell` copy
/// LSF's job file makes, in the image as alice, in its work directory
/// mounted at its own path, with the staged symlinks resolving in the
/// mounted work and data directories; the task's exit status is the job's
/// and is in .exitcode.
///
/// The job file lies in a JOB_SPOOL_DIR under an allowed root (a site's
/// choice that also puts it in the container); berth still runs its own
/// copy from the job's /tmp, and the `.shell` copy is written next to that
/// (`$LSB_CHKFILENAME.shell`), never into the spool. The default spool,
/// outside the container, is the next test.
#[test]
fn nextflow_lsf_task_runs_in_its_work_dir() {
    let bed = Bed::new(true);
    let nf = NextflowRun::new(AliceTree::new("nf"));
    let spool = nf.tree.mkdir("lsf-spool");
    let spool_volume = format!("{s}:{s}", s = spool.display());
    let task = "#!/bin/sh -ue\ncat reads.txt out.txt > hello.txt\necho \"uid=$(id -u) gid=$(id -g) pwd=$(pwd)\"\n";
    let (wd, run) = nf.task("3f9c1a7e2b4d6f80a1c3e5b7d9f2a4", IMAGE, task);
    let (job, out) = nf.dispatch(
        &bed,
        &wd,
        &run,
        Some(&spool),
        Some(spool_volume.clone()),
        &[],
    );
    out.expect(0);
    let read = |wd: &Path, f: &str| {
        std::fs::read_to_string(wd.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", wd.display()))
    };
    assert_eq!(read(&wd, ".exitcode"), "0", "{out:?}");
    assert_eq!(read(&wd, "hello.txt"), "reads\nfrom-prev\n");
    assert_eq!(
        read(&wd, ".command.out"),
        format!("uid=2001 gid=2001 pwd={}\n", wd.display())
    );
    assert_eq!(read(&wd, ".command.err"), "");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(wd.join("hello.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (2001, 2001));
    // The job file removed its .shell copy; nothing else is left behind.
    let jf = job.job_file.clone().unwrap();
    assert!(!Path::new(&format!("{}.shell", jf.display())).exists());
    let recs = bed.audit(&job.id);
    assert!(
        recs.iter()
            .any(|r| r["event"] == "exit" && r["exit_code"] == 0),
        "{recs:?}"
    );
    assert!(containers_of(&job.id).is_empty());
    drop(job);

    // A task that fails: its exit status is the job's, and in .exitcode.
    let (wd2, run2) = nf.task(
        "c41d0e9b7a2f5c8e3d6b1a4f7c0e2d",
        IMAGE,
        "#!/bin/sh -ue\necho failing >&2\nexit 3\n",
    );
    let (_job, out) = nf.dispatch(&bed, &wd2, &run2, Some(&spool), Some(spool_volume), &[]);
    out.expect(3);
    assert_eq!(read(&wd2, ".exitcode"), "3");
    assert_eq!(read(&wd2, ".command.err"), "failing\n");
}

/// The same task with LSF's default job spool (~/.lsbatch on the execution
/// host, outside every allowed root). LSF runs a `bsub <` script as
/// `$LSB_JOBFILENAME.shell`, a copy it writes next to the job file; berth
/// runs its own copy of the job file from the job's /tmp and points
/// LSB_JOBFILENAME and LSB_CHKFILENAME at that copy (the host path is not
/// in the container: "can't create ….shell: nonexistent directory", exit
/// 127, before), also when the job's environment is not preserved.
#[test]
fn nextflow_lsf_task_runs_from_the_default_job_spool() {
    let bed = Bed::new(true);
    let nf = NextflowRun::new(AliceTree::new("nf"));
    for (i, env) in [&[][..], &[("LSF_DOCKER_PRESERVE_ENVIRONMENT", "false")][..]]
        .into_iter()
        .enumerate()
    {
        let (wd, run) = nf.task(
            &format!("3f9c1a7e2b4d6f80a1c3e5b7d9f2a{i}"),
            IMAGE,
            "#!/bin/sh -ue\nid -u\n",
        );
        let (job, out) = nf.dispatch(&bed, &wd, &run, None, None, env);
        out.expect(0);
        assert_eq!(
            std::fs::read_to_string(wd.join(".exitcode")).unwrap(),
            "0",
            "{env:?}"
        );
        assert_eq!(
            std::fs::read_to_string(wd.join(".command.out")).unwrap(),
            "2001\n",
            "{env:?}"
        );
        // The host's job file is read, never written next to.
        let jf = job.job_file.clone().unwrap();
        assert!(!Path::new(&format!("{}.shell", jf.display())).exists());
    }
}

/// Cromwell's LSF backend with the `submit-docker` of
/// docs/workflows-lsf.md. Cromwell writes it, filled in, to
/// `<call>/execution/script.submit` and runs `/bin/bash script.submit`
/// from its own working directory (ConfigAsyncJobExecutionActor,
/// ProcessRunner in broadinstitute/cromwell,
/// supportedBackends/sfs/src/main/scala/cromwell/backend/sfs/), so the
/// variables on the bsub line are the submission environment and
/// LS_SUBCWD is wherever Cromwell was started. `cwd` is the call
/// directory `<root>/<workflow>/<id>/call-<name>` on the host, `docker_cwd`
/// the same under `dockerRoot` (default /cromwell-executions).
struct CromwellCall {
    /// The host call directory (`${cwd}`).
    cwd: PathBuf,
    /// `${docker_cwd}`.
    docker_cwd: String,
    job_name: String,
}

impl CromwellCall {
    fn new(root: &AliceTree, docker_root: &str) -> CromwellCall {
        let id = "4f1c2d3e-9a8b-4c7d-8e6f-5a4b3c2d1e0f";
        let rel = format!("cromwell-executions/hello/{id}/call-say");
        let cwd = root.mkdir(&rel);
        root.mkdir(&format!("{rel}/execution"));
        // An input, localized by hard link (Cromwell's default for docker
        // tasks) into inputs/.
        root.mkdir(&format!("{rel}/inputs/-1285401271"));
        root.file(
            &format!("{rel}/inputs/-1285401271/name.txt"),
            "world\n",
            0o644,
        );
        CromwellCall {
            cwd,
            docker_cwd: format!("{docker_root}/hello/{id}/call-say"),
            job_name: "cromwell_4f1c2d3e_say".into(),
        }
    }

    /// `LSF_DOCKER_VOLUMES='${cwd}:${docker_cwd}'` and
    /// `LSF_DOCKER_WORKDIR='${docker_cwd}'`, as the submit-docker sets them.
    fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "LSF_DOCKER_VOLUMES",
                format!("{}:{}", self.cwd.display(), self.docker_cwd),
            ),
            ("LSF_DOCKER_WORKDIR", self.docker_cwd.clone()),
        ]
    }

    /// The parameter file of `bsub -J ${job_name} -cwd ${cwd} -o
    /// ${out}.lsf -e ${err}.lsf -a "docker(${docker})" /usr/bin/env bash
    /// ${docker_script}` (Cromwell's LSF example, docs/backends/LSF.md,
    /// with `-a`, LSF's own output beside the task's, and the script's
    /// container path). `${out}` is `<cwd>/execution/stdout`.
    fn parm(&self, image: &str) -> String {
        let c = self.cwd.display();
        let out = format!("{c}/execution/stdout.lsf");
        let err = format!("{c}/execution/stderr.lsf");
        let cwd = c.to_string();
        let docker = format!("docker({image})");
        let command = format!("/usr/bin/env bash {}/execution/script", self.docker_cwd);
        parm_lines(&[
            ("LSB_SUB_JOB_NAME", &self.job_name),
            // -cwd; the name is assumed (berth does not read it).
            ("LSB_SUB3_CWD", &cwd),
            ("LSB_SUB_OUT_FILE", &out),
            ("LSB_SUB_ERR_FILE", &err),
            ("LSB_SUB_ADDITIONAL", &docker),
            ("LSB_SUB_COMMAND_LINE", &command),
        ])
    }

    /// The `execution/script` Cromwell generates for a docker task whose
    /// command is `command` (StandardAsyncExecutionActor
    /// .commandScriptContents, with its defaults: temporary-directory
    /// `$(mktemp -d "$PWD"/tmp.XXXXXX)`, script-epilogue `sync`), paths in
    /// the container.
    fn write_script(&self, root: &AliceTree, command: &str) {
        let e = format!("{}/execution", self.docker_cwd);
        let script = format!(
            r#"#!/bin/bash

cd {e}
tmpDir=$(mktemp -d "$PWD"/tmp.XXXXXX)
chmod 777 "$tmpDir"
export _JAVA_OPTIONS=-Djava.io.tmpdir="$tmpDir"
export TMPDIR="$tmpDir"


out4f1c2d3e="${{tmpDir}}/out.$$" err4f1c2d3e="${{tmpDir}}/err.$$"
mkfifo "$out4f1c2d3e" "$err4f1c2d3e"
trap 'rm "$out4f1c2d3e" "$err4f1c2d3e"' EXIT
touch '{e}/stdout' '{e}/stderr'
tee '{e}/stdout' < "$out4f1c2d3e" &
tee '{e}/stderr' < "$err4f1c2d3e" >&2 &
(
cd {e}

{command}
)  > "$out4f1c2d3e" 2> "$err4f1c2d3e"
echo $? > {e}/rc.tmp
(
# add a .file in every empty directory to facilitate directory delocalization on the cloud
cd {e}
find . -type d -exec sh -c '[ -z "$(ls -A '"'"'{{}}'"'"')" ] && touch '"'"'{{}}'"'"'/.file' \;
)
(
cd {e}
sync


)
mv {e}/rc.tmp {e}/rc
"#
        );
        let rel = self
            .cwd
            .strip_prefix(&root.0)
            .unwrap()
            .display()
            .to_string();
        root.file(&format!("{rel}/execution/script"), &script, 0o755);
    }
}

/// Cromwell with the LSF backend: the esub accepts the call's submission
/// (Cromwell started outside the allowed roots: LSF_DOCKER_WORKDIR makes
/// the call directory, not LS_SUBCWD, the container's working directory),
/// and the job, in either starter style, runs Cromwell's script in the
/// image as alice with the call directory mounted at ${docker_cwd}; the
/// command's exit status lands in execution/rc, as Cromwell reads it.
/// Refused at bsub time: a call directory outside the roots (Cromwell's
/// default root, ./cromwell-executions, of a Cromwell started in $HOME) and
/// a dockerRoot on a reserved path.
#[test]
fn cromwell_lsf_call_runs_in_its_call_dir() {
    let bed = Bed::new(true);
    let tree = AliceTree::new("cromwell");
    let call = CromwellCall::new(&tree, "/cromwell-executions");
    call.write_script(
        &tree,
        "echo \"hello $(cat ../inputs/-1285401271/name.txt) uid=$(id -u) gid=$(id -g) pwd=$(pwd)\"",
    );
    let env = call.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Cromwell runs from alice's home directory.
    let launch = "/home/berth-alice";
    let (out, envfile, modfile) = bed.esub(
        ALICE,
        &[IMAGE],
        &call.parm(IMAGE),
        &env,
        launch,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(out.stderr, "", "an accepted submission prints nothing");
    assert_eq!(
        envfile.as_deref(),
        Some("LSB_CONTAINER_IMAGE=\"berth-test/busybox:1\"\n")
    );
    assert_eq!(modfile.as_deref(), Some("LSB_SUB_APP_NAME=\"docker\"\n"));
    // Cromwell looks tags up and submits `${docker}` by digest (its
    // docker.hash-lookup, on by default): the allow-list still matches.
    let pinned = format!("berth-test/busybox@sha256:{}", "0a".repeat(32));
    let (out, envfile, _) = bed.esub(
        ALICE,
        &[&pinned],
        &call.parm(&pinned),
        &env,
        launch,
        Some(ABORT),
    );
    out.expect(0);
    assert_eq!(
        envfile.as_deref(),
        Some(format!("LSB_CONTAINER_IMAGE=\"{pinned}\"\n").as_str())
    );

    // Dispatch. The test image has neither /usr/bin/env nor bash: the
    // command is `/bin/sh ${docker_script}` (Cromwell's script is POSIX).
    let docker_script = format!("{}/execution/script", call.docker_cwd);
    let command = format!("/bin/sh {docker_script}");
    let e = call.cwd.join("execution");
    let expected = format!(
        "hello world uid=2001 gid=2001 pwd={}/execution\n",
        call.docker_cwd
    );
    let job_of = || {
        let mut job = Job::new(ALICE, IMAGE).env("LSB_JOBNAME", &call.job_name);
        for (k, v) in &env {
            job = job.env(k, v);
        }
        job.cwd = launch.into();
        job
    };
    // EXEC_DRIVER: the job file; JOB_STARTER "%USRCMD": the command.
    for style in ["job file", "%USRCMD"] {
        let _ = std::fs::remove_file(e.join("rc"));
        let mut job = job_of();
        let out = match style {
            "job file" => output(job.start_job_file(&bed, None, &command)),
            _ => output(job.start_usrcmd(&bed, None, &command)),
        };
        out.expect(0);
        let read = |f: &str| {
            std::fs::read_to_string(e.join(f))
                .unwrap_or_else(|x| panic!("{style}: {f}: {x}: {out:?}"))
        };
        assert_eq!(read("rc"), "0\n", "{style}");
        assert_eq!(read("stdout"), expected, "{style}");
        // The script's tee copies the command's stdout to the job's too.
        assert_eq!(out.stdout, expected, "{style}");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(e.join("rc")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (2001, 2001), "{style}");
        assert!(containers_of(&job.id).is_empty(), "{style}");
    }
    // A failing command: the script still exits 0 (the job is DONE) and
    // execution/rc holds the command's status, which Cromwell reads.
    call.write_script(&tree, "echo failing >&2; exit 3");
    let _ = std::fs::remove_file(e.join("rc"));
    let mut job = job_of();
    output(job.start_job_file(&bed, None, &command)).expect(0);
    assert_eq!(std::fs::read_to_string(e.join("rc")).unwrap(), "3\n");
    assert_eq!(
        std::fs::read_to_string(e.join("stderr")).unwrap(),
        "failing\n"
    );

    // Refused at submission, with one line naming the rule.
    let home = AliceTree::under("/home/berth-alice", "cromwell");
    let in_home = CromwellCall::new(&home, "/cromwell-executions");
    let in_tmp = CromwellCall::new(&tree, "/tmp/cromwell-executions");
    for (what, c, rule) in [
        ("call dir in $HOME", &in_home, "volumes.source"),
        ("dockerRoot under /tmp", &in_tmp, "mounts.reserved"),
    ] {
        let env = c.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (out, envfile, modfile) =
            bed.esub(ALICE, &[IMAGE], &c.parm(IMAGE), &env, launch, Some(ABORT));
        assert_eq!(out.code, Some(ABORT), "{what}: {out:?}");
        assert!(
            out.stderr.starts_with("berth: job rejected: ")
                && out.stderr.trim_end().ends_with(&format!("[rule {rule}]"))
                && out.stderr.lines().count() == 1,
            "{what}: not one line naming {rule}: {}",
            out.stderr
        );
        assert_eq!((envfile, modfile), (None, None), "{what}: nothing written");
    }
}

// ---------------------------------------------------------------------------
// parallel jobs: blaunch (SPEC §14)
//
// A job of several hosts, all played by this machine: each "host" has its
// own job cgroup (LSF's `job.<id>.<index>.<time>`), its own broker (berth
// daemon) in a UTS namespace carrying the host's name, and the one engine.
// The job's command starts its tasks with blaunch (tests/fake-lsf/blaunch,
// which behaves as blaunch(8) documents), whose RES here is FakeRes: it
// starts each task on its host as LSF's RES does — through the job starter
// (JOB_STARTER style, as the job's user), in the job's cgroup on that host,
// with the job's LSF variables, the caller's other variables and
// LSF_PM_TASKID — and relays its output and exit status.
// ---------------------------------------------------------------------------

/// One host of the fake allocation, as FakeRes starts tasks on it.
struct ResHost {
    name: String,
    starter: PathBuf,
    procs: Vec<std::ffi::CString>,
    /// Started in a UTS namespace of this name (every host but the first).
    uts: bool,
}

/// LSF's RES for the fake hosts: a TCP listener on 127.0.0.1 that blaunch
/// asks to start a task on a host.
struct FakeRes {
    port: u16,
    /// The process groups of the tasks started, by host.
    tasks: std::sync::Arc<std::sync::Mutex<Vec<(String, i32)>>>,
}

impl FakeRes {
    fn start(job: &Job, hosts: Vec<ResHost>) -> FakeRes {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (job_env, user) = (job.lsf_env(), job.user.clone());
        let (hosts, t) = (std::sync::Arc::new(hosts), tasks.clone());
        let next = std::sync::Arc::new(AtomicU32::new(1));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (hosts, t, job_env, user, next) = (
                    hosts.clone(),
                    t.clone(),
                    job_env.clone(),
                    user.clone(),
                    next.clone(),
                );
                std::thread::spawn(move || {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    res_task(conn, &hosts, &job_env, &user, id, &t)
                });
            }
        });
        FakeRes { port, tasks }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What LSF does to a job's tasks on `host` at bkill: SIGKILL.
    fn kill_tasks_on(&self, host: &str) -> usize {
        self.signal_tasks_on(host, nix::sys::signal::Signal::SIGKILL)
    }

    /// `sig` to the process group of each of the job's tasks on `host`
    /// (as bkill -s, or RES passing a signal on).
    fn signal_tasks_on(&self, host: &str, sig: nix::sys::signal::Signal) -> usize {
        let t = self.tasks.lock().unwrap();
        let mut n = 0;
        for (h, pgid) in t.iter() {
            if h == host {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pgid), sig);
                n += 1;
            }
        }
        n
    }
}

fn res_frame(out: &std::sync::Mutex<std::net::TcpStream>, kind: u8, data: &[u8]) {
    use std::io::Write;
    let mut f = vec![kind];
    f.extend((data.len() as u32).to_be_bytes());
    f.extend(data);
    let _ = out.lock().unwrap().write_all(&f);
}

/// One blaunch request: start the task on its host and relay it.
fn res_task(
    conn: std::net::TcpStream,
    hosts: &[ResHost],
    job_env: &[(String, String)],
    user: &str,
    id: u32,
    tasks: &std::sync::Mutex<Vec<(String, i32)>>,
) {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
    if r.read_line(&mut line).is_err() {
        return;
    }
    let out = std::sync::Arc::new(std::sync::Mutex::new(conn));
    let req: serde_json::Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => return res_frame(&out, b'x', format!("255 {e}").as_bytes()),
    };
    let Some(host) = hosts
        .iter()
        .find(|h| Some(h.name.as_str()) == req["host"].as_str())
    else {
        res_frame(&out, b'e', b"res: no such host\n");
        return res_frame(&out, b'x', b"255");
    };
    // The job's execution environment (its container settings among it),
    // the caller's variables over it — but never LSF's own for the job
    // (which job it is, its image, its hosts) — and the task's id.
    let mut env: std::collections::BTreeMap<String, String> = job_env.iter().cloned().collect();
    let lsf_own = |k: &str| k.starts_with("LSB_") || ["LSFUSER", "PATH", "HOME"].contains(&k);
    for (k, v) in req["env"].as_object().into_iter().flatten() {
        if let (false, Some(v)) = (lsf_own(k), v.as_str()) {
            env.insert(k.clone(), v.to_string());
        }
    }
    env.insert("LSF_PM_TASKID".into(), id.to_string());
    // JOB_STARTER = starter "%USRCMD": the task's command line in one word;
    // through a shell (blaunch's default, as rsh's), its words as they are.
    let shell = req["shell"].as_bool().unwrap_or(true);
    let cmdline: Vec<String> = req["argv"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .map(|a| match shell {
            true => a.to_string(),
            false => format!("'{}'", a.replace('\'', r"'\''")),
        })
        .collect();
    let mut c = Command::new(&host.starter);
    c.arg(cmdline.join(" "))
        .env_clear()
        .envs(&env)
        .current_dir(req["cwd"].as_str().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let u = nix::unistd::User::from_name(user).unwrap().unwrap();
    let cname = std::ffi::CString::new(user).unwrap();
    let groups = nix::unistd::getgrouplist(&cname, u.gid).unwrap();
    let (uid, gid) = (u.uid, u.gid);
    let procs = host.procs.clone();
    let uts = host.uts.then(|| host.name.clone());
    // SAFETY: open/write/close, setsid, unshare, sethostname and the id
    // changes between fork and exec, on values built before it.
    unsafe {
        c.pre_exec(move || {
            join_cgroups(&procs)?;
            nix::unistd::setsid()?;
            if let Some(h) = &uts {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(h)?;
            }
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setresgid(gid, gid, gid)?;
            nix::unistd::setresuid(uid, uid, uid)?;
            Ok(())
        });
    }
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            res_frame(&out, b'e', format!("res: {e}\n").as_bytes());
            return res_frame(&out, b'x', b"255");
        }
    };
    tasks
        .lock()
        .unwrap()
        .push((host.name.clone(), child.id() as i32));
    let relay = |mut from: Box<dyn Read + Send>, kind: u8| {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                res_frame(&out, kind, &buf[..n]);
            }
        })
    };
    let a = relay(Box::new(child.stdout.take().unwrap()), b'o');
    let b = relay(Box::new(child.stderr.take().unwrap()), b'e');
    let status = child.wait().unwrap();
    let _ = (a.join(), b.join());
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    res_frame(&out, b'x', code.to_string().as_bytes());
}

/// The second host's name (the first is this machine's).
const HOST2: &str = "berth-lsf-h2";

/// A two-host parallel job of alice's: 2 slots on this host, 2 on HOST2,
/// one bed and broker per host, the fake RES, blaunch in her tree.
struct ParallelJob {
    job: Job,
    beds: [Bed; 2],
    cgroups: [LsfCgroup; 2],
    res: FakeRes,
    host1: String,
    tree: AliceTree,
}

impl ParallelJob {
    fn new(what: &str) -> ParallelJob {
        Self::of_image(what, "berth-test/parsl:1")
    }

    fn of_image(what: &str, image: &str) -> ParallelJob {
        // Tasks reach the RES, as MPI reaches its peers, over the network:
        // the site allows the host network for parallel jobs.
        let docker = r#"networks = ["none", "bridge", "host"]"#;
        let mut beds = [
            Bed::with_docker(false, docker),
            Bed::with_docker(false, docker),
        ];
        beds[0].start_broker();
        beds[1].start_broker_on(Some(HOST2));
        let host1 = nix::unistd::gethostname().unwrap().into_string().unwrap();
        let tree = AliceTree::new(what);
        tree.mkdir("bin");
        let blaunch = std::fs::read_to_string(repo().join("tests/fake-lsf/blaunch")).unwrap();
        tree.file("bin/blaunch", &blaunch, 0o755);
        let hostfile = tree.file(
            "hostfile",
            &format!("{host1}\n{host1}\n{HOST2}\n{HOST2}\n"),
            0o644,
        );
        let mut job = Job::new(ALICE, image);
        job.cwd = tree.0.display().to_string();
        let job = job
            .env("LSF_DOCKER_NETWORK", "host")
            .env("LSB_HOSTS", &format!("{host1} {host1} {HOST2} {HOST2}"))
            .env("LSB_MCPU_HOSTS", &format!("{host1} 2 {HOST2} 2"))
            .env("LSB_DJOB_HOSTFILE", &hostfile.display().to_string())
            .env("LSB_DJOB_NUMPROC", "4");
        let cgroups = [
            LsfCgroup::new(&job, 512 << 20),
            LsfCgroup::on_host(&job, 512 << 20, 1),
        ];
        let hosts = vec![
            ResHost {
                name: host1.clone(),
                starter: beds[0].script("berth-starter"),
                procs: cgroups[0].procs(),
                uts: false,
            },
            ResHost {
                name: HOST2.into(),
                starter: beds[1].script("berth-starter"),
                procs: cgroups[1].procs(),
                uts: true,
            },
        ];
        let res = FakeRes::start(&job, hosts);
        let job = job.env("BERTH_TEST_RES", &res.addr());
        ParallelJob {
            job,
            beds,
            cgroups,
            res,
            host1,
            tree,
        }
    }

    /// sbatchd starting the job on its first host: the starter as alice,
    /// in the job's cgroup there, with blaunch on the job's PATH.
    fn start(&self, command: &str) -> Child {
        // (The job's LSB_HOSTS and LSB_MCPU_HOSTS come after the
        // one-host defaults, and win.)
        let env = self.job.lsf_env();
        let command = format!("PATH={}/bin:$PATH; {command}", self.tree.0.display());
        let mut c = command_as(
            None,
            &[
                self.beds[0].script("berth-starter").to_str().unwrap(),
                &command,
            ],
            &env,
            &self.job.cwd,
        );
        let procs = self.cgroups[0].procs();
        let u = nix::unistd::User::from_name(ALICE).unwrap().unwrap();
        let cname = std::ffi::CString::new(ALICE).unwrap();
        let groups = nix::unistd::getgrouplist(&cname, u.gid).unwrap();
        let (uid, gid) = (u.uid, u.gid);
        // SAFETY: as in res_task.
        unsafe {
            c.pre_exec(move || {
                join_cgroups(&procs)?;
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setresgid(gid, gid, gid)?;
                nix::unistd::setresuid(uid, uid, uid)?;
                Ok(())
            });
        }
        c.spawn().unwrap()
    }

    /// What this job left: containers, per-job directories, cgroups.
    fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = containers_of(&self.job.id)
            .into_iter()
            .map(|c| format!("container {c}"))
            .collect();
        for b in &self.beds {
            for e in std::fs::read_dir(b.jobs()).into_iter().flatten().flatten() {
                v.push(format!("job dir {}", e.path().display()));
            }
        }
        for c in &self.cgroups {
            v.extend(c.left().into_iter().map(|d| format!("cgroup {d}")));
        }
        v
    }
}

/// `key=value` words of the lines of `out` that start with `tag`.
fn tagged<'a>(out: &'a str, tag: &str) -> Vec<std::collections::BTreeMap<&'a str, &'a str>> {
    out.lines()
        .filter(|l| l.starts_with(tag))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect()
        })
        .collect()
}

#[test]
fn a_parallel_job_runs_one_container_per_host_and_its_tasks_inside_as_the_user() {
    let p = ParallelJob::new("blaunch");
    // Each task says where it runs: its task id, host, ids, the container
    // (from its cgroup) and the job cgroup it is in. The two on HOST2 run
    // side by side and each waits for the other's file in /dev/shm.
    let report = r#"cg=$(grep -m1 memory /proc/self/cgroup | cut -d: -f3); echo "$0 task=${LSF_PM_TASKID:-none} host=$(hostname) uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ,) container=$(basename $cg) jobcg=$(dirname $cg) pid1=$(tr '\0 ' __ < /proc/1/cmdline | cut -c1-40) caps=$(grep CapEff /proc/self/status | cut -f2) nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)""#;
    let pair = r#"touch /dev/shm/t$LSF_PM_TASKID; for i in $(seq 100); do [ $(ls /dev/shm | wc -l) -ge 2 ] && break; sleep 0.1; done; echo "PAIR task=$LSF_PM_TASKID seen=$(ls /dev/shm | tr '\n' ,)""#;
    let command = format!(
        "sh -c '{r}' JOB && blaunch -no-shell {h1} sh -c '{r}' T1 && blaunch -z '{h2} {h2}' -no-shell sh -c '{r}; {pair}' T2",
        r = report.replace('\'', r"'\''"),
        pair = pair.replace('\'', r"'\''"),
        h1 = p.host1,
        h2 = HOST2,
    );
    let out = output(p.start(&command));
    out.expect(0);
    let job = tagged(&out.stdout, "JOB ");
    let t1 = tagged(&out.stdout, "T1 ");
    let t2 = tagged(&out.stdout, "T2 ");
    assert_eq!((job.len(), t1.len(), t2.len()), (1, 1, 2), "{out:?}");
    let alice = nix::unistd::User::from_name(ALICE).unwrap().unwrap();
    let cname = std::ffi::CString::new(ALICE).unwrap();
    let mut groups: Vec<String> = nix::unistd::getgrouplist(&cname, alice.gid)
        .unwrap()
        .iter()
        .map(|g| g.to_string())
        .collect();
    groups.sort();
    groups.dedup();
    for r in job.iter().chain(&t1).chain(&t2) {
        assert_eq!(r["uid"], alice.uid.to_string(), "{r:?}");
        assert_eq!(r["gid"], alice.gid.to_string(), "{r:?}");
        let mut g: Vec<&str> = r["groups"].split(',').collect();
        g.sort();
        g.dedup();
        assert_eq!(g, groups, "the user's host groups in every task: {r:?}");
        // A task is a process of its container: no capability, no new
        // privileges, whatever the engine's defaults for an exec.
        assert_eq!((r["caps"], r["nnp"]), ("0000000000000000", "1"), "{r:?}");
    }
    // The job and its task on the first host: one container, the job's.
    assert_eq!(job[0]["task"], "none");
    assert_eq!(t1[0]["container"], job[0]["container"], "{out:?}");
    assert_eq!(t1[0]["host"], p.host1);
    assert!(job[0]["jobcg"].ends_with(&format!("job.{}.0.1795238400", p.job.id)));
    // The tasks on HOST2: both in one container of their own, in the
    // job's cgroup on HOST2, with HOST2's name, under docker-init.
    assert_eq!(t2[0]["container"], t2[1]["container"], "{out:?}");
    assert_ne!(t2[0]["container"], job[0]["container"]);
    for r in &t2 {
        assert_eq!(r["host"], HOST2);
        assert!(
            r["jobcg"].ends_with(&format!("job.{}.0.1795238401", p.job.id)),
            "{r:?}"
        );
        assert!(r["pid1"].starts_with("/sbin/docker-init"), "{r:?}");
    }
    let mut ids: Vec<&str> = t1.iter().chain(&t2).map(|r| r["task"]).collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"], "LSF_PM_TASKID, from 1");
    // They share /dev/shm (the one container's IPC) and saw each other.
    let pairs = tagged(&out.stdout, "PAIR ");
    assert_eq!(pairs.len(), 2, "{out:?}");
    for r in &pairs {
        for t in &t2 {
            assert!(
                r["seen"].contains(&format!("t{},", t["task"])),
                "{r:?} {out:?}"
            );
        }
    }
    // The audit log of each host names the container its tasks ran in.
    let host2_launches: Vec<String> = p.beds[1]
        .audit(&p.job.id)
        .iter()
        .filter(|r| r["event"] == "launch")
        .filter_map(|r| r["container"].as_str().map(str::to_string))
        .collect();
    assert_eq!(host2_launches.len(), 2, "two tasks on HOST2");
    assert_eq!(host2_launches[0], host2_launches[1]);
    assert!(
        wait_until(Duration::from_secs(10), || p.leftovers().is_empty()),
        "left: {:?}",
        p.leftovers()
    );
}

#[test]
fn a_task_that_asks_for_other_volumes_than_its_jobs_container_is_refused() {
    let p = ParallelJob::new("blaunch-deny");
    // On the first host against the job's container; on HOST2 against the
    // host's container a first task made (it sleeps while the second asks).
    let command = format!(
        "LSF_DOCKER_VOLUMES=/scratch1/fs1/alice:/scratch blaunch {} true; echo rc=$?; \
         blaunch {HOST2} sleep 4 & sleep 2; \
         LSF_DOCKER_VOLUMES=/scratch1/fs1/alice:/scratch blaunch {HOST2} true; echo rc2=$?; wait",
        p.host1
    );
    let out = output(p.start(&command));
    out.expect(0);
    assert!(out.stdout.contains("rc=77"), "{out:?}");
    assert!(out.stdout.contains("rc2=77"), "{out:?}");
    let berth: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("berth:"))
        .collect();
    assert_eq!(berth.len(), 2, "{out:?}");
    for b in &berth {
        assert!(
            b.contains("[rule lsf.task]") && b.contains("blaunch task"),
            "{b}"
        );
    }
    assert!(berth[1].contains(HOST2), "{}", berth[1]);
    assert!(
        wait_until(Duration::from_secs(10), || p.leftovers().is_empty()),
        "left: {:?}",
        p.leftovers()
    );
}

#[test]
fn killing_a_hosts_tasks_removes_its_container_and_everything_it_had() {
    let p = ParallelJob::new("blaunch-kill");
    let mut job = p.start(&format!("blaunch {HOST2} sleep 300; echo rc=$?"));
    let on_host2 = || {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=berth.job={}", p.job.id),
            "--filter",
            &format!("label=berth.host={HOST2}"),
        ])
        .stdout
        .split_whitespace()
        .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || on_host2() == 1),
        "no container on {HOST2}"
    );
    // bkill: LSF kills the job's processes on every host, here the task's.
    assert_eq!(p.res.kill_tasks_on(HOST2), 1);
    let status = wait_child(&mut job, Duration::from_secs(60)).expect("the job did not end");
    let out = output(job);
    assert!(status.success(), "{out:?}");
    // The task ended by SIGKILL (its starter's status through RES and
    // blaunch), long before its sleep would have.
    assert!(out.stdout.contains("rc=137"), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(15), || p.leftovers().is_empty()),
        "left: {:?}",
        p.leftovers()
    );
}

#[test]
fn a_signal_to_a_task_reaches_its_processes_in_the_container() {
    let p = ParallelJob::new("blaunch-signal");
    // One task in the job's own container (host 1), one in host 2's; each
    // traps TERM, says it is ready, and waits. The broker passes the
    // signal on to the task's processes itself (the engine has no call
    // for it): as root it needs CAP_KILL for a process of alice's.
    // (A script: blaunch runs its command words under a shell, as LSF's
    // does, and `exec` makes the task's process the trapping shell.)
    p.tree.file(
        "task.sh",
        "trap 'echo caught$1 TERM; exit 7' TERM; touch ready$1; while :; do sleep 0.1; done\n",
        0o755,
    );
    let mut job = p.start(&format!(
        "(blaunch {h1} exec sh task.sh 1; echo rc1=$?) & (blaunch {HOST2} exec sh task.sh 2; echo rc2=$?) & wait",
        h1 = p.host1,
    ));
    for n in [1, 2] {
        let ready = p.tree.0.join(format!("ready{n}"));
        assert!(
            wait_until(Duration::from_secs(60), || ready.exists()),
            "task {n} did not start"
        );
    }
    for host in [p.host1.as_str(), HOST2] {
        assert_eq!(
            p.res
                .signal_tasks_on(host, nix::sys::signal::Signal::SIGTERM),
            1,
            "{host}"
        );
    }
    let status = wait_child(&mut job, Duration::from_secs(60)).expect("the job did not end");
    let out = output(job);
    assert!(status.success(), "{out:?}");
    for n in [1, 2] {
        assert!(out.stdout.contains(&format!("caught{n} TERM")), "{out:?}");
        assert!(out.stdout.contains(&format!("rc{n}=7")), "{out:?}");
    }
    assert!(
        wait_until(Duration::from_secs(15), || p.leftovers().is_empty()),
        "left: {:?}",
        p.leftovers()
    );
}

#[test]
fn an_mpi_job_starts_its_ranks_on_both_hosts_through_blaunch() {
    let p = ParallelJob::of_image("blaunch-mpi", "berth-test/mpi:1");
    let command = format!(
        "mpirun --prtemca plm_ssh_agent {}/bin/blaunch --host {}:2,{HOST2}:2 -np 4 /usr/local/bin/mpihello",
        p.tree.0.display(),
        p.host1
    );
    let out = output(p.start(&command));
    out.expect(0);
    // mpihello rank R of N node NODE uid U sum S ring L ok
    let mut nodes = std::collections::BTreeMap::new();
    for l in out
        .stdout
        .lines()
        .filter(|l| l.starts_with("mpihello rank "))
    {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.len(), 14, "{l}");
        assert_eq!((w[4], w[8], w[10], w[13]), ("4", "2001", "6", "ok"), "{l}");
        assert!(
            nodes.insert(w[2].to_string(), w[6].to_string()).is_none(),
            "{out:?}"
        );
    }
    let want: std::collections::BTreeMap<String, String> = [
        ("0", p.host1.as_str()),
        ("1", p.host1.as_str()),
        ("2", HOST2),
        ("3", HOST2),
    ]
    .iter()
    .map(|(r, n)| (r.to_string(), n.to_string()))
    .collect();
    assert_eq!(nodes, want, "two ranks on each host: {out:?}");
    // mpirun ran in the job's container; on HOST2 its daemon (prted) was
    // the one blaunch task, in the host's container with its two ranks.
    let launches: Vec<serde_json::Value> = p.beds[1]
        .audit(&p.job.id)
        .into_iter()
        .filter(|r| r["event"] == "launch")
        .collect();
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert!(
        wait_until(Duration::from_secs(10), || p.leftovers().is_empty()),
        "left: {:?}",
        p.leftovers()
    );
}

#[test]
fn another_users_task_never_runs_in_the_jobs_container() {
    let p = ParallelJob::new("blaunch-bob");
    // alice's job holds its container on this host for a while.
    let mut job = p.start("sleep 30");
    assert!(
        wait_until(Duration::from_secs(30), || containers_of(&p.job.id).len()
            == 1),
        "alice's job did not start"
    );
    // bob names himself a task of alice's job on the same host: same
    // LSB_JOBID, an LSF_PM_TASKID, the same broker.
    let mut env = p.job.lsf_env();
    env.retain(|(k, _)| !["USER", "LOGNAME", "LSFUSER", "HOME"].contains(&k.as_str()));
    env.extend(pairs(&[
        ("USER", "berth-bob"),
        ("LOGNAME", "berth-bob"),
        ("LSFUSER", "berth-bob"),
        ("HOME", "/home/berth-bob"),
        ("LSF_PM_TASKID", "1"),
    ]));
    let report = "echo uid=$(id -u) pid1=$(tr '\\0 ' __ < /proc/1/cmdline | cut -c1-60)";
    let out = output(
        command_as(
            Some("berth-bob"),
            &[p.beds[0].script("berth-starter").to_str().unwrap(), report],
            &env,
            "/",
        )
        .spawn()
        .unwrap(),
    );
    // His task ran as bob, in a container of his own on this host (the
    // host container of his tasks, named for him), not in alice's.
    out.expect(0);
    let r = &tagged(&out.stdout, "uid=")[0];
    assert_eq!(r["uid"], "2002", "{out:?}");
    assert!(
        r["pid1"].contains("read_x"),
        "not his own container: {out:?}"
    );
    assert!(!out.stdout.contains("sleep"), "{out:?}");
    let _ = std::process::Command::new("/bin/kill")
        .args(["-KILL", &job.id().to_string()])
        .status();
    let _ = wait_child(&mut job, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(15), || p.leftovers().is_empty()),
        "left: {:?}",
        p.leftovers()
    );
}
