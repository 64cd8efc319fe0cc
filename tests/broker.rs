//! The broker (SPEC §7) on a real Docker engine with real users: `berth
//! daemon` as root, `berth run` as berth-alice (uid 2001, not in the docker
//! group) going through it, and hand-made clients that lie or misbehave.
//!
//! Run as root on the testbed (`bash tests/run.sh`); a missing engine FAILS.

#[path = "common/broker.rs"]
mod broker;
mod common;

use berth::broker::proto::{self, DaemonMsg, Hello, VERSION};
use broker::{connect_as, install_berth, use_broker_socket, user_command, Daemon, TestUser};
use common::*;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A bed whose policy names a broker socket inside it, the broker running
/// on it, and a copy of berth the test users may run. The daemon is
/// stopped before the bed is removed (field order).
struct Broker {
    daemon: Daemon,
    bin: PathBuf,
    bed: Bed,
}

fn broker() -> Broker {
    broker_with(|_| {})
}

fn broker_with(edit: impl FnOnce(&mut toml::Table)) -> Broker {
    let mut bed = Bed::with(edit);
    let socket = use_broker_socket(&mut bed);
    let bin = install_berth(bed.path());
    let daemon = Daemon::start(&bed, &socket);
    Broker { daemon, bin, bed }
}

fn alice() -> TestUser {
    TestUser::get(ALICE)
}

impl Broker {
    /// `berth run -- SCRIPT` for `job`, as `user`.
    fn run_as(&self, user: &TestUser, job: &Job<'_>, script: &str) -> Out {
        broker::output(user_command(job, user, &self.bin, &["run"], &[script]))
    }

    /// Start `berth run -- SCRIPT` as `user` in the background.
    fn spawn_as(&self, user: &TestUser, job: &Job<'_>, script: &str) -> std::process::Child {
        user_command(job, user, &self.bin, &["run"], &[script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth run")
    }

    /// The audit records of `job` with `event`.
    fn audit_event(&self, job: &str, event: &str) -> Vec<serde_json::Value> {
        self.bed
            .audit_for(job)
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// The policy's mounts.pin_dir.
    fn pin_dir(&self) -> PathBuf {
        PathBuf::from(
            self.bed
                .policy
                .get("mounts")
                .and_then(|m| m.get("pin_dir"))
                .and_then(|d| d.as_str())
                .unwrap_or("/run/berth/mnt"),
        )
    }

    /// The job's directories of pinned volumes (under mounts.pin_dir).
    fn pins(&self, job: &str) -> Vec<PathBuf> {
        let prefix = format!("berth-{job}-");
        std::fs::read_dir(self.pin_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[track_caller]
    fn assert_daemon_alive(&mut self) {
        assert!(
            !self.daemon.exited(),
            "the broker died:\n{}",
            self.daemon.log_text()
        );
    }
}

/// The environment a scheduler gives a job, for hand-made hellos.
fn job_env(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".to_string(), IMAGE.to_string()),
        ("LSB_JOBID".to_string(), job.to_string()),
        ("LS_SUBCWD".to_string(), ALICE_DIR.to_string()),
        ("PATH".to_string(), CALLER_PATH.to_string()),
    ])
}

fn hello(scheduler: &str, env: BTreeMap<String, String>, script: &str) -> Hello {
    Hello {
        version: VERSION,
        scheduler: scheduler.into(),
        env,
        cwd: Some(ALICE_DIR.into()),
        command: vec![script.into()],
        tmp_files: vec![],
        slurm_id: None,
        explain: None,
        bundle: None,
        slurm_task_dir: None,
    }
}

/// What the daemon said on a connection, and the job's stdout and stderr.
struct RawResult {
    msgs: Vec<DaemonMsg>,
    stdout: String,
    stderr: String,
}

impl RawResult {
    fn exit(&self) -> Option<i32> {
        self.msgs.iter().find_map(|m| match m {
            DaemonMsg::Exit { code } => Some(*code),
            _ => None,
        })
    }
    fn error(&self) -> Option<(i32, String)> {
        self.msgs.iter().find_map(|m| match m {
            DaemonMsg::Error { code, message } => Some((*code, message.clone())),
            _ => None,
        })
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

fn drain(r: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut s = Vec::new();
        let _ = f.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Read the daemon's frames until it closes the connection (at most 60 s).
fn read_msgs(stream: &UnixStream) -> Vec<DaemonMsg> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut msgs = Vec::new();
    let mut r = stream;
    while let Ok(Some(m)) = proto::read_frame::<DaemonMsg>(&mut r, proto::MAX_FRAME) {
        let last = !matches!(m, DaemonMsg::Started { .. });
        msgs.push(m);
        if last {
            break;
        }
    }
    msgs
}

/// Send `hello` as `user` on a connection of our own, with /dev/null as
/// stdin and pipes as stdout and stderr; wait for the end.
fn raw_job(b: &Broker, user: &TestUser, h: &Hello) -> RawResult {
    let stream = connect_as(user, &b.daemon.socket);
    let null = std::fs::File::open("/dev/null").unwrap();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    proto::send_hello(
        &stream,
        h,
        [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
    )
    .expect("send hello");
    drop((null, out_w, err_w));
    let (o, e) = (drain(out_r), drain(err_r));
    let msgs = read_msgs(&stream);
    drop(stream);
    RawResult {
        msgs,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Write raw bytes (no descriptors) on a connection as `user`; the
/// daemon's answer.
fn raw_bytes(b: &Broker, user: &TestUser, bytes: &[u8]) -> Vec<DaemonMsg> {
    let stream = connect_as(user, &b.daemon.socket);
    let _ = (&*stream).write_all(bytes);
    read_msgs(&stream)
}

// ---------------------------------------------------------------------------

#[test]
fn an_unprivileged_user_runs_as_herself_through_the_broker() {
    let b = broker();
    let alice = alice();
    if let Ok(Some(docker)) = nix::unistd::Group::from_name("docker") {
        assert!(
            !alice.groups.contains(&docker.gid.as_raw()),
            "berth-alice must not be in the docker group"
        );
    }
    let job = b.bed.job();
    let out = b.run_as(&alice, &job, "id -u; id -g; id -G; pwd; echo to-stderr >&2");
    out.expect_ok();
    let l = out.lines();
    assert_eq!(l[0], ALICE_UID.to_string(), "{out:?}");
    assert_eq!(l[1], ALICE_GID.to_string());
    let mut groups = host_id("-G", ALICE);
    groups.sort_unstable();
    assert_eq!(numbers(l[2]), groups);
    assert_eq!(l[3], ALICE_DIR);
    assert!(out.stderr.contains("to-stderr"), "{out:?}");
    // One container created, as 2001, by the daemon (root), as the
    // engine received it.
    let runs = b.bed.creates(&job.id);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].body["User"], "2001:2001", "{:?}", runs[0].body);
    // The audit trail names the kernel's caller.
    let launch = b.audit_event(&job.id, "launch");
    assert_eq!(launch.len(), 1, "{launch:?}");
    assert_eq!(launch[0]["caller_uid"], ALICE_UID);
    assert_eq!(launch[0]["uid"], ALICE_UID);
    let exit = b.audit_event(&job.id, "exit");
    assert_eq!(exit.len(), 1, "{exit:?}");
    assert_eq!(exit[0]["exit_code"], 0);
    b.bed.assert_no_leaks(&job.id);
}

#[test]
fn the_broker_keeps_only_the_capabilities_it_uses() {
    // berth's seven (CHOWN 0, DAC_OVERRIDE 1, DAC_READ_SEARCH 2, FOWNER 3,
    // SETGID 6, SETUID 7, SYS_ADMIN 21) and the broker's two: KILL 5 (it
    // signals blaunch tasks' and MPI ranks' processes itself) and SYS_NICE
    // 23 (it binds a rank to its task's CPUs); every set, exactly.
    let b = broker();
    let want: u64 = [0, 1, 2, 3, 5, 6, 7, 21, 23]
        .iter()
        .map(|c| 1u64 << c)
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.daemon.pid())).unwrap();
    for set in ["CapBnd:", "CapPrm:", "CapEff:"] {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(set))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(v, want, "{set} {v:#x}, want {want:#x}");
    }
}

#[test]
fn exit_codes_and_stdin_pass_through_the_broker() {
    let b = broker();
    let alice = alice();
    let job = b.bed.job();
    b.run_as(&alice, &job, "exit 3").expect_code(3);
    let job = b.bed.job();
    let mut c = user_command(&job, &alice, &b.bin, &["run"], &["cat; echo done"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"data through the broker\n")
        .unwrap();
    let out = broker::finish(child, Duration::from_secs(60));
    out.expect_ok();
    assert_eq!(out.lines(), ["data through the broker", "done"], "{out:?}");
    b.bed.assert_no_leaks(&job.id);
}

#[test]
fn a_client_naming_another_user_still_runs_as_itself() {
    let b = broker();
    let alice = alice();
    for (k, v) in [
        ("LSFUSER", "berth-bob"),
        ("LSFUSER", "root"),
        ("LSFUSER", "0"),
        ("SLURM_JOB_UID", "0"),
        ("SLURM_JOB_USER", "root"),
        ("USER", "root"),
    ] {
        let job = b.bed.job().env(k, v);
        let out = b.run_as(&alice, &job, "id -u; id -g");
        out.expect_ok();
        assert_eq!(out.lines(), ["2001", "2001"], "{k}={v}: {out:?}");
        let launch = b.audit_event(&job.id, "launch");
        assert_eq!(launch[0]["caller_uid"], ALICE_UID, "{launch:?}");
        assert_eq!(launch[0]["user"], ALICE, "{launch:?}");
    }
    // Also with the plain-environment scheduler.
    let job = b.bed.job().env("LSFUSER", "berth-bob");
    let out = broker::output(user_command(
        &job,
        &alice,
        &b.bin,
        &["run", "--scheduler", "env"],
        &["id -u"],
    ));
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"]);
}

#[test]
fn a_relay_names_the_job_user_but_never_root() {
    let b = broker();
    let relay = TestUser::get("berth-relay");
    let job = b.bed.job(); // LSFUSER=berth-alice
    let out = b.run_as(&relay, &job, "id -u");
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"]);
    let launch = b.audit_event(&job.id, "launch");
    assert_eq!(launch[0]["caller_uid"], 2010, "{launch:?}");
    assert_eq!(launch[0]["uid"], ALICE_UID, "{launch:?}");

    for who in ["root", "0"] {
        let job = b.bed.job().env("LSFUSER", who);
        b.run_as(&relay, &job, "id -u").expect_code(77);
        b.bed.assert_no_leaks(&job.id);
        assert!(b.bed.creates(&job.id).is_empty());
    }
}

#[test]
fn a_hand_made_client_gets_its_kernel_uid() {
    let b = broker();
    let alice = alice();
    for sched in ["lsf", "env", "slurm"] {
        let job = next_job_id();
        let mut env = job_env(&job);
        env.insert("LSFUSER".into(), "berth-bob".into());
        env.insert("SLURM_JOB_UID".into(), "0".into());
        env.insert("SLURM_JOB_USER".into(), "root".into());
        let r = raw_job(&b, &alice, &hello(sched, env, "id -u; id -G"));
        assert_eq!(r.exit(), Some(0), "{sched}: {:?} {}", r.msgs, r.stderr);
        assert!(
            matches!(r.msgs.first(), Some(DaemonMsg::Started { container }) if container.starts_with(&format!("berth-{job}-"))),
            "{:?}",
            r.msgs
        );
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[0], "2001", "{sched}: {}", r.stdout);
        assert!(!numbers(lines[1]).contains(&0), "{}", r.stdout);
        b.bed.assert_no_leaks(&job);
    }
}

#[test]
fn malformed_requests_are_refused_and_the_daemon_goes_on() {
    let mut b = broker();
    let alice = alice();
    let h = hello("lsf", job_env(&next_job_id()), "id -u");

    // A well-formed hello without the three descriptors.
    let msgs = raw_bytes(&b, &alice, &proto::encode(&h).unwrap());
    assert!(
        matches!(&msgs[..], [DaemonMsg::Error { code: 64, .. }]),
        "{msgs:?}"
    );
    // Garbage, a length beyond the limit, a truncated frame.
    for bytes in [
        b"\x00\x00\x00\x05hello".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        u32::MAX.to_be_bytes().to_vec(),
        ((proto::MAX_HELLO + 1) as u32).to_be_bytes().to_vec(),
        b"\x00\x00\x01\x00{\"version\":1".to_vec(),
    ] {
        let stream = connect_as(&alice, &b.daemon.socket);
        let _ = (&*stream).write_all(&bytes);
        // A truncated frame waits for more: say no more.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let msgs = read_msgs(&stream);
        assert!(
            matches!(&msgs[..], [DaemonMsg::Error { code: 64, .. }]),
            "{:?}: {msgs:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    // A wrong version and an unknown scheduler, with descriptors.
    let mut v = h.clone();
    v.version = 99;
    let r = raw_job(&b, &alice, &v);
    assert_eq!(r.error().map(|e| e.0), Some(64), "{:?}", r.msgs);
    let r = raw_job(&b, &alice, &hello("root", job_env(&next_job_id()), "id -u"));
    assert_eq!(r.error().map(|e| e.0), Some(64), "{:?}", r.msgs);
    // Hanging up at once, and holding a connection open without a word.
    drop(connect_as(&alice, &b.daemon.socket));
    let idle = connect_as(&alice, &b.daemon.socket);
    // Nothing was started by any of it.
    assert!(
        b.bed.engine_calls().iter().all(|c| !c.is_create()),
        "{:?}",
        b.bed.engine_calls()
    );
    // The daemon still serves, even with the idle connection open.
    b.assert_daemon_alive();
    let job = b.bed.job();
    let out = b.run_as(&alice, &job, "id -u");
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"]);
    drop(idle);
    b.assert_daemon_alive();
}

#[test]
fn killing_the_client_kills_the_container() {
    let b = broker();
    let alice = alice();
    let job = b.bed.job();
    let mut child = b.spawn_as(&alice, &job, "sleep 60");
    wait_running(&job.id, Duration::from_secs(30));
    assert_eq!(b.bed.job_dirs(&job.id).len(), 1);
    assert_eq!(b.pins(&job.id).len(), 1, "the job's pinned volumes");
    let t = Instant::now();
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    b.bed.assert_cleaned_within(&job.id, Duration::from_secs(5));
    eprintln!("cleaned {:?} after SIGKILL of the client", t.elapsed());
    assert!(b.pins(&job.id).is_empty(), "{:?}", b.pins(&job.id));
    let exit = b.audit_event(&job.id, "exit");
    assert_eq!(exit.len(), 1, "{exit:?}");
    assert!(
        exit[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("client disconnected")),
        "{exit:?}"
    );
}

#[test]
fn signals_to_the_client_reach_the_container() {
    let b = broker();
    let alice = alice();
    let job = b.bed.job();
    let child = b.spawn_as(
        &alice,
        &job,
        "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
    );
    wait_running(&job.id, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    signal(child.id(), Signal::SIGTERM);
    let out = broker::finish(child, Duration::from_secs(30));
    out.expect_code(42);
    assert_eq!(out.lines(), ["ready", "got-term"], "{out:?}");
    b.bed.assert_cleaned_within(&job.id, Duration::from_secs(5));
}

#[test]
fn twenty_concurrent_launches_all_succeed() {
    let b = broker();
    let alice = alice();
    let jobs: Vec<Job<'_>> = (0..20).map(|_| b.bed.job()).collect();
    let t = Instant::now();
    let outs: Vec<(String, Out)> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|j| {
                let (b, alice) = (&b, &alice);
                s.spawn(move || {
                    (
                        j.id.clone(),
                        b.run_as(alice, j, &format!("echo out-{}; id -u", j.id)),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "20 concurrent launches through the broker: {:?}",
        t.elapsed()
    );
    for (id, out) in &outs {
        out.expect_ok();
        assert_eq!(
            out.lines(),
            [format!("out-{id}").as_str(), "2001"],
            "{out:?}"
        );
    }
    for (id, _) in &outs {
        b.bed.assert_no_leaks(id);
    }
}

#[test]
fn an_unreachable_broker_is_exit_69_naming_the_socket() {
    let mut bed = Bed::new();
    let socket = bed.path().join("nowhere").join("berth.sock");
    set(
        &mut bed.policy,
        "broker.socket",
        socket.display().to_string(),
    );
    bed.write_policy();
    let bin = install_berth(bed.path());
    let job = bed.job();
    let out = broker::output(user_command(&job, &alice(), &bin, &["run"], &["id -u"]));
    out.expect_code(69);
    assert!(
        out.stderr.contains(&socket.display().to_string()) && out.stderr.contains("broker"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
    bed.assert_not_started(&job.id);

    // A socket file nobody listens on (a daemon that died) is the same.
    std::fs::create_dir(socket.parent().unwrap()).unwrap();
    let l = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(l);
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let job = bed.job();
    let out = broker::output(user_command(&job, &alice(), &bin, &["run"], &["id -u"]));
    out.expect_code(69);
    assert!(
        out.stderr.contains(&socket.display().to_string()),
        "{out:?}"
    );
}

#[test]
fn the_broker_gives_no_way_to_the_docker_socket() {
    let b = broker_with(|p| set(p, "docker.networks", vec!["none", "bridge"]));
    let alice = alice();
    let attempts: &[(&str, &str, &[&str])] = &[
        (
            "LSF_DOCKER_VOLUMES",
            "/var/run/docker.sock:/s",
            &["/var/run/docker.sock"],
        ),
        ("LSF_DOCKER_VOLUMES", "/var/run:/r", &["/var/run"]),
        ("LSF_DOCKER_VOLUMES", "/run:/r", &["/run"]),
        ("LSF_DOCKER_VOLUMES", "/:/host", &["/"]),
        (
            "LSF_DOCKER_VOLUMES",
            "/storage1/fs1/alice/link-out:/e",
            &["link-out"],
        ),
        (
            "LSF_DOCKER_VOLUMES",
            "/storage1/fs1/alice/../../../var/run:/r",
            &["/var/run"],
        ),
        ("LSF_DOCKER_NETWORK", "host", &["host"]),
        ("LSF_DOCKER_IPC", "host", &["host"]),
        ("LSF_DOCKER_NETWORK", "container:dockerd", &["container:"]),
        (
            "LSB_CONTAINER_IMAGE",
            "docker.io/library/docker:latest",
            &["docker.io/library/docker"],
        ),
        (
            "LSF_DOCKER_ENTRYPOINT",
            "/usr/bin/docker",
            &["/usr/bin/docker"],
        ),
    ];
    for (k, v, needles) in attempts {
        let job = b.bed.job().env(k, v);
        let out = b.run_as(&alice, &job, "id -u");
        out.expect_denied(needles);
        assert!(out.stdout.is_empty(), "{k}={v}: {out:?}");
        b.bed.assert_no_leaks(&job.id);
        assert!(
            b.bed.creates(&job.id).is_empty(),
            "{k}={v} reached docker run"
        );
        let denial = b.audit_event(&job.id, "denial");
        assert_eq!(denial.len(), 1, "{k}={v}: {:?}", b.bed.audit_for(&job.id));
        assert_eq!(denial[0]["caller_uid"], ALICE_UID, "{denial:?}");
        assert_eq!(denial[0]["decision"], "deny", "{denial:?}");
    }
    // The working directory is the client's word too: a hand-made client
    // naming the engine's directory, or a link to outside the roots, is
    // refused like a volume.
    for cwd in ["/var/run", "/run", "/", "/storage1/fs1/alice/link-out"] {
        let job = next_job_id();
        let mut env = job_env(&job);
        env.remove("LS_SUBCWD");
        let mut h = hello("lsf", env, "id -u");
        h.cwd = Some(cwd.into());
        let r = raw_job(&b, &alice, &h);
        assert_eq!(r.error().map(|e| e.0), Some(77), "cwd {cwd}: {:?}", r.msgs);
        assert!(r.stdout.is_empty(), "cwd {cwd}: {}", r.stdout);
        b.bed.assert_no_leaks(&job);
        assert!(
            b.bed.creates(&job).is_empty(),
            "cwd {cwd} reached docker run"
        );
    }
    // Whatever else the job asks, the container is never privileged, never
    // in a host namespace and never sees the engine's socket.
    let job = b
        .bed
        .job()
        .env("LSF_DOCKER_VOLUMES", "/storage1/fs1/alice:/data");
    let out = b.run_as(
        &alice,
        &job,
        "test -e /var/run/docker.sock && echo SOCKET; id -u",
    );
    out.expect_ok();
    assert_eq!(out.lines(), ["2001"]);
    let run = b.bed.create_of(&job.id);
    let h = run.host();
    for k in ["Privileged", "PidMode", "UsernsMode", "UTSMode", "Devices"] {
        assert!(h.get(k).is_none(), "{k} in {h}");
    }
    assert_eq!(h["NetworkMode"], "none");
    assert_eq!(h["IpcMode"], "private");
    assert!(
        run.mounts()
            .iter()
            .all(|(src, _, _)| !src.contains("docker.sock")),
        "{:?}",
        run.mounts()
    );
}

#[test]
fn sighup_reloads_the_policy() {
    let mut b = broker();
    let alice = alice();
    b.run_as(&alice, &b.bed.job(), "true").expect_ok();

    set(
        &mut b.bed.policy,
        "images.allow",
        vec!["docker.io/somewhere-else/*"],
    );
    b.bed.write_policy();
    b.daemon.signal(Signal::SIGHUP);
    let mut last = None;
    let denied = wait_until(Duration::from_secs(10), || {
        let out = b.run_as(&alice, &b.bed.job(), "true");
        let d = out.code == Some(77);
        last = Some(out);
        d
    });
    assert!(denied, "the reloaded policy was not applied: {last:?}");
    let out = last.unwrap();
    out.expect_denied(&["berth-test/busybox"]);

    // A policy that does not load is refused: the last good one stays.
    // (A hand-made client: berth run itself reads the policy for the
    // socket's path.)
    std::fs::write(b.bed.policy_path(), "this is not toml [[[").unwrap();
    b.daemon.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    b.assert_daemon_alive();
    let r = raw_job(&b, &alice, &hello("lsf", job_env(&next_job_id()), "true"));
    assert_eq!(r.error().map(|e| e.0), Some(77), "{:?}", r.msgs);

    set(
        &mut b.bed.policy,
        "images.allow",
        vec!["docker.io/berth-test/*"],
    );
    b.bed.write_policy();
    b.daemon.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || b
            .run_as(&alice, &b.bed.job(), "true")
            .code
            == Some(0)),
        "the restored policy was not applied:\n{}",
        b.daemon.log_text()
    );
}

#[test]
fn sigterm_stops_the_daemon_and_removes_running_containers() {
    let mut b = broker();
    let alice = alice();
    let job = b.bed.job();
    let child = b.spawn_as(&alice, &job, "sleep 60");
    wait_running(&job.id, Duration::from_secs(30));
    b.daemon.signal(Signal::SIGTERM);
    let st = b.daemon.wait_exit(Duration::from_secs(15));
    assert!(st.is_some(), "the broker did not exit on SIGTERM");
    assert!(st.unwrap().success(), "{st:?}");
    b.bed.assert_cleaned_within(&job.id, Duration::from_secs(5));
    assert!(b.pins(&job.id).is_empty(), "{:?}", b.pins(&job.id));
    assert!(!b.daemon.socket.exists(), "the socket was left behind");
    // The client learns the broker is gone: 69, requeue.
    let out = broker::finish(child, Duration::from_secs(10));
    out.expect_code(69);
    assert!(out.stderr.contains("requeue"), "{out:?}");
}

#[test]
fn a_restarted_broker_cleans_what_a_killed_one_left() {
    let mut b = broker();
    let alice = alice();
    let job = b.bed.job();
    let mut child = b.spawn_as(&alice, &job, "sleep 60");
    wait_running(&job.id, Duration::from_secs(30));
    let dir = b.bed.wait_job_dir(&job.id, Duration::from_secs(10));
    // The broker dies with the job running; then the job's container ends
    // with nobody left to clean up after it.
    b.daemon.signal(Signal::SIGKILL);
    assert!(b.daemon.wait_exit(Duration::from_secs(10)).is_some());
    let _ = child.kill();
    let _ = child.wait();
    let rm = std::process::Command::new("/usr/bin/docker")
        .args(["rm", "-f"])
        .args(containers(&job.id, true))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{rm:?}");
    let pins = b.pins(&job.id);
    assert!(
        dir.exists() && !pins.is_empty(),
        "nothing was left to sweep"
    );
    let mounted = |p: &PathBuf| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", p.display()))
    };
    assert!(std::fs::read_dir(&pins[0])
        .unwrap()
        .flatten()
        .any(|e| mounted(&e.path())));
    // Young leftovers may belong to a job being prepared: a restart leaves
    // them; old ones whose container is gone are swept.
    let socket = b.daemon.socket.clone();
    b.daemon = Daemon::start(&b.bed, &socket);
    assert!(dir.exists(), "a young per-job directory was swept");
    b.daemon.signal(Signal::SIGTERM);
    assert!(b.daemon.wait_exit(Duration::from_secs(15)).is_some());
    for p in [&dir, &pins[0]] {
        let st = std::process::Command::new("touch")
            .args(["-h", "-d", "-10 minutes"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let victim = std::fs::read_dir("/storage1/fs1/alice").unwrap().count();
    b.daemon = Daemon::start(&b.bed, &socket);
    assert!(!dir.exists(), "the stale per-job directory is still there");
    assert!(b.pins(&job.id).is_empty(), "{:?}", b.pins(&job.id));
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !text.contains(&format!(" {}", pins[0].display())),
        "a stale pin is still mounted"
    );
    // Unpinning never deleted anything in the volume itself.
    assert_eq!(
        std::fs::read_dir("/storage1/fs1/alice").unwrap().count(),
        victim
    );
}

#[test]
fn a_restarted_broker_removes_a_step_container_with_the_files_of_the_rank_that_made_it() {
    // An MPI step's container on a node (mpi.ranks = "exec") is named for
    // the step, and holds the per-job directory and pins of the rank whose
    // plan made it: after a crash the restart removes them with it (its
    // berth.dirs label), not only once they are stale.
    let mut b = broker();
    b.daemon.signal(Signal::SIGKILL);
    assert!(b.daemon.wait_exit(Duration::from_secs(10)).is_some());
    let job = b.bed.job();
    let rank = format!("berth-{}-0-cafe0001", job.id);
    let step = format!("berth-mpi-vm-{}-0-{ALICE_UID}", job.id);
    let dir = b.bed.jobs_dir().join(&rank);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let pins = b.pin_dir().join(&rank);
    std::fs::create_dir_all(pins.join("0")).unwrap();
    // A label naming what is no berth job's is never followed.
    let keep = b.bed.jobs_dir().join("keep-me");
    std::fs::create_dir_all(&keep).unwrap();
    let socket = b.daemon.socket.clone();
    for (name, dirs) in [(step.as_str(), rank.as_str()), ("berth-other-1", "keep-me")] {
        let out = docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &format!("berth.broker={}", socket.display()),
            "--label",
            &format!("berth.dirs={dirs}"),
            "--label",
            &format!("berth.job={}", job.id),
            "berth-test/busybox:1",
            "sleep",
            "120",
        ]);
        assert!(out.code == Some(0), "{out:?}");
    }
    b.daemon = Daemon::start(&b.bed, &socket);
    b.bed
        .assert_cleaned_within(&job.id, Duration::from_secs(15));
    assert!(!dir.exists(), "the first rank's per-job directory is left");
    assert!(!pins.exists(), "the first rank's pins are left");
    assert!(keep.exists());
    let _ = std::fs::remove_dir(&keep);
}

#[test]
fn a_restarted_broker_kills_the_containers_a_killed_one_left_running() {
    let mut b = broker();
    let other = broker();
    let alice = alice();
    let job = b.bed.job();
    let mut child = b.spawn_as(&alice, &job, "sleep 120");
    let id = wait_running(&job.id, Duration::from_secs(30));
    // A job of another broker on the same engine must not be touched.
    let theirs = other.bed.job();
    let mut their_child = other.spawn_as(&alice, &theirs, "sleep 120");
    let their_id = wait_running(&theirs.id, Duration::from_secs(30));
    let dir = b.bed.wait_job_dir(&job.id, Duration::from_secs(10));
    // The broker crashes; its client goes with it. The container would
    // run on, orphaned, with nobody to stop it.
    b.daemon.signal(Signal::SIGKILL);
    assert!(b.daemon.wait_exit(Duration::from_secs(10)).is_some());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(inspect(&id)["State"]["Running"], true);
    let socket = b.daemon.socket.clone();
    b.daemon = Daemon::start(&b.bed, &socket);
    b.bed
        .assert_cleaned_within(&job.id, Duration::from_secs(15));
    assert!(!dir.exists(), "the orphan's per-job directory is left");
    assert!(b.pins(&job.id).is_empty(), "{:?}", b.pins(&job.id));
    // The other broker's job still runs.
    assert_eq!(inspect(&their_id)["State"]["Running"], true);
    let _ = their_child.kill();
    let _ = their_child.wait();
    other
        .bed
        .assert_cleaned_within(&theirs.id, Duration::from_secs(15));
}

#[test]
fn a_peer_that_exits_right_after_connecting_gets_no_container() {
    // The job is found from the peer's pid; a peer that is gone (its pid
    // may already name another process, in another job) cannot be placed:
    // refused, whatever the request says, and nothing is started.
    let b = broker();
    let alice = alice();
    let job = next_job_id();
    let conn = connect_as(&alice, &b.daemon.socket);
    let stream = conn.try_clone().unwrap();
    drop(conn); // the connecting process exits; this end stays open
    std::thread::sleep(Duration::from_millis(100));
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    proto::send_hello(
        &stream,
        &hello("env", job_env(&job), "echo RAN"),
        [fd, fd, fd],
    )
    .expect("send hello");
    let msgs = read_msgs(&stream);
    assert!(
        matches!(&msgs[..], [DaemonMsg::Error { code: 77, message }] if message.contains("cgroup.job")),
        "{msgs:?}"
    );
    assert!(b.bed.creates(&job).is_empty());
    b.bed.assert_no_leaks(&job);
}

#[test]
fn require_job_denies_a_login_shell_and_placement_none_runs_it_unplaced() {
    // From a login shell (no scheduler job) through the broker.
    let b = broker_with(|p| {
        set(p, "cgroup.require_job", true);
    });
    let alice = alice();
    let job = b.bed.job().unset("LSB_JOBID");
    let out = b.run_as(&alice, &job, "echo RAN");
    out.expect_denied(&["cgroup.job", "submit"]);
    assert!(!out.stdout.contains("RAN"));
    b.bed.assert_not_started(&job.id);

    let b = broker_with(|p| {
        set(p, "cgroup.require_job", false);
        set(p, "cgroup.placement", "none");
    });
    let job = b.bed.job();
    let out = b.run_as(&alice, &job, "grep :memory: /proc/self/cgroup");
    out.expect_ok();
    let c = b.bed.create_of(&job.id);
    assert!(c.host().get("CgroupParent").is_none(), "{:?}", c.host());
    assert!(c.host().get("Memory").is_none());
}

#[test]
fn a_users_explain_goes_through_the_broker_and_checks_the_image() {
    let b = broker();
    let alice = alice();
    let job = b.bed.job();
    let out = broker::output(user_command(&job, &alice, &b.bin, &["explain"], &["id"]));
    out.expect_ok();
    let id = image_id(IMAGE);
    assert!(out.stdout.contains(&format!("-> {id}")), "{}", out.stdout);
    assert!(!out.stdout.contains("not reachable"), "{}", out.stdout);
    let out = broker::output(user_command(
        &job,
        &alice,
        &b.bin,
        &["explain", "--json"],
        &["id"],
    ));
    out.expect_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["image_facts_checked"], true);
    assert_eq!(v["image"]["id"], id.as_str());
    // The real verdict on an image only the engine can judge.
    let job = b.bed.job().image("berth-test/noshell:1");
    let out = broker::output(user_command(&job, &alice, &b.bin, &["explain"], &["id"]));
    out.expect_denied(&["images.require_shell"]);
    // And nothing was started or audited as a launch.
    assert!(b
        .bed
        .engine_calls()
        .iter()
        .all(|c| !c.is_create() || c.is_probe()));
    assert!(b.bed.audit().iter().all(|r| r["event"] != "launch"));
}
