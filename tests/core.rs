//! Integration tests of berth's core (issue 2) on a real Docker engine:
//! identity, volumes, per-job /tmp and cleanup, workdir, image rules, the
//! container's security settings, a hostile caller environment, exit codes,
//! environment passing, `explain --json` and the audit log.
//!
//! Run as root on the testbed (`bash tests/setup/testbed.sh up`):
//! `cargo test --test core`. A missing engine fails every test.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const T10: Duration = Duration::from_secs(10);
const T30: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// jobs run as the user
// ---------------------------------------------------------------------------

/// The host's groups of berth-alice that berth passes on (>= min_gid 100).
fn alice_groups() -> Vec<u32> {
    let mut g: Vec<u32> = host_id("-G", ALICE)
        .into_iter()
        .filter(|g| *g >= 100)
        .collect();
    g.sort_unstable();
    g.dedup();
    g
}

fn check_ids(bed: &Bed, image: &str) {
    let out = bed
        .job()
        .image(image)
        .run("echo U=$(id -u); echo G=$(id -g); echo GS=$(id -G)");
    out.expect_ok();
    assert_eq!(
        out.field("U").map(numbers),
        Some(host_id("-u", ALICE)),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.field("G").map(numbers),
        Some(host_id("-g", ALICE)),
        "{}",
        out.stdout
    );
    let groups = numbers(out.field("GS").expect("id -G output"));
    assert!(
        !groups.contains(&0) && !groups.contains(&10),
        "image groups root/wheel leaked into the job: {groups:?}"
    );
    assert_eq!(groups, alice_groups(), "id -G inside vs host");
}

#[test]
fn job_runs_with_host_uid_gid_and_groups() {
    let bed = Bed::new();
    check_ids(&bed, IMAGE);
}

#[test]
fn group0_image_adds_no_groups_with_generated_passwd() {
    let bed = Bed::new();
    check_ids(&bed, "berth-test/group0:1");
}

#[test]
fn group0_image_adds_no_groups_without_generated_passwd() {
    let bed = Bed::with(|p| set(p, "identity.passwd", false));
    check_ids(&bed, "berth-test/group0:1");
    // Without generation the image's own /etc/group is what the job sees:
    // the control that root and wheel list berth-alice there.
    let out = bed
        .job()
        .image("berth-test/group0:1")
        .run("grep -c '^root:x:0:berth-alice' /etc/group");
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "1");
}

#[test]
fn whoami_prints_the_user_with_generated_passwd() {
    let bed = Bed::new();
    let out = bed.job().run("whoami; echo HOME=$HOME");
    out.expect_ok();
    assert_eq!(out.lines().first().copied(), Some(ALICE), "{}", out.stdout);
    assert_eq!(out.field("HOME"), Some("/home/berth-alice"));
}

// ---------------------------------------------------------------------------
// volumes
// ---------------------------------------------------------------------------

#[test]
fn ro_volume_is_read_only() {
    let bed = Bed::new();
    let job = bed.job().volumes("/storage1/fs1/alice/ro:/data:ro");
    let name = format!("berth-it-ro-{}", job.id);
    let out = job.run(&format!(
        "test -d /data && echo DIR=yes; touch /data/{name} 2>&1; echo RC=$?"
    ));
    out.expect_ok();
    assert_eq!(out.field("DIR"), Some("yes"), "{}", out.stdout);
    assert_ne!(
        out.field("RC"),
        Some("0"),
        "write succeeded: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Read-only file system"),
        "no EROFS: {}",
        out.stdout
    );
    assert!(!Path::new("/storage1/fs1/alice/ro").join(&name).exists());
    bed.assert_no_leaks(&job.id);
}

#[test]
fn rw_volume_write_creates_a_user_owned_file_on_the_host() {
    let bed = Bed::new();
    let dir = AliceDir::new("rw");
    let job = bed.job().volumes(&format!("{}:/data", dir.display()));
    let out = job.run("echo written-by-job > /data/out; echo RC=$?");
    out.expect_ok();
    assert_eq!(out.field("RC"), Some("0"), "{}", out.stdout);
    let f = dir.path.join("out");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "written-by-job\n");
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (ALICE_UID, ALICE_GID));
}

#[test]
fn volume_under_ro_root_is_mounted_read_only() {
    let bed = Bed::new();
    let job = bed.job().volumes("/scratch1/fs1/alice:/scratch");
    let name = format!("berth-it-scratch-{}", job.id);
    let out = job.run(&format!(
        "test -d /scratch && echo DIR=yes; touch /scratch/{name} 2>&1; echo RC=$?"
    ));
    out.expect_ok();
    assert_eq!(out.field("DIR"), Some("yes"), "{}", out.stdout);
    assert_ne!(
        out.field("RC"),
        Some("0"),
        "write succeeded: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Read-only file system"),
        "{}",
        out.stdout
    );
    assert!(!Path::new("/scratch1/fs1/alice").join(&name).exists());
}

#[test]
fn symlink_inside_the_root_mounts_its_target() {
    let bed = Bed::new();
    let job = bed.job().volumes("/storage1/fs1/alice/link-in:/data");
    let out = job.run("echo INO=$(stat -c %i /data); echo TYPE=$(stat -c %F /data)");
    out.expect_ok();
    let target = std::fs::metadata("/storage1/fs1/alice/ro").unwrap();
    assert_eq!(
        out.field("INO"),
        Some(target.ino().to_string().as_str()),
        "{}",
        out.stdout
    );
    assert_eq!(out.field("TYPE"), Some("directory"));
    let runs = bed.creates(&job.id);
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0]
            .mounts()
            .iter()
            .any(|(src, dst, _)| src.starts_with("/run/berth/mnt/") && dst == "/data"),
        "docker must bind the pinned mount, not a path the user can swap: {:?}",
        runs[0].mounts()
    );
    // The audit record names the resolved target.
    let audit = bed.audit_for(&job.id);
    assert!(
        audit
            .iter()
            .any(|r| r.to_string().contains("/storage1/fs1/alice/ro:/data")),
        "{audit:?}"
    );
}

/// A volume spec berth must refuse with 77 before docker is started.
fn check_volume_denied(spec: &str, needle: &str) {
    let bed = Bed::new();
    let job = bed.job().volumes(spec);
    let out = job.run("echo SHOULD-NOT-RUN");
    out.expect_denied(&[needle]);
    assert!(!out.stdout.contains("SHOULD-NOT-RUN"));
    bed.assert_not_started(&job.id);
    // Refused at planning or when the launcher pins the volume: either
    // way the job's last audit record is a denial with its rule.
    let records = bed.audit_for(&job.id);
    let last = records.last().expect("an audit record");
    assert_eq!(last["event"], "denial", "{records:?}");
    assert_eq!(last["decision"], "deny", "{records:?}");
    assert!(
        last["rule"].as_str().is_some_and(|r| !r.is_empty()),
        "{records:?}"
    );
}

macro_rules! volume_denied {
    ($($name:ident: $spec:expr, $needle:expr;)*) => {$(
        #[test]
        fn $name() {
            check_volume_denied($spec, $needle);
        }
    )*};
}

volume_denied! {
    volume_denied_etc_outside_roots: "/etc:/data", "/etc";
    volume_denied_home_outside_roots: "/home/berth-alice:/data", "/home/berth-alice";
    volume_denied_symlink_escaping_root: "/storage1/fs1/alice/link-out:/data", "/storage1/fs1/alice/link-out";
    volume_denied_dotdot_components: "/storage1/fs1/alice/../../../etc:/data", "/storage1/fs1/alice/../../../etc";
    volume_denied_prefix_look_alike: "/storage1x/fs1/alice:/data", "/storage1x/fs1/alice";
    volume_denied_colon_in_path: "/storage1/fs1/alice/we:ird:/data", "/storage1/fs1/alice/we:ird";
    volume_denied_comma_in_path: "/storage1/fs1/alice/com,ma:/data", "/storage1/fs1/alice/com,ma";
    volume_denied_relative_source: "alice:/data", "alice";
    volume_denied_single_file: "/storage1/fs1/alice/afile:/data", "/storage1/fs1/alice/afile";
    volume_denied_reserved_destination_etc: "/storage1/fs1/alice/ro:/etc", "/etc";
    volume_denied_reserved_destination_proc: "/storage1/fs1/alice/ro:/proc/x", "/proc/x";
    volume_denied_reserved_destination_root: "/storage1/fs1/alice/ro:/", "destination /";
    volume_denied_rw_under_ro_root: "/scratch1/fs1/alice:/scratch:rw", "/scratch1/fs1/alice";
    volume_denied_subdir_of_other_users_private_dir: "/storage1/fs1/bob-private/open:/data", "/storage1/fs1/bob-private/open";
}

// ---------------------------------------------------------------------------
// the per-job /tmp and cleanup
// ---------------------------------------------------------------------------

#[test]
fn per_job_tmp_is_private_and_removed() {
    let bed = Bed::new();
    let a = bed.job();
    let job_a = a.spawn(&format!("echo secret-of-a > /tmp/a && {HOLD}"));
    let dir_a = bed.wait_job_dir(&a.id, T30);
    assert!(
        wait_until(T30, || dir_a.join("tmp/a").exists()),
        "job A never wrote /tmp/a"
    );
    // On the host: a root-owned 0700 job directory, tmp/ owned by the user.
    assert_eq!(owner_mode(&dir_a), (0, 0o700));
    assert_eq!(owner_mode(&dir_a.join("tmp")), (ALICE_UID, 0o700));
    assert_eq!(
        std::fs::read_to_string(dir_a.join("tmp/a")).unwrap(),
        "secret-of-a\n"
    );

    let b = bed.job();
    let out = b.run(
        "if test -e /tmp/a; then echo SEEN=yes; else echo SEEN=no; fi; \
         echo STAT=$(stat -c '%u %a' /tmp); echo N=$(ls -A /tmp | wc -l)",
    );
    out.expect_ok();
    assert_eq!(out.field("SEEN"), Some("no"), "{}", out.stdout);
    assert_eq!(out.field("STAT"), Some("2001 700"), "{}", out.stdout);
    assert_eq!(out.field("N"), Some("0"), "{}", out.stdout);
    bed.assert_no_leaks(&b.id);

    release(&dir_a);
    job_a.finish(T30).expect_ok();
    bed.assert_no_leaks(&a.id);
}

#[test]
fn cleanup_does_not_follow_symlinks_planted_in_tmp() {
    let bed = Bed::new();
    // A victim directory on the host the job user can name but which the
    // cleanup (running as root) must not touch.
    let victim = AliceDir::new("victim");
    std::fs::write(victim.path.join("keep"), b"keep me\n").unwrap();
    let v = victim.display();
    let job = bed.job();
    let out = job.run(&format!(
        "ln -s {v} /tmp/dir-link && ln -s {v}/keep /tmp/file-link && mkdir /tmp/sub && \
         ln -s {v} /tmp/sub/deeper && echo N=$(ls -A /tmp | wc -l)"
    ));
    out.expect_ok();
    assert_eq!(out.field("N"), Some("3"), "{}", out.stdout);
    bed.assert_no_leaks(&job.id);
    assert_eq!(
        std::fs::read_to_string(victim.path.join("keep")).unwrap(),
        "keep me\n"
    );
}

#[test]
fn sigterm_to_berth_stops_the_container_and_cleans_up() {
    let bed = Bed::new();
    let job = bed.job();
    let run = job.spawn("sleep 30");
    wait_running(&job.id, T30);
    bed.wait_job_dir(&job.id, T10);
    signal(run.pid(), Signal::SIGTERM);
    let out = run.finish(Duration::from_secs(20));
    // TERM is forwarded to the container: sh dies of it, docker-init
    // reports 128+15, and berth returns the container's code.
    out.expect_code(143);
    bed.assert_cleaned_within(&job.id, T10);
}

#[test]
fn sigkill_of_berth_is_cleaned_up_by_the_reaper() {
    let bed = Bed::new();
    let job = bed.job();
    let run = job.spawn("sleep 30");
    wait_running(&job.id, T30);
    bed.wait_job_dir(&job.id, T10);
    signal(run.pid(), Signal::SIGKILL);
    let out = run.finish(T30);
    assert_eq!(out.signal, Some(9), "berth was not killed: {out:?}");
    bed.assert_cleaned_within(&job.id, T10);
}

// ---------------------------------------------------------------------------
// working directory
// ---------------------------------------------------------------------------

#[test]
fn workdir_is_ls_subcwd_not_the_image_workdir() {
    let bed = Bed::new();
    // The process cwd differs, so only LS_SUBCWD can yield this answer.
    let out = bed.job().cwd("/").run("echo PWD=$(pwd); ls hello.txt");
    out.expect_ok();
    assert_eq!(out.field("PWD"), Some(ALICE_DIR), "{}", out.stdout);
    assert!(
        out.stdout.contains("hello.txt"),
        "cwd not mounted: {}",
        out.stdout
    );
}

#[test]
fn workdir_falls_back_to_the_process_cwd() {
    let bed = Bed::new();
    let out = bed
        .job()
        .unset("LS_SUBCWD")
        .cwd("/scratch1/fs1/alice")
        .run("echo PWD=$(pwd)");
    out.expect_ok();
    assert_eq!(
        out.field("PWD"),
        Some("/scratch1/fs1/alice"),
        "{}",
        out.stdout
    );
}

#[test]
fn workdir_proc_self_fd_is_refused() {
    let bed = Bed::new();
    let job = bed.job().env("LSF_DOCKER_WORKDIR", "/proc/self/fd/3");
    job.run("pwd").expect_denied(&["/proc/self/fd/3"]);
    bed.assert_not_started(&job.id);
}

#[test]
fn workdir_proc_is_refused() {
    let bed = Bed::new();
    let job = bed.job().env("LSF_DOCKER_WORKDIR", "/proc");
    job.run("pwd").expect_denied(&["/proc"]);
    bed.assert_not_started(&job.id);
}

#[test]
fn submission_dir_outside_roots_is_refused() {
    let bed = Bed::new();
    let job = bed.job().env("LS_SUBCWD", "/home/berth-alice");
    job.run("pwd").expect_denied(&["/home/berth-alice"]);
    bed.assert_not_started(&job.id);
}

// ---------------------------------------------------------------------------
// images
// ---------------------------------------------------------------------------

#[test]
fn image_without_shell_is_refused() {
    let bed = Bed::new();
    let job = bed.job().image("berth-test/noshell:1");
    job.run("echo ok")
        .expect_denied(&["berth-test/noshell:1", "/bin/sh"]);
    bed.assert_not_started(&job.id);
}

#[test]
fn image_with_foreign_entrypoint_is_refused() {
    let bed = Bed::new();
    let job = bed.job().image("berth-test/entry-other:1");
    let out = job.run("echo ok");
    out.expect_denied(&["ENTRYPOINT", "/bin/echo"]);
    assert!(!out.stdout.contains("hijacked"));
    bed.assert_not_started(&job.id);
}

#[test]
fn image_with_shell_entrypoint_runs() {
    let bed = Bed::new();
    let out = bed.job().image("berth-test/entry-sh:1").run("echo ok");
    out.expect_ok();
    assert_eq!(out.stdout, "ok\n");
}

#[test]
fn usrmerge_image_runs() {
    let bed = Bed::new();
    let out = bed
        .job()
        .image("berth-test/usrmerge:1")
        .run("echo ok; readlink /bin");
    out.expect_ok();
    assert_eq!(out.lines(), vec!["ok", "usr/bin"]);
}

#[test]
fn image_not_in_allow_list_is_refused() {
    let bed = Bed::new();
    let job = bed.job().image("busybox:latest");
    job.run("echo ok")
        .expect_denied(&["docker.io/library/busybox:latest"]);
    bed.assert_not_started(&job.id);
}

#[test]
fn missing_allowed_image_is_refused_when_pull_is_never() {
    let bed = Bed::with(|p| set(p, "images.pull", "never"));
    let job = bed.job().image("docker.io/berth-test/nope:1");
    job.run("echo ok")
        .expect_denied(&["docker.io/berth-test/nope:1"]);
    bed.assert_not_started(&job.id);
}

// ---------------------------------------------------------------------------
// the container's security settings, seen by the engine
// ---------------------------------------------------------------------------

#[test]
fn running_container_has_the_safe_settings() {
    let bed = Bed::with(|p| set(p, "docker.pids_limit", 123));
    let job = bed.job();
    let run = job.spawn(HOLD);
    let id = wait_running(&job.id, T30);
    let dir = bed.wait_job_dir(&job.id, T10);
    let c = inspect(&id);
    let hc = &c["HostConfig"];
    assert_eq!(hc["Privileged"], false);
    let cap_drop: Vec<&str> = hc["CapDrop"]
        .as_array()
        .expect("CapDrop")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(cap_drop.contains(&"ALL"), "CapDrop {cap_drop:?}");
    assert!(
        hc["CapAdd"].is_null() || hc["CapAdd"].as_array().is_some_and(|a| a.is_empty()),
        "CapAdd {}",
        hc["CapAdd"]
    );
    let secopt: Vec<&str> = hc["SecurityOpt"]
        .as_array()
        .expect("SecurityOpt")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        secopt
            .iter()
            .any(|s| *s == "no-new-privileges" || *s == "no-new-privileges:true"),
        "SecurityOpt {secopt:?}"
    );
    assert_eq!(hc["PidsLimit"], 123);
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["IpcMode"], "private");
    assert_eq!(hc["PidMode"], "");
    assert_eq!(hc["UTSMode"], "");
    assert_eq!(hc["UsernsMode"], "");
    assert_eq!(hc["Init"], true);
    assert_eq!(hc["AutoRemove"], true);
    assert!(
        hc["Devices"].is_null() || hc["Devices"].as_array().is_some_and(|a| a.is_empty()),
        "Devices {}",
        hc["Devices"]
    );
    assert_eq!(c["Config"]["User"], "2001:2001");
    assert_eq!(c["Config"]["Labels"]["berth.job"], job.id.as_str());
    assert_eq!(c["Config"]["Labels"]["berth.user"], ALICE);
    // Run by image id, every mount a bind (no named volume).
    assert_eq!(c["Image"], image_id(IMAGE).as_str());
    for m in c["Mounts"].as_array().expect("Mounts") {
        assert_eq!(m["Type"], "bind", "mount {m}");
    }
    release(&dir);
    run.finish(T30).expect_ok();
    bed.assert_no_leaks(&job.id);
}

// ---------------------------------------------------------------------------
// a hostile caller environment
// ---------------------------------------------------------------------------

#[test]
fn hostile_caller_environment_does_not_reach_docker_or_the_job() {
    let bed = Bed::new();
    let job = bed
        .job()
        .env("DOCKER_HOST", "tcp://127.0.0.1:1")
        .env("LD_PRELOAD", "/nonexistent.so")
        .env("PATH", "/evil")
        .env("DOCKER_CONFIG", "/evil")
        .env("DOCKER_CONTEXT", "evil")
        .env("DOCKER_CERT_PATH", "/evil")
        .env("LD_LIBRARY_PATH", "/evil");
    let out = job.run("env");
    out.expect_ok();

    // DOCKER_HOST did not redirect berth: the policy's engine socket (the
    // bed's recorder) got the create, and its body carries none of the
    // caller's hostile values.
    let runs = bed.creates(&job.id);
    assert_eq!(runs.len(), 1, "creates: {runs:?}");
    let env = runs[0].env();
    assert!(
        !env.iter().any(|e| e.starts_with("LD_")
            || e.starts_with("DOCKER_")
            || e.starts_with("PATH=")
            || e.contains("evil")
            || e.contains("nonexistent")),
        "create body env {env:?}"
    );

    let inside: Vec<&str> = out.stdout.lines().collect();
    assert!(
        !inside
            .iter()
            .any(|l| l.starts_with("LD_") || l.starts_with("DOCKER_")),
        "LD_*/DOCKER_* reached the container: {inside:?}"
    );
    assert!(
        !inside
            .iter()
            .any(|l| l.contains("evil") || l.contains("nonexistent")),
        "the caller's values reached the container: {inside:?}"
    );
    // PATH is the image's (none set: docker's default), not the caller's.
    let want = inspect(IMAGE)["Config"]["Env"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .filter_map(|v| v.as_str())
                .find_map(|v| v.strip_prefix("PATH=").map(str::to_string))
        })
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    assert!(
        inside.contains(&format!("PATH={want}").as_str()),
        "container PATH is not the image's {want}: {inside:?}"
    );
}

#[test]
fn policy_path_is_never_taken_from_the_environment() {
    // A permissive policy the caller tries to select through the environment.
    let bed = Bed::new();
    let job = bed
        .job()
        .policy(None)
        .env("BERTH_POLICY", &bed.policy_path().display().to_string())
        .env(
            "BERTH_POLICY_FILE",
            &bed.policy_path().display().to_string(),
        );
    let default = Path::new("/etc/berth/policy.toml");
    let absent_before = !default.exists();
    let out = job.run("echo ran");
    let absent = absent_before && !default.exists();
    // Whatever /etc/berth/policy.toml holds on this node, the env-named
    // policy was not used: its audit log and docker spy saw nothing.
    assert!(
        bed.audit().is_empty(),
        "env-named policy was used: {:?}",
        bed.audit()
    );
    assert!(
        bed.engine_calls().is_empty(),
        "env-named policy's engine socket was used"
    );
    if absent {
        // No default policy: berth refuses (78) and names the file it wanted.
        out.expect_code(78);
        assert!(
            out.stderr.contains("/etc/berth/policy.toml"),
            "{}",
            out.stderr
        );
        assert!(!out.stdout.contains("ran"));
    }
    remove_containers(&job.id);

    // Control: the same policy given with --policy is used and audited.
    let job = bed.job();
    job.run("echo ran").expect_ok();
    assert_eq!(bed.audit_for(&job.id).len(), 2);
}

// ---------------------------------------------------------------------------
// exit codes
// ---------------------------------------------------------------------------

#[test]
fn container_exit_code_is_berths_exit_code() {
    let bed = Bed::new();
    let job = bed.job();
    let out = job.run("echo before; exit 3");
    out.expect_code(3);
    assert_eq!(out.stdout, "before\n");
    bed.assert_no_leaks(&job.id);
}

#[test]
fn denial_exits_77() {
    let bed = Bed::new();
    let job = bed.job().volumes("/etc:/data");
    job.run("true").expect_denied(&["/etc"]);
    bed.assert_not_started(&job.id);
}

#[test]
fn unreachable_daemon_exits_69_naming_the_socket() {
    let bed = Bed::new();
    let sock = bed.path().join("dead.sock");
    // A socket file nobody listens on: connect() is refused.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut bed = bed;
    set(&mut bed.policy, "docker.socket", sock.display().to_string());
    bed.write_policy();
    let job = bed.job();
    let out = job.run("echo ran");
    out.expect_code(69);
    assert!(
        out.stderr.contains(&sock.display().to_string()),
        "message does not name the socket: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("ran"));
    bed.assert_not_started(&job.id);
}

#[test]
fn malformed_request_exits_64() {
    let bed = Bed::new();
    let job = bed.job().env("LSF_DOCKER_SHM_SIZE", "lots");
    let out = job.run("echo ran");
    out.expect_code(64);
    assert!(out.stderr.contains("LSF_DOCKER_SHM_SIZE"), "{}", out.stderr);
    bed.assert_not_started(&job.id);
}

#[test]
fn policy_writable_by_others_exits_78() {
    let bed = Bed::new();
    let p = bed.policy_path();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let job = bed.job();
    let out = job.run("echo ran");
    out.expect_code(78);
    assert!(
        out.stderr.contains(&p.display().to_string()),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("ran"));
    assert!(bed.audit().is_empty());
    bed.assert_not_started(&job.id);
}

// ---------------------------------------------------------------------------
// environment passing
// ---------------------------------------------------------------------------

#[test]
fn job_variable_reaches_the_container() {
    let bed = Bed::new();
    let out = bed.job().env("FOO", "bar").run("echo FOO=${FOO-unset}");
    out.expect_ok();
    assert_eq!(out.field("FOO"), Some("bar"));
}

#[test]
fn preserve_environment_false_stops_job_variables() {
    let bed = Bed::new();
    let out = bed
        .job()
        .env("FOO", "bar")
        .env("LSF_DOCKER_PRESERVE_ENVIRONMENT", "false")
        .run("echo FOO=${FOO-unset}");
    out.expect_ok();
    assert_eq!(out.field("FOO"), Some("unset"));
}

#[test]
fn env_file_readable_by_the_user_adds_variables() {
    let bed = Bed::new();
    let f = bed.file(
        "job.env",
        "# a comment\nFROM_FILE=hello file\nOTHER=2\n",
        0o600,
    );
    std::os::unix::fs::chown(&f, Some(ALICE_UID), Some(ALICE_GID)).unwrap();
    let out = bed
        .job()
        .env("LSF_DOCKER_ENV_FILE", &f.display().to_string())
        .run("echo FROM_FILE=${FROM_FILE-unset}; echo OTHER=${OTHER-unset}");
    out.expect_ok();
    assert_eq!(out.field("FROM_FILE"), Some("hello file"));
    assert_eq!(out.field("OTHER"), Some("2"));
}

#[test]
fn env_file_only_root_can_read_is_refused() {
    let bed = Bed::new();
    let secret = bed.file("root.env", "SECRET_TOKEN=topsecret-berth-it\n", 0o600);
    for (file, marker) in [
        (secret.display().to_string(), "topsecret"),
        ("/etc/shadow".to_string(), "root:"),
    ] {
        let job = bed.job().env("LSF_DOCKER_ENV_FILE", &file);
        let out = job.run("env");
        out.expect_denied(&[&file]);
        assert!(
            !out.stdout.contains(marker) && !out.stderr.contains(marker),
            "content of {file} leaked: {out:?}"
        );
        bed.assert_not_started(&job.id);
    }
    let audit = std::fs::read_to_string(bed.audit_path()).unwrap_or_default();
    assert!(!audit.contains("topsecret"), "audit log holds the secret");
}

// ---------------------------------------------------------------------------
// berth explain --json
// ---------------------------------------------------------------------------

#[test]
fn explain_json_prints_the_plan_without_running_it() {
    let bed = Bed::new();
    let job = bed.job();
    let out = job.explain(true, "echo hi");
    out.expect_ok();
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let argv: Vec<&str> = v["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(argv[0], "/usr/bin/docker");
    // The create body that is sent is shown too, describing the same
    // container.
    let body = &v["create_body"];
    assert_eq!(body["Image"], v["image"]["id"], "{body}");
    assert_eq!(body["HostConfig"]["CapDrop"][0], "ALL", "{body}");
    assert!(
        argv.contains(&"run") && argv.contains(&"--cap-drop=ALL"),
        "{argv:?}"
    );
    let id = v["image"]["id"].as_str().expect("image id");
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(id, image_id(IMAGE));
    assert!(
        argv.contains(&id),
        "argv does not run the image by id: {argv:?}"
    );
    assert_eq!(v["user"]["uid"], ALICE_UID);
    assert_eq!(v["workdir"], ALICE_DIR);
    let mounts = v["mounts"].as_array().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["dst"] == ALICE_DIR && m["src"] == ALICE_DIR),
        "{mounts:?}"
    );
    assert!(mounts.iter().any(|m| m["dst"] == "/tmp"), "{mounts:?}");
    let tmp = v["tmp"]["dir"].as_str().expect("tmp dir");
    assert!(Path::new(tmp).starts_with(bed.jobs_dir()), "{tmp}");
    // Nothing was started or created.
    assert!(!Path::new(tmp).exists());
    bed.assert_not_started(&job.id);
}

#[test]
fn explain_json_denial_exits_77_with_a_deny_document() {
    let bed = Bed::new();
    let job = bed.job().volumes("/etc:/data");
    let out = job.explain(true, "echo hi");
    out.expect_code(77);
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "volumes.source");
    assert!(
        v["value"].as_str().is_some_and(|s| s.contains("/etc")),
        "{v}"
    );
    bed.assert_not_started(&job.id);
}

// ---------------------------------------------------------------------------
// the audit log
// ---------------------------------------------------------------------------

#[test]
fn audit_log_records_launch_exit_and_denial() {
    let bed = Bed::new();
    let job = bed.job();
    job.run("exit 5").expect_code(5);
    let recs = bed.audit_for(&job.id);
    let launch: Vec<_> = recs.iter().filter(|r| r["event"] == "launch").collect();
    let exit: Vec<_> = recs.iter().filter(|r| r["event"] == "exit").collect();
    assert_eq!(
        (launch.len(), exit.len(), recs.len()),
        (1, 1, 2),
        "{recs:?}"
    );
    assert_eq!(launch[0]["decision"], "allow");
    assert_eq!(launch[0]["user"], ALICE);
    assert_eq!(launch[0]["uid"], ALICE_UID);
    assert_eq!(launch[0]["image_id"], image_id(IMAGE).as_str());
    assert_eq!(exit[0]["exit_code"], 5);

    let denied = bed.job().volumes("/etc:/data");
    denied.run("true").expect_code(77);
    let recs = bed.audit_for(&denied.id);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["event"], "denial");
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[0]["rule"], "volumes.source");
    assert!(recs[0].get("exit_code").is_none());
}
