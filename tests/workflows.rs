//! Workflows through berth for real: Parsl (wrapper/parsl/) with its
//! HighThroughputExecutor, on the local node and with its SlurmProvider
//! against the test bed's Slurm 22.05, in both of Parsl's container models:
//! a fresh berth container per app (model 2), and the worker pool itself
//! inside a `--container` pilot job (model 1).
//!
//! berth-alice (uid 2001, not in the docker group) runs the workflows with
//! the test bed's Parsl venv (tests/setup/parsl.sh); the pilot's image is
//! `berth-test/parsl:1`, the same Parsl and Python. Needs root and the test
//! bed (`bash tests/run.sh` brings it up); anything missing FAILS.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/slurm.rs"]
mod slurmbed;

use broker::{install_berth, use_broker_socket, Daemon, TestUser};
use common::*;
use slurmbed::*;
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const VENV: &str = "/var/lib/berth-testbed/parsl-venv";
const PARSL_IMAGE: &str = "berth-test/parsl:1";

/// A directory of alice's under an allowed root: the workflow's cwd, its
/// apps' working directory and Parsl's run dir. Removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(tag: &str) -> WorkDir {
        let p = Path::new(ALICE_DIR).join(format!("parsl-{tag}-{}", next_job_id()));
        std::fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
        WorkDir(p)
    }
}

impl Drop for WorkDir {
    /// After a failed or timed-out workflow too: cancel its pilots (Slurm
    /// jobs submitted from here), kill its workers (Parsl starts them in
    /// process groups of their own, so killing the workflow's misses them),
    /// then remove the directory.
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        if let Ok(o) = Command::new("/usr/bin/squeue")
            .args(["-h", "-u", ALICE, "-o", "%i %Z"])
            .env_clear()
            .env("PATH", CALLER_PATH)
            .output()
        {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some((id, wd)) = line.split_once(' ') {
                    if wd == dir || wd.starts_with(&format!("{dir}/")) {
                        let _ = Command::new("/usr/bin/scancel")
                            .arg(id)
                            .env_clear()
                            .status();
                    }
                }
            }
        }
        for _ in 0..2 {
            for pid in procs_under(&self.0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// alice's processes whose working directory is under `dir`.
fn procs_under(dir: &Path) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == ALICE_UID)
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir))
        })
        .collect()
}

/// wrapper/parsl/*.py copied where alice can read them (the bed: root,
/// 0755), as a site would install them.
fn install_wrapper(dir: &Path) -> PathBuf {
    let dst = dir.join("parsl");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["berth_parsl.py", "workflow.py"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("wrapper/parsl")
                .join(f),
            dst.join(f),
        )
        .unwrap();
    }
    dst
}

#[track_caller]
fn require_parsl() {
    assert!(
        Path::new(VENV).join("bin/python3").exists(),
        "{VENV} is missing; run `bash tests/setup/testbed.sh up`"
    );
    let out = docker(&["image", "inspect", "--format", "{{.Id}}", PARSL_IMAGE]);
    assert_eq!(
        out.code,
        Some(0),
        "{PARSL_IMAGE} is missing; run `bash tests/setup/testbed.sh up`"
    );
    // The point of these tests: no docker group for the workflow's user.
    let docker_gid = nix::unistd::Group::from_name("docker")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let a = TestUser::get(ALICE);
    assert!(
        !docker_gid.is_some_and(|g| a.groups.contains(&g)),
        "{ALICE} must not be in the docker group"
    );
}

/// `python3 workflow.py ARGS` as alice from `work`, with the Parsl venv
/// first on PATH (Parsl starts its interchange and workers from it) and
/// `env`; its JSON result. The whole process group (interchange, workers)
/// is killed if it takes longer than `timeout`.
fn workflow(
    wrapper: &Path,
    work: &WorkDir,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> serde_json::Value {
    let alice = TestUser::get(ALICE);
    let mut c = Command::new(Path::new(VENV).join("bin/python3"));
    c.arg(wrapper.join("workflow.py"))
        .args(args)
        .env_clear()
        .env("PATH", format!("{VENV}/bin:{CALLER_PATH}"))
        .env("HOME", &work.0)
        .env("USER", ALICE)
        .env("LOGNAME", ALICE)
        .envs(env.iter().copied())
        .current_dir(&work.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    alice.apply(&mut c);
    let child = c.spawn().expect("python3 workflow.py");
    let pgid = child.id() as i32;
    // Kill the group (interchange, workers) should the workflow hang.
    let guard = KillGroup(pgid);
    let out = broker::finish(child, timeout);
    drop(guard);
    assert_eq!(
        out.code,
        Some(0),
        "workflow {args:?} failed:\n--- stdout\n{}\n--- stderr\n{}\n--- parsl.log\n{}",
        out.stdout,
        out.stderr,
        parsl_log(work)
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("workflow printed {:?}: {e}", out.stdout))
}

struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The end of Parsl's own log, for a failure message.
fn parsl_log(work: &WorkDir) -> String {
    let p = work.0.join("runinfo/000/parsl.log");
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The 8 square apps of a model-2 result: each ran as alice, under
/// docker-init, with an empty /tmp of its own, and the sum is right.
#[track_caller]
fn assert_apps(r: &serde_json::Value, n: usize) {
    // The squares' outputs reached the sum through their futures, the
    // sum reached the check through its.
    assert_eq!(r["total"], r["want"], "{r}");
    assert_eq!(r["check"], "ok", "{r}");
    let apps = r["apps"].as_array().unwrap();
    assert_eq!(apps.len(), n, "{r}");
    for (i, a) in apps.iter().enumerate() {
        assert_eq!(a["square"].as_u64(), Some((i * i) as u64), "{a}");
        assert_eq!(
            a["uid"].as_u64(),
            Some(ALICE_UID as u64),
            "app {i} ran as {a}"
        );
        assert_eq!(
            a["pid1"], "docker-init",
            "app {i} did not run in a berth container: {a}"
        );
    }
}

/// The containers berth launched for alice (audit `launch` records) whose
/// working directory is `work`: the apps of one workflow.
fn launches(bed: &Bed, work: &WorkDir) -> Vec<serde_json::Value> {
    let mount = format!("{0}:{0}:rw", work.0.display());
    bed.audit()
        .into_iter()
        .filter(|r| r["event"] == "launch" && r["decision"] == "allow")
        .filter(|r| {
            r["mounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m.as_str() == Some(&mount)))
        })
        .collect()
}

#[track_caller]
fn assert_one_container_per_app(bed: &Bed, work: &WorkDir, apps: usize) -> Vec<serde_json::Value> {
    let l = launches(bed, work);
    let names: BTreeSet<&str> = l.iter().filter_map(|r| r["container"].as_str()).collect();
    // the squares, the sum, the check
    assert_eq!(names.len(), apps + 2, "one container per app: {names:?}");
    assert_eq!(l.len(), apps + 2, "{l:?}");
    for r in &l {
        assert_eq!(r["caller_uid"].as_u64(), Some(ALICE_UID as u64), "{r}");
        assert_eq!(r["uid"].as_u64(), Some(ALICE_UID as u64), "{r}");
    }
    l
}

/// A bed with its own broker, for the workflows that need no Slurm.
struct Local {
    bed: Bed,
    _daemon: Daemon,
    bin: PathBuf,
    wrapper: PathBuf,
}

fn local() -> Local {
    require_parsl();
    let mut bed = Bed::new();
    let socket = use_broker_socket(&mut bed);
    let bin = install_berth(bed.path());
    let wrapper = install_wrapper(bed.path());
    let daemon = Daemon::start(&bed, &socket);
    Local {
        bed,
        _daemon: daemon,
        bin,
        wrapper,
    }
}

// ---------------------------------------------------------------------------
// model 2: a fresh container per app
// ---------------------------------------------------------------------------

#[test]
fn parsl_apps_each_run_in_their_own_container_on_the_local_node() {
    let l = local();
    let work = WorkDir::new("local");
    let policy = l.bed.policy_path().display().to_string();
    let bin = l.bin.display().to_string();
    let r = workflow(
        &l.wrapper,
        &work,
        &[
            "--model",
            "app",
            "--provider",
            "local",
            "--image",
            IMAGE,
            "--berth",
            &bin,
            "--policy",
            &policy,
        ],
        &[],
        Duration::from_secs(240),
    );
    assert_apps(&r, 8);
    for a in r["apps"].as_array().unwrap() {
        // Eight apps at once, none saw another's /tmp/mine-<i>.
        assert_eq!(
            a["tmp_entries"].as_u64(),
            Some(0),
            "a /tmp shared between apps: {a}"
        );
    }
    let launched = assert_one_container_per_app(&l.bed, &work, 8);
    // Outside any scheduler's job (the bed allows that: require_job = false).
    assert!(launched.iter().all(|r| r["job"] == "local"), "{launched:?}");
    // --rm: none of them is left.
    for r in &launched {
        let name = format!("name=^{}$", r["container"].as_str().unwrap());
        let left = docker(&["ps", "-aq", "--filter", &name]);
        assert_eq!(left.stdout.trim(), "", "{name} left behind");
    }
}

#[test]
fn a_denied_image_or_volume_fails_the_parsl_app_with_berths_reason() {
    let l = local();
    let work = WorkDir::new("deny");
    let policy = l.bed.policy_path().display().to_string();
    let bin = l.bin.display().to_string();
    // Bounded well below the Parsl default timeouts: a denial must not hang.
    let r = workflow(
        &l.wrapper,
        &work,
        &[
            "--model", "deny", "--image", IMAGE, "--berth", &bin, "--policy", &policy,
        ],
        &[],
        Duration::from_secs(120),
    );
    let image = &r["image"];
    assert_eq!(image["error"], "BerthDenied", "{r}");
    assert_eq!(image["code"], 77, "{r}");
    let msg = image["message"].as_str().unwrap();
    assert!(
        msg.starts_with("berth: denied: image docker.io/library/ubuntu:24.04 is not allowed here")
            && msg.ends_with("[rule images.allow]"),
        "{msg}"
    );
    let volume = &r["volume"];
    assert_eq!(volume["error"], "BerthDenied", "{r}");
    let msg = volume["message"].as_str().unwrap();
    assert!(
        msg.starts_with("berth: denied: volume /etc is not under an allowed root")
            && msg.ends_with("[rule volumes.source]"),
        "{msg}"
    );
    // The command's own `exit 77` ran (a container) and is its failure.
    let own = &r["own_77"];
    assert_eq!(own["error"], "BerthJobFailed", "{r}");
    assert_eq!(own["code"], 77, "{r}");
    assert!(
        own["message"].as_str().unwrap().ends_with("not a denial"),
        "{r}"
    );
    // A plain bash_app with berth_command: Parsl's own failure, exit 77,
    // and the reason in the app's stderr file.
    let plain = &r["bash_app"];
    assert_eq!(plain["error"], "BashExitFailure", "{r}");
    assert_eq!(plain["code"], 77, "{r}");
    assert!(
        plain["stderr"]
            .as_str()
            .unwrap()
            .contains("[rule images.allow]"),
        "{r}"
    );
    // Nothing was started for the denied ones: one launch, own_77's.
    assert_eq!(launches(&l.bed, &work).len(), 1);
    let denials = l
        .bed
        .audit()
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .count();
    assert_eq!(denials, 3, "{:?}", l.bed.audit());
}

#[test]
fn parsl_apps_in_slurm_jobs_each_get_a_container_inside_their_jobs_allocation() {
    require_parsl();
    let s = slurm();
    let work = WorkDir::new("slurm");
    let wrapper = install_wrapper(&work.0);
    let policy = s.bed.policy_path().display().to_string();
    let bin = s.bed.path().join("berth").display().to_string();
    let r = workflow(
        &wrapper,
        &work,
        &[
            "--model",
            "app",
            "--provider",
            "slurm",
            "--partition",
            "debug",
            "--cores",
            "1",
            "--mem-mb",
            "500",
            "--image",
            IMAGE,
            "--berth",
            &bin,
            "--policy",
            &policy,
        ],
        &[],
        Duration::from_secs(300),
    );
    assert_apps(&r, 8);
    let launched = assert_one_container_per_app(&s.bed, &work, 8);
    // Every app ran inside the pilot's Slurm job: berth found the job from
    // the caller's cgroup, named the container after it and placed it in
    // the job's cgroup.
    let jobs: BTreeSet<&str> = launched.iter().filter_map(|r| r["job"].as_str()).collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = *jobs.iter().next().unwrap();
    assert!(
        job.bytes().all(|b| b.is_ascii_digit()),
        "not a Slurm job: {job}"
    );
    let creates = s.bed.creates(job);
    assert!(creates.len() >= 10, "{creates:?}");
    for c in &creates {
        let parent = c.body["HostConfig"]["CgroupParent"]
            .as_str()
            .unwrap_or_default();
        assert!(
            parent.contains(&format!("/job_{job}/")),
            "container outside job {job}'s cgroup: {parent}"
        );
    }
    // Parsl's cleanup cancelled its pilot; nothing of the job is left.
    let (state, _) = wait_job(job, Duration::from_secs(60));
    assert!(
        ["CANCELLED", "COMPLETED"].contains(&state.as_str()),
        "{state}"
    );
    s.bed.assert_cleaned_within(job, Duration::from_secs(20));
}

// ---------------------------------------------------------------------------
// model 1: the worker pool inside a pilot's container
// ---------------------------------------------------------------------------

#[test]
fn parsl_workers_in_a_container_pilot_job_run_the_workflow_and_scancel_leaves_nothing() {
    require_parsl();
    let s = slurm();
    // The pilot's bundle: the Parsl image, made by the site.
    let name = format!("parsl-{}", next_job_id());
    broker::output({
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(s.bed.policy_path())
            .args(["bundle", "create", &name, "--from-image", PARSL_IMAGE])
            .env_clear()
            .env("PATH", CALLER_PATH)
            .stdin(Stdio::null());
        c
    })
    .expect_ok();
    let cache = s.bed.path().join("cache");
    let bundle = cache.join(&name);
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(bundle.clone());

    let work = WorkDir::new("pilot");
    let wrapper = install_wrapper(&work.0);
    let bundle_arg = bundle.display().to_string();
    let r = workflow(
        &wrapper,
        &work,
        &[
            "--model",
            "worker",
            "--partition",
            "debug",
            "--cores",
            "1",
            "--mem-mb",
            "500",
            "--bundle",
            &bundle_arg,
        ],
        // The workers reach Parsl's interchange on the node's loopback: the
        // site allows the host network (the fixture's docker.networks), the
        // pilot asks for it.
        &[("LSF_DOCKER_NETWORK", "host")],
        Duration::from_secs(300),
    );
    assert_eq!(r["total"], r["want"], "{r}");
    let apps = r["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 8);
    for a in apps {
        assert_eq!(a["uid"].as_u64(), Some(ALICE_UID as u64), "{a}");
        assert_eq!(
            a["pid1"], "docker-init",
            "app outside the pilot's container: {a}"
        );
        assert_eq!(a["parsl_image"], true, "app not in the Parsl image: {a}");
    }
    // One container for the whole pilot, all apps in it.
    let launched = launches(&s.bed, &work);
    assert_eq!(launched.len(), 1, "{launched:?}");
    let job = launched[0]["job"].as_str().unwrap().to_string();
    assert_eq!(launched[0]["uid"].as_u64(), Some(ALICE_UID as u64));
    let create = s.bed.create_of(&job);
    assert_eq!(create.body["HostConfig"]["NetworkMode"], "host");
    assert!(create.body["HostConfig"]["CgroupParent"]
        .as_str()
        .unwrap_or_default()
        .contains(&format!("/job_{job}/")));
    // Parsl's cleanup scancels its pilot: the container and the job's
    // directories go with it.
    let (state, _) = wait_job(&job, Duration::from_secs(60));
    assert_eq!(state, "CANCELLED");
    s.bed.assert_cleaned_within(&job, Duration::from_secs(20));
}
