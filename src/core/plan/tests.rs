//! Every planner rule, with a fake filesystem and user table.

use super::*;
use crate::core::error::Denial;
use crate::core::identity::fake::FakeDb;
use crate::core::identity::resolve;
use crate::core::request::from_env;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// A filesystem of directories, files and symlinks; `denied` paths are
/// unreadable to the user.
#[derive(Default)]
struct FakeFs {
    dirs: Vec<&'static str>,
    files: Vec<&'static str>,
    links: HashMap<&'static str, &'static str>,
    denied: Vec<&'static str>,
}

impl FakeFs {
    fn site() -> FakeFs {
        FakeFs {
            dirs: vec![
                "/storage1",
                "/storage1/fs1",
                "/storage1/fs1/alice",
                "/storage1/fs1/alice/proj",
                "/storage1/fs1/lab",
                "/storage1/fs1/lab/open",
                "/scratch1",
                "/scratch1/fs1",
                "/scratch1/fs1/alice",
                "/storage1x",
                "/storage1x/fs1",
                "/etc",
                "/home",
                "/home/alice",
                "/gpfs",
                "/gpfs/real",
                "/gpfs/real/alice",
            ],
            files: vec!["/storage1/fs1/alice/file.txt", "/etc/passwd"],
            links: HashMap::from([
                ("/storage1/fs1/alice/out", "/etc"),
                ("/storage1/fs1/alice/in", "/storage1/fs1/alice/proj"),
                ("/storage1/fs1/alice/toscratch", "/scratch1/fs1/alice"),
                ("/linked", "/gpfs/real"),
            ]),
            denied: vec!["/storage1/fs1/lab/open"],
        }
    }
}

impl HostFs for FakeFs {
    fn canonicalize(&self, p: &Path) -> io::Result<PathBuf> {
        let mut out = PathBuf::from("/");
        for c in p.components().skip(1) {
            out.push(c);
            let key = out.to_str().unwrap().to_string();
            if let Some((_, t)) = self.links.iter().find(|(k, _)| **k == key) {
                out = PathBuf::from(t);
            }
            let s = out.to_str().unwrap();
            if !self.dirs.contains(&s) && !self.files.contains(&s) {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
        }
        Ok(out)
    }
    fn is_dir(&self, p: &Path) -> io::Result<bool> {
        Ok(self.dirs.contains(&p.to_str().unwrap()))
    }
    fn user_can_access(&self, _id: &Identity, paths: &[PathBuf]) -> Result<Vec<bool>> {
        Ok(paths
            .iter()
            .map(|p| !self.denied.iter().any(|d| p.starts_with(d)))
            .collect())
    }
}

const POLICY: &str = r#"
[cgroup]
require_job = false
[identity]
relays = ["lsfadmin"]
[images]
allow = ["docker.io/library/*", "registry.example.edu/*"]
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[[volumes]]
root = "/scratch1/fs1"
mode = "ro"
[[volumes]]
root = "/linked"
mode = "rw"
[docker]
networks = ["none", "bridge", "host"]
ports = ["8000-8999"]
cap_add = ["NET_BIND_SERVICE"]
[mounts]
pin = false
"#;

fn facts() -> ImageFacts {
    ImageFacts {
        id: format!("sha256:{}", "ab".repeat(32)),
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        workdir: "/opt".into(),
        user: "".into(),
        has_shell: true,
        volumes: vec![],
        owner: None,
    }
}

fn ctx() -> Context {
    Context {
        nonce: "0badcafe".into(),
        env_file_vars: vec![],
        ..Default::default()
    }
}

fn try_plan_with(
    policy: &str,
    env: &[(&str, &str)],
    f: Option<ImageFacts>,
    cmd: &[&str],
) -> Result<LaunchPlan> {
    try_plan_in(policy, env, f, cmd, &ctx())
}

fn try_plan_in(
    policy: &str,
    env: &[(&str, &str)],
    f: Option<ImageFacts>,
    cmd: &[&str],
    c: &Context,
) -> Result<LaunchPlan> {
    let policy = Policy::parse(policy, "test").unwrap();
    let mut e: BTreeMap<String, String> = BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".into(), "alpine".into()),
        ("LSB_JOBID".into(), "42".into()),
        ("LS_SUBCWD".into(), "/storage1/fs1/alice/proj".into()),
    ]);
    for (k, v) in env {
        e.insert(k.to_string(), v.to_string());
    }
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let req = from_env(&e, None, cmd.iter().map(|s| s.to_string()).collect())?;
    plan(&policy, &id, &req, f.as_ref(), &FakeFs::site(), c)
}

fn try_plan(env: &[(&str, &str)]) -> Result<LaunchPlan> {
    try_plan_with(POLICY, env, Some(facts()), &["python train.py"])
}

fn denied(env: &[(&str, &str)]) -> Denial {
    match try_plan(env) {
        Err(Error::Denied(d)) => d,
        other => panic!("{env:?}: expected a denial, got {other:?}"),
    }
}

fn has(p: &LaunchPlan, arg: &str) -> bool {
    p.argv.iter().any(|a| a == arg)
}

#[test]
fn a_plain_job() {
    let p = try_plan(&[]).unwrap();
    assert_eq!(p.argv[0], "/usr/bin/docker");
    assert_eq!(p.argv[1], "run");
    for a in [
        "--rm",
        "--init",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--pids-limit=4096",
        "--user=2001:2001",
        "--group-add=3001",
        "--group-add=3002",
        "--network=none",
        "--ipc=private",
        "--name=berth-42-0-0badcafe",
        "--entrypoint=/bin/sh",
        "--workdir=/storage1/fs1/alice/proj",
        "--cap-add=NET_BIND_SERVICE",
        "--label=berth.job=42",
        "--label=berth.user=alice",
    ] {
        assert!(has(&p, a), "missing {a} in {:?}", p.argv);
    }
    // Run by id, with the command as one /bin/sh -c script at the end.
    let n = p.argv.len();
    assert_eq!(
        &p.argv[n - 3..],
        &[facts().id, "-c".into(), "python train.py".into()]
    );
    for a in &p.argv {
        assert!(
            !a.contains("privileged")
                && !a.starts_with("--pid=")
                && !a.starts_with("--userns")
                && !a.starts_with("--volumes-from")
                && a != "-d"
                && !a.starts_with("--restart")
                && !a.starts_with("--runtime")
                && !a.starts_with("--device"),
            "{a}"
        );
    }
    assert_eq!(p.workdir, PathBuf::from("/storage1/fs1/alice/proj"));
    assert_eq!(p.mounts[0].kind, MountKind::Workdir);
    assert_eq!(
        p.tmp.dir,
        Some(PathBuf::from("/var/tmp/berth/berth-42-0-0badcafe/tmp"))
    );
    assert!(has(
        &p,
        "--mount=type=bind,src=/var/tmp/berth/berth-42-0-0badcafe/tmp,dst=/tmp"
    ));
    assert!(has(
        &p,
        "--mount=type=bind,src=/var/tmp/berth/berth-42-0-0badcafe/passwd,dst=/etc/passwd,readonly"
    ));
    assert!(p.passwd.as_ref().unwrap().contains("alice:x:2001:2001:"));
    assert!(p.group.as_ref().unwrap().starts_with("root:x:0:\n"));
    assert!(!p.group.as_ref().unwrap().contains("root:x:0:alice"));
}

#[test]
fn several_args_are_quoted_one_arg_is_a_script() {
    let p = try_plan_with(
        POLICY,
        &[],
        Some(facts()),
        &["echo", "a b", "it's", "$HOME"],
    )
    .unwrap();
    assert_eq!(p.argv.last().unwrap(), r#"echo 'a b' 'it'\''s' '$HOME'"#);
    let p = try_plan_with(POLICY, &[], Some(facts()), &["echo $HOME; exit 3"]).unwrap();
    assert_eq!(p.argv.last().unwrap(), "echo $HOME; exit 3");
}

#[test]
fn volumes_allowed_and_modes() {
    let p = try_plan(&[(
        "LSF_DOCKER_VOLUMES",
        "/storage1/fs1/alice:/data:ro /scratch1/fs1/alice:/scratch",
    )])
    .unwrap();
    assert!(has(
        &p,
        "--mount=type=bind,src=/storage1/fs1/alice,dst=/data,readonly"
    ));
    // The root's mode caps an unspecified mode.
    assert!(has(
        &p,
        "--mount=type=bind,src=/scratch1/fs1/alice,dst=/scratch,readonly"
    ));
    let p = try_plan(&[("LSF_DOCKER_VOLUMES", "/storage1/fs1/alice/in:/in")]).unwrap();
    assert!(
        has(&p, "--mount=type=bind,src=/storage1/fs1/alice/proj,dst=/in"),
        "symlinks inside a root resolve"
    );
    let p = try_plan(&[("LSF_DOCKER_VOLUMES", "/linked/alice:/l")]).unwrap();
    assert!(
        has(&p, "--mount=type=bind,src=/gpfs/real/alice,dst=/l"),
        "a symlinked root compares resolved paths"
    );
    let p = try_plan(&[("LSF_DOCKER_VOLUMES", "/storage1/fs1/alice")]).unwrap();
    assert!(has(
        &p,
        "--mount=type=bind,src=/storage1/fs1/alice,dst=/storage1/fs1/alice"
    ));
}

#[test]
fn volumes_refused() {
    for (spec, rule) in [
        ("/etc:/data", "volumes.source"),
        ("/home/alice:/h", "volumes.source"),
        ("/storage1/fs1/alice/out:/x", "volumes.source"),
        ("/storage1/fs1/alice/toscratch:/x", "volumes.source"),
        ("/storage1/fs1/alice/../../../etc:/x", "volumes.source"),
        ("/storage1/fs1/./alice:/x", "volumes.source"),
        ("/storage1x/fs1:/x", "volumes.source"),
        ("/storage1/fs1/we:ird:/x", "volumes.source"),
        ("/storage1/fs1/com,ma:/x", "volumes.source"),
        ("/storage1/fs1/a=b:/x", "volumes.source"),
        ("/storage1/fs1/q\"uote:/x", "volumes.source"),
        ("alice:/x", "volumes.source"),
        ("myvolume:/x", "volumes.source"),
        ("/storage1/fs1/alice/file.txt:/f", "volumes.source"),
        ("/storage1/fs1/alice/missing:/m", "volumes.source"),
        ("/storage1/fs1/lab/open:/o", "volumes.access"),
        ("/:/host", "volumes.source"),
        ("/storage1/fs1/alice:/etc", "mounts.reserved"),
        ("/storage1/fs1/alice:/etc/ssl", "mounts.reserved"),
        ("/storage1/fs1/alice:/proc/self", "mounts.reserved"),
        ("/storage1/fs1/alice:/", "mounts.reserved"),
        ("/storage1/fs1/alice:/tmp", "mounts.reserved"),
        ("/storage1/fs1/alice:/usr/lib", "mounts.reserved"),
        ("/storage1/fs1/alice:data", "volumes.destination"),
        ("/storage1/fs1/alice:/a/../etc", "volumes.destination"),
        (
            "/storage1/fs1/alice:/d,readonly=false",
            "volumes.destination",
        ),
        ("/storage1/fs1/alice:/d:z", "volumes.source"),
        ("/storage1/fs1/alice:/d:shared", "volumes.source"),
        ("/scratch1/fs1/alice:/s:rw", "volumes.mode"),
        (
            "/storage1/fs1/alice:/d /storage1/fs1/alice/proj:/d",
            "volumes.overlap",
        ),
        (
            "/storage1/fs1/alice:/storage1/fs1/alice/proj",
            "volumes.overlap",
        ),
    ] {
        let d = denied(&[("LSF_DOCKER_VOLUMES", spec)]);
        assert_eq!(d.rule, rule, "{spec}: {d}");
        assert!(!d.hint.is_empty(), "{spec}: a denial says what to do");
    }
}

#[test]
fn denial_message_names_value_and_roots() {
    let d = denied(&[("LSF_DOCKER_VOLUMES", "/home/alice/../../etc:/x")]);
    let m = Error::Denied(d).to_string();
    assert!(
        m.contains("/home/alice/../../etc") && m.starts_with("denied:"),
        "{m}"
    );
    let d = denied(&[("LSF_DOCKER_VOLUMES", "/etc:/x")]);
    let m = d.to_string();
    assert!(m.contains("/storage1/fs1, /scratch1/fs1"), "{m}");
}

#[test]
fn denial_is_one_line_whatever_the_value() {
    // Found by fuzzing: a newline in the value made a denial span lines
    // (a forged "berth: …" line on stderr).
    for env in [
        [("LSF_DOCKER_WORKDIR", "/proc/x\nberth: ok")],
        [("LSF_DOCKER_ENTRYPOINT", "/bin/x\nberth: ok")],
    ] {
        let m = denied(&env).to_string();
        assert!(!m.contains('\n'), "{m:?}");
    }
}

#[test]
fn workdir_rules() {
    // Same directory as a volume: mounted once.
    let p = try_plan(&[("LSF_DOCKER_VOLUMES", "/storage1/fs1/alice/proj")]).unwrap();
    assert_eq!(
        p.mounts
            .iter()
            .filter(|m| m.dst == Path::new("/storage1/fs1/alice/proj"))
            .count(),
        1
    );
    // Under a volume, the working directory must exist in it: docker
    // would create it as root on the host.
    let vol = ("LSF_DOCKER_VOLUMES", "/storage1/fs1/alice:/data");
    let p = try_plan(&[vol, ("LSF_DOCKER_WORKDIR", "/data/proj")]).unwrap();
    assert!(has(&p, "--workdir=/data/proj"));
    for w in [
        "/data/new",
        "/data/proj/deeper",
        "/data/out",
        "/data/file.txt",
    ] {
        let d = denied(&[vol, ("LSF_DOCKER_WORKDIR", w)]);
        assert_eq!(d.rule, "workdir.path", "{w}: {d}");
    }
    // A volume inside another needs its mount point there already.
    let ok = "/storage1/fs1/alice:/data /scratch1/fs1/alice:/data/proj";
    assert!(try_plan(&[("LSF_DOCKER_VOLUMES", ok)]).is_ok());
    for v in [
        "/storage1/fs1/alice:/data /scratch1/fs1/alice:/data/new",
        "/storage1/fs1/alice:/data /scratch1/fs1/alice:/data/out/x",
        "/scratch1/fs1/alice:/storage1/fs1/alice/proj/newdir",
    ] {
        let d = denied(&[("LSF_DOCKER_VOLUMES", v)]);
        assert_eq!(d.rule, "volumes.destination", "{v}: {d}");
    }
    // Explicit container workdir outside the roots: set, not mounted.
    let p = try_plan(&[("LSF_DOCKER_WORKDIR", "/opt/app")]).unwrap();
    assert!(has(&p, "--workdir=/opt/app"));
    assert!(p.mounts.iter().all(|m| m.kind != MountKind::Workdir));
    for (w, rule) in [
        ("/proc/self/fd/3", "workdir.path"),
        ("/proc", "workdir.path"),
        ("/sys/kernel", "workdir.path"),
        ("relative", "workdir.path"),
        ("/a/../proc", "workdir.path"),
    ] {
        assert_eq!(denied(&[("LSF_DOCKER_WORKDIR", w)]).rule, rule, "{w}");
    }
    assert_eq!(denied(&[("LS_SUBCWD", "/home/alice")]).rule, "workdir.root");
    assert_eq!(
        denied(&[("LS_SUBCWD", "/storage1/fs1/alice/out")]).rule,
        "workdir.source"
    );
    let p = try_plan_with(
        &format!("{POLICY}\n[workdir]\nmount_cwd = false\n"),
        &[("LS_SUBCWD", "/home/alice")],
        Some(facts()),
        &["x"],
    )
    .unwrap();
    assert!(
        has(&p, "--workdir=/home/alice") && p.mounts.iter().all(|m| m.kind != MountKind::Workdir)
    );
}

#[test]
fn image_rules() {
    assert_eq!(
        denied(&[("LSB_CONTAINER_IMAGE", "evil.example.com/x")]).rule,
        "images.allow"
    );
    let mut f = facts();
    f.entrypoint = vec!["/usr/bin/python".into()];
    let d = try_plan_with(POLICY, &[], Some(f.clone()), &["x"]).unwrap_err();
    assert!(
        matches!(&d, Error::Denied(d) if d.rule == "images.entrypoint" && d.message.contains("/usr/bin/python")),
        "{d}"
    );
    let p = try_plan_with(
        &POLICY.replace("[images]", "[images]\nentrypoint = \"any\""),
        &[],
        Some(f),
        &["x"],
    );
    assert!(p.is_ok());
    let mut f = facts();
    f.entrypoint = vec!["/bin/sh".into(), "-c".into()];
    assert!(try_plan_with(POLICY, &[], Some(f), &["x"]).is_ok());
    let mut f = facts();
    f.has_shell = false;
    let d = try_plan_with(POLICY, &[], Some(f), &["x"]).unwrap_err();
    assert!(
        matches!(&d, Error::Denied(d) if d.rule == "images.require_shell" && d.message.contains("/bin/sh")),
        "{d}"
    );
    // Bundles-only sites refuse registry images; sites without a cache refuse bundles.
    let d = try_plan_with(
        &format!("{POLICY}\n[bundles]\ncache = \"/c\"\nonly = true\n"),
        &[],
        Some(facts()),
        &["x"],
    )
    .unwrap_err();
    assert!(matches!(d, Error::Denied(d) if d.rule == "bundles.only"));
    assert_eq!(
        denied(&[("LSB_CONTAINER_IMAGE", "bundle:pt")]).rule,
        "bundles.cache"
    );
    // Without facts (explain with no engine) the plan names the reference.
    let p = try_plan_with(POLICY, &[], None, &["x"]).unwrap();
    assert!(
        p.image.id.is_none()
            && p.argv
                .contains(&"docker.io/library/alpine:latest".to_string())
    );
}

#[test]
fn entrypoint_and_raw_args() {
    assert_eq!(
        denied(&[("LSF_DOCKER_ENTRYPOINT", "/usr/bin/python")]).rule,
        "images.entrypoint"
    );
    let p = try_plan(&[("LSF_DOCKER_ENTRYPOINT", "/bin/sh")]).unwrap();
    assert!(has(&p, "--entrypoint=/bin/sh"));
    let any = POLICY.replace(
        "[images]",
        "[images]\nentrypoint = \"any\"\nraw_args = true",
    );
    let p = try_plan_with(
        &any,
        &[("LSF_DOCKER_ENTRYPOINT", "/usr/bin/python")],
        Some(facts()),
        &["train.py", "--x"],
    )
    .unwrap();
    assert!(
        has(&p, "--entrypoint=/usr/bin/python")
            && p.argv.ends_with(&["train.py".into(), "--x".into()])
    );
    let raw = [("LSF_DOCKER_RUN_RAW_ARGS", "1")];
    let d = try_plan_with(
        POLICY,
        &raw,
        Some(facts()),
        &[crate::core::request::PLACE_HOLDER],
    )
    .unwrap_err();
    assert!(matches!(d, Error::Denied(d) if d.rule == "images.raw_args"));
    let p = try_plan_with(
        &any,
        &raw,
        Some(facts()),
        &[crate::core::request::PLACE_HOLDER],
    )
    .unwrap();
    assert_eq!(p.argv.last().unwrap(), &facts().id);
    assert!(!p.argv.iter().any(|a| a.starts_with("--entrypoint")));
}

#[test]
fn network_ipc_shm_ports_hosts() {
    assert!(has(
        &try_plan(&[("LSF_DOCKER_NETWORK", "bridge")]).unwrap(),
        "--network=bridge"
    ));
    assert!(has(
        &try_plan(&[("LSF_DOCKER_NETWORK", "host")]).unwrap(),
        "--network=host"
    ));
    assert_eq!(
        denied(&[("LSF_DOCKER_NETWORK", "container:abc")]).rule,
        "docker.networks"
    );
    assert_eq!(
        denied(&[("LSF_DOCKER_NETWORK", "macvlan0")]).rule,
        "docker.networks"
    );
    assert_eq!(denied(&[("LSF_DOCKER_IPC", "host")]).rule, "docker.ipc");
    assert_eq!(
        denied(&[("LSF_DOCKER_IPC", "container:x")]).rule,
        "docker.ipc"
    );
    assert!(has(
        &try_plan(&[("LSF_DOCKER_IPC", "none")]).unwrap(),
        "--ipc=none"
    ));
    assert!(has(
        &try_plan(&[("LSF_DOCKER_SHM_SIZE", "512m")]).unwrap(),
        "--shm-size=536870912"
    ));
    let p = try_plan(&[("LSF_DOCKER_SHM_SIZE", "512m")]).unwrap();
    assert_eq!(
        p.spec.create_body(&p.env)["HostConfig"]["ShmSize"],
        536870912u64
    );
    assert_eq!(
        denied(&[("LSF_DOCKER_SHM_SIZE", "2g")]).rule,
        "docker.max_shm_size"
    );
    let p = try_plan(&[
        ("LSF_DOCKER_PORTS", "8080:80"),
        ("LSF_DOCKER_NETWORK", "bridge"),
    ])
    .unwrap();
    assert!(has(&p, "--publish=8080:80/tcp"));
    assert_eq!(
        denied(&[
            ("LSF_DOCKER_PORTS", "22:22"),
            ("LSF_DOCKER_NETWORK", "bridge")
        ])
        .rule,
        "docker.ports"
    );
    assert_eq!(
        denied(&[("LSF_DOCKER_PORTS", "8080:80")]).rule,
        "docker.ports"
    );
    assert!(has(
        &try_plan(&[("LSF_DOCKER_ADD_HOST", "db:10.1.2.3")]).unwrap(),
        "--add-host=db:10.1.2.3"
    ));
    let no_hosts = POLICY.replace("[docker]", "[docker]\nadd_host = false");
    let d = try_plan_with(
        &no_hosts,
        &[("LSF_DOCKER_ADD_HOST", "db:10.1.2.3")],
        Some(facts()),
        &["x"],
    )
    .unwrap_err();
    assert!(matches!(d, Error::Denied(d) if d.rule == "docker.add_host"));
}

#[test]
fn environment_is_filtered_and_never_in_argv() {
    let p = try_plan(&[
        ("LD_PRELOAD", "/x.so"),
        ("DOCKER_HOST", "tcp://x"),
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("BASH_FUNC_x%%", "() { id; }"),
        ("SECRET_TOKEN", "hunter2"),
        ("MULTI", "a\nb"),
    ])
    .unwrap();
    let names: Vec<&str> = p.env.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"SECRET_TOKEN"));
    for bad in ["LD_PRELOAD", "DOCKER_HOST", "BASH_FUNC_x%%", "MULTI"] {
        assert!(!names.contains(&bad), "{bad} passed");
    }
    // The job's NVIDIA_VISIBLE_DEVICES is replaced by berth's own.
    assert_eq!(env_of(&p, "NVIDIA_VISIBLE_DEVICES"), ["void"]);
    assert!(
        p.argv.iter().all(|a| !a.contains("hunter2")),
        "values never reach argv"
    );
    let p = try_plan(&[("LSF_DOCKER_PRESERVE_ENVIRONMENT", "false"), ("FOO", "1")]).unwrap();
    // Only what berth itself sets.
    assert_eq!(
        p.env,
        [("NVIDIA_VISIBLE_DEVICES".to_string(), "void".to_string())]
    );
    // Env files override, and pass through the same filter.
    let policy = Policy::parse(POLICY, "t").unwrap();
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let e = BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".to_string(), "alpine".to_string()),
        ("LS_SUBCWD".into(), "/storage1/fs1/alice".into()),
        ("A".into(), "1".into()),
    ]);
    let req = from_env(&e, None, vec!["x".into()]).unwrap();
    let c = Context {
        nonce: "aa".into(),
        env_file_vars: vec![("A".into(), "2".into()), ("LD_AUDIT".into(), "x".into())],
        ..Default::default()
    };
    let p = plan(&policy, &id, &req, Some(&facts()), &FakeFs::site(), &c).unwrap();
    assert!(
        p.env.contains(&("A".into(), "2".into())) && !p.env.iter().any(|(k, _)| k == "LD_AUDIT")
    );
    // The scheduler's own variables (LSF's job file copy) are set even
    // when the job's environment is not preserved, and win over the job's.
    let mut e = e.clone();
    e.insert("LSF_DOCKER_PRESERVE_ENVIRONMENT".into(), "false".into());
    e.insert("LSB_JOBFILENAME".into(), "/home/alice/.lsbatch/1.42".into());
    let req = from_env(&e, None, vec!["x".into()]).unwrap();
    let c = Context {
        nonce: "aa".into(),
        scheduler_env: vec![("LSB_JOBFILENAME".into(), "/tmp/.lsbatch/1.42".into())],
        ..Default::default()
    };
    let p = plan(&policy, &id, &req, Some(&facts()), &FakeFs::site(), &c).unwrap();
    let jf: Vec<_> = p
        .env
        .iter()
        .filter(|(k, _)| k == "LSB_JOBFILENAME")
        .collect();
    assert_eq!(
        jf,
        [&(
            "LSB_JOBFILENAME".to_string(),
            "/tmp/.lsbatch/1.42".to_string()
        )]
    );
    assert!(!p.env.iter().any(|(k, _)| k == "A"), "{:?}", p.env);
}

#[test]
fn pinned_volumes_are_bound_from_a_root_only_staging_dir() {
    let pinned = POLICY.replace("pin = false", "pin = true");
    let p = try_plan_with(
        &pinned,
        &[("LSF_DOCKER_VOLUMES", "/storage1/fs1/alice:/data:ro")],
        Some(facts()),
        &["x"],
    )
    .unwrap();
    let stage = PathBuf::from("/run/berth/mnt/berth-42-0-0badcafe");
    let vol = p
        .mounts
        .iter()
        .find(|m| m.kind == MountKind::Volume)
        .unwrap();
    assert_eq!(vol.src, PathBuf::from("/storage1/fs1/alice"));
    assert_eq!(vol.staged, Some(stage.join("0")));
    let wd = p
        .mounts
        .iter()
        .find(|m| m.kind == MountKind::Workdir)
        .unwrap();
    assert_eq!(wd.staged, Some(stage.join("1")));
    assert!(has(
        &p,
        "--mount=type=bind,src=/run/berth/mnt/berth-42-0-0badcafe/0,dst=/data,readonly"
    ));
    // Never under the job dir or tmp.base: removing those recursively must
    // not be able to reach a user's volume.
    assert!(!stage.starts_with(p.job_dir.parent().unwrap()));
    assert_eq!(p.pins_dir, Some(stage));
    let e = Policy::parse("[mounts]\npin_dir = \"/var/tmp/berth/mnt\"\n", "t").unwrap_err();
    assert!(e.to_string().contains("pin_dir"), "{e}");
    // berth's own files (tmp, passwd) are not pinned.
    assert!(p
        .mounts
        .iter()
        .filter(|m| matches!(
            m.kind,
            MountKind::Tmp | MountKind::Passwd | MountKind::Group
        ))
        .all(|m| m.staged.is_none()));
}

#[test]
fn tmp_kinds() {
    let p = try_plan_with(
        &format!("{POLICY}\n[tmp]\nkind = \"tmpfs\"\nsize = \"2g\"\n"),
        &[],
        Some(facts()),
        &["x"],
    )
    .unwrap();
    assert!(has(
        &p,
        "--tmpfs=/tmp:rw,nosuid,nodev,size=2147483648,mode=1777"
    ));
    assert!(p.tmp.dir.is_none() && p.mounts.iter().all(|m| m.kind != MountKind::Tmp));
}

#[test]
fn passwd_generation_off() {
    let p = try_plan_with(
        &POLICY.replace("[identity]", "[identity]\npasswd = false"),
        &[],
        Some(facts()),
        &["x"],
    )
    .unwrap();
    assert!(p.passwd.is_none() && !p.argv.iter().any(|a| a.contains("/etc/passwd")));
    assert!(
        has(&p, "--user=2001:2001"),
        "numeric uid:gid keeps image groups out"
    );
}

#[test]
fn array_elements_have_distinct_names_and_dirs() {
    let a = try_plan(&[("LSB_JOBINDEX", "1")]).unwrap();
    let b = try_plan(&[("LSB_JOBINDEX", "2")]).unwrap();
    assert_ne!(a.name, b.name);
    assert_ne!(a.job_dir, b.job_dir);
    assert!(has(&a, "--label=berth.index=1"));
}

/// A refusal is a denial (77) or a malformed request (64), never an
/// internal error or anything else.
fn refused_cleanly(e: &Error) -> bool {
    matches!(e, Error::Denied(_) | Error::Malformed(_))
}

/// Sources the fake site accepts (a directory under a root, the user can
/// read it, links staying inside): (source, where it resolves, the root's
/// mode).
const GOOD_SOURCES: &[(&str, &str, Mode)] = &[
    ("/storage1/fs1/alice", "/storage1/fs1/alice", Mode::Rw),
    (
        "/storage1/fs1/alice/proj",
        "/storage1/fs1/alice/proj",
        Mode::Rw,
    ),
    (
        "/storage1/fs1/alice/in",
        "/storage1/fs1/alice/proj",
        Mode::Rw,
    ),
    ("/storage1/fs1/lab", "/storage1/fs1/lab", Mode::Rw),
    ("/scratch1/fs1/alice", "/scratch1/fs1/alice", Mode::Ro),
    ("/linked/alice", "/gpfs/real/alice", Mode::Rw),
];

/// Destination components: reserved ones, ones under which only some paths
/// are reserved (`/var`), and free ones.
const DST_SEGMENTS: &[&str] = &[
    "data", "etc", "proc", "usr", "bin", "tmp", "opt", "x", "dev", "run", "var", "lib", "sys",
    "boot", "scratch", "home",
];

proptest! {
    /// Whatever path a job names, a planned mount's source is under an
    /// allowed root, after resolution, and has no character docker parses;
    /// anything else is refused cleanly.
    #[test]
    fn mounts_stay_under_roots(segs in proptest::collection::vec("(alice|lab|open|out|in|toscratch|\\.\\.|\\.|proj|file\\.txt|x:y|a,b|)", 0..6), root in "(/storage1/fs1|/scratch1/fs1|/storage1x/fs1|/etc|/linked|)") {
        let src = format!("{root}/{}", segs.join("/"));
        match try_plan(&[("LSF_DOCKER_VOLUMES", &format!("{src}:/data"))]) {
            Ok(p) => {
                let m = p.mounts.iter().find(|m| m.dst == Path::new("/data")).unwrap();
                let ok = ["/storage1/fs1", "/scratch1/fs1", "/gpfs/real"].iter().any(|r| m.src.starts_with(r));
                prop_assert!(ok, "{} -> {}", src, m.src.display());
                prop_assert!(unsafe_char(&m.src).is_none());
                prop_assert!(!m.src.components().any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir)));
                if m.src.starts_with("/scratch1/fs1") { prop_assert_eq!(m.mode, Mode::Ro); }
            }
            Err(e) => prop_assert!(refused_cleanly(&e), "{}: {:?}", src, e),
        }
    }

    /// The accept side of `mounts_stay_under_roots`: a good source, with any
    /// mode its root allows, at a free destination, is always planned, from
    /// where it resolves, at most as writable as its root and the request.
    #[test]
    fn good_volumes_are_always_planned(
        (src, real, root_mode) in proptest::sample::select(GOOD_SOURCES),
        mode in "(|:ro|:rw)",
        dst in "/(data|in|out|d[a-z]{1,6})(/[a-z]{1,4}){0,2}",
    ) {
        prop_assume!(!(root_mode == Mode::Ro && mode == ":rw"));
        // `d[a-z]{1,6}` can spell /dev, which is reserved.
        prop_assume!(dst != "/dev" && !dst.starts_with("/dev/"));
        let spec = format!("{src}:{dst}{mode}");
        let p = match try_plan(&[("LSF_DOCKER_VOLUMES", &spec)]) {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{spec} refused: {e}"))),
        };
        let m = p.mounts.iter().find(|m| m.dst == Path::new(&dst)).unwrap();
        prop_assert_eq!(&m.src, Path::new(real));
        let want = if mode == ":ro" || root_mode == Mode::Ro { Mode::Ro } else { Mode::Rw };
        prop_assert_eq!(m.mode, want, "{}", spec);
    }

    /// No destination a job names lands on a reserved path; anything else
    /// is refused cleanly.
    #[test]
    fn destinations_never_reserved(dst in "(/[a-z.]{0,5}){1,4}") {
        match try_plan(&[("LSF_DOCKER_VOLUMES", &format!("/storage1/fs1/alice:{dst}"))]) {
            Ok(p) => {
                for m in p.mounts.iter().filter(|m| m.kind == MountKind::Volume) {
                    for r in crate::core::policy::DEFAULT_RESERVED {
                        let r = Path::new(r);
                        prop_assert!(if r == Path::new("/") { m.dst != r } else { !m.dst.starts_with(r) }, "{}", m.dst.display());
                    }
                }
            }
            Err(e) => prop_assert!(refused_cleanly(&e), "{}: {:?}", dst, e),
        }
    }

    /// Exactly the destinations under a reserved path are refused (by
    /// mounts.reserved); every other one is planned where it was asked.
    #[test]
    fn destinations_refused_exactly_when_reserved(segs in proptest::collection::vec(proptest::sample::select(DST_SEGMENTS), 1..4)) {
        let dst = format!("/{}", segs.join("/"));
        let reserved = crate::core::policy::DEFAULT_RESERVED
            .iter()
            .any(|r| *r != "/" && Path::new(&dst).starts_with(r));
        match try_plan(&[("LSF_DOCKER_VOLUMES", &format!("/storage1/fs1/alice:{dst}"))]) {
            Ok(p) => {
                prop_assert!(!reserved, "{} is reserved but was planned", dst);
                prop_assert!(p.mounts.iter().any(|m| m.kind == MountKind::Volume && m.dst == Path::new(&dst)));
            }
            Err(Error::Denied(d)) => {
                prop_assert!(reserved, "{} is free but was refused: {}", dst, d);
                prop_assert_eq!(d.rule, "mounts.reserved");
            }
            Err(e) => return Err(TestCaseError::fail(format!("{dst}: {e:?}"))),
        }
    }

    /// Any environment: the job is planned (no variable here is the
    /// request's), and what is passed has valid names, no newlines, and
    /// nothing matching the deny list; argv never carries values.
    #[test]
    fn env_filter_holds(vars in proptest::collection::vec(("[A-Za-z_%=-][A-Za-z0-9_%-]{0,8}", "[ -~\n]{0,10}"), 0..8)) {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).filter(|(k, _)| !k.starts_with("LS")).collect();
        let p = match try_plan(&pairs) {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{pairs:?} refused: {e}"))),
        };
        for (k, v) in &p.env {
            prop_assert!(crate::core::envfilter::valid_name(k));
            prop_assert!(!v.contains('\n'));
            prop_assert!(!k.starts_with("LD_") && !k.starts_with("DOCKER_"));
            prop_assert!(!k.starts_with("NVIDIA_") || (k == "NVIDIA_VISIBLE_DEVICES" && v == "void"));
        }
        for a in &p.argv {
            for (k, v) in &p.env {
                prop_assert!(v.len() < 3 || !a.contains(&format!("{k}={v}")), "argv carries {}={}: {}", k, v, a);
            }
        }
    }
}

/// A plan for a caller the kernel puts in `cgroup` (a memory-controller
/// path), with `env` on top of the standard request.
fn plan_in_cgroup(policy: &str, cgroup: Option<&str>, env: &[(&str, &str)]) -> Result<LaunchPlan> {
    plan_in(policy, cgroup, env, None)
}

/// [`plan_in_cgroup`], with the GPUs the launcher found.
fn plan_in(
    policy: &str,
    cgroup: Option<&str>,
    env: &[(&str, &str)],
    gpus: Option<crate::core::devices::Gpus>,
) -> Result<LaunchPlan> {
    let policy = Policy::parse(policy, "test").unwrap();
    let mut e: BTreeMap<String, String> = BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".into(), "alpine".into()),
        ("LS_SUBCWD".into(), "/storage1/fs1/alice/proj".into()),
    ]);
    for (k, v) in env {
        e.insert(k.to_string(), v.to_string());
    }
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let req = from_env(&e, None, vec!["x".into()]).unwrap();
    let c = Context {
        nonce: "cafe".into(),
        job_cgroup: cgroup.map(|p| {
            let job = crate::core::cgroup::find_job(&format!("4:memory:{p}\n"), 2001)
                .expect("a job cgroup");
            (job, Some("0-1".to_string()), Some(64 << 20))
        }),
        env_slurm_job_id: e.get("SLURM_JOB_ID").cloned(),
        gpus,
        ..Default::default()
    };
    plan(&policy, &id, &req, Some(&facts()), &FakeFs::site(), &c)
}

const TASK: &str = "/slurm_vm/uid_2001/job_17/step_0/task_0";

#[test]
fn a_job_cgroup_places_the_container_and_names_the_job() {
    let p = plan_in_cgroup(POLICY, Some(TASK), &[]).unwrap();
    assert_eq!(p.job.id, "17");
    assert_eq!(p.name, "berth-17-0-cafe");
    let pl = p.placement.as_ref().unwrap();
    assert_eq!(pl.parent, TASK);
    let h = &p.spec.create_body(&p.env)["HostConfig"];
    assert_eq!(h["CgroupParent"], TASK);
    assert_eq!(h["CpusetCpus"], "0-1");
    assert_eq!(h["Memory"], 64u64 << 20);
    assert_eq!(h["MemorySwap"], 64u64 << 20);
    assert!(has(
        &p,
        "--cgroup-parent=/slurm_vm/uid_2001/job_17/step_0/task_0"
    ));
    // The environment's id, when it is the same job, is fine.
    let p = plan_in_cgroup(
        POLICY,
        Some(TASK),
        &[("LSB_JOBID", "17"), ("SLURM_JOB_ID", "17")],
    );
    assert_eq!(p.unwrap().job.id, "17");
    // placement = none: the job is still checked, nothing is placed.
    let none = format!("{POLICY}\n[cgroup]\nplacement = \"none\"\nrequire_job = false\n")
        .replace("[cgroup]\nrequire_job = false\n[identity]", "[identity]");
    let p = plan_in_cgroup(&none, Some(TASK), &[]).unwrap();
    assert!(p.placement.is_none() && p.spec.cgroup_parent.is_none());
    assert_eq!(p.job.id, "17");
}

#[test]
fn a_forged_job_id_is_denied() {
    for env in [
        [("LSB_JOBID", "18"), ("X", "")],
        [("SLURM_JOB_ID", "18"), ("X", "")],
    ] {
        let d = match plan_in_cgroup(POLICY, Some(TASK), &env) {
            Err(Error::Denied(d)) => d,
            other => panic!("{env:?}: {other:?}"),
        };
        assert_eq!(d.rule, "cgroup.job");
        assert!(d.message.contains("job 17"), "{}", d.message);
    }
    let lsf = "/lsf/c1/job.5.3.1700000000";
    assert_eq!(plan_in_cgroup(POLICY, Some(lsf), &[]).unwrap().job.index, 3);
    assert!(matches!(
        plan_in_cgroup(POLICY, Some(lsf), &[("LSB_JOBINDEX", "4")]),
        Err(Error::Denied(d)) if d.rule == "cgroup.job"
    ));
}

#[test]
fn require_job_denies_a_caller_in_no_job() {
    let strict = POLICY.replace("[cgroup]\nrequire_job = false\n", "");
    let d = match plan_in_cgroup(&strict, None, &[]) {
        Err(Error::Denied(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d.rule, "cgroup.job");
    assert!(d.hint.contains("submit"), "{}", d.hint);
    assert!(plan_in_cgroup(&strict, Some(TASK), &[]).is_ok());
    // Without require_job, a caller in no job runs unplaced.
    let p = plan_in_cgroup(POLICY, None, &[]).unwrap();
    assert!(p.placement.is_none());
}

#[test]
fn image_volumes_get_per_job_directories_never_anonymous_volumes() {
    let policy = Policy::parse(POLICY, "test").unwrap();
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let mut f = facts();
    f.volumes = vec!["/data".into(), "/var/cache/job".into()];
    let plan_with = |vols: &str| {
        let mut e: BTreeMap<String, String> = BTreeMap::from([
            ("LSB_CONTAINER_IMAGE".into(), "alpine".into()),
            ("LS_SUBCWD".into(), "/storage1/fs1/alice/proj".into()),
        ]);
        if !vols.is_empty() {
            e.insert("LSF_DOCKER_VOLUMES".into(), vols.into());
        }
        let req = from_env(&e, None, vec!["x".into()]).unwrap();
        plan(&policy, &id, &req, Some(&f), &FakeFs::site(), &ctx())
    };
    let p = plan_with("").unwrap();
    let vols: Vec<_> = p
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::ImageVolume)
        .collect();
    assert_eq!(vols.len(), 2);
    assert!(vols
        .iter()
        .all(|m| m.src.starts_with(&p.job_dir) && m.mode == Mode::Rw));
    let binds = p.spec.create_body(&p.env)["HostConfig"]["Mounts"].clone();
    assert!(binds
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["Target"] == "/data"));
    // The user's own mount at that path is used instead.
    let p = plan_with("/storage1/fs1/alice:/data").unwrap();
    assert_eq!(
        p.mounts
            .iter()
            .filter(|m| m.kind == MountKind::ImageVolume)
            .count(),
        1
    );
    // A declared volume inside a mount of the job is refused.
    let d = match plan_with("/storage1/fs1/alice:/var/cache") {
        Err(Error::Denied(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d.rule, "images.volumes");
}

fn gpu(n: u32) -> crate::core::devices::DeviceNode {
    crate::core::devices::DeviceNode {
        path: format!("/dev/nvidia{n}").into(),
        major: 195,
        minor: n,
        uuid: None,
    }
}

/// A plan for a job in TASK that holds `held` of the node's GPUs 0 and 1.
fn plan_with_gpus(mode: &str, held: &[u32], env: &[(&str, &str)]) -> Result<LaunchPlan> {
    let ctl = crate::core::devices::DeviceNode {
        path: "/dev/nvidiactl".into(),
        major: 195,
        minor: 255,
        uuid: None,
    };
    plan_in(
        &format!("{POLICY}\n[gpus]\nmode = \"{mode}\"\n"),
        Some(TASK),
        env,
        Some(crate::core::devices::Gpus {
            present: vec![gpu(0), gpu(1)],
            control: vec![ctl],
            allocated: held.iter().map(|&n| gpu(n)).collect(),
            source: "from the job's device cgroup".into(),
        }),
    )
}

fn env_of<'a>(p: &'a LaunchPlan, k: &str) -> Vec<&'a str> {
    p.env
        .iter()
        .filter(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn devices_mode_gives_exactly_the_allocated_gpu_renumbered_from_0() {
    let hostile = [
        ("CUDA_VISIBLE_DEVICES", "0,1"),
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("SLURM_JOB_GPUS", "0,1"),
        (
            "LSF_DOCKER_OPTIONS",
            "--gpus all --device /dev/nvidia0 --privileged",
        ),
    ];
    let p = plan_with_gpus("devices", &[1], &hostile).unwrap();
    assert_eq!(p.gpus.given, vec![gpu(1)]);
    let h = &p.spec.create_body(&p.env)["HostConfig"];
    let devs: Vec<&str> = h["Devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["PathOnHost"].as_str().unwrap())
        .collect();
    assert_eq!(devs, ["/dev/nvidia1", "/dev/nvidiactl"]);
    assert!(h.get("DeviceRequests").is_none() && h.get("Privileged").is_none());
    assert!(h.get("Runtime").is_none());
    assert_eq!(env_of(&p, "CUDA_VISIBLE_DEVICES"), ["0"]);
    assert_eq!(env_of(&p, "NVIDIA_VISIBLE_DEVICES"), ["void"]);
    assert_eq!(
        p.gpus.describe(),
        "/dev/nvidia1 as 0 (from the job's device cgroup)"
    );
    // v1 placement lifts mknod for every GPU and control node on the way.
    assert_eq!(p.placement.as_ref().unwrap().mknod.len(), 3);
    assert!(has(&p, "--device=/dev/nvidia1:/dev/nvidia1:rw"));
}

#[test]
fn a_job_without_gpus_gets_none_whatever_its_environment_says() {
    let hostile = [
        ("CUDA_VISIBLE_DEVICES", "0,1"),
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("SLURM_JOB_GPUS", "0,1"),
    ];
    for mode in ["none", "devices", "nvidia", "cdi"] {
        let p = plan_with_gpus(mode, &[], &hostile).unwrap();
        let h = &p.spec.create_body(&p.env)["HostConfig"];
        assert!(
            h.get("Devices").is_none() && h.get("DeviceRequests").is_none(),
            "{mode}"
        );
        assert!(env_of(&p, "CUDA_VISIBLE_DEVICES").is_empty(), "{mode}");
        // An image's NVIDIA_VISIBLE_DEVICES=all cannot reach a default NVIDIA runtime.
        assert_eq!(env_of(&p, "NVIDIA_VISIBLE_DEVICES"), ["void"], "{mode}");
        assert!(p.gpus.describe().starts_with("none ("), "{mode}");
    }
}

#[test]
fn the_shape_a_task_must_match_tells_gpus_apart_in_every_mode() {
    // A rank or blaunch task with other GPUs never runs in a container
    // made with the first's: device nodes or the engine's requests.
    for mode in ["devices", "nvidia", "cdi"] {
        let shape = |held: &[u32]| {
            plan_with_gpus(mode, held, &[]).unwrap().spec.labels["berth.shape"].clone()
        };
        assert_ne!(shape(&[0]), shape(&[1]), "{mode}");
        assert_eq!(shape(&[1]), shape(&[1]), "{mode}");
    }
}

#[test]
fn nvidia_and_cdi_modes_name_the_host_gpu() {
    let p = plan_with_gpus("nvidia", &[0, 1], &[]).unwrap();
    let h = &p.spec.create_body(&p.env)["HostConfig"];
    assert_eq!(h["DeviceRequests"][0]["Driver"], "nvidia");
    assert_eq!(
        h["DeviceRequests"][0]["DeviceIDs"],
        serde_json::json!(["0", "1"])
    );
    assert!(h.get("Devices").is_none());
    assert_eq!(env_of(&p, "CUDA_VISIBLE_DEVICES"), ["0,1"]);
    // The toolkit's hook reads host indices, as docker itself passes them.
    assert_eq!(env_of(&p, "NVIDIA_VISIBLE_DEVICES"), ["0,1"]);
    assert!(has(&p, "--gpus=\"device=0,1\""));
    let p = plan_with_gpus("cdi", &[1], &[]).unwrap();
    let h = &p.spec.create_body(&p.env)["HostConfig"];
    assert_eq!(h["DeviceRequests"][0]["Driver"], "cdi");
    assert_eq!(
        h["DeviceRequests"][0]["DeviceIDs"],
        serde_json::json!(["nvidia.com/gpu=1"])
    );
    assert_eq!(env_of(&p, "CUDA_VISIBLE_DEVICES"), ["0"]);
    assert_eq!(env_of(&p, "NVIDIA_VISIBLE_DEVICES"), ["void"]);
}

#[test]
fn a_gpu_job_on_a_node_that_gives_none_is_denied_naming_the_rule() {
    let d = match plan_with_gpus("none", &[1], &[]) {
        Err(Error::Denied(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d.rule, "gpus.mode");
    assert!(d.message.contains("/dev/nvidia1"), "{}", d.message);
    assert!(d.hint.contains("[gpus] mode"), "{}", d.hint);
}

#[test]
fn gpu_policy_keys_are_checked() {
    for bad in [
        "[gpus]\ndevices = [\"/etc/passwd\"]",
        "[gpus]\ndevices = [\"/dev/../etc/x\"]",
        "[gpus]\ncontrol_devices = [\"nvidiactl\"]",
        "[gpus]\ncdi_kind = \"gpu\"",
        "[gpus]\ncdi_kind = \"Nvidia.com/gpu\"",
        "[gpus]\nscontrol = \"scontrol\"",
        "[gpus]\nmode = \"all\"",
    ] {
        assert!(
            Policy::parse(&format!("{POLICY}\n{bad}\n"), "t").is_err(),
            "{bad}"
        );
    }
    let p = Policy::parse(
        &format!("{POLICY}\n[gpus]\nmode = \"cdi\"\ncdi_kind = \"amd.com/gpu\"\ndevices = [\"/dev/dri/renderD*\"]\n"),
        "t",
    )
    .unwrap();
    assert_eq!(p.gpus.mode, crate::core::policy::GpuMode::Cdi);
}

/// A plan for a rank of job 17's step 0 (in TASK), its step directory
/// verified, under POLICY plus `extra`.
fn plan_rank(extra: &str, env: &[(&str, &str)]) -> Result<LaunchPlan> {
    plan_rank_of(extra, env, &["mpihello"])
}

fn plan_rank_of(extra: &str, env: &[(&str, &str)], command: &[&str]) -> Result<LaunchPlan> {
    plan_rank_in(POLICY, extra, env, command)
}

fn plan_rank_in(
    base: &str,
    extra: &str,
    env: &[(&str, &str)],
    command: &[&str],
) -> Result<LaunchPlan> {
    let policy = Policy::parse(&format!("{base}\n[mpi]\npmix = true\n{extra}"), "test").unwrap();
    let mut e: BTreeMap<String, String> = BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".into(), "alpine".into()),
        ("LS_SUBCWD".into(), "/storage1/fs1/alice/proj".into()),
        ("PMIX_RANK".into(), "3".into()),
        ("PMIX_NAMESPACE".into(), "slurm.pmix.17.0".into()),
        ("PMIX_SERVER_TMPDIR".into(), "/var/run/slurm/".into()),
        ("SLURM_STEP_NUM_TASKS".into(), "4".into()),
    ]);
    for (k, v) in env {
        e.insert(k.to_string(), v.to_string());
    }
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let req = from_env(&e, None, command.iter().map(|a| a.to_string()).collect()).unwrap();
    let c = Context {
        nonce: "cafe".into(),
        job_cgroup: Some((
            crate::core::cgroup::find_job(&format!("4:memory:{TASK}\n"), 2001).unwrap(),
            None,
            Some(1 << 30),
        )),
        mpi_step: Some(crate::core::mpi::Step {
            node: "vm".into(),
            job: "17".into(),
            step: "0".into(),
            dir: "/var/spool/slurmd/oci-job17-0".into(),
            cpus: Some(2),
        }),
        slurm_id: Some("vm.alice.17.0.3".into()),
        ..Default::default()
    };
    plan(&policy, &id, &req, Some(&facts()), &FakeFs::site(), &c)
}

#[test]
fn an_mpi_rank_runs_in_its_steps_container_at_its_gate() {
    let p = plan_rank("", &[]).unwrap();
    let t = p.task.as_ref().unwrap();
    assert_eq!(t.kind, TaskKind::Rank);
    assert_eq!((t.id, t.host.as_str()), (3, "vm"));
    // The program starts once the broker has put the waiting shell where
    // the task lives (RANK_GATE), with the rank's own command.
    assert_eq!(
        t.argv,
        [
            "/bin/sh",
            "-c",
            RANK_GATE,
            "berth-rank",
            "/bin/sh",
            "-c",
            "mpihello"
        ]
        .map(String::from)
    );
    // srun's argv is what the gate execs (the program is the exec's own
    // process, as srun's task is on bare metal); one word is a script.
    let p = plan_rank_of("", &[], &["sh", "rank.sh", "a b"]).unwrap();
    assert_eq!(
        p.task.as_ref().unwrap().argv,
        [
            "/bin/sh",
            "-c",
            RANK_GATE,
            "berth-rank",
            "sh",
            "rank.sh",
            "a b"
        ]
        .map(String::from)
    );
    assert_eq!(p.spec.cmd, ["-c", "sh rank.sh 'a b'"]);
    // An entrypoint the site lets the job choose still comes first.
    let p = plan_rank_in(
        &POLICY.replace("[images]", "[images]\nentrypoint = \"any\""),
        "",
        &[("LSF_DOCKER_ENTRYPOINT", "/opt/run")],
        &["sh", "rank.sh"],
    )
    .unwrap();
    assert_eq!(
        p.task.as_ref().unwrap().argv[4..],
        ["/opt/run", "sh", "rank.sh"].map(String::from)
    );
    let p = plan_rank("", &[]).unwrap();
    let t = p.task.as_ref().unwrap();
    // The job's own claim of its step's tasks widens nothing: the step has
    // 2 CPUs here.
    let many = plan_rank("", &[("SLURM_STEP_NUM_TASKS", "1000000")]).unwrap();
    assert_eq!(
        many.holder.as_ref().unwrap().pids_limit,
        many.spec.pids_limit * 2
    );
    // The step's container: the rank's settings (host network, user,
    // groups, mounts, its /tmp), nothing of its own environment, waiting
    // on a stdin nobody writes, its IPC shareable and a PID namespace of
    // its own with an init, in the step's cgroup, /dev/shm as big as the
    // job's memory, the pids limit once per task of the step.
    let rank = p.spec.create_body(&p.env);
    let c = &t.host_spec;
    assert_eq!(p.holder.as_ref(), Some(c));
    assert_eq!(c.name, "berth-mpi-vm-17-0-2001");
    let b = c.create_body(&[]);
    let h = &b["HostConfig"];
    assert_eq!(h["NetworkMode"], "host");
    assert_eq!(h["IpcMode"], "shareable");
    assert!(h.get("PidMode").is_none());
    assert_eq!(h["Init"], true);
    assert_eq!(h["ShmSize"], 1u64 << 30);
    assert_eq!(
        h["PidsLimit"],
        // 4 tasks in the step, 2 CPUs of it here: at most 2 ranks here.
        rank["HostConfig"]["PidsLimit"].as_u64().unwrap() * 2
    );
    assert_eq!(h["CgroupParent"], "/slurm_vm/uid_2001/job_17/step_0");
    assert!(h.get("CpusetCpus").is_none());
    assert_eq!(h["Binds"], rank["HostConfig"]["Binds"]);
    assert_eq!(h["CapAdd"], rank["HostConfig"]["CapAdd"]);
    assert_eq!(h["GroupAdd"], rank["HostConfig"]["GroupAdd"]);
    assert_eq!(b["User"], rank["User"]);
    assert_eq!(b["Image"], rank["Image"]);
    assert_eq!(b["Cmd"], serde_json::json!(["-c", "read x"]));
    assert_eq!(b["AttachStdout"], false);
    assert!(b["Env"].as_array().map_or(true, |e| e.is_empty()), "{b}");
    // Never the task's Slurm id (berth slurm kill of one task would find
    // the step's container); the rank's shape, which later ranks match.
    assert!(b["Labels"].get("berth.slurm").is_none());
    assert_eq!(rank["Labels"]["berth.slurm"], "vm.alice.17.0.3");
    assert_eq!(b["Labels"]["berth.role"], "step");
    assert_eq!(b["Labels"]["berth.mpi"], "vm.17.0");
    assert_eq!(b["Labels"]["berth.shape"], rank["Labels"]["berth.shape"]);
    // What the rank would be in a container of its own (a rank that asks
    // for other settings): joined to the step's container.
    assert_eq!(
        rank["HostConfig"]["IpcMode"],
        "container:berth-mpi-vm-17-0-2001"
    );
    assert_eq!(
        rank["HostConfig"]["PidMode"],
        "container:berth-mpi-vm-17-0-2001"
    );
}

#[test]
fn an_mpi_rank_joins_its_steps_holder_on_the_host_network() {
    let p = plan_rank("ranks = \"container\"\n", &[]).unwrap();
    assert!(p.task.is_none());
    let body = p.spec.create_body(&p.env);
    let h = &body["HostConfig"];
    assert_eq!(h["NetworkMode"], "host");
    assert_eq!(h["IpcMode"], "container:berth-mpi-vm-17-0-2001");
    assert_eq!(h["PidMode"], "container:berth-mpi-vm-17-0-2001");
    // The holder's init is the namespace's PID 1.
    assert_eq!(h["Init"], false);
    assert!(h.get("ShmSize").is_none());
    assert!(env_of(&p, "PMIX_RANK") == ["3"]);
    let spool: Vec<(String, String)> = p
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::MpiSpool)
        .map(|m| (m.src.display().to_string(), m.dst.display().to_string()))
        .collect();
    assert_eq!(
        spool,
        [
            (
                "/var/spool/slurmd/oci-job17-0",
                "/var/spool/slurmd/oci-job17-0"
            ),
            ("/var/spool/slurmd/oci-job17-0", "/var/run/slurm"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // The holder: the step's cgroup, /dev/shm as big as the job's memory,
    // nothing attached, no network, the job's user.
    let holder = p.holder.as_ref().unwrap();
    let hb = holder.create_body(&[]);
    assert_eq!(hb["HostConfig"]["IpcMode"], "shareable");
    assert_eq!(hb["HostConfig"]["ShmSize"], 1u64 << 30);
    assert_eq!(
        hb["HostConfig"]["CgroupParent"],
        "/slurm_vm/uid_2001/job_17/step_0"
    );
    assert_eq!(hb["HostConfig"]["NetworkMode"], "none");
    assert_eq!(hb["AttachStdout"], false);
    assert_eq!(hb["User"], body["User"]);
    assert!(hb["Labels"].get("berth.slurm").is_none());
    assert!(p
        .argv
        .iter()
        .any(|a| a == "--pid=container:berth-mpi-vm-17-0-2001"));
    assert!(!p.argv.iter().any(|a| a == "--init"));
}

#[test]
fn an_mpi_rank_may_not_pick_its_network_or_ipc_and_gets_only_listed_fabric() {
    let d = match plan_rank("", &[("LSF_DOCKER_NETWORK", "bridge")]) {
        Err(Error::Denied(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d.rule, "docker.networks");
    let d = match plan_rank("", &[("LSF_DOCKER_IPC", "private")]) {
        Err(Error::Denied(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d.rule, "docker.ipc");
    let p = plan_rank("ipc = \"private\"\nmemlock = \"unlimited\"\n", &[]).unwrap();
    let h = &p.spec.create_body(&p.env)["HostConfig"];
    assert!(p.holder.is_none());
    assert_eq!(h["Init"], true);
    assert_eq!(h["Ulimits"][0]["Name"], "memlock");
    assert_eq!(h["Ulimits"][0]["Hard"], -1);
    // The node's IPC comes with its PIDs (CMA names peers by pid); no holder.
    let p = plan_rank("ipc = \"host\"\n", &[]).unwrap();
    let h = &p.spec.create_body(&p.env)["HostConfig"];
    assert!(p.holder.is_none());
    assert_eq!(
        (&h["IpcMode"], &h["PidMode"]),
        (&"host".into(), &"host".into())
    );
    // PMIx off: the variables go, the rank is an ordinary job.
    let policy = format!("{POLICY}\n");
    let p = plan_in_cgroup(
        &policy,
        Some(TASK),
        &[("PMIX_RANK", "1"), ("PMIX_NAMESPACE", "x")],
    )
    .unwrap();
    assert!(env_of(&p, "PMIX_RANK").is_empty());
    assert!(p
        .env_dropped
        .iter()
        .any(|d| d.name == "PMIX_RANK" && d.reason.contains("mpi.pmix")));
    assert!(p.mpi.is_none());
}

// --- LSF parallel jobs: blaunch tasks (SPEC §14) ---------------------------

fn task_plan_with(env: &[(&str, &str)], task: Option<u32>, cmd: &[&str]) -> Result<LaunchPlan> {
    let c = Context {
        hostname: Some("node7".into()),
        lsf_task: task,
        ..ctx()
    };
    try_plan_in(POLICY, env, Some(facts()), cmd, &c)
}

#[test]
fn a_blaunch_task_is_a_process_of_its_hosts_container() {
    let job = task_plan_with(&[], None, &["mpirun ./app"]).unwrap();
    assert!(job.task.is_none());
    assert_eq!(job.spec.labels["berth.host"], "node7");
    let p = task_plan_with(&[], Some(3), &["prted --x"]).unwrap();
    let t = p.task.as_ref().unwrap();
    assert_eq!((t.id, t.host.as_str()), (3, "node7"));
    // The task's process: the job's command under /bin/sh, as a job's.
    assert_eq!(t.argv, ["/bin/sh", "-c", "prted --x"]);
    // The host's container: the task's settings, waiting, unattached,
    // under docker-init, marked as the host's, with no variables of its own.
    let h = &t.host_spec;
    assert_eq!(h.name, p.spec.name);
    assert_eq!(h.labels["berth.role"], "host");
    assert_eq!(h.labels["berth.host"], "node7");
    assert_eq!(h.cmd, ["-c", "read x"]);
    assert_eq!(h.entrypoint.as_deref(), Some("/bin/sh"));
    assert!(!h.attach && h.init && h.env_names.is_empty());
    assert_eq!(
        (
            &h.user,
            &h.group_add,
            &h.binds,
            &h.network,
            &h.ipc,
            &h.image
        ),
        (
            &p.spec.user,
            &p.spec.group_add,
            &p.spec.binds,
            &p.spec.network,
            &p.spec.ipc,
            &p.spec.image
        )
    );
    assert_eq!(h.pids_limit, p.spec.pids_limit);
}

#[test]
fn the_shape_names_what_a_task_must_share_with_its_container() {
    let shape = |env: &[(&str, &str)], cmd: &str| {
        task_plan_with(env, None, &[cmd]).unwrap().spec.labels["berth.shape"].clone()
    };
    let base = shape(&[], "a");
    assert_eq!(base.len(), 16);
    // Not the command nor the variables: those are the task's own.
    assert_eq!(base, shape(&[("FOO", "1")], "b"));
    for env in [
        [("LSF_DOCKER_VOLUMES", "/scratch1/fs1/alice:/scratch")],
        [("LSF_DOCKER_NETWORK", "bridge")],
        [("LS_SUBCWD", "/storage1/fs1/alice")],
    ] {
        assert_ne!(base, shape(&env, "a"), "{env:?}");
    }
}

#[test]
fn a_task_without_a_command_or_a_job_is_refused() {
    let raw = task_plan_with(
        &[("LSF_DOCKER_RUN_RAW_ARGS", "1")],
        Some(1),
        &["LSB_DOCKER_PLACE_HOLDER"],
    );
    match raw {
        Err(Error::Denied(d)) => assert_eq!(d.rule, "images.raw_args"),
        other => panic!("{other:?}"),
    }
    let policy = Policy::parse(POLICY, "test").unwrap();
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let e = BTreeMap::from([("LSB_CONTAINER_IMAGE".to_string(), "alpine".to_string())]);
    let req = from_env(
        &e,
        Some("/storage1/fs1/alice/proj".into()),
        vec!["true".into()],
    )
    .unwrap();
    let c = Context {
        hostname: Some("node7".into()),
        lsf_task: Some(1),
        ..ctx()
    };
    let r = plan(&policy, &id, &req, Some(&facts()), &FakeFs::site(), &c);
    assert!(matches!(r, Err(Error::Malformed(_))), "{r:?}");
}

#[test]
fn a_parallel_lsf_jobs_containers_get_the_fabric_and_memlock_the_site_allows() {
    let policy = Policy::parse(
        &format!(
            "{POLICY}\n[mpi]\nmemlock = \"unlimited\"\nfabric_devices = [\"/dev/infiniband/*\"]\n"
        ),
        "test",
    )
    .unwrap();
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let e = BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".to_string(), "alpine".to_string()),
        ("LSB_JOBID".to_string(), "42".to_string()),
        (
            "LS_SUBCWD".to_string(),
            "/storage1/fs1/alice/proj".to_string(),
        ),
    ]);
    let req = from_env(&e, None, vec!["true".into()]).unwrap();
    let uverbs = PathBuf::from("/dev/infiniband/uverbs0");
    for parallel in [false, true] {
        let c = Context {
            hostname: Some("node7".into()),
            lsf_parallel: parallel,
            fabric: vec![uverbs.clone()],
            ..ctx()
        };
        let p = plan(&policy, &id, &req, Some(&facts()), &FakeFs::site(), &c).unwrap();
        assert_eq!(p.spec.devices.contains(&uverbs), parallel);
        assert_eq!(p.spec.memlock_unlimited, parallel);
    }
}
