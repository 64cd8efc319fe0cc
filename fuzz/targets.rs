//! The fuzz targets: one function per parser of untrusted input, each taking
//! raw bytes and panicking only on a broken invariant (a parser may refuse
//! anything, but never crash, hang, or accept something the planner would
//! then turn into a dangerous docker argument).
//!
//! This file is compiled twice: by each libFuzzer binary in
//! `fuzz/fuzz_targets/` (`cargo fuzz run NAME`, nightly flags) and by the
//! stable harness `tests/fuzz_corpus.rs`, which replays the committed
//! corpora plus a bounded number of mutated inputs on every `cargo test`.
#![allow(dead_code)]

use berth::core::error::Error;
use berth::core::facts::ImageFacts;
use berth::core::identity::{GroupEntry, Identity};
use berth::core::plan::{self, Context, HostFs, LaunchPlan, MountKind};
use berth::core::policy::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fuzz target: raw bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name, for the stable harness.
pub const TARGETS: &[(&str, Target)] = &[
    ("volume_spec", volume_spec),
    ("env_file", env_file),
    ("esub_parm", esub_parm),
    ("image_ref", image_ref),
    ("slurm_config", slurm_config),
    ("bundle_toml", bundle_toml),
    ("tar_inspect", tar_inspect),
    ("request_plan", request_plan),
    ("broker_frame", broker_frame),
    ("job_file", job_file),
    ("policy_toml", policy_toml),
    ("cgroup_path", cgroup_path),
    ("engine_reply", engine_reply),
    ("gpu_record", gpu_record),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

// ---------------------------------------------------------------------------
// a fake node for the planner

/// The policy the planner targets run under: two roots (one read-only),
/// the default reserved destinations, env deny list and networks.
pub const POLICY: &str = r#"
[cgroup]
require_job = false
[identity]
relays = ["lsfadmin"]
[images]
allow = ["docker.io/library/*", "registry.example.edu/*"]
entrypoint = "any"
raw_args = true
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[[volumes]]
root = "/scratch1/fs1"
mode = "ro"
[tmp]
base = "/var/tmp/berth"
[docker]
networks = ["none", "bridge", "host"]
ports = ["8000-8999"]
"#;

pub fn policy() -> &'static Policy {
    static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    P.get_or_init(|| Policy::parse(POLICY, "fuzz").expect("fuzz policy"))
}

/// A node with a few symlinks (one leaving its root), a file, a directory
/// the user cannot reach, and everything else a plain directory.
pub struct FakeFs;

const LINKS: &[(&str, &str)] = &[
    ("/storage1/fs1/alice/link-out", "/etc"),
    ("/storage1/fs1/alice/link-in", "/storage1/fs1/alice/ro"),
    ("/storage1/fs1/alice/to-scratch", "/scratch1/fs1/x"),
    ("/scratch1/fs1/up", "/storage1/fs1/alice"),
];

impl HostFs for FakeFs {
    fn canonicalize(&self, p: &Path) -> std::io::Result<PathBuf> {
        let Some(mut cur) = berth::core::paths::normalize_abs(p) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        // Resolve links by longest prefix, a bounded number of times.
        for _ in 0..8 {
            let hit = LINKS
                .iter()
                .find(|(l, _)| berth::core::paths::is_under(&cur, Path::new(l)));
            let Some((l, t)) = hit else { return Ok(cur) };
            let rest = cur.strip_prefix(l).unwrap_or(Path::new("")).to_path_buf();
            cur = Path::new(t).join(rest);
        }
        Err(std::io::Error::from_raw_os_error(libc::ELOOP))
    }
    fn is_dir(&self, p: &Path) -> std::io::Result<bool> {
        Ok(!p.to_string_lossy().contains("file"))
    }
    fn user_can_access(
        &self,
        _id: &Identity,
        paths: &[PathBuf],
    ) -> berth::core::error::Result<Vec<bool>> {
        Ok(paths
            .iter()
            .map(|p| !p.starts_with("/storage1/fs1/private"))
            .collect())
    }
}

pub fn alice() -> Identity {
    Identity {
        name: "alice".into(),
        uid: 2001,
        gid: 2001,
        groups: vec![
            GroupEntry {
                gid: 3001,
                name: "lab1".into(),
            },
            GroupEntry {
                gid: 3002,
                name: "lab,2:x".into(),
            },
        ],
        primary_group_name: "alice".into(),
        home: "/home/alice".into(),
        shell: "/bin/bash".into(),
    }
}

pub fn facts() -> ImageFacts {
    ImageFacts {
        id: format!("sha256:{}", "ab".repeat(32)),
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        workdir: "/".into(),
        user: "root".into(),
        has_shell: true,
        volumes: vec![],
        owner: None,
    }
}

/// Turn bytes into an environment: `NAME=value` lines (names and values
/// may hold anything but a newline; `\x1e` stands for a newline in a value).
pub fn env_of(data: &[u8]) -> BTreeMap<String, String> {
    let s = String::from_utf8_lossy(data);
    let mut env = BTreeMap::new();
    for line in s.split('\n') {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_string(), v.replace('\x1e', "\n"));
        }
    }
    env
}

/// The planner on a request parsed from `env`; every accepted plan is
/// checked against [`check_plan`].
pub fn plan_env(env: &BTreeMap<String, String>, command: Vec<String>) {
    let Ok(req) = berth::core::request::from_env(env, Some("/storage1/fs1/alice".into()), command)
    else {
        return;
    };
    let ctx = Context {
        nonce: "0123abcd".into(),
        env_file_vars: vec![
            ("FROM_FILE".into(), "1".into()),
            ("LD_PRELOAD".into(), "/x.so".into()),
        ],
        tmp_files: Vec::new(),
        slurm_id: None,
        hostname: Some("node1".into()),
        ..Default::default()
    };
    let p = policy();
    let id = alice();
    let f = facts();
    match plan::plan(p, &id, &req, Some(&f), &FakeFs, &ctx) {
        Ok(lp) => check_plan(p, &lp, &f),
        Err(Error::Denied(d)) => {
            assert!(!d.message.contains('\n'), "denial spans lines: {d:?}");
        }
        Err(_) => {}
    }
}

const PLAIN_FLAGS: &[&str] = &["--rm", "--interactive", "--init"];
const VALUE_FLAGS: &[&str] = &[
    "--sig-proxy",
    "--log-driver",
    "--name",
    "--user",
    "--group-add",
    "--cap-drop",
    "--cap-add",
    "--security-opt",
    "--pids-limit",
    "--network",
    "--ipc",
    "--shm-size",
    "--label",
    "--mount",
    "--tmpfs",
    "--workdir",
    "--env",
    "--hostname",
    "--add-host",
    "--publish",
    "--entrypoint",
];

/// The same invariants on the Engine API body that is actually sent.
fn check_body(p: &Policy, lp: &LaunchPlan, f: &ImageFacts) {
    let b = lp.spec.create_body(&lp.env);
    let h = &b["HostConfig"];
    assert_eq!(b["Image"], f.id.as_str());
    assert_eq!(b["User"], "2001:2001");
    assert_eq!(b["Tty"], false);
    let one = |v: &berth::core::plan::spec::Json, want: &str| {
        v.as_array().is_some_and(|a| a.len() == 1 && a[0] == want)
    };
    assert!(one(&h["CapDrop"], "ALL"), "{h}");
    assert!(one(&h["SecurityOpt"], "no-new-privileges"), "{h}");
    assert_eq!(h["Init"], true);
    assert_eq!(h["AutoRemove"], true);
    assert!(h["PidsLimit"].as_u64().is_some_and(|n| n > 0));
    for k in [
        "Privileged",
        "Devices",
        "PidMode",
        "UsernsMode",
        "UTSMode",
        "VolumesFrom",
        "Runtime",
        "Binds",
        "VolumeDriver",
    ] {
        assert!(h.get(k).is_none(), "{k} in {h}");
    }
    let net = h["NetworkMode"].as_str().expect("network mode");
    assert!(!net.starts_with("container:"), "{net}");
    assert!(p.docker.networks.iter().any(|n| n == net), "{net}");
    assert_ne!(h["IpcMode"], "host");
    for c in h["CapAdd"].as_array().into_iter().flatten() {
        let c = c.as_str().expect("cap");
        assert!(
            p.docker.cap_add.iter().any(|x| x.eq_ignore_ascii_case(c)),
            "{c}"
        );
    }
    for g in h["GroupAdd"].as_array().into_iter().flatten() {
        let g: u32 = g.as_str().expect("gid").parse().expect("numeric gid");
        assert!(g != 0 && g >= p.identity.min_gid, "group {g}");
    }
    for m in h["Mounts"].as_array().expect("mounts") {
        assert_eq!(m["Type"], "bind");
    }
    for e in b["Env"].as_array().expect("env") {
        let e = e.as_str().expect("env entry");
        let (k, v) = e.split_once('=').expect("NAME=value");
        assert!(!k.is_empty() && !v.contains('\n'), "{e:?}");
        assert!(!k.starts_with("LD_") && !k.starts_with("DOCKER_"), "{e:?}");
    }
}

fn docker_unsafe(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, ',' | ':' | '=' | '"' | '\'' | '\\') || c.is_control())
}

/// The invariants every plan keeps, whatever the request said.
pub fn check_plan(p: &Policy, lp: &LaunchPlan, f: &ImageFacts) {
    check_body(p, lp, f);
    let a = &lp.argv;
    assert_eq!(a[0], p.docker.path.display().to_string());
    assert_eq!(a[1], "run");
    let img = a
        .iter()
        .position(|x| *x == f.id)
        .expect("the image runs by its id");
    let flags = &a[2..img];
    for x in flags {
        assert!(!x.contains(['\n', '\0', '\r']), "control byte in {x:?}");
        if PLAIN_FLAGS.contains(&x.as_str()) {
            continue;
        }
        let (k, v) = x
            .split_once('=')
            .unwrap_or_else(|| panic!("bare flag {x:?}"));
        assert!(VALUE_FLAGS.contains(&k), "flag {k} is never emitted: {x:?}");
        match k {
            "--security-opt" => assert_eq!(v, "no-new-privileges"),
            "--cap-add" => assert!(p.docker.cap_add.iter().any(|c| c.eq_ignore_ascii_case(v))),
            "--user" => assert_eq!(v, "2001:2001"),
            "--group-add" => {
                let g: u32 = v.parse().expect("numeric group");
                assert!(g != 0 && g >= p.identity.min_gid, "group {g}");
            }
            "--network" | "--ipc" => {
                assert!(!v.starts_with("container:"), "{x}");
                assert!(!(k == "--ipc" && v == "host"), "{x}");
            }
            "--workdir" => {
                for bad in ["/proc", "/sys", "/dev"] {
                    assert!(!Path::new(v).starts_with(bad), "{x}");
                }
                assert!(
                    berth::core::paths::normalize_abs(Path::new(v)).is_some(),
                    "{x}"
                );
            }
            "--mount" => check_mount(p, v),
            "--name" => assert_eq!(v, lp.name),
            "--entrypoint" => assert!(v.starts_with('/') && !docker_unsafe(v), "{x}"),
            _ => {}
        }
    }
    for must in [
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--rm",
        "--init",
    ] {
        assert!(flags.iter().any(|x| x == must), "{must} missing: {a:?}");
    }
    assert!(
        flags.iter().any(|x| x.starts_with("--pids-limit=")),
        "no pids limit"
    );
    let name_ok = lp.name.starts_with("berth-")
        && lp
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    assert!(name_ok, "container name {:?}", lp.name);
    let deny = berth::core::envfilter::compile(&p.env.deny);
    for (k, v) in &lp.env {
        assert!(berth::core::envfilter::valid_name(k), "env name {k:?}");
        assert!(!v.contains(['\n', '\r', '\0']), "env value of {k}");
        // berth's own NVIDIA_VISIBLE_DEVICES (SPEC §12) is the one name the
        // deny list matches that is passed; the job's never is.
        let berths_own = k == "NVIDIA_VISIBLE_DEVICES" && *v == lp.gpus.nvidia_visible();
        assert!(
            berths_own || !deny.iter().any(|d| d.matches(k)),
            "denied {k} passed"
        );
    }
    for m in &lp.mounts {
        assert!(!docker_unsafe(&m.src.to_string_lossy()), "{m:?}");
        assert!(!docker_unsafe(&m.dst.to_string_lossy()), "{m:?}");
        if matches!(m.kind, MountKind::Volume | MountKind::Workdir) {
            let root = p
                .volumes
                .iter()
                .find(|r| m.src.starts_with(&r.root))
                .unwrap_or_else(|| panic!("mount source outside every root: {m:?}"));
            if root.mode == berth::core::policy::Mode::Ro {
                assert_eq!(m.mode, berth::core::policy::Mode::Ro, "{m:?}");
            }
            assert!(
                !m.src.starts_with("/storage1/fs1/private"),
                "unreachable source: {m:?}"
            );
        }
        if m.kind == MountKind::Volume {
            for r in &p.mounts.reserved {
                let hit = if r == Path::new("/") {
                    m.dst == *r
                } else {
                    m.dst.starts_with(r)
                };
                assert!(!hit, "volume over reserved {}: {m:?}", r.display());
            }
        }
    }
}

/// One `--mount` value: exactly type, src, dst and maybe readonly, in
/// that order, so docker's CSV reader sees what berth meant.
fn check_mount(p: &Policy, v: &str) {
    let fields: Vec<&str> = v.split(',').collect();
    assert!(
        (3..=4).contains(&fields.len()),
        "mount {v:?} has {} fields",
        fields.len()
    );
    assert_eq!(fields[0], "type=bind");
    let src = fields[1].strip_prefix("src=").expect("src=");
    let dst = fields[2].strip_prefix("dst=").expect("dst=");
    if fields.len() == 4 {
        assert_eq!(fields[3], "readonly");
    }
    for s in [src, dst] {
        assert!(s.starts_with('/') && !s.contains(['=', ':', '"']), "{v:?}");
    }
    let under_root = p
        .volumes
        .iter()
        .any(|r| Path::new(src).starts_with(&r.root));
    let under_tmp = Path::new(src).starts_with(&p.tmp.base);
    // A pinned volume: its real source is checked in `check_plan`.
    let pinned = Path::new(src).starts_with(&p.mounts.pin_dir);
    assert!(
        under_root || under_tmp || pinned,
        "mount source {src} is nowhere allowed"
    );
}

// ---------------------------------------------------------------------------
// the targets

/// `LSF_DOCKER_VOLUMES`: the whole variable, parsed and planned.
pub fn volume_spec(data: &[u8]) {
    let Some(s) = text(data) else { return };
    for spec in s.split_ascii_whitespace() {
        if let Ok(v) = berth::core::request::parse_volume(spec) {
            assert_eq!(v.raw, spec);
        }
    }
    let mut env = BTreeMap::new();
    env.insert("LSB_CONTAINER_IMAGE".to_string(), "alpine".to_string());
    env.insert("LSF_DOCKER_VOLUMES".to_string(), s.to_string());
    plan_env(&env, vec!["true".into()]);
}

/// `LSF_DOCKER_ENV_FILE` contents.
pub fn env_file(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(vars) = berth::core::request::parse_env_file("fuzz", s) {
        for (k, v) in &vars {
            assert!(berth::core::envfilter::valid_name(k), "{k:?}");
            assert!(!v.contains('\n'), "{k}={v:?}");
        }
        // What the planner then passes on is filtered.
        let deny = berth::core::envfilter::compile(&policy().env.deny);
        let (pass, _) = berth::core::envfilter::filter(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &deny,
        );
        for (k, v) in pass {
            assert!(!v.contains(['\r', '\0']) && !v.starts_with("() {"), "{k}");
        }
    }
}

/// LSF's `LSB_SUB_PARM_FILE`.
pub fn esub_parm(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(m) = berth::sched::lsf::esub::parse_parm_file(s) {
        for (k, v) in &m {
            assert!(!k.is_empty(), "empty name");
            // What esub writes back must read back the same.
            let q = berth::sched::lsf::esub::quote_value(v);
            let back = berth::sched::lsf::esub::parse_parm_file(&format!("X={q}\n"))
                .unwrap_or_else(|e| panic!("quoted {v:?} as {q:?} does not parse: {e}"));
            assert_eq!(back.get("X"), Some(v), "round trip of {v:?} via {q:?}");
        }
    }
    let _ = berth::sched::lsf::esub::docker_args(s);
}

/// `LSB_CONTAINER_IMAGE`.
pub fn image_ref(data: &[u8]) {
    let Some(s) = text(data) else { return };
    match berth::core::request::parse_image(s) {
        Ok(berth::core::request::ImageSpec::Registry(r)) => {
            let shown = r.to_string();
            assert!(!shown.starts_with('-'), "{shown}");
            // The 255-byte limit applies to what the user wrote; the
            // normalized form (docker.io/library/ added) may exceed it.
            assert!(
                !shown.contains(|c: char| c.is_whitespace() || c.is_control() || c == '='),
                "{shown:?}"
            );
            if shown.len() <= 255 {
                // Normalizing is idempotent.
                let again = berth::core::image::ImageRef::parse(&shown)
                    .unwrap_or_else(|e| panic!("{shown} does not re-parse: {e}"));
                assert_eq!(again, r, "{s:?}");
            }
        }
        Ok(berth::core::request::ImageSpec::Bundle(b)) => {
            // NAME, ~/NAME or USER/NAME (SPEC §15): each part a safe path
            // component, never `.`-led, `..` or more than one `/`.
            assert!(berth::core::share::parse_key(&b).is_some(), "{b:?}");
            assert!(b.matches('/').count() <= 1 && !b.contains(".."), "{b:?}");
            for part in b.split('/') {
                assert!(!part.is_empty() && !part.starts_with(['.', '-']), "{b:?}");
            }
        }
        Err(_) => {}
    }
}

/// Slurm's `config.json` (rewritten by slurmstepd from the user's bundle).
pub fn slurm_config(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(job) = berth::sched::slurm::parse_config(s) {
        assert!(!job.args.is_empty());
        let mut env = job.env.clone();
        env.insert("LSB_CONTAINER_IMAGE".into(), "alpine".into());
        plan_env(&env, job.args);
    }
}

/// `bundle.toml` as the cache reads it (its checks included).
pub fn bundle_toml(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(m) = toml::from_str::<berth::bundle::Meta>(s) {
        if berth::core::facts::valid_image_id(&m.image_id) {
            assert!(m.image_id.len() == 71);
        }
        let _ = toml::to_string(&m);
    }
}

/// An image tar (`docker save`, OCI layout or a root filesystem).
pub fn tar_inspect(data: &[u8]) {
    use std::io::Write;
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"fuzz-tar".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd was just created and is owned here.
    let mut f: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    f.write_all(data).expect("memfd write");
    use berth::bundle::tarinspect::{inspect, Depth, Layout};
    for depth in [Depth::Config, Depth::Full] {
        if let Ok(facts) = inspect(&f, depth) {
            if facts.layout != Layout::Rootfs {
                let id = facts.image_id.as_deref().expect("an image id");
                assert!(berth::core::facts::valid_image_id(id), "{id}");
                assert_eq!(facts.config.diff_ids.len(), facts.layers.len());
            }
            for (_, span) in &facts.layers {
                assert!(span.offset + span.size <= data.len() as u64, "{span:?}");
            }
        }
    }
}

/// The whole request as the job's environment, planned.
pub fn request_plan(data: &[u8]) {
    let (head, cmd) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"true"[..]),
    };
    let env = env_of(head);
    let command: Vec<String> = String::from_utf8_lossy(cmd)
        .split('\x1f')
        .map(str::to_string)
        .collect();
    plan_env(&env, command);
}

/// A frame on the broker socket (the first is the client's Hello, then
/// control messages).
pub fn broker_frame(data: &[u8]) {
    use berth::broker::proto::{read_frame, ClientMsg, Hello, MAX_FRAME, MAX_HELLO};
    let mut r = data;
    if let Ok(Some(h)) = read_frame::<Hello>(&mut r, MAX_HELLO) {
        // What the broker does with a Hello: plan it (identity from the
        // kernel, so the fuzzer only shapes the request).
        let mut env = h.env.clone();
        env.entry("LSB_CONTAINER_IMAGE".into())
            .or_insert_with(|| "alpine".into());
        plan_env(&env, h.command.clone());
    }
    let mut r = data;
    for _ in 0..16 {
        match read_frame::<ClientMsg>(&mut r, MAX_FRAME) {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
}

/// An LSF job file handed to the starter.
pub fn job_file(data: &[u8]) {
    let _ = berth::sched::lsf::jobfile::user_input(data);
    let mut env = BTreeMap::new();
    env.insert("LSF_DOCKER_RUN_RAW_ARGS".to_string(), "1".to_string());
    let jf = berth::sched::lsf::jobfile::plan_job_file(
        &env,
        Path::new("/home/alice/.lsbatch/1234.5678"),
        data.to_vec(),
    );
    if let Some(t) = &jf.tmp_file {
        assert!(!t.path.starts_with('/') && !t.path.contains(".."), "{t:?}");
    }
}

/// The policy file (root-owned, so trusted; still never a crash).
pub fn policy_toml(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(p) = Policy::parse(s, "fuzz") {
        for v in &p.volumes {
            assert!(v.root.is_absolute() && v.root != Path::new("/"), "{v:?}");
        }
        assert!(p.identity.min_uid > 0 && p.identity.min_gid > 0);
    }
}

/// `/proc/<pid>/cgroup` text: a job is only ever recognised with a plain
/// decimal id, a path free of `.`/`..`, and (Slurm v1) the caller's uid;
/// the container's parent stays inside the job's cgroup.
pub fn cgroup_path(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let uid = 2001;
    let Some(j) = berth::core::cgroup::find_job(s, uid) else {
        return;
    };
    assert!(
        !j.job_id.is_empty() && j.job_id.bytes().all(|b| b.is_ascii_digit()),
        "{j:?}"
    );
    assert!(j.path.starts_with('/'), "{j:?}");
    assert!(!j.path.split('/').any(|c| c == "." || c == ".."), "{j:?}");
    if j.scheduler == berth::core::cgroup::Scheduler::Slurm
        && j.version == berth::core::cgroup::Version::V1
    {
        assert!(j.path.contains(&format!("/uid_{uid}/")), "{j:?}");
    }
    let parent = berth::core::cgroup::parent_for(&j, "berth-1-0-ab");
    let job_dir = j
        .path
        .split('/')
        .position(|c| c.starts_with("job_") || c.starts_with("job."))
        .map(|i| j.path.split('/').take(i + 1).collect::<Vec<_>>().join("/"))
        .expect("a job component");
    assert!(
        parent.starts_with(&format!("{job_dir}/")) || parent == job_dir,
        "{parent} outside {job_dir}"
    );
    // The devices cgroup the GPU allocation is read from is the same job's.
    if let Some(d) = &j.devices {
        assert!(
            d.starts_with(&format!("{job_dir}/")) || *d == job_dir,
            "devices {d} outside {job_dir}"
        );
    }
}

/// What berth reads a job's GPUs from: `scontrol show job -d 5` text (the
/// first line is the node's name) and a v1 `devices.list`. Indices come
/// out sorted and unique, the GPUs given are always among the node's, and
/// a job that holds none is given none.
pub fn gpu_record(data: &[u8]) {
    use berth::core::devices::{self, DeviceNode, Gpus};
    let Some(s) = text(data) else { return };
    let (node, rest) = s.split_once('\n').unwrap_or((s, ""));
    let _ = devices::parse_devices_list(rest);
    let Ok(g) = devices::gres_for(rest, "5", node) else {
        return;
    };
    let Some(idx) = devices::parse_gres_indices(&g) else {
        return;
    };
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
    let present: Vec<DeviceNode> = (0..4)
        .map(|n| DeviceNode {
            path: format!("/dev/nvidia{n}").into(),
            major: 195,
            minor: n,
            uuid: None,
        })
        .collect();
    let held = devices::by_indices(&present, &idx);
    assert!(held.iter().all(|h| present.contains(h)));
    for mode in ["none", "devices", "nvidia", "cdi"] {
        let p = berth::core::policy::Policy::parse(&format!("[gpus]\nmode = \"{mode}\"\n"), "fuzz")
            .expect("policy");
        let found = Gpus {
            present: present[..2].to_vec(),
            control: vec![],
            allocated: held.clone(),
            source: "fuzz".into(),
        };
        match devices::plan_gpus(&p.gpus, Some(&found)) {
            Ok(plan) => {
                assert!(plan
                    .given
                    .iter()
                    .all(|g| found.present.contains(g) && held.contains(g)));
                assert!(mode != "none" || plan.given.is_empty());
                assert_eq!(plan.cuda_visible().is_some(), !plan.given.is_empty());
            }
            Err(_) => assert!(mode == "none" && !held.is_empty()),
        }
    }
}

/// What the engine's socket answers (or anything posing as it): the HTTP
/// reply parser and the chunked decoder never panic, and never produce
/// more body than the bytes they were given.
pub fn engine_reply(data: &[u8]) {
    if let Some(r) = berth::engine::parse_response(data, false) {
        assert!(r.body.len() <= data.len());
    }
    let _ = berth::engine::parse_response(data, true);
    if let Some(b) = berth::engine::dechunk(data) {
        assert!(b.len() <= data.len());
    }
}
