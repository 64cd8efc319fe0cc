//! `berth doctor`: check that a node can run berth jobs safely. Read-only:
//! it changes nothing on the node. Each check prints one `ok`, `warn` or
//! `fail` line; any failure makes the exit code 78 (invalid or unsafe
//! installation).

use crate::core::error::{Error, Result};
use crate::core::policy::{OldRunc, Policy, Severity, TmpKind};
use crate::engine::check::parse_version;
use crate::engine::Engine;
use crate::sys::trusted;
use serde::Serialize;
use serde_json::Value;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The first runc release fixed against CVE-2024-21626.
pub const PATCHED_RUNC: [u32; 3] = [1, 1, 12];

/// Where the package installs the scheduler glue.
pub const GLUE_DIR: &str = "/usr/share/berth/wrapper";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One finding: what was checked, how it went, and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub message: String,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, name: &'static str, status: Status, message: String) {
        self.0.push(Check {
            name,
            status,
            message,
        });
    }
    fn ok(&mut self, name: &'static str, message: String) {
        self.add(name, Status::Ok, message)
    }
    fn warn(&mut self, name: &'static str, message: String) {
        self.add(name, Status::Warn, message)
    }
    fn fail(&mut self, name: &'static str, message: String) {
        self.add(name, Status::Fail, message)
    }
}

/// `berth doctor [--json]`.
pub fn main(policy_path: &Path, json: bool) -> Result<i32> {
    // A setuid or capability-carrying berth was refused already (job::main
    // hardens first), with the message that says how to fix it.
    let checks = run(policy_path);
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (ok, warn, fail) = (count(Status::Ok), count(Status::Warn), count(Status::Fail));
    if json {
        let v = serde_json::json!({
            "policy": policy_path.display().to_string(),
            "ok": fail == 0,
            "summary": {"ok": ok, "warn": warn, "fail": fail},
            "checks": checks,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::internal("doctor JSON", e))?
        );
    } else {
        for c in &checks {
            println!("{:<5} {:<15} {}", c.status.as_str(), c.name, c.message);
        }
        println!("berth doctor: {ok} ok, {warn} warnings, {fail} failures");
    }
    Ok(if fail == 0 {
        0
    } else {
        crate::core::error::exit::CONFIG
    })
}

/// Every check, in the order an admin would fix them.
pub fn run(policy_path: &Path) -> Vec<Check> {
    let mut r = Report::default();
    check_binary(&mut r);
    let policy = check_policy(&mut r, policy_path);
    check_docker_client(&mut r, &policy);
    check_engine(&mut r, &policy);
    check_cgroup(&mut r, &policy);
    check_gpus(&mut r, &policy);
    check_tmp(&mut r, &policy);
    check_owned_dir(
        &mut r,
        "facts_cache",
        "images.facts_cache",
        &policy.images.facts_cache,
    );
    if policy.mounts.pin {
        check_owned_dir(&mut r, "pin_dir", "mounts.pin_dir", &policy.mounts.pin_dir);
    }
    check_bundles(&mut r, &policy);
    check_owned_dir(
        &mut r,
        "lock_dir",
        "bundles.lock_dir",
        &policy.bundles.lock_dir,
    );
    check_broker(&mut r, &policy);
    check_audit(&mut r, &policy);
    check_glue(&mut r);
    r.0
}

/// The message of an error without its category prefix.
fn text(e: &Error) -> String {
    match e {
        Error::Config(m) | Error::Unavailable(m) | Error::Malformed(m) | Error::Internal(m) => {
            m.clone()
        }
        Error::Denied(d) => d.to_string(),
    }
}

fn check_binary(r: &mut Report) {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return r.fail("binary", format!("cannot find berth's own binary: {e}")),
    };
    let shown = exe.display();
    let md = match std::fs::metadata(&exe) {
        Ok(m) => m,
        Err(e) => return r.fail("binary", format!("{shown}: {e}")),
    };
    if md.mode() & 0o6000 != 0 {
        return r.fail(
            "binary",
            format!(
                "{shown} is setuid/setgid (mode {:o}); chmod u-s,g-s it: berth never needs it",
                md.mode() & 0o7777
            ),
        );
    }
    match crate::sys::has_file_capabilities(&exe) {
        Ok(false) => {}
        Ok(true) => {
            return r.fail(
                "binary",
                format!("{shown} has file capabilities; setcap -r it: berth never needs them"),
            )
        }
        Err(e) => return r.warn("binary", format!("{shown}: cannot read capabilities: {e}")),
    }
    if let Err(e) = trusted::check_trusted_path(&exe, 0) {
        return r.fail(
            "binary",
            format!("{}: schedulers run berth as root or a relay", text(&e)),
        );
    }
    r.ok(
        "binary",
        format!(
            "{shown} {}: not setuid, no file capabilities, root-owned",
            env!("CARGO_PKG_VERSION")
        ),
    );
}

/// The policy as berth would load it; the safe default when it cannot be
/// used, so the other checks still run.
fn check_policy(r: &mut Report, path: &Path) -> Policy {
    let shown = path.display().to_string();
    let fallback = "; the checks below use the default policy";
    if let Err(e) = trusted::check_trusted_path(path, 0) {
        r.fail("policy.file", format!("{}{fallback}", text(&e)));
        return Policy::default();
    }
    let body = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            r.fail("policy.file", format!("cannot read {shown}: {e}{fallback}"));
            return Policy::default();
        }
    };
    r.ok(
        "policy.file",
        format!("{shown}: root-owned, not writable by group or others"),
    );
    let p = match Policy::parse(&body, &shown) {
        Ok(p) => p,
        Err(e) => {
            r.fail("policy.valid", format!("{}{fallback}", text(&e)));
            return Policy::default();
        }
    };
    let warnings: Vec<String> = p
        .lint()
        .into_iter()
        .filter(|f| f.severity == Severity::Warning)
        .map(|f| f.message)
        .collect();
    r.ok(
        "policy.valid",
        format!(
            "{shown}: valid; {} volume root(s), {} image pattern(s), bundles {}",
            p.volumes.len(),
            p.images.allow.len(),
            if p.bundles.cache.is_some() {
                "on"
            } else {
                "off"
            }
        ),
    );
    for w in warnings {
        r.warn("policy.lint", w);
    }
    p
}

fn check_docker_client(r: &mut Report, policy: &Policy) {
    let path = &policy.docker.path;
    let shown = path.display();
    if let Err(e) = trusted::check_trusted_path(path, 0) {
        return r.fail(
            "docker.client",
            format!("{} (docker.path); install docker.io or docker-ce", text(&e)),
        );
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.mode() & 0o111 != 0 => {}
        Ok(_) => {
            return r.fail(
                "docker.client",
                format!("{shown} (docker.path) is not an executable file"),
            )
        }
        Err(e) => return r.fail("docker.client", format!("{shown}: {e}")),
    }
    let out = std::process::Command::new(path)
        .arg("--version")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            r.ok(
                "docker.client",
                format!("{shown}: {}", v.lines().next().unwrap_or("").trim()),
            )
        }
        Ok(o) => r.fail(
            "docker.client",
            format!(
                "{shown} --version failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => r.fail("docker.client", format!("cannot run {shown}: {e}")),
    }
}

fn component<'a>(version: &'a Value, name: &str) -> Option<&'a Value> {
    version
        .get("Components")?
        .as_array()?
        .iter()
        .find(|c| c.get("Name").and_then(Value::as_str) == Some(name))
}

fn check_engine(r: &mut Report, policy: &Policy) {
    let socket = &policy.docker.socket;
    let engine = Engine::new(socket);
    let v = match engine.version() {
        Ok(v) => v,
        Err(e) => return r.fail("docker.engine", format!("{} (docker.socket)", text(&e))),
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    r.ok(
        "docker.engine",
        format!(
            "{}: Docker Engine {}, API {}, {}/{}, kernel {}",
            socket.display(),
            s("Version"),
            s("ApiVersion"),
            s("Os"),
            s("Arch"),
            s("KernelVersion")
        ),
    );
    check_socket_access(r, socket);

    match component(&v, "runc") {
        None => r.warn(
            "runc",
            "the engine does not report its runc version; check runc --version is 1.1.12 or later (CVE-2024-21626)".into(),
        ),
        Some(c) => {
            let ver = c.get("Version").and_then(Value::as_str).unwrap_or("");
            let build = c
                .pointer("/Details/GitCommit")
                .and_then(Value::as_str)
                .filter(|b| !b.is_empty() && *b != ver)
                .map(|b| format!(" (build {b})"))
                .unwrap_or_default();
            match parse_version(ver) {
                Some(n) if n >= PATCHED_RUNC => r.ok("runc", format!("runc {ver}{build}")),
                parsed => {
                    let why = if parsed.is_some() {
                        "is older than 1.1.12"
                    } else {
                        "is not a version berth understands, so it may be older than 1.1.12"
                    };
                    let msg = format!(
                        "runc {ver}{build} {why}: CVE-2024-21626 (escape through a leaked /proc/self/fd workdir) unless the vendor backported the fix, as Debian 12's 1.1.5+ds1-1+deb12u1 did; berth refuses /proc workdirs either way"
                    );
                    match policy.docker.old_runc {
                        OldRunc::Fail => r.fail(
                            "runc",
                            format!("{msg}; upgrade runc (docker.old_runc = \"fail\"; \"warn\" once the fix is confirmed)"),
                        ),
                        OldRunc::Warn => r.warn(
                            "runc",
                            format!("{msg}; upgrade runc, or set docker.old_runc = \"fail\" to make this a failure"),
                        ),
                    }
                }
            }
        }
    }
    match component(&v, "docker-init") {
        Some(c) => r.ok(
            "docker.init",
            format!(
                "docker-init {} (every job runs with --init)",
                c.get("Version").and_then(Value::as_str).unwrap_or("?")
            ),
        ),
        None => r.warn(
            "docker.init",
            "the engine reports no docker-init: jobs run with --init and fail without it; install tini (docker.io) or docker-ce's docker-init".into(),
        ),
    }
}

/// The installed Slurm's `(major, minor)`, from `slurmd -V` (or `sinfo -V`).
fn slurm_version() -> Option<(u32, u32)> {
    ["/usr/sbin/slurmd", "/usr/bin/sinfo"].iter().find_map(|b| {
        let out = std::process::Command::new(b)
            .arg("-V")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        crate::sched::slurm::parse_slurm_version(&String::from_utf8_lossy(&out.stdout))
    })
}

/// Placement in the job's cgroup (SPEC §11) needs dockerd's cgroupfs
/// driver: the systemd driver takes only `*.slice` parents.
fn check_cgroup(r: &mut Report, policy: &Policy) {
    use crate::core::policy::PlacementRule;
    let driver = Engine::new(&policy.docker.socket).cgroup_driver();
    match (policy.cgroup.placement, driver.as_deref()) {
        (PlacementRule::None, _) => r.warn(
            "cgroup",
            "[cgroup] placement = \"none\": containers live in dockerd's cgroup, outside their job's allocation (its CPUs, memory and accounting); set placement = \"job\"".into(),
        ),
        (PlacementRule::Job, Some(d)) if d != "cgroupfs" => r.fail("cgroup", cgroup_driver_message(d)),
        (PlacementRule::Job, Some(_)) => r.ok(
            "cgroup",
            format!(
                "containers are placed in their job's cgroup (dockerd's cgroupfs driver, cgroup {}); require_job = {}",
                if crate::sys::cgroup::is_v1_hybrid() { "v1" } else { "v2" },
                policy.cgroup.require_job
            ),
        ),
        (PlacementRule::Job, None) => r.warn(
            "cgroup",
            "cannot ask the engine for its cgroup driver; placement needs native.cgroupdriver=cgroupfs".into(),
        ),
    }
}

/// The GPU mode (SPEC §12), the device nodes this node has, and what the
/// mode needs of the engine.
fn check_gpus(r: &mut Report, policy: &Policy) {
    use crate::core::policy::GpuMode;
    let (gpus, control) = crate::sys::devices::on_node(&policy.gpus);
    let list = |v: &[crate::core::devices::DeviceNode]| {
        v.iter()
            .map(|d| format!("{} ({}:{})", d.path.display(), d.major, d.minor))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let seen = if gpus.is_empty() {
        format!(
            "no device node matches [gpus] devices {:?}",
            policy.gpus.devices
        )
    } else {
        format!(
            "GPU nodes {}; control devices {}",
            list(&gpus),
            if control.is_empty() {
                "none".into()
            } else {
                list(&control)
            }
        )
    };
    match policy.gpus.mode {
        GpuMode::None if gpus.is_empty() => r.ok("gpus", format!("mode none; {seen}")),
        GpuMode::None => r.warn(
            "gpus",
            format!("mode none, but this node has GPUs ({seen}): jobs that hold GPUs are denied (gpus.mode); set [gpus] mode = \"devices\", \"nvidia\" or \"cdi\" to give them"),
        ),
        _ if gpus.is_empty() => r.warn(
            "gpus",
            format!("mode {:?}, but {seen}: no job here can get a GPU", policy.gpus.mode),
        ),
        GpuMode::Devices => r.ok(
            "gpus",
            format!("mode devices; {seen}; the image (or a volume) must bring the driver's user-space libraries"),
        ),
        GpuMode::Nvidia => {
            let engine = Engine::new(&policy.docker.socket);
            let runtime = engine
                .info()
                .and_then(|i| i.get("Runtimes").and_then(Value::as_object).map(|o| o.contains_key("nvidia")))
                .unwrap_or(false);
            let hook = ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join("nvidia-container-runtime-hook"))
                .find(|p| p.is_file());
            match hook {
                Some(h) => r.ok(
                    "gpus",
                    format!(
                        "mode nvidia; {seen}; the NVIDIA container toolkit's hook is {}{}",
                        h.display(),
                        if runtime { " and dockerd has the nvidia runtime" } else { "" }
                    ),
                ),
                None => r.fail(
                    "gpus",
                    format!("mode nvidia; {seen}; but nvidia-container-runtime-hook is not installed, so dockerd cannot give --gpus: install the NVIDIA container toolkit, or set [gpus] mode = \"devices\""),
                ),
            }
        }
        GpuMode::Cdi => {
            let kind = &policy.gpus.cdi_kind;
            let specs: Vec<PathBuf> = ["/etc/cdi", "/var/run/cdi"]
                .iter()
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flat_map(|rd| rd.flatten().map(|e| e.path()))
                .filter(|p| {
                    std::fs::read_to_string(p).is_ok_and(|t| {
                        t.contains(&format!("kind: {kind}"))
                            || t.contains(&format!("\"kind\": \"{kind}\""))
                            || t.contains(&format!("\"kind\":\"{kind}\""))
                    })
                })
                .collect();
            let version = Engine::new(&policy.docker.socket)
                .version()
                .ok()
                .and_then(|v| v.get("Version").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            let major: u32 = version
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if specs.is_empty() {
                r.fail(
                    "gpus",
                    format!("mode cdi; {seen}; but no CDI spec in /etc/cdi or /var/run/cdi names kind {kind}: generate one (nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)"),
                );
            } else if major < 25 {
                r.fail(
                    "gpus",
                    format!("mode cdi; {seen}; but Docker Engine {version} has no CDI support (25 and later, with \"features\": {{\"cdi\": true}} before 28): upgrade it, or set [gpus] mode = \"nvidia\""),
                );
            } else {
                r.ok(
                    "gpus",
                    format!(
                        "mode cdi; {seen}; CDI specs for {kind}: {}",
                        specs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
}

/// What to say about a cgroup driver that cannot place containers.
pub fn cgroup_driver_message(driver: &str) -> String {
    format!(
        "dockerd uses the {driver} cgroup driver, which cannot place containers inside a job's cgroup ([cgroup] placement = \"job\"): set \"exec-opts\": [\"native.cgroupdriver=cgroupfs\"] in /etc/docker/daemon.json and restart dockerd, or set placement = \"none\" (containers then escape their job's allocation)"
    )
}

/// The engine's socket is root on the node: nobody but root (and berth's
/// broker) should reach it.
fn check_socket_access(r: &mut Report, socket: &Path) {
    let Ok(md) = std::fs::metadata(socket) else {
        return;
    };
    if md.mode() & 0o002 != 0 {
        return r.fail(
            "docker.socket",
            format!(
                "{} is writable by every user (mode {:o}): anyone is root on this node; chmod 0660 it",
                socket.display(),
                md.mode() & 0o777
            ),
        );
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(md.gid()))
        .ok()
        .flatten();
    match group {
        Some(g) if md.gid() != 0 && md.mode() & 0o020 != 0 && !g.mem.is_empty() => r.warn(
            "docker.socket",
            format!(
                "members of group {} ({}) reach {} without berth, which is root on this node; remove them (gpasswd -d USER {})",
                g.name,
                g.mem.join(", "),
                socket.display(),
                g.name
            ),
        ),
        _ => r.ok(
            "docker.socket",
            format!(
                "{}: mode {:o}, no user besides root reaches it directly",
                socket.display(),
                md.mode() & 0o777
            ),
        ),
    }
}

fn check_tmp(r: &mut Report, policy: &Policy) {
    if policy.tmp.kind == TmpKind::Tmpfs {
        return r.ok(
            "tmp",
            format!(
                "tmp.kind = tmpfs: each job gets a {} tmpfs",
                policy.tmp.size
            ),
        );
    }
    let base = &policy.tmp.base;
    let shown = base.display();
    let md = match std::fs::symlink_metadata(base) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return r.ok(
                "tmp",
                format!("{shown} (tmp.base) does not exist yet; the first job creates it, root-owned, mode 0711"),
            )
        }
        Err(e) => return r.fail("tmp", format!("{shown} (tmp.base): {e}")),
    };
    if !md.is_dir() {
        return r.fail(
            "tmp",
            format!("{shown} (tmp.base) is not a directory; remove it or set tmp.base"),
        );
    }
    if let Err(e) = trusted::check_trusted_path(base, 0) {
        return r.fail("tmp", format!("{} (tmp.base)", text(&e)));
    }
    if md.mode() & 0o044 != 0 {
        return r.warn(
            "tmp",
            format!(
                "{shown} (tmp.base) has mode {:o}: others can list the per-job directories; chmod 0711 it",
                md.mode() & 0o7777
            ),
        );
    }
    r.ok(
        "tmp",
        format!(
            "{shown}: root-owned, mode {:o}; per-job /tmp directories are made here",
            md.mode() & 0o7777
        ),
    );
}

/// A directory berth creates on demand as root: fine when absent, unsafe
/// when someone else owns or can write it.
fn check_owned_dir(r: &mut Report, name: &'static str, key: &str, dir: &Path) {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => r.ok(
            name,
            format!("{shown} ({key}) does not exist yet; berth creates it as root when needed"),
        ),
        Err(e) => r.fail(name, format!("{shown} ({key}): {e}")),
        Ok(md) if !md.is_dir() => r.fail(
            name,
            format!("{shown} ({key}) is not a directory; remove it"),
        ),
        Ok(_) => match trusted::check_trusted_path(dir, 0) {
            Ok(()) => r.ok(
                name,
                format!("{shown}: root-owned, not writable by group or others"),
            ),
            Err(e) => r.fail(name, format!("{} ({key})", text(&e))),
        },
    }
}

fn check_bundles(r: &mut Report, policy: &Policy) {
    let Some(cache) = &policy.bundles.cache else {
        return r.ok(
            "bundles",
            "no bundle cache (bundles.cache is not set): jobs use images the engine has".into(),
        );
    };
    let shown = cache.display();
    let owner = &policy.bundles.owner;
    let uid = match nix::unistd::User::from_name(owner) {
        Ok(Some(u)) => u.uid.as_raw(),
        Ok(None) => {
            return r.fail(
                "bundles",
                format!("bundles.owner {owner:?} is not a user on this node"),
            )
        }
        Err(e) => {
            return r.fail(
                "bundles",
                format!("cannot look up bundles.owner {owner}: {e}"),
            )
        }
    };
    match std::fs::metadata(cache) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return r.fail("bundles", format!("{shown} (bundles.cache) is not a directory")),
        Err(e) => {
            return r.fail(
                "bundles",
                format!("{shown} (bundles.cache): {e}; mount the shared filesystem or create it (install -d -m 0755 {shown})"),
            )
        }
    }
    if let Err(e) = trusted::check_trusted_path(cache, uid) {
        return r.fail("bundles", format!("{} (bundles.cache)", text(&e)));
    }
    let count = std::fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0);
    r.ok(
        "bundles",
        format!("{shown}: owned by {owner} or root, not writable by others; {count} bundle(s)"),
    );
}

fn check_broker(r: &mut Report, policy: &Policy) {
    let sock = &policy.broker.socket;
    let shown = sock.display();
    // Every job user must be able to reach the socket: each directory above
    // it must be searchable by others.
    for dir in sock.ancestors().skip(1) {
        if let Ok(m) = std::fs::metadata(dir) {
            if m.mode() & 0o001 == 0 {
                return r.fail(
                    "broker",
                    format!(
                        "{} has mode {:o}: users cannot reach {shown}; chmod o+x it (0755)",
                        dir.display(),
                        m.mode() & 0o7777
                    ),
                );
            }
        }
    }
    match std::fs::symlink_metadata(sock) {
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(sock) {
                Ok(_) => r.ok("broker", format!("{shown}: the broker (berth daemon) is listening")),
                Err(e) => r.warn(
                    "broker",
                    format!("{shown} exists but nothing answers ({e}); restart the broker: systemctl restart berth.service"),
                ),
            }
        }
        Ok(_) => r.fail(
            "broker",
            format!("{shown} (broker.socket) exists but is not a socket; remove it"),
        ),
        Err(_) => r.warn(
            "broker",
            format!("{shown} is absent: the broker (berth daemon) is not running; jobs that start as their own user (Slurm, LSF JOB_STARTER) need it: systemctl enable --now berth.service"),
        ),
    }
}

fn check_audit(r: &mut Report, policy: &Policy) {
    match policy.audit.log.as_str() {
        "none" => {}
        "syslog" => match std::fs::metadata("/dev/log") {
            Ok(m) if m.file_type().is_socket() => {
                r.ok("audit", "audit records go to syslog (authpriv) via /dev/log".into())
            }
            _ => r.warn(
                "audit",
                "audit.log = syslog but /dev/log is not a socket: audit records are lost; run journald or a syslog daemon, or set audit.log to a file".into(),
            ),
        },
        file => {
            let dir = Path::new(file).parent().unwrap_or(Path::new("/"));
            match trusted::check_trusted_path(dir, 0) {
                Ok(()) => r.ok("audit", format!("audit records are appended to {file}")),
                Err(e) => r.fail("audit", format!("{} (directory of audit.log)", text(&e))),
            }
        }
    }
}

/// Where the scheduler glue may be: beside the binary's prefix
/// (`/usr/bin/berth` → `/usr/share/berth/wrapper`), in a build tree
/// (`<repo>/target/<profile>/berth` → `<repo>/wrapper`), or the package's.
pub fn glue_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if let Some(prefix) = bin.parent() {
            v.push(prefix.join("share/berth/wrapper"));
            if prefix.file_name().is_some_and(|n| n == "target") {
                if let Some(repo) = prefix.parent() {
                    v.push(repo.join("wrapper"));
                }
            }
        }
    }
    v.push(PathBuf::from(GLUE_DIR));
    v.dedup();
    v
}

fn check_glue(r: &mut Report) {
    let candidates = glue_candidates();
    let Some(dir) = candidates.iter().find(|d| d.is_dir()) else {
        let list: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        return r.warn(
            "glue",
            format!(
                "no scheduler glue in {}; install the berth package (or copy wrapper/ to {GLUE_DIR})",
                list.join(", ")
            ),
        );
    };
    let mut files = Vec::new();
    let mut unsafe_files = Vec::new();
    walk(dir, 0, &mut files);
    for f in &files {
        if let Err(e) = trusted::check_trusted_path(f, 0) {
            unsafe_files.push(text(&e));
        }
    }
    if !unsafe_files.is_empty() {
        return r.fail(
            "glue",
            format!(
                "schedulers run these as root or a relay: {}",
                unsafe_files.join("; ")
            ),
        );
    }
    let rel: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(dir).ok())
        .map(|f| f.display().to_string())
        .collect();
    r.ok(
        "glue",
        format!(
            "{}: {}",
            dir.display(),
            if rel.is_empty() {
                "(empty)".to_string()
            } else {
                rel.join(", ")
            }
        ),
    );

    // Whether the schedulers on this node point at berth.
    let oci = Path::new("/etc/slurm/oci.conf");
    if let Ok(t) = std::fs::read_to_string(oci) {
        if t.contains("berth") {
            match slurm_version() {
                None => r.ok(
                    "slurm",
                    format!(
                        "{} runs berth (Slurm's version unknown: no slurmd -V)",
                        oci.display()
                    ),
                ),
                Some(v) => match crate::sched::slurm::oci_conf_fit(v, &t) {
                    Ok(m) => r.ok("slurm", format!("{} runs berth; {m}", oci.display())),
                    Err(m) => r.fail("slurm", format!("{}: {m}", oci.display())),
                },
            }
        } else {
            r.warn(
                "slurm",
                format!(
                    "{} does not mention berth: sbatch --container jobs do not go through berth (see docs/install-slurm.md)",
                    oci.display()
                ),
            );
        }
    }
    if let Some(dir) = std::env::var_os("LSF_SERVERDIR") {
        let esub = Path::new(&dir).join("esub.docker");
        match std::fs::read_to_string(&esub) {
            Ok(t) if t.contains("berth") => r.ok("lsf", format!("{} runs berth", esub.display())),
            Ok(_) => r.warn(
                "lsf",
                format!(
                    "{} is not berth's: bsub -a docker jobs are not checked by berth (see docs/install-lsf.md)",
                    esub.display()
                ),
            ),
            Err(_) => r.warn(
                "lsf",
                format!(
                    "no {}: install berth's esub.docker (see docs/install-lsf.md)",
                    esub.display()
                ),
            ),
        }
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && depth < 3 => walk(&p, depth + 1, out),
            Ok(m) if !m.is_dir() => out.push(p),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_like_runc_reports_them() {
        assert_eq!(parse_version("1.1.5+ds1"), Some([1, 1, 5]));
        assert_eq!(parse_version("1.1.12"), Some([1, 1, 12]));
        assert_eq!(parse_version("v1.2.0-rc.1"), Some([1, 2, 0]));
        assert_eq!(parse_version("1.1"), Some([1, 1, 0]));
        assert_eq!(parse_version("unknown"), None);
        assert!(parse_version("1.1.11").unwrap() < PATCHED_RUNC);
        assert!(parse_version("1.2.0").unwrap() >= PATCHED_RUNC);
        assert!(parse_version("1.1.5+ds1").unwrap() < PATCHED_RUNC);
    }
}
