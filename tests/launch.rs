//! The Engine-API launcher (SPEC §13) on a real engine: the job's streams,
//! a large environment, engine failures, the network sandbox berth skips,
//! the hostname, terminating in every state, and `berth explain`'s command
//! describing the very container berth creates.
//!
//! Run as root on the testbed (`bash tests/run.sh`); a missing engine FAILS.

#[path = "common/broker.rs"]
mod broker;
mod common;

use common::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

const T30: Duration = Duration::from_secs(30);

/// `berth run -- SCRIPT` with `input` on its stdin; (stdout, stderr, code).
fn run_with_input(job: &Job<'_>, script: &str, input: Vec<u8>) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let mut child = job
        .command(&["run"], &[script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    (out.stdout, out.stderr, out.status.code())
}

fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn binary_stdin_reaches_the_job_and_streams_stay_separate() {
    let bed = Bed::new();
    let job = bed.job();
    let input = pseudo_random(3 << 20);
    let (out, err, code) = run_with_input(
        &job,
        "cat; echo to-err >&2; echo to-out-after; echo more-err >&2; exit 7",
        input.clone(),
    );
    assert_eq!(code, Some(7), "{}", String::from_utf8_lossy(&err));
    let mut want = input;
    want.extend_from_slice(b"to-out-after\n");
    assert!(
        out == want,
        "stdout differs ({} vs {} bytes)",
        out.len(),
        want.len()
    );
    assert_eq!(String::from_utf8_lossy(&err), "to-err\nmore-err\n");
    bed.assert_no_leaks(&job.id);
}

#[test]
fn stdin_eof_reaches_the_job() {
    let bed = Bed::new();
    let job = bed.job();
    // `wc -c` only ends at EOF: it must see it, and the job must go on.
    let (out, _, code) = run_with_input(&job, "wc -c; echo after-eof", b"abcde".to_vec());
    assert_eq!(code, Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["5", "after-eof"]
    );
    // No stdin at all (/dev/null) is an immediate EOF too.
    let out = bed.job().run("cat; echo done");
    out.expect_ok();
    assert_eq!(out.stdout, "done\n");
}

#[test]
fn a_reader_that_closes_early_hangs_neither_the_job_nor_berth() {
    let bed = Bed::new();
    let job = bed.job();
    let mut child = job
        .command(
            &["run"],
            &["yes | head -c 200000000; echo finished >&2; exit 0"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 4];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"y\ny\n");
    // `| head -1`: the reader goes away.
    drop(child.stdout.take());
    let status = wait_child(&mut child, Duration::from_secs(60))
        .expect("berth hung after its stdout reader closed");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("finished"), "{err}");
    bed.assert_no_leaks(&job.id);
}

#[test]
fn a_one_megabyte_environment_reaches_the_job_intact() {
    let bed = Bed::new();
    let mut job = bed.job();
    let mut want = String::new();
    for i in 0..8 {
        // 128 kB values: far over docker's env-file token limit (64 kB).
        let v: String = pseudo_random(128_000)
            .iter()
            .map(|b| (b'a' + b % 26) as char)
            .collect();
        let v = format!("{i}{}", &v[1..]);
        want += &format!("{}\n", v.len());
        want += &format!("{}\n", &v[..16]);
        job = job.env(&format!("BIG{i}"), &v);
    }
    let mut script = String::new();
    for i in 0..8 {
        script +=
            &format!("printf %s \"$BIG{i}\" | wc -c; printf %s \"$BIG{i}\" | head -c 16; echo; ");
    }
    let out = job.run(&script);
    out.expect_ok();
    let got: Vec<String> = out.stdout.lines().map(|l| l.trim().to_string()).collect();
    let want: Vec<String> = want.lines().map(str::to_string).collect();
    assert_eq!(got, want);
    let c = bed.create_of(&job.id);
    assert_eq!(c.env_var("BIG3").map(|v| v.len()), Some(128_000));
}

#[test]
fn an_engine_refusing_create_is_70_with_the_engines_message() {
    let bed = Bed::new();
    bed.recorder()
        .refuse_creates(500, "Conflict. simulated refusal from the engine");
    let job = bed.job();
    let out = job.run("echo never");
    out.expect_code(70);
    assert!(
        out.stderr.contains("simulated refusal from the engine") && out.stderr.contains("HTTP 500"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("never"));
    bed.assert_no_leaks(&job.id);
    // Never docker's 125 for a refused create.
    assert_ne!(out.code, Some(125));
}

#[test]
fn an_engine_lost_mid_job_is_69_and_leaves_no_container() {
    let bed = Bed::new();
    let job = bed.job();
    let run = job.spawn(HOLD);
    let name = wait_running(&job.id, T30);
    // The engine goes away under the running job: its wait and streams
    // break. berth must say "requeue" (69), not invent an exit code.
    std::thread::sleep(Duration::from_millis(200));
    bed.recorder().cut();
    let out = run.finish(T30);
    out.expect_code(69);
    assert!(out.stderr.contains("requeue"), "{}", out.stderr);
    // Once the engine answers again, nothing of the job is left.
    bed.assert_cleaned_within(&job.id, T30);
    assert!(inspect_opt(&name).is_none(), "container {name} left behind");
}

fn inspect_opt(name: &str) -> Option<serde_json::Value> {
    let out = docker(&["inspect", name]);
    (out.code == Some(0)).then(|| serde_json::from_str::<serde_json::Value>(&out.stdout).ok())?
}

fn host_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn network_none_has_only_loopback_in_a_namespace_of_its_own() {
    let bed = Bed::new();
    let job = bed.job();
    let out = job.run(
        "echo IFS=$(ls /sys/class/net | tr '\\n' ' '); echo NS=$(readlink /proc/self/ns/net); echo HOST=$(hostname); grep -c localhost /etc/hosts",
    );
    out.expect_ok();
    assert_eq!(
        out.field("IFS").map(str::trim),
        Some("lo"),
        "{}",
        out.stdout
    );
    let ns = out.field("NS").unwrap();
    assert!(ns.starts_with("net:["), "{ns}");
    assert_ne!(
        ns,
        host_netns(),
        "the job shares the host's network namespace"
    );
    // The node's hostname, and an /etc/hosts that names it.
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(out.field("HOST"), Some(node.as_str()));
    let c = bed.create_of(&job.id);
    assert_eq!(c.body["NetworkDisabled"], true);
    assert_eq!(c.host()["NetworkMode"], "none");
    assert_eq!(c.body["Hostname"], node.as_str());
    assert!(
        c.mounts()
            .iter()
            .any(|(_, dst, ro)| dst == "/etc/hosts" && *ro),
        "{:?}",
        c.mounts()
    );
}

#[test]
fn bridge_and_host_networks_behave_as_dockers() {
    let bed = Bed::with(|p| set(p, "docker.networks", vec!["none", "bridge", "host"]));
    let job = bed.job().env("LSF_DOCKER_NETWORK", "bridge");
    let out = job
        .run("echo IFS=$(ls /sys/class/net | tr '\\n' ' '); echo NS=$(readlink /proc/self/ns/net)");
    out.expect_ok();
    let ifs: Vec<&str> = out.field("IFS").unwrap().split_whitespace().collect();
    assert!(ifs.contains(&"lo") && ifs.contains(&"eth0"), "{ifs:?}");
    assert_ne!(out.field("NS").unwrap(), host_netns());
    assert_eq!(bed.create_of(&job.id).body["NetworkDisabled"], false);

    let job = bed.job().env("LSF_DOCKER_NETWORK", "host");
    let out = job.run("echo NS=$(readlink /proc/self/ns/net)");
    out.expect_ok();
    assert_eq!(out.field("NS").unwrap(), host_netns());
}

#[test]
fn hostname_engine_gives_dockers_default() {
    let bed = Bed::with(|p| set(p, "docker.hostname", "engine"));
    let job = bed.job();
    let out = job.run("hostname");
    out.expect_ok();
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_ne!(out.stdout.trim(), node);
    assert!(bed.create_of(&job.id).body.get("Hostname").is_none());
}

/// The fields that make two containers the same job, from `docker inspect`.
fn essence(v: &serde_json::Value) -> serde_json::Value {
    let c = &v["Config"];
    let h = &v["HostConfig"];
    let mut mounts: Vec<String> = v["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {} {}", m["Source"], m["Destination"], m["RW"]))
        .collect();
    mounts.sort();
    let mut labels = c["Labels"].clone();
    labels.as_object_mut().unwrap().remove("berth.explain");
    serde_json::json!({
        "User": c["User"], "WorkingDir": c["WorkingDir"], "Entrypoint": c["Entrypoint"],
        "Cmd": c["Cmd"], "Image": c["Image"], "Hostname": c["Hostname"], "Labels": labels,
        "CapDrop": h["CapDrop"], "CapAdd": h["CapAdd"], "SecurityOpt": h["SecurityOpt"],
        "PidsLimit": h["PidsLimit"], "NetworkMode": h["NetworkMode"], "IpcMode": h["IpcMode"],
        "GroupAdd": h["GroupAdd"], "Init": h["Init"], "AutoRemove": h["AutoRemove"],
        "Log": h["LogConfig"]["Type"], "Tmpfs": h["Tmpfs"], "ShmSize": h["ShmSize"],
        "ExtraHosts": h["ExtraHosts"], "Privileged": h["Privileged"], "Mounts": mounts,
        "Tty": c["Tty"], "OpenStdin": c["OpenStdin"],
    })
}

#[test]
fn explains_docker_run_creates_the_same_container_as_berth() {
    let bed = Bed::with(|p| set(p, "mounts.pin", false));
    let job = bed.job().volumes(&format!("{ALICE_DIR}:/data:ro"));
    let run = job.spawn(HOLD);
    let id = wait_running(&job.id, T30);
    let ours = inspect(&id);
    let name = ours["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    // explain's plan has a nonce of its own: point its command at the
    // running job's per-job files, under another name.
    let ex = job.explain(true, HOLD);
    ex.expect_ok();
    let v: serde_json::Value = serde_json::from_str(&ex.stdout).unwrap();
    let planned = v["name"].as_str().unwrap().to_string();
    let twin = format!("{name}-twin");
    let mut argv: Vec<String> = v["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if a.starts_with("--name=") {
                format!("--name={twin}")
            } else {
                a.replace(&planned, &name)
            }
        })
        .collect();
    assert_eq!(argv[0], "/usr/bin/docker");
    argv.insert(2, "--detach".into());
    let cli = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(&job.env)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let twin_v = inspect(&twin);
    let _ = docker(&["rm", "-f", &twin]);
    let job_dir = bed.wait_job_dir(&job.id, T30);
    release(&job_dir);
    run.finish(T30).expect_ok();
    let (a, b) = (essence(&ours), essence(&twin_v));
    let diffs: Vec<String> = a
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, va)| *va != &b[k.as_str()])
        .map(|(k, va)| format!("{k}: berth {va} vs explain's command {}", b[k.as_str()]))
        .collect();
    assert!(diffs.is_empty(), "{diffs:#?}");
    // The one thing a docker command cannot say: berth skips docker's
    // network sandbox for network none (the namespace is the same: only lo).
    assert_eq!(ours["Config"]["NetworkDisabled"], true);
    // And explain --json carries the body that was sent.
    let sent = bed.create_of(&job.id);
    for k in ["User", "WorkingDir", "Cmd", "Entrypoint", "Image"] {
        assert_eq!(sent.body[k], v["create_body"][k], "{k}");
    }
}

#[test]
fn sigterm_ends_a_paused_job_and_one_still_being_created() {
    let bed = Bed::new();
    // Paused (an LSF suspend), then terminated.
    let job = bed.job();
    let run = job.spawn(HOLD);
    let name = wait_running(&job.id, T30);
    assert_eq!(docker(&["pause", &name]).code, Some(0));
    let t = Instant::now();
    signal(run.pid(), Signal::SIGTERM);
    let out = run.finish(T30);
    out.expect_code(143);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    bed.assert_cleaned_within(&job.id, Duration::from_secs(10));

    // Terminated while the container is being prepared or created.
    let job = bed.job();
    let run = job.spawn("echo started; sleep 30");
    assert!(wait_until(T30, || !bed.job_dirs(&job.id).is_empty()));
    signal(run.pid(), Signal::SIGTERM);
    let out = run.finish(T30);
    assert_eq!(out.code, Some(143), "{out:?}");
    bed.assert_cleaned_within(&job.id, Duration::from_secs(10));
}

#[test]
fn sigterm_ends_a_paused_job_through_the_broker() {
    let mut bed = Bed::new();
    let socket = broker::use_broker_socket(&mut bed);
    let bin = broker::install_berth(bed.path());
    let _daemon = broker::Daemon::start(&bed, &socket);
    let alice = broker::TestUser::get(ALICE);
    let job = bed.job();
    let mut child = broker::user_command(&job, &alice, &bin, &["run"], &[HOLD])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let name = wait_running(&job.id, T30);
    assert_eq!(docker(&["pause", &name]).code, Some(0));
    let t = Instant::now();
    signal(child.id(), Signal::SIGTERM);
    let status = wait_child(&mut child, T30).expect("berth client hung");
    assert_eq!(status.code(), Some(143));
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    bed.assert_cleaned_within(&job.id, Duration::from_secs(10));
}
