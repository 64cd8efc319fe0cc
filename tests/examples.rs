//! The seed patterns of `examples/` as CI runs them: each
//! `examples/<name>/run.sh` runs as root, as a sysadmin would run it on a
//! node set up by packaging/quickstart.sh, but pointed (BERTH,
//! BERTH_POLICY, EXAMPLE_*) at the berth under test, a test bed's policy
//! and its broker. A script checks its own outputs and exits non-zero when
//! one is wrong; the test asserts that it succeeded, and checks from
//! outside, in the bed's audit log, that its jobs ran as berth-alice
//! through the broker, in containers of their own, and that it left
//! nothing behind.
//!
//! Run as root on the testbed (`bash tests/run.sh`); a missing engine or
//! Slurm FAILS. `chunk_array` uses the shared Slurm fixture (its broker,
//! bundle cache and /etc/slurm/oci.conf pointing at the berth under test).

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/slurm.rs"]
mod slurmbed;

use broker::{install_berth, use_broker_socket, Daemon};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one example may take (it polls Slurm for its array).
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long chunk-array waits for its Slurm array (EXAMPLE_SLURM_TIMEOUT,
/// whose default, 300 s, is all of [`EXAMPLE_TIMEOUT`]): well inside it, so
/// that on a slow Slurm the script says why it failed before it is killed.
const EXAMPLE_SLURM_TIMEOUT: &str = "200";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("run.sh")
}

/// A bed whose policy has a bundle cache and lets users push, its broker,
/// and a copy of berth the test users can run. Field order: the daemon
/// stops before the bed goes.
struct ExampleBed {
    _daemon: Daemon,
    bin: PathBuf,
    cache: PathBuf,
    bed: Bed,
}

fn example_bed() -> ExampleBed {
    let mut bed = Bed::with(|p| set(p, "bundles.user_push", true));
    let cache = bed.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    set(
        &mut bed.policy,
        "bundles.cache",
        cache.display().to_string(),
    );
    let socket = use_broker_socket(&mut bed);
    let bin = install_berth(bed.path());
    let daemon = Daemon::start(&bed, &socket);
    ExampleBed {
        _daemon: daemon,
        bin,
        cache,
        bed,
    }
}

/// A directory for one test under alice's scratch, owned by her; removed
/// on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(tag: &str) -> ScratchDir {
        let path =
            Path::new("/scratch1/fs1/alice").join(format!("berth-it-{tag}-{}", next_job_id()));
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ScratchDir { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `bash examples/<name>/run.sh` as root, from `/`, with a clean
/// environment plus `env`; its streams go to files in `dir` (so that
/// nothing it leaves running can hold the test up). Killed (SIGTERM to its
/// process group, so its trap cleans up; then SIGKILL) after
/// [`EXAMPLE_TIMEOUT`]. Prints what it said and how long it took.
fn run_example(name: &str, dir: &Path, env: &[(&str, &str)]) -> Out {
    let outp = dir.join(format!("{name}.stdout"));
    let errp = dir.join(format!("{name}.stderr"));
    let start = Instant::now();
    let mut child = Command::new("/bin/bash")
        .arg(script(name))
        .env_clear()
        .env("PATH", CALLER_PATH)
        .env("HOME", "/root")
        .env("LANG", "C")
        .env("DOCKER", DOCKER)
        .env("EXAMPLE_USER", ALICE)
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&outp).unwrap())
        .stderr(std::fs::File::create(&errp).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script(name).display()));
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut status = wait_child(&mut child, EXAMPLE_TIMEOUT);
    let timed_out = status.is_none();
    if timed_out {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        status = wait_child(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            status = child.wait().ok();
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let status = status.expect("wait");
    let out = Out {
        code: status.code(),
        signal: status.signal(),
        stdout: std::fs::read_to_string(&outp).unwrap_or_default(),
        stderr: std::fs::read_to_string(&errp).unwrap_or_default(),
    };
    eprintln!(
        "examples/{name}/run.sh: exit {:?} in {:.1} s\n--- stdout:\n{}--- stderr:\n{}",
        out.code,
        start.elapsed().as_secs_f64(),
        out.stdout,
        out.stderr
    );
    assert!(
        !timed_out,
        "examples/{name}/run.sh did not finish within {EXAMPLE_TIMEOUT:?}"
    );
    out
}

/// The `exit` records of the audit log that `keep` selects.
fn exits(bed: &Bed, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    bed.audit()
        .into_iter()
        .filter(|r| r["event"] == "exit" && keep(r))
        .collect()
}

/// Each record: alice's job (uid 2001), started by alice herself through
/// the broker (caller_uid 2001), exit 0; and all in containers of their own.
#[track_caller]
fn assert_alice_jobs(records: &[Value], what: &str) {
    for r in records {
        assert_eq!(r["user"], ALICE, "{what}: {r}");
        assert_eq!(r["uid"], ALICE_UID, "{what}: {r}");
        assert_eq!(r["caller_uid"], ALICE_UID, "{what}: not run by alice: {r}");
        assert_eq!(r["exit_code"], 0, "{what}: {r}");
    }
    let names: BTreeSet<&str> = records
        .iter()
        .map(|r| r["container"].as_str().expect("container name"))
        .collect();
    assert_eq!(
        names.len(),
        records.len(),
        "{what}: shared containers: {records:?}"
    );
}

fn mounts(r: &Value) -> Vec<&str> {
    r["mounts"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Entries left in a directory.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------

#[test]
fn export_bundle_job() {
    let eb = example_bed();
    let storage = AliceDir::new("ex-export");
    let job = next_job_id();
    let out = run_example(
        "export-bundle-job",
        eb.bed.path(),
        &[
            ("BERTH", &eb.bin.display().to_string()),
            ("BERTH_POLICY", &eb.bed.policy_path().display().to_string()),
            ("EXAMPLE_STORAGE", &storage.display()),
            ("EXAMPLE_JOBID", &job),
        ],
    );
    out.expect_ok();

    // One job from the admin's bundle, one from alice's own, each in its
    // own container, as alice.
    let site = format!("bundle:berth-example-export-{job}");
    let own = format!("bundle:{ALICE}/berth-example-push-{job}");
    let jobs = [format!("{job}1"), format!("{job}2")];
    let records = exits(&eb.bed, |r| jobs.iter().any(|j| r["job"] == j.as_str()));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_alice_jobs(&records, "export-bundle-job");
    let images: BTreeSet<&str> = records.iter().filter_map(|r| r["image"].as_str()).collect();
    assert_eq!(images, BTreeSet::from([site.as_str(), own.as_str()]));
    for r in &records {
        let m = mounts(r);
        for dst in ["/code:ro", "/data:ro", "/results:rw"] {
            assert!(m.iter().any(|x| x.ends_with(dst)), "no {dst} mount: {m:?}");
        }
    }
    // Both bundles are gone again, and so are the image it built and the
    // files it made.
    assert!(!eb
        .cache
        .join(format!("berth-example-export-{job}"))
        .exists());
    assert!(!eb
        .cache
        .join("users")
        .join(ALICE)
        .join(format!("berth-example-push-{job}"))
        .exists());
    let tag = format!("berth-example/export-tool:{job}");
    assert_ne!(
        docker(&["image", "inspect", &tag]).code,
        Some(0),
        "{tag} is left"
    );
    assert_eq!(entries(&storage.path), Vec::<String>::new());
}

#[test]
fn chunk_array() {
    let s = slurmbed::slurm();
    // The example drives the host's Slurm (22.05); 24.11 lives in a tree.
    let with_slurm = !slurmbed::gen().is_24();
    let storage = AliceDir::new("ex-chunks");
    let scratch = ScratchDir::new("ex-chunks");
    let job = next_job_id();
    let out = run_example(
        "chunk-array",
        s.bed.path(),
        &[
            ("BERTH", &s.bed.path().join("berth").display().to_string()),
            ("BERTH_POLICY", &s.bed.policy_path().display().to_string()),
            ("EXAMPLE_STORAGE", &storage.display()),
            ("EXAMPLE_SCRATCH", &scratch.path.display().to_string()),
            ("EXAMPLE_JOBID", &job),
            ("EXAMPLE_SLURM", if with_slurm { "yes" } else { "no" }),
            ("EXAMPLE_SLURM_ARGS", "--partition=debug --time=5"),
            ("EXAMPLE_SLURM_TIMEOUT", EXAMPLE_SLURM_TIMEOUT),
        ],
    );
    out.expect_ok();
    let busybox = image_id(IMAGE);

    // The LSF-style array: one job id, indexes 1..4, four containers.
    let lsf = exits(&s.bed, |r| r["job"] == job.as_str());
    assert_eq!(lsf.len(), 4, "{lsf:?}");
    assert_alice_jobs(&lsf, "LSF-style array");
    let idx: BTreeSet<u64> = lsf.iter().filter_map(|r| r["index"].as_u64()).collect();
    assert_eq!(idx, BTreeSet::from([1, 2, 3, 4]));
    let mut all = lsf.clone();

    if with_slurm {
        // The Slurm array: four jobs of their own, each element's batch
        // step in a container placed in that job's cgroup.
        let bundle = format!("bundle:berth-example-chunks-{job}");
        let slurm = exits(&s.bed, |r| r["image"] == bundle.as_str());
        assert_eq!(slurm.len(), 4, "{slurm:?}");
        assert_alice_jobs(&slurm, "Slurm array");
        let ids: BTreeSet<&str> = slurm.iter().filter_map(|r| r["job"].as_str()).collect();
        assert_eq!(ids.len(), 4, "{slurm:?}");
        for r in &slurm {
            let cg = r["cgroup"].as_str().unwrap_or_default();
            let want = format!("/job_{}/", r["job"].as_str().unwrap());
            assert!(cg.contains(&want), "not in its job's cgroup: {r}");
        }
        all.extend(slurm);
        assert!(
            !s.bed
                .path()
                .join("cache")
                .join(format!("berth-example-chunks-{job}"))
                .exists(),
            "the example's bundle is left"
        );
    }
    // One image for every element, and no container shared.
    for r in &all {
        assert_eq!(r["image_id"], busybox.as_str(), "{r}");
    }
    assert_alice_jobs(&all, "both arrays");
    assert_eq!(entries(&storage.path), Vec::<String>::new());
    assert_eq!(entries(&scratch.path), Vec::<String>::new());
}

#[test]
fn input_to_results() {
    let eb = example_bed();
    let storage = AliceDir::new("ex-results");
    let job = next_job_id();
    let out = run_example(
        "input-to-results",
        eb.bed.path(),
        &[
            ("BERTH", &eb.bin.display().to_string()),
            ("BERTH_POLICY", &eb.bed.policy_path().display().to_string()),
            ("EXAMPLE_STORAGE", &storage.display()),
            ("EXAMPLE_JOBID", &job),
        ],
    );
    out.expect_ok();

    let records = exits(&eb.bed, |r| r["job"] == job.as_str());
    assert_eq!(records.len(), 1, "{records:?}");
    assert_alice_jobs(&records, "input-to-results");
    // What docker bound: the input read-only, the results folder and the
    // job's own /tmp read-write, nothing else writable (the submission
    // directory is not mounted: the workdir is /results).
    let m = mounts(&records[0]);
    let results = format!("/results-{job}:/results:rw");
    assert!(m.iter().any(|x| x.ends_with("/input:/input:ro")), "{m:?}");
    assert!(m.iter().any(|x| x.ends_with(&results)), "{m:?}");
    let rw: Vec<&&str> = m.iter().filter(|x| !x.ends_with(":ro")).collect();
    assert_eq!(rw.len(), 2, "writable mounts: {rw:?}");
    assert!(
        rw.iter()
            .all(|x| x.ends_with(&results) || x.ends_with("/tmp:/tmp:rw")),
        "writable mounts: {rw:?}"
    );
    assert_eq!(entries(&storage.path), Vec::<String>::new());
}
