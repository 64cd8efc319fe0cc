//! Slurm (SPEC §8) for real: `srun|sbatch --container=<bundle>` on the
//! testbed's single-node Slurm 22.05, with berth as the OCI runtime
//! (wrapper/slurm/oci.conf), the broker as root, and berth-alice (uid 2001,
//! not in the docker group) submitting.
//!
//! Needs root, the testbed's Docker and Slurm (`bash tests/run.sh` brings
//! them up); a missing engine or Slurm FAILS. The tests of this file share
//! one fixture (one /etc/slurm/oci.conf, one broker, one bundle cache) and
//! hold a lock on it, so two runs on one machine never mix their oci.conf.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/gpu.rs"]
mod gpu;
#[path = "common/slurm.rs"]
mod slurmbed;

use broker::TestUser;
use common::*;
use gpu::GPU_PROBE;
use slurmbed::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------

#[test]
fn srun_runs_as_the_submitting_user() {
    let s = slurm();
    let out = s.srun(&[], Path::new(ALICE_DIR), &["id", "-u"], None);
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"], "{out:?}");

    let out = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &["sh", "-c", "id -g; id -G; whoami; pwd"],
        None,
    );
    out.expect_ok();
    let l = out.lines();
    assert_eq!(l[0], "2001");
    let mut groups = host_id("-G", ALICE);
    groups.sort_unstable();
    assert_eq!(numbers(l[1]), groups);
    assert_eq!(l[2], ALICE);
    assert_eq!(l[3], ALICE_DIR, "SLURM_SUBMIT_DIR is the container's cwd");
}

#[test]
fn the_job_environment_cannot_change_who_runs() {
    let s = slurm();
    let out = s.srun(
        &[
            ("SLURM_JOB_UID", "0"),
            ("SLURM_JOB_USER", "root"),
            ("LSFUSER", "root"),
            ("LSB_CONTAINER_IMAGE", "docker.io/library/docker:latest"),
        ],
        Path::new(ALICE_DIR),
        &[
            "sh",
            "-c",
            "id -u; test -e /var/run/docker.sock && echo SOCKET; true",
        ],
        None,
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"], "{out:?}");
}

#[test]
fn srun_passes_exit_codes_and_stdin() {
    let s = slurm();
    let out = s.srun(&[], Path::new(ALICE_DIR), &["sh", "-c", "exit 3"], None);
    out.expect_code(3);
    let out = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &["cat"],
        Some(b"data piped to srun\nsecond line\n"),
    );
    out.expect_ok();
    assert_eq!(
        out.lines(),
        ["data piped to srun", "second line"],
        "{out:?}"
    );
}

#[test]
fn sbatch_output_and_exit_code() {
    let s = slurm();
    let dir = AliceDir::new("sbatch");
    let name = unique("sbatch");
    let id = s.sbatch(&[], &dir.path, &name, "id -u; echo hi; pwd");
    let (state, code) = wait_job(&id, Duration::from_secs(60));
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"));
    let out = read_output(&dir.path.join(format!("{name}.out")));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["2001", "hi", dir.display().as_str()],
        "{out:?}"
    );
    s.bed.assert_no_leaks(&id);

    let name = unique("exit3");
    let id = s.sbatch(&[], &dir.path, &name, "echo before; exit 3");
    let (state, code) = wait_job(&id, Duration::from_secs(60));
    assert_eq!((state.as_str(), code.as_str()), ("FAILED", "3:0"));
    assert_eq!(
        read_output(&dir.path.join(format!("{name}.out"))),
        "before\n"
    );
    s.bed.assert_no_leaks(&id);
}

#[test]
fn scancel_removes_the_container_and_the_job_dir() {
    let s = slurm();
    let dir = AliceDir::new("scancel");
    let name = unique("scancel");
    let id = s.sbatch(&[], &dir.path, &name, "echo started; sleep 300");
    let container = wait_running(&id, Duration::from_secs(60));
    assert_eq!(s.bed.job_dirs(&id).len(), 1, "the per-job directory");
    let c = inspect(&container);
    let label = c["Config"]["Labels"]["berth.slurm"]
        .as_str()
        .expect("berth.slurm label")
        .to_string();
    assert!(
        label.ends_with(&format!(".{ALICE}.{id}.4294967291.0")),
        "{label}"
    );
    // RunTimeQuery's view (as root, as slurmstepd runs it).
    let q = broker::output({
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(s.bed.policy_path())
            .args(["slurm", "query", &label])
            .env_clear();
        c
    });
    q.expect_ok();
    let state: serde_json::Value = serde_json::from_str(&q.stdout).expect("query JSON");
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["id"], label.as_str());

    let t = Instant::now();
    let mut cancel = client(&alice(), "/usr/bin/scancel", &[], Path::new("/"));
    cancel.arg(&id);
    broker::output(cancel).expect_ok();
    assert!(
        wait_until(Duration::from_secs(10), || containers(&id, true).is_empty()),
        "the container of job {id} is still there {:?} after scancel",
        t.elapsed()
    );
    let gone = t.elapsed();
    s.bed.assert_cleaned_within(&id, Duration::from_secs(5));
    eprintln!(
        "scancel: container gone after {gone:?}, job dir after {:?}",
        t.elapsed()
    );
    let (state, _) = wait_job(&id, Duration::from_secs(30));
    assert_eq!(state, "CANCELLED");
    // Nothing left to query.
    let q = broker::output({
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(s.bed.policy_path())
            .args(["slurm", "query", &label])
            .env_clear();
        c
    });
    assert_eq!(q.stdout.trim(), "{}");
}

#[test]
fn volumes_follow_the_policy() {
    let s = slurm();
    let dir = AliceDir::new("vol");
    std::fs::write(dir.path.join("input.txt"), "volume content\n").unwrap();
    let vol = format!("{}:/data", dir.display());
    let out = s.srun(
        &[("LSF_DOCKER_VOLUMES", &vol)],
        Path::new(ALICE_DIR),
        &[
            "sh",
            "-c",
            "cat /data/input.txt; echo written > /data/out.txt",
        ],
        None,
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["volume content"]);
    assert_eq!(
        std::fs::read_to_string(dir.path.join("out.txt")).unwrap(),
        "written\n"
    );
    // /scratch1/fs1 is read-only by policy.
    let out = s.srun(
        &[("LSF_DOCKER_VOLUMES", "/scratch1/fs1/alice:/scratch")],
        Path::new(ALICE_DIR),
        &[
            "sh",
            "-c",
            "touch /scratch/x 2>/dev/null && echo WROTE; ls -d /scratch",
        ],
        None,
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["/scratch"], "{out:?}");

    // A forbidden volume: srun and sbatch fail with berth's message.
    let out = s.srun(
        &[("LSF_DOCKER_VOLUMES", "/etc:/data")],
        Path::new(ALICE_DIR),
        &["echo", "ran"],
        None,
    );
    out.expect_code(77);
    assert!(!out.stdout.contains("ran"));
    assert_eq!(out.denied_lines().len(), 1, "{out:?}");
    assert!(out.denied_lines()[0].contains("/etc"), "{out:?}");

    let name = unique("badvol");
    let id = s.sbatch(
        &[("LSF_DOCKER_VOLUMES", "/var/run:/r")],
        &dir.path,
        &name,
        "echo ran",
    );
    let (state, code) = wait_job(&id, Duration::from_secs(60));
    assert_eq!((state.as_str(), code.as_str()), ("FAILED", "77:0"));
    let err = read_output(&dir.path.join(format!("{name}.err")));
    assert!(
        err.lines()
            .any(|l| l.starts_with("berth: denied:") && l.contains("/var/run")),
        "{err:?}"
    );
    assert!(
        !std::fs::read_to_string(dir.path.join(format!("{name}.out")))
            .unwrap_or_default()
            .contains("ran")
    );
    s.bed.assert_no_leaks(&id);
    assert!(s.bed.creates(&id).is_empty());
}

#[test]
fn the_submit_dir_is_the_workdir_and_must_be_allowed() {
    let s = slurm();
    let dir = AliceDir::new("cwd");
    let out = s.srun(&[], &dir.path, &["pwd"], None);
    out.expect_ok();
    assert_eq!(out.lines(), [dir.display().as_str()]);
    // A submit dir outside every allowed root is refused.
    let home = format!("/home/{ALICE}");
    let out = s.srun(&[], Path::new(&home), &["pwd"], None);
    out.expect_code(77);
    assert!(
        out.denied_lines()
            .first()
            .is_some_and(|l| l.contains(&home)),
        "{out:?}"
    );
}

#[test]
fn the_container_is_locked_down_like_every_berth_job() {
    let s = slurm();
    let dir = AliceDir::new("lock");
    let name = unique("lock");
    let id = s.sbatch(
        &[],
        &dir.path,
        &name,
        "cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'",
    );
    let (state, code) = wait_job(&id, Duration::from_secs(60));
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"));
    let out = read_output(&dir.path.join(format!("{name}.out")));
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let runs = s.bed.creates(&id);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let r = &runs[0];
    let h = r.host();
    assert_eq!(r.body["User"], "2001:2001", "{:?}", r.body);
    assert_eq!(h["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(h["SecurityOpt"], serde_json::json!(["no-new-privileges"]));
    assert_eq!(h["NetworkMode"], "none");
    assert_eq!(h["AutoRemove"], true);
    assert_eq!(h["Init"], true);
    assert!(h.get("Privileged").is_none_or(|p| p == false), "{h}");
    // The image is the bundle's, run by id.
    let meta = std::fs::read_to_string(s.bundle.join("bundle.toml")).unwrap();
    let want: toml::Table = toml::from_str(&meta).unwrap();
    assert_eq!(
        r.body["Image"],
        want["image_id"].as_str().unwrap(),
        "{:?}",
        r.body
    );
}

#[test]
fn a_bundle_outside_the_cache_is_refused() {
    let s = slurm();
    // Alice makes her own "bundle" (a copy of the real one's config.json).
    let dir = AliceDir::new("ownbundle");
    std::fs::copy(s.bundle.join("config.json"), dir.path.join("config.json")).unwrap();
    std::fs::create_dir(dir.path.join("rootfs")).unwrap();
    let out = broker::output({
        let mut c = client(&alice(), "/usr/bin/srun", &[], Path::new(ALICE_DIR));
        c.arg(format!("--container={}", dir.display()))
            .args(["id", "-u"]);
        c
    });
    out.expect_code(77);
    assert!(
        out.denied_lines()
            .first()
            .is_some_and(|l| l.contains("bundle cache")),
        "{out:?}"
    );
    assert!(!out.stdout.contains("2001"));
}

#[test]
fn query_kill_and_delete_only_touch_the_named_users_container() {
    let s = slurm();
    let alice = alice();
    // What slurmstepd would write in %b, made by alice herself: she can run
    // `berth slurm run` with any arguments.
    let spool = AliceDir::new("fakespool");
    std::fs::write(
        spool.path.join("config.json"),
        format!(
            r#"{{"process":{{"args":["sleep","60"],"env":["PATH=/bin:/usr/bin","SLURM_SUBMIT_DIR={ALICE_DIR}"]}}}}"#
        ),
    )
    .unwrap();
    let berth_cmd = |args: &[&str]| {
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(s.bed.policy_path())
            .args(args)
            .env_clear()
            .env("PATH", CALLER_PATH)
            .stdin(Stdio::null());
        c
    };
    let rootfs = s.bundle.join("rootfs").display().to_string();
    for (owner, ours) in [("berth-bob", false), (ALICE, true)] {
        let job = next_job_id();
        let id = format!("node.with.dots.{owner}.{job}.0.0");
        let mut c = berth_cmd(&["slurm", "run", &spool.display(), &rootfs, &id]);
        c.current_dir(&spool.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        alice.apply(&mut c);
        let child = c.spawn().unwrap();
        let container = wait_running(&job, Duration::from_secs(30));
        assert_eq!(
            inspect(&container)["Config"]["Labels"]["berth.slurm"],
            id.as_str()
        );
        // RunTimeQuery, RunTimeKill and RunTimeDelete for `id`, as root.
        let q = broker::output(berth_cmd(&["slurm", "query", &id]));
        q.expect_ok();
        let state: serde_json::Value = serde_json::from_str(&q.stdout).expect("query JSON");
        broker::output(berth_cmd(&["slurm", "kill", &id])).expect_ok();
        broker::output(berth_cmd(&["slurm", "delete", &id])).expect_ok();
        if ours {
            assert_eq!(state["status"], "running", "{state}");
            assert!(
                wait_until(Duration::from_secs(10), || containers(&job, true)
                    .is_empty()),
                "kill and delete left alice's container of {id}"
            );
            let out = broker::finish(child, Duration::from_secs(30));
            assert_ne!(out.code, Some(0), "{out:?}");
        } else {
            // Alice's container is not bob's step's: nothing to see or do.
            assert_eq!(
                q.stdout.trim(),
                "{}",
                "query of bob's step saw alice's container"
            );
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(containers(&job, false), vec![container]);
            drop(child); // ends when its container does
            remove_containers(&job);
        }
        s.bed.assert_cleaned_within(&job, Duration::from_secs(10));
    }
}

/// Slurm 23.02+ with IgnoreFileConfigJson=true (not on this test bed):
/// RunTimeRun="berth slurm run --env-file %e %b %r ID -- %@". The calls
/// slurmstepd would make, made by hand as the job user: no config.json, the
/// command from argv, the environment from a NUL-terminated file, the image
/// by name (`bundle:NAME` or a reference), and for a batch step the
/// script's path as argv[0].
#[test]
fn the_23_02_ignore_config_json_calling_convention() {
    let s = slurm();
    let alice = alice();
    let dir = AliceDir::new("ignorecfg");
    let name = s.bundle.file_name().unwrap().to_str().unwrap().to_string();
    let env_file = dir.path.join("environment");
    std::fs::write(
        &env_file,
        format!(
            "PATH=/bin:/usr/bin\0SLURM_SUBMIT_DIR={}\0FOO=bar baz\0",
            dir.display()
        ),
    )
    .unwrap();
    let script = dir.path.join("slurm_script");
    std::fs::write(&script, "#!/bin/sh\necho \"batch $FOO $1\"; pwd\n").unwrap();
    for p in [&env_file, &script] {
        std::os::unix::fs::chown(p, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let run = |step: &str, rootfs: &str, args: &[&str]| {
        let job = next_job_id();
        let id = format!("vm.{ALICE}.{job}.{step}.0");
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(s.bed.policy_path())
            .args(["slurm", "run", "--env-file"])
            .arg(&env_file)
            .arg(&dir.path)
            .args([rootfs, &id, "--"])
            .args(args)
            .env_clear()
            .env("PATH", CALLER_PATH)
            .env("HOME", "/root")
            .current_dir(&dir.path)
            .stdin(Stdio::null());
        alice.apply(&mut c);
        let out = broker::output(c);
        s.bed.assert_no_leaks(&job);
        out
    };
    let out = run(
        "0",
        &format!("bundle:{name}"),
        &["sh", "-c", "id -u; echo \"$FOO\"; pwd"],
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["2001", "bar baz", dir.display().as_str()]);
    // An image by name, under the same policy.
    let out = run("0", IMAGE, &["id", "-u"]);
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"]);
    let out = run("0", "docker.io/library/alpine:3.19", &["true"]);
    out.expect_code(77);
    assert!(out.stderr.contains("images.allow"), "{}", out.stderr);
    let bundle_dir = s.bundle.display().to_string();
    let out = run(
        "4294967291",
        &bundle_dir,
        &[&script.display().to_string(), "arg1"],
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["batch bar baz arg1", dir.display().as_str()]);
    // A name that is not a bundle in the cache is refused.
    run("0", "bundle:no-such-bundle", &["true"]).expect_code(77);
    // argv without the environment file is a configuration mistake.
    let mut c = Command::new(berth_bin());
    c.arg("--policy")
        .arg(s.bed.policy_path())
        .args(["slurm", "run"])
        .arg(&dir.path)
        .args([&name, "vm.x.1.0.0", "--", "true"])
        .env_clear();
    alice.apply(&mut c);
    broker::output(c).expect_code(64);
}

// ---------------------------------------------------------------------------
// the job's allocation (SPEC §11): Slurm runs with cgroup/v1, task/cgroup,
// ConstrainCores/RAMSpace/Devices (tests/setup/testbed.sh)

/// Slurm's v1 cgroup of a job's step, relative to a controller's mount.
fn step_cgroup(job: &str, step: &str) -> String {
    let short = &gen().node;
    format!("/slurm_{short}/uid_{ALICE_UID}/job_{job}/step_{step}")
}

/// Every cgroup directory of job `job` left under any controller.
fn job_cgroup_dirs(job: &str) -> Vec<String> {
    let short = &gen().node;
    let mut left = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = e
            .path()
            .join(format!("slurm_{short}/uid_{ALICE_UID}/job_{job}"));
        if p.exists() {
            left.push(p.display().to_string());
        }
    }
    left
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::trim)
}

#[test]
fn srun_c1_sees_one_cpu_inside_its_task_cgroup() {
    let s = slurm();
    let script = "echo NPROC=$(nproc); echo JOB=$SLURM_JOB_ID; \
                  echo CPUS=$(grep Cpus_allowed_list /proc/self/status | cut -f2); \
                  echo MEMCG=$(grep :memory: /proc/self/cgroup | cut -d: -f3); \
                  echo LIMIT=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)";
    let out = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &["-c1", "--mem=64M", "sh", "-c", script],
        None,
    );
    out.expect_ok();
    let t = &out.stdout;
    assert_eq!(field(t, "NPROC"), Some("1"), "{t}");
    let job = field(t, "JOB").unwrap();
    // Inside the task's memory cgroup (v1: the caller's own), in a child.
    let memcg = field(t, "MEMCG").unwrap();
    let task = format!("{}/task_0/", step_cgroup(job, "0"));
    assert!(memcg.starts_with(&task), "{memcg} not under {task}");
    // The step's cpuset is one CPU; the container's is the same.
    let cpus = field(t, "CPUS").unwrap();
    assert!(!cpus.contains(['-', ',']), "{cpus}");
    let limit: u64 = field(t, "LIMIT").unwrap().parse().unwrap();
    assert_eq!(limit, 64 << 20, "the container's memory limit is the job's");
    // The audit record names the placement.
    let rec = s.bed.audit_for(job);
    assert!(
        rec.iter().any(|r| r["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with(&step_cgroup(job, "0")))),
        "{rec:?}"
    );
    let out = s.srun(&[], Path::new(ALICE_DIR), &["-c2", "nproc"], None);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "2");
}

#[test]
fn the_container_is_placed_under_the_step_and_counted_in_its_accounting() {
    let s = slurm();
    let dir = AliceDir::new("acct");
    let name = unique("acct");
    // Busy for a while, then idle while the test looks.
    let id = s.sbatch(
        &[],
        &dir.path,
        &name,
        "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done; sleep 2; echo burnt; sleep 60",
    );
    let container = wait_running(&id, Duration::from_secs(60));
    let c = inspect(&container);
    let parent = c["HostConfig"]["CgroupParent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(parent, format!("{}/task_0", step_cgroup(&id, "batch")));
    assert!(c["HostConfig"]["CpusetCpus"]
        .as_str()
        .is_some_and(|x| !x.is_empty()));
    // The container's CPU time shows in the batch step's cpuacct (v1,
    // hierarchical), which is what jobacct_gather/cgroup and sstat read.
    let usage = |p: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct{p}/cpuacct.usage"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || read_output(
            &dir.path.join(format!("{name}.out"))
        )
        .contains("burnt")),
        "the job did not burn its CPU"
    );
    let ns = usage(&parent);
    assert!(ns > 1_000_000_000, "the step's cpuacct saw {ns} ns");
    let sstat = gen()
        .root_cmd("/usr/bin/sstat")
        .args([
            "-n",
            "-P",
            "-o",
            "AveCPU,MinCPU",
            "-j",
            &format!("{id}.batch"),
        ])
        .env_clear()
        .env("PATH", CALLER_PATH)
        .output()
        .unwrap();
    eprintln!(
        "cpuacct of {parent}: {ns} ns; sstat: {} {}",
        String::from_utf8_lossy(&sstat.stdout).trim(),
        String::from_utf8_lossy(&sstat.stderr).trim()
    );
    // sstat (jobacct_gather/cgroup) reports the step's CPU: the container's.
    let ave = String::from_utf8_lossy(&sstat.stdout)
        .trim()
        .split('|')
        .next()
        .unwrap_or("")
        .to_string();
    let secs: u64 = ave
        .split([':', '.'])
        .take(3)
        .filter_map(|x| x.parse::<u64>().ok())
        .fold(0, |a, x| a * 60 + x);
    assert!(sstat.status.success() && secs > 0, "sstat AveCPU {ave:?}");
    let mut cancel = client(&alice(), "/usr/bin/scancel", &[], Path::new("/"));
    cancel.arg(&id);
    broker::output(cancel).expect_ok();
    assert!(wait_until(Duration::from_secs(30), || containers(
        &id, true
    )
    .is_empty()));
    assert!(
        wait_until(Duration::from_secs(30), || job_cgroup_dirs(&id).is_empty()),
        "cgroup directories left after scancel: {:?}",
        job_cgroup_dirs(&id)
    );
}

#[test]
fn a_job_over_its_memory_is_oom_killed_and_leaves_nothing() {
    let s = slurm();
    // busybox tail keeps a line without newlines whole: 200 MB in a 64 MB job.
    let out = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &[
            "--mem=64M",
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null && echo survived",
        ],
        None,
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("survived"), "{out:?}");
    // The node and other jobs are fine.
    let ok = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &["--mem=64M", "echo", "fine"],
        None,
    );
    ok.expect_ok();
    assert_eq!(ok.stdout.trim(), "fine");
}

#[test]
fn a_time_limit_removes_the_container_and_its_cgroups() {
    let s = slurm();
    let dir = AliceDir::new("timeout");
    let name = unique("timeout");
    let out = broker::output({
        let mut c = client(&alice(), "/usr/bin/sbatch", &[], &dir.path);
        c.arg("--parsable")
            .arg(format!("--job-name={name}"))
            .arg(format!("--output={}/{name}.out", dir.path.display()))
            .arg("--time=0:05")
            .arg(s.container_arg())
            .arg("--wrap")
            .arg("sleep 600");
        c
    });
    out.expect_ok();
    let id = out.stdout.trim().to_string();
    wait_running(&id, Duration::from_secs(60));
    let (state, _) = wait_job(&id, Duration::from_secs(150));
    assert_eq!(state, "TIMEOUT");
    assert!(
        wait_until(Duration::from_secs(30), || containers(&id, true).is_empty()),
        "the container outlived the time limit"
    );
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(30), || job_cgroup_dirs(&id).is_empty()),
        "cgroup directories left: {:?}",
        job_cgroup_dirs(&id)
    );
}

#[test]
fn a_job_id_in_the_environment_cannot_name_another_users_job() {
    let s = slurm();
    // bob's job runs; alice, in a job of her own, names it.
    let bob = TestUser::get("berth-bob");
    let bdir = Path::new("/tmp");
    let out = broker::output({
        let mut c = client(&bob, "/usr/bin/sbatch", &[], bdir);
        c.args(["--parsable", "--output=/dev/null", "--wrap", "sleep 120"]);
        c
    });
    out.expect_ok();
    let bobs = out.stdout.trim().to_string();
    let bin = s.bed.path().join("berth");
    let policy = s.bed.policy_path();
    let script = |lsb: &str| {
        format!(
            "LSB_JOBID={lsb} LSB_CONTAINER_IMAGE={IMAGE} {} --policy {} run -- 'echo RAN'; echo rc=$?",
            bin.display(),
            policy.display()
        )
    };
    // srun without --container: berth run is the job's own command.
    let run = |lsb: &str| {
        let mut c = client(&alice(), "/usr/bin/srun", &[], Path::new(ALICE_DIR));
        c.args(["sh", "-c", &script(lsb)]);
        broker::output(c)
    };
    let forged = run(&bobs);
    assert!(forged.stdout.contains("rc=77"), "{forged:?}");
    assert!(forged.stderr.contains("cgroup.job"), "{forged:?}");
    assert!(!forged.stdout.contains("RAN"));
    assert!(
        containers(&bobs, true).is_empty(),
        "a container carries bob's job id"
    );
    // Its own job id is fine ($SLURM_JOB_ID as the step sees it).
    let own = run("$SLURM_JOB_ID");
    assert!(
        own.stdout.contains("RAN") && own.stdout.contains("rc=0"),
        "{own:?}"
    );
    let _ = gen().root_cmd("/usr/bin/scancel").arg(&bobs).status();
}

// ---------------------------------------------------------------------------
// GPUs (SPEC §12). The testbed's node has /dev/nvidia0 and /dev/nvidia1
// (195:0, 195:1, no driver) as `Gres=gpu:2` under ConstrainDevices. Inside
// a container, a GPU the job holds opens with ENXIO (the device cgroup let
// it through to a driver that is not there); one it does not hold is not
// there at all, and could not be opened if it were.

/// The probe of tests/common/gpu.rs, and the job's id.
fn gpu_script() -> String {
    format!("{GPU_PROBE}; echo JOB=$SLURM_JOB_ID")
}

#[test]
fn a_gpu_job_gets_exactly_its_gpu_whatever_its_environment_says() {
    let s = slurm();
    // The job's own variables ask for both GPUs: they widen nothing.
    let hostile = [
        ("CUDA_VISIBLE_DEVICES", "0,1"),
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("SLURM_JOB_GPUS", "0,1"),
        (
            "LSF_DOCKER_OPTIONS",
            "--gpus all --device /dev/nvidia0 --privileged",
        ),
    ];
    // ENXIO is the proof it is the one Slurm gave: the job's device cgroup
    // (the container's parent) denies the other with EPERM.
    let script = gpu_script();
    let out = s.srun(
        &hostile,
        Path::new(ALICE_DIR),
        &["--gres=gpu:1", "sh", "-c", &script],
        None,
    );
    out.expect_ok();
    let t = &out.stdout;
    let held: Vec<&str> = ["GPU0", "GPU1"]
        .into_iter()
        .filter(|g| field(t, g) == Some("enxio"))
        .collect();
    assert_eq!(held.len(), 1, "exactly one GPU opens: {t}");
    let other = if held[0] == "GPU0" { "GPU1" } else { "GPU0" };
    assert_eq!(field(t, other), Some("absent"), "{t}");
    assert_eq!(field(t, "CUDA"), Some("0"), "{t}");
    assert_eq!(field(t, "NV"), Some("void"), "{t}");
    assert_eq!(field(t, "GPUctl"), Some("enxio"), "{t}");
    let job = field(t, "JOB").unwrap();
    let rec = s.bed.audit_for(job);
    let want = format!("/dev/nvidia{}", &held[0][3..]);
    assert!(
        rec.iter().any(|r| r["gpus"] == serde_json::json!([want])),
        "{rec:?}"
    );
}

#[test]
fn two_concurrent_gpu_jobs_get_different_gpus_and_a_job_without_gres_none() {
    let s = slurm();
    let script = format!("{}; sleep 4", gpu_script());
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                s.srun(
                    &[],
                    Path::new(ALICE_DIR),
                    &["--gres=gpu:1", "sh", "-c", &script],
                    None,
                )
            })
        })
        .collect();
    let none = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &["sh", "-c", &gpu_script()],
        None,
    );
    let mut seen = Vec::new();
    for r in runs {
        let out = r.join().unwrap();
        out.expect_ok();
        let t = out.stdout.clone();
        let held: Vec<&str> = ["GPU0", "GPU1"]
            .into_iter()
            .filter(|g| field(&t, g) == Some("enxio"))
            .collect();
        assert_eq!(held.len(), 1, "{t}");
        let job = field(&t, "JOB").unwrap().to_string();
        // The audit record agrees with what the container could open.
        let want = format!("/dev/nvidia{}", &held[0][3..]);
        let rec = s.bed.audit_for(&job);
        assert!(
            rec.iter().any(|r| r["gpus"] == serde_json::json!([want])),
            "{rec:?}"
        );
        seen.push(held[0].to_string());
    }
    seen.sort();
    assert_eq!(seen, ["GPU0", "GPU1"], "the two jobs share a GPU");
    none.expect_ok();
    let t = &none.stdout;
    assert_eq!(field(t, "GPU0"), Some("absent"), "{t}");
    assert_eq!(field(t, "GPU1"), Some("absent"), "{t}");
    assert_eq!(field(t, "CUDA"), Some("unset"), "{t}");
    assert_eq!(field(t, "GPUctl"), Some("absent"), "{t}");
}

#[test]
fn a_job_holding_every_gpu_gets_both_from_slurms_record() {
    // Its device cgroup allows both GPUs, which cannot tell an allocation
    // from an unconstrained node: berth asks Slurm.
    let s = slurm();
    let out = s.srun(
        &[],
        Path::new(ALICE_DIR),
        &["--gres=gpu:2", "sh", "-c", &gpu_script()],
        None,
    );
    out.expect_ok();
    let t = &out.stdout;
    assert_eq!(field(t, "GPU0"), Some("enxio"), "{t}");
    assert_eq!(field(t, "GPU1"), Some("enxio"), "{t}");
    assert_eq!(field(t, "CUDA"), Some("0,1"), "{t}");
    let job = field(t, "JOB").unwrap();
    let rec = s.bed.audit_for(job);
    assert!(
        rec.iter()
            .any(|r| r["gpus"] == serde_json::json!(["/dev/nvidia0", "/dev/nvidia1"])),
        "{rec:?}"
    );
}

#[test]
fn explain_in_a_gpu_job_shows_its_gpu_and_where_it_came_from() {
    // `berth explain` in a plain (non-container) step, through the broker:
    // the peer is in the job's cgroup, so the broker reads its GPUs.
    let s = slurm();
    let bin = s.bed.path().join("berth");
    let policy = s.bed.policy_path();
    let mut c = client(
        &alice(),
        "/usr/bin/srun",
        &[
            ("LSB_CONTAINER_IMAGE", IMAGE),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
        ],
        Path::new(ALICE_DIR),
    );
    c.arg(format!("--job-name={}", unique("explain")))
        .arg("--gres=gpu:1")
        .arg(&bin)
        .arg("--policy")
        .arg(&policy)
        .args(["explain", "--", "nvidia-smi"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = broker::finish(c.spawn().expect("srun"), Duration::from_secs(60));
    out.expect_ok();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("gpus "))
        .unwrap_or_else(|| panic!("no gpus line: {}", out.stdout));
    assert!(
        line.contains(" as 0 (from the job's device cgroup)")
            && (line.contains("/dev/nvidia0") ^ line.contains("/dev/nvidia1")),
        "{line}"
    );
    assert!(
        out.stdout
            .contains("--device=/dev/nvidiactl:/dev/nvidiactl:rw"),
        "{}",
        out.stdout
    );
    // Without GPUs: none, and why.
    let mut c = client(
        &alice(),
        "/usr/bin/srun",
        &[("LSB_CONTAINER_IMAGE", IMAGE)],
        Path::new(ALICE_DIR),
    );
    c.arg(format!("--job-name={}", unique("explain")))
        .arg(&bin)
        .arg("--policy")
        .arg(&policy)
        .args(["explain", "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = broker::finish(c.spawn().expect("srun"), Duration::from_secs(60));
    out.expect_ok();
    assert!(
        out.stdout
            .contains("gpus       none (the job holds none, by the job's device cgroup)"),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------
// Slurm 23.02+ (run with BERTH_SLURM=24.11): `--container=IMAGE` by name,
// through the shipped oci.conf.23.02-ignore-config-json

#[test]
fn container_by_image_name_needs_current_slurm_and_runs_under_the_policy() {
    let s = slurm();
    // (name, srun's output) for `srun --job-name=<unique> --container=C ARGS`.
    let named = |container: &str, args: &[&str]| {
        let name = unique("byname");
        let mut c = client(&alice(), "/usr/bin/srun", &[], Path::new(ALICE_DIR));
        c.arg(format!("--job-name={name}"))
            .arg(format!("--container={container}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (
            name,
            broker::finish(c.spawn().expect("srun"), Duration::from_secs(90)),
        )
    };
    let srun = |container: &str, args: &[&str]| named(container, args).1;
    if !gen().is_24() {
        // 22.05 (plain oci.conf, the only one it accepts) opens
        // <--container>/config.json itself: a name fails the step in Slurm,
        // before berth runs, and no container is made. Names need 23.02+
        // (wrapper/slurm/README.md).
        let (name, out) = named("docker.io/berth-test/busybox:1", &["true"]);
        assert_ne!(out.code, Some(0), "{out:?}");
        assert!(
            out.stderr.contains("No such file or directory"),
            "{}",
            out.stderr
        );
        let id = job_id_named(&name);
        assert!(s.bed.creates(&id).is_empty(), "job {id} made a container");
        return;
    }
    // Allowed: the registry image by name, as alice, in the submit dir.
    let out = srun(
        "docker.io/berth-test/busybox:1",
        &["sh", "-c", "id -u; pwd"],
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["2001", ALICE_DIR]);
    // The short form is the same image.
    srun("berth-test/busybox:1", &["true"]).expect_ok();
    // A bundle by name.
    let name = s.bundle.file_name().unwrap().to_str().unwrap().to_string();
    let out = srun(&format!("bundle:{name}"), &["id", "-u"]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "2001");
    // Denied: not in images.allow. The step fails with berth's one line.
    let out = srun("docker.io/library/alpine:3.19", &["true"]);
    out.expect_code(77);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("berth: denied"))
        .unwrap_or_else(|| panic!("no berth line: {}", out.stderr));
    assert!(line.contains("[rule images.allow]"), "{line}");
    // And a bundle that is not in the cache.
    srun("bundle:no-such-bundle", &["true"]).expect_code(77);
}

#[test]
fn a_users_own_bundle_runs_by_name_on_current_slurm_for_its_owner_only() {
    let s = slurm();
    if !gen().is_24() {
        // 22.05 takes only a bundle path, and opens its config.json
        // itself: users' bundles (root's 0700 directories) are for 23.02+.
        return;
    }
    // Alice pushes an export of the test image through the broker.
    let dir = AliceDir::new("slurm-push");
    let tar = dir.path.join("x.tar");
    let c = docker(&["create", IMAGE, "true"]);
    c.expect_ok();
    let cid = c.stdout.trim().to_string();
    docker(&["export", "-o", &tar.display().to_string(), &cid]).expect_ok();
    docker(&["rm", &cid]).expect_ok();
    std::os::unix::fs::chown(&tar, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
    let name = unique("mine");
    let bin = s.bed.path().join("berth");
    let mut push = Command::new(&bin);
    push.arg("--policy")
        .arg(s.bed.policy_path())
        .args(["bundle", "push", &name, "--from-export"])
        .arg(&tar)
        .args(["--change", "CMD [\"/bin/sh\"]"])
        .env_clear()
        .env("PATH", CALLER_PATH)
        .stdin(Stdio::null());
    alice().apply(&mut push);
    broker::output(push).expect_ok();
    let meta: toml::Table = toml::from_str(
        &std::fs::read_to_string(
            s.bed
                .path()
                .join("cache/users")
                .join(ALICE)
                .join(&name)
                .join("bundle.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let id = meta["image_id"].as_str().unwrap().to_string();
    let srun_as = |user: &TestUser, container: &str| {
        let mut c = client(
            user,
            "/usr/bin/srun",
            &[],
            Path::new("/storage1/fs1/shared"),
        );
        c.arg(format!("--job-name={}", unique("mine")))
            .arg(format!("--container={container}"))
            .args(["sh", "-c", "id -u"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        broker::finish(c.spawn().expect("srun"), Duration::from_secs(90))
    };
    let out = srun_as(&alice(), &format!("bundle:~/{name}"));
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "2001");
    let out = srun_as(&alice(), &format!("bundle:{ALICE}/{name}"));
    out.expect_ok();
    // Bob: not shared with him.
    let out = srun_as(
        &TestUser::get("berth-bob"),
        &format!("bundle:{ALICE}/{name}"),
    );
    out.expect_code(77);
    assert!(
        out.stderr.contains("[rule bundles.share]"),
        "{}",
        out.stderr
    );
    let _ = docker(&["rmi", "-f", &id]);
}

#[test]
fn a_job_array_runs_each_element_in_its_own_container_and_tmp() {
    // The distpy pattern: one image, one container per data chunk, a
    // shared scratch root for inputs and outputs.
    let s = slurm();
    let dir = AliceDir::new("array");
    // (/scratch1/fs1 is read-only in the test policy: the shared data
    // directory is under the read-write root.)
    let scratch = dir.path.join("data");
    std::fs::create_dir(&scratch).unwrap();
    for i in 1..=4 {
        std::fs::write(scratch.join(format!("chunk{i}")), format!("{}\n", i * 10)).unwrap();
    }
    for e in std::fs::read_dir(&scratch).unwrap().flatten() {
        std::os::unix::fs::chown(e.path(), Some(ALICE_UID), Some(ALICE_GID)).unwrap();
    }
    std::os::unix::fs::chown(&scratch, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
    let container = if gen().is_24() {
        "--container=docker.io/berth-test/busybox:1".to_string()
    } else {
        s.container_arg()
    };
    let name = unique("array");
    let script = "set -e; i=$SLURM_ARRAY_TASK_ID; (ls /tmp | grep -c mine || true) > /data/tmpcount$i; touch /tmp/mine$i; \
                  echo $(( $(cat /data/chunk$i) + 1 )) > /data/out$i; \
                  grep :memory: /proc/self/cgroup > /data/cg$i; sleep 1";
    let out = broker::output({
        let mut c = client(
            &alice(),
            "/usr/bin/sbatch",
            &[(
                "LSF_DOCKER_VOLUMES",
                &format!("{}:/data", scratch.display()),
            )],
            &dir.path,
        );
        c.arg("--parsable")
            .arg("--array=1-4")
            .arg(format!("--job-name={name}"))
            .arg(format!("--output={}/{name}-%a.out", dir.display()))
            .arg(&container)
            .arg("--wrap")
            .arg(script);
        c
    });
    out.expect_ok();
    let id = out.stdout.trim().split(';').next().unwrap().to_string();
    for i in 1..=4 {
        let (state, code) = wait_job(&format!("{id}_{i}"), Duration::from_secs(90));
        assert_eq!(
            (state.as_str(), code.as_str()),
            ("COMPLETED", "0:0"),
            "element {i}"
        );
        let got = std::fs::read_to_string(scratch.join(format!("out{i}"))).unwrap_or_else(|e| {
            panic!(
                "element {i} wrote no output ({e}); its log: {}",
                read_output(&dir.path.join(format!("{name}-{i}.out")))
            )
        });
        assert_eq!(got.trim(), (i * 10 + 1).to_string(), "element {i}");
        // Its own /tmp: empty when it started, whatever the others wrote.
        let n = std::fs::read_to_string(scratch.join(format!("tmpcount{i}"))).unwrap();
        assert_eq!(n.trim(), "0", "element {i} saw another's /tmp");
    }
    // Four containers, one per element: four memory cgroups of their own.
    let cgroups: std::collections::BTreeSet<String> = (1..=4)
        .map(|i| std::fs::read_to_string(scratch.join(format!("cg{i}"))).unwrap())
        .collect();
    assert_eq!(cgroups.len(), 4, "{cgroups:?}");
    assert!(
        cgroups
            .iter()
            .all(|c| c.contains(&format!("/slurm_{}/", gen().node))),
        "{cgroups:?}"
    );
}

// ---------------------------------------------------------------------------
// MPI across the test bed's two 24.11 nodes (SPEC §14, issue 15).
//
// Only 24.11 has the second node (tests/setup/slurm24.sh: trixie2 in its
// own mount namespace, partition `mpi` = trixie1 + trixie2) and PMIx; the
// host's 22.05 is one node, so these tests return at once on it. The image
// is berth-test/mpi:1 by name (Open MPI 5 + PMIx 5 from trixie, and
// tests/mpi/mpihello.c); the test policy allows the host network and
// `mpi.pmix`.

const MPI_IMAGE: &str = "--container=docker.io/berth-test/mpi:1";
const MPIHELLO: &str = "/usr/local/bin/mpihello";
const NODES: [&str; 2] = ["trixie1", "trixie2"];

/// One MPI test at a time: one of them rewrites the shared fixture's
/// policy, and two steps on two CPUs per node would queue behind each other.
fn mpi_lock() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Both nodes of partition `mpi` are up (`testbed.sh up` starts them):
/// idle or busy with other tests' jobs, not down, drained or unanswering.
#[track_caller]
fn require_mpi_nodes() {
    let states = || {
        let out = gen()
            .root_cmd("/usr/bin/sinfo")
            .args(["-h", "-N", "-p", "mpi", "-o", "%N %T"])
            .env_clear()
            .env("PATH", CALLER_PATH)
            .output()
            .expect("sinfo");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let up = |text: &str, node: &str| {
        text.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(node)
                && w.next()
                    .is_some_and(|st| ["idle", "mixed", "allocated", "completing"].contains(&st))
        })
    };
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(30), || {
        text = states();
        NODES.iter().all(|n| up(&text, n))
    });
    assert!(
        ok,
        "the nodes of partition mpi are not up ({text:?}); run `bash tests/setup/testbed.sh up`"
    );
}

/// `srun -p mpi ARGS…` as alice from her storage, with `env`: the job's
/// name (for `job_id_named`) and srun's output.
fn mpi_srun(env: &[(&str, &str)], args: &[&str]) -> (String, Out) {
    let name = unique("mpi");
    let mut c = client(&alice(), "/usr/bin/srun", env, Path::new(ALICE_DIR));
    c.arg(format!("--job-name={name}"))
        .arg("--partition=mpi")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = broker::finish(c.spawn().expect("srun"), Duration::from_secs(120));
    (name, out)
}

/// `sbatch -p mpi ARGS… --wrap SCRIPT` as alice from `dir`, output to
/// `dir/<name>.out`; the job id.
fn mpi_sbatch(dir: &Path, name: &str, args: &[&str], script: &str) -> String {
    let out = broker::output({
        let mut c = client(&alice(), "/usr/bin/sbatch", &[], dir);
        c.arg("--parsable")
            .arg(format!("--job-name={name}"))
            .arg("--partition=mpi")
            .args(args)
            .arg(format!("--output={}/{name}.out", dir.display()))
            .arg("--wrap")
            .arg(script);
        c
    });
    out.expect_ok();
    out.stdout.trim().split(';').next().unwrap().to_string()
}

/// The `mpihello … ok` lines of an output, checked: `n` ranks, each once,
/// each of `n` with the right sum, as `uid`; the node of every rank.
#[track_caller]
fn mpihello_ranks(text: &str, n: usize, uid: u32) -> BTreeMap<usize, String> {
    let mut ranks = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("mpihello rank ")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        // mpihello rank R of N node NODE uid U sum S ring L ok
        assert_eq!(w.len(), 14, "{l}");
        assert_eq!(w[13], "ok", "{l}");
        assert_eq!(w[4], n.to_string(), "{l}");
        assert_eq!(w[8], uid.to_string(), "{l}");
        assert_eq!(w[10], (n * (n - 1) / 2).to_string(), "{l}");
        let r: usize = w[2].parse().unwrap();
        assert!(
            ranks.insert(r, w[6].to_string()).is_none(),
            "rank {r} twice: {text}"
        );
    }
    assert_eq!(
        ranks.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "{text}"
    );
    ranks
}

/// The processes of job `job` running `cmdline` (its words joined by
/// spaces), as alice: (node, task cgroup leaf, pid), from their cpuset
/// cgroup `/slurm_<node>/uid_2001/job_<job>/step_<s>/task_<n>`.
fn rank_processes(job: &str, cmdline: &str) -> Vec<(String, String, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let (Ok(cmd), Ok(cg), Ok(st)) = (
            std::fs::read(format!("/proc/{pid}/cmdline")),
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")),
            std::fs::read_to_string(format!("/proc/{pid}/status")),
        ) else {
            continue;
        };
        let words: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let uid_ok = st.lines().any(|l| {
            l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&ALICE_UID.to_string())
        });
        if words.join(" ") != cmdline || !uid_ok {
            continue;
        }
        let Some(path) = cg
            .lines()
            .find_map(|l| l.split_once(":cpuset:").map(|(_, p)| p.to_string()))
        else {
            continue;
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() == 6 && parts[3] == format!("job_{job}") {
            let node = parts[1].trim_start_matches("slurm_").to_string();
            out.push((node, parts[5].to_string(), pid));
        }
    }
    out
}

/// The broker's policy with `edit` applied, reloaded (SIGHUP); the
/// testbed's own again when the guard drops.
fn reload_policy<'a>(s: &'a Slurm, edit: &dyn Fn(&mut toml::Table)) -> impl Drop + 'a {
    let write = |p: &toml::Table| {
        let tmp = s.bed.policy_path().with_extension("toml.new");
        std::fs::write(&tmp, toml::to_string(p).unwrap()).unwrap();
        std::fs::rename(&tmp, s.bed.policy_path()).unwrap();
        let before = s.daemon.log_text().matches("policy reloaded").count();
        s.daemon.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(10), || s
                .daemon
                .log_text()
                .matches("policy reloaded")
                .count()
                > before),
            "the broker did not reload its policy: {}",
            s.daemon.log_text()
        );
    };
    let mut p = s.bed.policy.clone();
    edit(&mut p);
    write(&p);
    struct Restore<'a>(&'a Slurm);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let tmp = self.0.bed.policy_path().with_extension("toml.new");
            std::fs::write(&tmp, toml::to_string(&self.0.bed.policy).unwrap()).unwrap();
            std::fs::rename(&tmp, self.0.bed.policy_path()).unwrap();
            let before = self.0.daemon.log_text().matches("policy reloaded").count();
            self.0.daemon.signal(nix::sys::signal::Signal::SIGHUP);
            wait_until(Duration::from_secs(10), || {
                self.0.daemon.log_text().matches("policy reloaded").count() > before
            });
        }
    }
    Restore(s)
}

/// The execs berth asked the engine for in job `job`'s containers (an MPI
/// rank run in its step's container): their bodies.
fn rank_execs(s: &Slurm, job: &str) -> Vec<serde_json::Value> {
    s.bed
        .engine_calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/exec"))
        .map(|c| c.body)
        .filter(|b| {
            b["Env"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|v| v.as_str() == Some(&format!("SLURM_JOB_ID={job}")))
            })
        })
        .collect()
}

/// The step containers (`berth.role=step`) and the rank containers of job
/// `job`'s creates.
fn step_and_rank_creates(s: &Slurm, job: &str) -> (Vec<EngineCall>, Vec<EngineCall>) {
    s.bed
        .creates(job)
        .into_iter()
        .filter(|c| !c.is_probe())
        .partition(|c| c.body["Labels"]["berth.mpi"].is_string())
}

/// Every cgroup directory of job `job` left on `node`, under any controller.
fn node_cgroup_dirs(node: &str, job: &str) -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| {
            e.path()
                .join(format!("slurm_{node}/uid_{ALICE_UID}/job_{job}"))
        })
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// The names of the engine's containers of job `job` (running or not).
fn container_names(job: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=berth.job={job}"),
        "--format",
        "{{.Names}}",
    ]);
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn an_mpi_program_runs_across_two_nodes_with_srun_and_sbatch() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05: see the section's comment
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    let (name, out) = mpi_srun(&[], &["-N2", "-n4", "--mpi=pmix", MPI_IMAGE, MPIHELLO]);
    out.expect_ok();
    let ranks = mpihello_ranks(&out.stdout, 4, ALICE_UID);
    for node in NODES {
        assert_eq!(
            ranks.values().filter(|n| *n == node).count(),
            2,
            "two ranks on {node}: {ranks:?}"
        );
    }
    // One container per node, the step's (SPEC §14): as alice, with the
    // host network, its IPC shareable, its own init; each rank a process
    // of it (an exec as alice, with its own PMIx variables, at its gate).
    let id = job_id_named(&name);
    let (steps, own) = step_and_rank_creates(&s, &id);
    assert_eq!((steps.len(), own.len()), (2, 0), "{steps:?} {own:?}");
    for c in &steps {
        assert_eq!(c.body["User"], "2001:2001", "{:?}", c.body);
        assert_eq!(c.body["Labels"]["berth.role"], "step");
        // The first rank's plan, whose per-job directory it uses (removed
        // with it after a crash: tests/broker.rs).
        assert!(
            c.body["Labels"]["berth.dirs"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("berth-{id}-0-"))),
            "{:?}",
            c.body["Labels"]
        );
        assert_eq!(c.host()["NetworkMode"], "host");
        assert_eq!(c.host()["IpcMode"], "shareable");
        assert_eq!(c.host()["Init"], true);
    }
    for node in NODES {
        assert!(
            steps
                .iter()
                .any(|c| c.path.contains(&format!("name=berth-mpi-{node}-{id}-"))),
            "{steps:?}"
        );
    }
    let execs = rank_execs(&s, &id);
    assert_eq!(execs.len(), 4, "{execs:?}");
    let mut ranks_seen: Vec<String> = Vec::new();
    for e in &execs {
        assert_eq!(e["User"], "2001:2001", "{e}");
        assert_eq!(e["Privileged"], false, "{e}");
        assert_eq!(e["Cmd"][3], "berth-rank", "{e}");
        let rank = e["Env"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v.as_str().and_then(|v| v.strip_prefix("PMIX_RANK=")))
            .unwrap_or_else(|| panic!("no PMIX_RANK: {e}"));
        ranks_seen.push(rank.to_string());
    }
    ranks_seen.sort();
    assert_eq!(ranks_seen, ["0", "1", "2", "3"]);
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));

    // sbatch -N2, srun --mpi=pmix inside (the batch step runs bare).
    let dir = AliceDir::new("mpi-sbatch");
    let name = unique("mpi-sbatch");
    let id = mpi_sbatch(
        &dir.path,
        &name,
        &["-N2", "-n4"],
        &format!("srun --mpi=pmix {MPI_IMAGE} {MPIHELLO}"),
    );
    let (state, code) = wait_job(&id, Duration::from_secs(120));
    let text = read_output(&dir.path.join(format!("{name}.out")));
    assert_eq!(
        (state.as_str(), code.as_str()),
        ("COMPLETED", "0:0"),
        "{text}"
    );
    let ranks = mpihello_ranks(&text, 4, ALICE_UID);
    assert_eq!(
        ranks.values().filter(|n| *n == "trixie2").count(),
        2,
        "{ranks:?}"
    );
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
    for node in NODES {
        assert!(
            wait_until(Duration::from_secs(10), || node_cgroup_dirs(node, &id)
                .is_empty()),
            "cgroups of job {id} left on {node}: {:?}",
            node_cgroup_dirs(node, &id)
        );
    }
}

#[test]
fn a_rank_lives_in_its_tasks_cgroups_and_cpus_as_on_bare_metal() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    // Each task says where the kernel has it: its cpuset, memory and pids
    // cgroups and the CPUs it may run on.
    // (No single quote: Slurm 24.11 mangles one in a container step's
    // arguments, docs/install-slurm.md.)
    let probe = "echo where $SLURM_PROCID $SLURM_LOCALID \
        $(grep -E \"^[0-9]+:(cpuset|memory|pids):\" /proc/self/cgroup | sort -t: -k2 | cut -d: -f2,3 | tr \"\\n\" \" \") \
        cpus $(grep Cpus_allowed_list /proc/self/status | cut -f2)";
    let run = |container: bool| {
        let mut args = vec!["-N2", "-n4", "--mpi=pmix"];
        if container {
            args.push(MPI_IMAGE);
        }
        args.extend(["sh", "-c", probe]);
        let (name, out) = mpi_srun(&[], &args);
        out.expect_ok();
        let mut by_task = BTreeMap::new();
        for l in out.stdout.lines().filter(|l| l.starts_with("where ")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            // where PROCID LOCALID cpuset:P memory:P pids:P cpus LIST
            assert_eq!(w.len(), 8, "{l}");
            by_task.insert(
                w[1].to_string(),
                w[2..].iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            );
        }
        assert_eq!(by_task.len(), 4, "{out:?}");
        (job_id_named(&name), by_task)
    };
    let (bare_id, bare) = run(false);
    let (id, inside) = run(true);
    assert!(
        rank_execs(&s, &id).len() == 4,
        "the ranks were not run in their step's containers"
    );
    for (task, w) in &inside {
        let (cpuset, memory, pids, cpus) = (&w[1], &w[2], &w[3], &w[5]);
        // The task's own cgroup (Slurm names it by the task's rank in the
        // step), as the task itself on bare metal…
        let leaf = format!("/job_{id}/step_0/task_{task}");
        assert!(
            cpuset.starts_with("cpuset:/slurm_trixie") && cpuset.ends_with(&leaf),
            "task {task}: {w:?}"
        );
        assert_eq!(
            memory.strip_prefix("memory:"),
            cpuset.strip_prefix("cpuset:"),
            "task {task}: {w:?}"
        );
        let b = &bare[task];
        assert_eq!(
            b[1].replace(&format!("job_{bare_id}/"), &format!("job_{id}/")),
            *cpuset,
            "task {task}: bare {b:?}, berth {w:?}"
        );
        // …bound to the CPUs Slurm bound it to there…
        assert_eq!(*cpus, b[5], "task {task}: bare {b:?}, berth {w:?}");
        // …while its pids cgroup (the limit) is its step container's own.
        let last = pids.rsplit('/').next().unwrap();
        assert!(
            pids.contains(&format!("/job_{id}/step_0/"))
                && last.len() == 64
                && last.bytes().all(|b| b.is_ascii_hexdigit()),
            "task {task}: {w:?}"
        );
    }
    // Two ranks of a node: two CPUs (each node has two).
    for node in NODES {
        let cpus: std::collections::BTreeSet<&String> = inside
            .values()
            .filter(|w| w[1].contains(&format!("/slurm_{node}/")))
            .map(|w| &w[5])
            .collect();
        assert_eq!(cpus.len(), 2, "{inside:?}");
    }
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
}

#[test]
fn a_signal_to_the_step_reaches_each_rank_in_its_steps_container() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    // Each rank traps USR1, says it is ready and waits; `scancel -s USR1`
    // signals the step's tasks (their `berth slurm run`), the broker the
    // rank's processes in the step's container.
    let dir = AliceDir::new("mpi-signal");
    let script = dir.path.join("rank.sh");
    std::fs::write(
        &script,
        format!(
            "trap 'echo caught $PMIX_RANK; exit 5' USR1; touch {d}/ready$PMIX_RANK; while :; do sleep 0.1; done\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&script, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
    let name = unique("mpi-signal");
    let id = mpi_sbatch(
        &dir.path,
        &name,
        &["-N1", "-n2", "-w", "trixie1"],
        &format!(
            "srun --mpi=pmix {MPI_IMAGE} sh {}; echo srun=$?",
            script.display()
        ),
    );
    for r in 0..2 {
        let ready = dir.path.join(format!("ready{r}"));
        assert!(
            wait_until(Duration::from_secs(60), || ready.exists()),
            "rank {r} of job {id} did not start: {}",
            read_output(&dir.path.join(format!("{name}.out")))
        );
    }
    assert_eq!(rank_execs(&s, &id).len(), 2);
    let mut sig = client(&alice(), "/usr/bin/scancel", &[], Path::new("/"));
    sig.args(["--signal=USR1", &id]);
    broker::output(sig).expect_ok();
    let (state, _) = wait_job(&id, Duration::from_secs(60));
    let text = read_output(&dir.path.join(format!("{name}.out")));
    let mut caught: Vec<&str> = text.lines().filter(|l| l.starts_with("caught ")).collect();
    caught.sort();
    assert_eq!(caught, ["caught 0", "caught 1"], "{state}: {text}");
    // The program's own status: it is the rank's process (srun's argv,
    // no shell between), as on bare metal.
    assert!(text.contains("srun=5"), "{text}");
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
}

#[test]
fn with_mpi_ranks_container_each_rank_is_a_container_joined_to_its_steps_holder() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    let _policy = reload_policy(&s, &|p| set(p, "mpi.ranks", "container"));
    let (name, out) = mpi_srun(&[], &["-N2", "-n4", "--mpi=pmix", MPI_IMAGE, MPIHELLO]);
    out.expect_ok();
    mpihello_ranks(&out.stdout, 4, ALICE_UID);
    // Each rank a container of its own, as alice, with the host network,
    // in its node's holder's IPC and PID namespaces; one holder per node,
    // with no network; no exec.
    let id = job_id_named(&name);
    let (holders, tasks) = step_and_rank_creates(&s, &id);
    assert_eq!(
        (holders.len(), tasks.len()),
        (2, 4),
        "{holders:?} {tasks:?}"
    );
    for h in &holders {
        assert_eq!(h.body["User"], "2001:2001", "{:?}", h.body);
        assert_eq!(h.host()["NetworkMode"], "none");
        assert_eq!(h.host()["IpcMode"], "shareable");
    }
    let holder_names: std::collections::BTreeSet<String> = holders
        .iter()
        .map(|h| h.path.split("name=").nth(1).unwrap_or("").to_string())
        .collect();
    for node in NODES {
        assert!(
            holder_names
                .iter()
                .any(|n| n.starts_with(&format!("berth-mpi-{node}-{id}-"))),
            "{holder_names:?}"
        );
    }
    for t in &tasks {
        assert_eq!(
            t.body["User"].as_str().unwrap().split(':').next(),
            Some("2001")
        );
        assert_eq!(t.host()["NetworkMode"], "host", "{:?}", t.host());
        let ipc = t.host()["IpcMode"].as_str().unwrap_or_default();
        let holder = ipc
            .strip_prefix("container:")
            .unwrap_or_else(|| panic!("IpcMode {ipc}"));
        assert!(
            holder_names.contains(holder),
            "{holder} not in {holder_names:?}"
        );
        assert_eq!(t.host()["PidMode"], ipc);
        assert!(t.env_var("PMIX_RANK").is_some(), "{:?}", t.env());
        // In its task's cgroup (v1: the caller's own).
        assert!(
            t.host()["CgroupParent"]
                .as_str()
                .is_some_and(|p| p.contains(&format!("/job_{id}/step_0/task_"))),
            "{:?}",
            t.host()
        );
    }
    assert!(rank_execs(&s, &id).is_empty());
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
}

#[test]
fn a_rank_with_gpus_of_its_own_gets_a_container_joined_to_its_steps() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    // --gpus-per-task: each task its own GPU, which an exec in a shared
    // container cannot have. The first rank here makes the step's
    // container (with its GPU) and runs in it; the other, asking for
    // another GPU, gets a container of its own in the step's namespaces.
    let script = format!(
        "{GPU_PROBE}; echo RANK=$PMIX_RANK; \
         f=/dev/shm/berth-gpu-$SLURM_JOB_ID; echo $PMIX_RANK >> $f; \
         for i in $(seq 100); do [ $(wc -l < $f) = 2 ] && break; sleep 0.1; done; \
         echo SHM=$(sort $f | tr \"\\n\" ,)"
    );
    let (name, out) = mpi_srun(
        &[],
        &[
            "--label",
            "-N1",
            "-n2",
            "-w",
            "trixie1",
            "--gres=gpu:2",
            "--gpus-per-task=1",
            "--mpi=pmix",
            MPI_IMAGE,
            "sh",
            "-c",
            &script,
        ],
    );
    out.expect_ok();
    let id = job_id_named(&name);
    // Each rank opens exactly one GPU, not the other's; both see the
    // other's /dev/shm file (one IPC namespace and /dev/shm).
    let mut gpus = Vec::new();
    let mut per_task: BTreeMap<String, String> = BTreeMap::new();
    for l in out.stdout.lines() {
        if let Some((t, rest)) = l.split_once(": ") {
            let b = per_task.entry(t.trim().to_string()).or_default();
            b.push_str(rest);
            b.push('\n');
        }
    }
    assert_eq!(per_task.len(), 2, "{out:?}");
    for b in per_task.values() {
        let held: Vec<&str> = ["GPU0", "GPU1"]
            .into_iter()
            .filter(|g| field(b, g) == Some("enxio"))
            .collect();
        assert_eq!(held.len(), 1, "one GPU each: {b}");
        gpus.push(held[0].to_string());
        assert_eq!(field(b, "SHM"), Some("0,1,"), "{b}");
    }
    gpus.sort();
    assert_eq!(gpus, ["GPU0", "GPU1"], "{out:?}");
    let (steps, own) = step_and_rank_creates(&s, &id);
    assert_eq!((steps.len(), own.len()), (1, 1), "{steps:?} {own:?}");
    let step_name = steps[0]
        .path
        .split("name=")
        .nth(1)
        .unwrap_or("")
        .to_string();
    assert_eq!(own[0].host()["IpcMode"], format!("container:{step_name}"));
    assert_eq!(own[0].host()["PidMode"], format!("container:{step_name}"));
    assert_eq!(rank_execs(&s, &id).len(), 1);
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
}

#[test]
fn ranks_on_one_node_share_memory_and_never_another_jobs() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    // Open MPI with only its shared-memory and self transports: two ranks
    // on one node can talk only if their containers share memory.
    let (_, out) = mpi_srun(
        &[("OMPI_MCA_btl", "self,sm"), ("OMPI_MCA_pml", "ob1")],
        &[
            "-N1",
            "-n2",
            "-w",
            "trixie2",
            "--mpi=pmix",
            MPI_IMAGE,
            MPIHELLO,
        ],
    );
    out.expect_ok();
    let ranks = mpihello_ranks(&out.stdout, 2, ALICE_UID);
    assert!(ranks.values().all(|n| n == "trixie2"), "{ranks:?}");

    // A /dev/shm file of rank 0 is seen by rank 1 of the same step; a
    // second job, running meanwhile on the same node, sees none of it.
    let dir = AliceDir::new("mpi-shm");
    let name = unique("mpi-shm");
    let mark = dir.path.join("made");
    let script = format!(
        "srun --mpi=pmix {MPI_IMAGE} sh -c '\
           f=/dev/shm/berth-shm-$SLURM_JOB_ID; \
           if [ $PMIX_RANK = 0 ]; then echo shared > $f; touch {mark}; fi; \
           for i in $(seq 100); do [ -s $f ] && break; sleep 0.1; done; \
           echo rank $PMIX_RANK sees $(cat $f); sleep 15'",
        mark = mark.display()
    );
    let id = mpi_sbatch(&dir.path, &name, &["-N1", "-n2", "-w", "trixie1"], &script);
    assert!(
        wait_until(Duration::from_secs(60), || mark.exists()),
        "job {id}'s rank 0 made no /dev/shm file: {}",
        read_output(&dir.path.join(format!("{name}.out")))
    );
    let (_, other) = mpi_srun(
        &[],
        &[
            "-N1",
            "-n2",
            "-w",
            "trixie1",
            "--mpi=pmix",
            MPI_IMAGE,
            "sh",
            "-c",
            "ls -A /dev/shm; echo end",
        ],
    );
    other.expect_ok();
    assert_eq!(
        other.lines(),
        ["end", "end"],
        "another job's /dev/shm: {other:?}"
    );
    // And a job that is no MPI step has its own /dev/shm too.
    let (_, plain) = mpi_srun(
        &[],
        &[
            "-N1", "-n1", "-w", "trixie1", MPI_IMAGE, "ls", "-A", "/dev/shm",
        ],
    );
    plain.expect_ok();
    assert_eq!(plain.stdout.trim(), "", "{plain:?}");
    let (state, code) = wait_job(&id, Duration::from_secs(90));
    let text = read_output(&dir.path.join(format!("{name}.out")));
    assert_eq!(
        (state.as_str(), code.as_str()),
        ("COMPLETED", "0:0"),
        "{text}"
    );
    let mut seen: Vec<&str> = text.lines().filter(|l| l.starts_with("rank ")).collect();
    seen.sort();
    assert_eq!(seen, ["rank 0 sees shared", "rank 1 sees shared"], "{text}");
    s.bed.assert_cleaned_within(&id, Duration::from_secs(10));
}

#[test]
fn without_the_host_network_a_multi_node_job_fails_at_once_with_the_rule() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    // The site takes the host network away: the broker reloads its policy.
    let restore = reload_policy(&s, &|p| set(p, "docker.networks", vec!["none", "bridge"]));
    let t = Instant::now();
    let (name, out) = mpi_srun(&[], &["-N2", "-n2", "--mpi=pmix", MPI_IMAGE, MPIHELLO]);
    let took = t.elapsed();
    assert_ne!(out.code, Some(0), "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("berth: denied"))
        .unwrap_or_else(|| panic!("no berth line: {}", out.stderr));
    assert!(
        line.contains("[rule docker.networks]") && line.contains("host"),
        "{line}"
    );
    assert!(!out.stdout.contains("mpihello rank"), "{out:?}");
    assert!(took < Duration::from_secs(60), "it took {took:?}: {out:?}");
    let id = job_id_named(&name);
    assert!(
        s.bed.creates(&id).iter().all(|c| c.is_probe()),
        "job {id} made a container"
    );
    // Allowed again, the same job runs.
    drop(restore);
    let (_, out) = mpi_srun(&[], &["-N2", "-n2", "--mpi=pmix", MPI_IMAGE, MPIHELLO]);
    out.expect_ok();
    mpihello_ranks(&out.stdout, 2, ALICE_UID);
}

#[test]
fn scancel_of_a_two_node_step_removes_every_container_and_directory() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    let dir = AliceDir::new("mpi-scancel");
    let name = unique("mpi-scancel");
    let id = mpi_sbatch(
        &dir.path,
        &name,
        &["-N2", "-n4"],
        &format!("srun --mpi=pmix {MPI_IMAGE} sleep 300"),
    );
    // Two step containers, running four ranks.
    let mut running = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            running = containers(&id, false);
            running.len() == 2 && rank_processes(&id, "sleep 300").len() == 4
        }),
        "job {id}: {:?} ({})",
        container_names(&id),
        read_output(&dir.path.join(format!("{name}.out")))
    );
    let names = container_names(&id);
    for node in NODES {
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with(&format!("berth-mpi-{node}-{id}-")))
                .count(),
            1,
            "one step container on {node}: {names:?}"
        );
    }
    let t = Instant::now();
    let mut cancel = client(&alice(), "/usr/bin/scancel", &[], Path::new("/"));
    cancel.arg(&id);
    broker::output(cancel).expect_ok();
    assert!(
        wait_until(Duration::from_secs(15), || containers(&id, true).is_empty()),
        "job {id}'s containers {:?} are still there {:?} after scancel",
        container_names(&id),
        t.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || rank_processes(&id, "sleep 300")
            .is_empty()),
        "job {id}'s ranks {:?} still run after scancel",
        rank_processes(&id, "sleep 300")
    );
    s.bed.assert_cleaned_within(&id, Duration::from_secs(5));
    for node in NODES {
        assert!(
            wait_until(Duration::from_secs(15), || node_cgroup_dirs(node, &id)
                .is_empty()),
            "cgroups of job {id} left on {node}: {:?}",
            node_cgroup_dirs(node, &id)
        );
        // slurmstepd removes the step's spool directory as the step ends.
        let spool = Path::new("/var/tmp/berth/slurm24").join(format!("spool-{node}"));
        let left = || -> Vec<String> {
            std::fs::read_dir(&spool)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("oci-job{id}-")))
                .collect()
        };
        assert!(
            wait_until(Duration::from_secs(15), || left().is_empty()),
            "{node}'s spool keeps {:?}",
            left()
        );
    }
    let (state, _) = wait_job(&id, Duration::from_secs(30));
    assert_eq!(state, "CANCELLED");
    eprintln!(
        "scancel of a 2-node MPI step: every container gone after {:?}",
        t.elapsed()
    );
}

/// `scontrol ARGS…` as root in the cluster under test; its stdout.
fn scontrol(args: &[&str]) -> String {
    let out = gen()
        .root_cmd("/usr/bin/scontrol")
        .args(args)
        .env_clear()
        .env("PATH", CALLER_PATH)
        .output()
        .expect("scontrol");
    assert!(out.status.success(), "scontrol {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_failed_node_leaves_no_container_running_on_the_other() {
    if !gen().is_24() {
        return; // one node and no PMIx on 22.05
    }
    let s = slurm();
    let _one = mpi_lock();
    require_mpi_nodes();
    let dir = AliceDir::new("mpi-nodefail");
    let name = unique("mpi-nodefail");
    let id = mpi_sbatch(
        &dir.path,
        &name,
        &["-N2", "-n2", "--no-requeue"],
        &format!("srun --mpi=pmix {MPI_IMAGE} sleep 300"),
    );
    // The job's running containers (its step's) placed on `node`.
    let on = |node: &str| -> Vec<String> {
        let ids = containers(&id, false);
        if ids.is_empty() {
            return ids;
        }
        let mut args = vec!["inspect", "-f", "{{.Name}} {{.HostConfig.CgroupParent}}"];
        args.extend(ids.iter().map(String::as_str));
        // (One that is gone meanwhile fails the call, the others print.)
        docker(&args)
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, parent)| parent.starts_with(&format!("/slurm_{node}/")))
            .map(|(name, _)| name.to_string())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(60), || on("trixie1").len() == 1
            && on("trixie2").len() == 1
            && rank_processes(&id, "sleep 300").len() == 2),
        "job {id}: {:?} ({})",
        container_names(&id),
        read_output(&dir.path.join(format!("{name}.out")))
    );
    // trixie2 fails: its slurmd dies, and the controller (here told at
    // once, rather than after SlurmdTimeout) sets the node down.
    let pidfile = Path::new(gen().root.unwrap()).join("run/slurmd-trixie2.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    scontrol(&[
        "update",
        "NodeName=trixie2",
        "State=DOWN",
        "Reason=berth-test-node-failure",
    ]);
    // Restarted whatever happens next (`testbed.sh up` starts what is not
    // running; the node comes back on registering, ReturnToService=2).
    struct Revive;
    impl Drop for Revive {
        fn drop(&mut self) {
            let up = Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup/testbed.sh"))
                .arg("up")
                .env("BERTH_TESTBED_KEEP", "1")
                .stdin(Stdio::null())
                .output();
            if !up.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("testbed.sh up after the node failure: {up:?}");
            }
        }
    }
    let revive = Revive;
    assert!(
        wait_until(Duration::from_secs(30), || on("trixie1").is_empty()),
        "job {id}'s containers on trixie1 {:?} still run {:?} after trixie2 failed",
        on("trixie1"),
        t.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !rank_processes(
            &id,
            "sleep 300"
        )
        .iter()
        .any(|(node, _, _)| node == "trixie1")),
        "job {id}'s rank on trixie1 still runs: {:?}",
        rank_processes(&id, "sleep 300")
    );
    eprintln!(
        "node failure: trixie1's rank and step container gone after {:?}",
        t.elapsed()
    );
    let (state, _) = wait_job(&id, Duration::from_secs(30));
    assert_eq!(state, "NODE_FAIL");
    assert!(
        wait_until(Duration::from_secs(15), || node_cgroup_dirs("trixie1", &id)
            .is_empty()),
        "cgroups of job {id} left on trixie1: {:?}",
        node_cgroup_dirs("trixie1", &id)
    );
    // The failed node, back, ends what it still ran.
    drop(revive);
    s.bed.assert_cleaned_within(&id, Duration::from_secs(60));
    require_mpi_nodes();
}
