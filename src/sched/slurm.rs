//! Slurm's OCI runtime in run mode (SPEC §8), for Slurm 22.05 and later.
//!
//! `RunTimeRun` runs `berth slurm run %b %r %n.%u.%j.%s.%t` as the job user,
//! with slurmd's environment and cwd = `%b`. The job itself is described by
//! `%b/config.json` (Slurm's rewritten copy): `process.args` is the task's
//! command, `process.env` the job's environment, and for batch steps a bind
//! mount puts the script at /tmp/slurm/startup. The image is the bundle the
//! user named with `--container`: `%r` is `<bundle>/rootfs`, and the bundle
//! must be a berth bundle in the site's cache. The job goes through the
//! broker like any unprivileged job.
//!
//! `RunTimeQuery`, `RunTimeKill` and `RunTimeDelete` run as root and act on
//! the container labelled `berth.slurm=%n.%u.%j.%s.%t`.

use crate::broker::proto::{Hello, TmpFile, VERSION};
use crate::core::error::{Error, Result};
use crate::core::policy::Policy;
use crate::engine::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where Slurm 22.05 binds the batch script in the container.
const STARTUP: &str = "/tmp/slurm/startup";

/// The parts of Slurm's config.json berth uses.
#[derive(Debug, PartialEq, Eq)]
pub struct SlurmJob {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Host path of the batch script, if this is a batch step.
    pub startup: Option<PathBuf>,
}

/// Parse Slurm's config.json (untrusted: the user wrote the original).
pub fn parse_config(text: &str) -> Result<SlurmJob> {
    let bad = |why: &str| Error::Malformed(format!("slurm config.json: {why}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let process = v.get("process").ok_or_else(|| bad("no process section"))?;
    let args: Vec<String> = match process.get("args") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("process.args holds a non-string"))
            })
            .collect::<Result<_>>()?,
        _ => return Err(bad("process.args is missing")),
    };
    if args.is_empty() {
        return Err(bad("process.args is empty"));
    }
    let mut env = BTreeMap::new();
    if let Some(Value::Array(a)) = process.get("env") {
        for x in a {
            let s = x
                .as_str()
                .ok_or_else(|| bad("process.env holds a non-string"))?;
            // Later entries (the job's) override earlier ones (the bundle's).
            if let Some((k, val)) = s.split_once('=') {
                env.insert(k.to_string(), val.to_string());
            }
        }
    }
    let mut startup = None;
    if let Some(Value::Array(mounts)) = v.get("mounts") {
        for m in mounts {
            if m.get("destination").and_then(Value::as_str) == Some(STARTUP) {
                startup = m.get("source").and_then(Value::as_str).map(PathBuf::from);
            }
        }
    }
    Ok(SlurmJob { args, env, startup })
}

/// The bundle name of `--container=<cache>/<name>`, from `%r`: the bundle's
/// `rootfs` (22.05, and later without IgnoreFileConfigJson), or, as Slurm
/// 23.02+ passes `--container` unchanged under IgnoreFileConfigJson=true,
/// the bundle directory itself or a bare NAME.
pub fn bundle_name(policy: &Policy, rootfs: &Path) -> Result<String> {
    let cache = policy.bundles.cache.as_ref().ok_or_else(|| {
        Error::Denied(crate::core::error::Denial::new(
            "bundles.cache",
            rootfs.display().to_string(),
            "this site has no bundle cache, so sbatch/srun --container cannot be used",
            "ask your administrator to set [bundles] cache",
        ))
    })?;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let real_cache = canon(cache);
    let users = real_cache.join(crate::bundle::cache::USERS);
    // A bundle directory: in the cache, or in a user's (SPEC §15).
    let is_bundle = |p: &Path| {
        p.parent() == Some(real_cache.as_path())
            || p.parent().and_then(Path::parent) == Some(users.as_path())
    };
    let bundle = if is_bundle(&canon(rootfs)) {
        Some(canon(rootfs))
    } else {
        rootfs.parent().map(canon)
    };
    if let Some(b) = bundle
        .as_ref()
        .filter(|b| b.parent().and_then(Path::parent) == Some(users.as_path()))
    {
        let user = b
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let name = b.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let key = format!("{user}/{name}");
        if crate::core::share::parse_key(&key).is_some() {
            return Ok(key);
        }
        return Err(Error::Malformed(format!("bundle {key:?} is not valid")));
    }
    match bundle {
        Some(b) if b.parent() == Some(real_cache.as_path()) => {
            let name = b.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if matches!(
                crate::core::share::parse_key(name),
                Some(crate::core::share::Key::Site(_))
            ) {
                return Ok(name.to_string());
            }
            Err(Error::Malformed(format!(
                "bundle name {name:?} is not valid"
            )))
        }
        _ => Err(Error::Denied(crate::core::error::Denial::new(
            "bundles.cache",
            rootfs.display().to_string(),
            format!(
                "--container must name a bundle in the site's bundle cache {} (rootfs {})",
                cache.display(),
                rootfs.display()
            ),
            format!(
                "use --container={}/NAME (berth bundle list shows the names)",
                cache.display()
            ),
        ))),
    }
}

/// Slurm's step id of a batch script (`SLURM_BATCH_SCRIPT`).
const BATCH_STEP: &str = "4294967291";

/// The task as Slurm 23.02+ hands it over with IgnoreFileConfigJson=true:
/// no config.json, the argv from `%@` and the environment from the
/// `CreateEnvFile` file (`%e`, NUL- or newline-terminated entries). A batch
/// step's argv[0] is the script's path on the node: it goes to the job's
/// /tmp/slurm/startup like the bind mount 22.05 describes.
pub fn job_from_argv(env_file: &[u8], mut args: Vec<String>, id: &str) -> Result<SlurmJob> {
    let bad = |why: String| Error::Malformed(format!("slurm task: {why}"));
    if args.is_empty() {
        return Err(bad("no command after --".into()));
    }
    let sep = if env_file.contains(&0) { 0 } else { b'\n' };
    let mut env = BTreeMap::new();
    for entry in env_file.split(|b| *b == sep).filter(|e| !e.is_empty()) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            let name = String::from_utf8_lossy(entry.split(|b| *b == b'=').next().unwrap_or(b""))
                .into_owned();
            if name.starts_with("LSF_") || name.starts_with("LSB_") || name.starts_with("LS_") {
                return Err(bad(format!("{name} is not valid UTF-8")));
            }
            continue;
        };
        if let Some((k, v)) = entry.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let step = id.rsplit('.').nth(1);
    let startup = if step == Some(BATCH_STEP) {
        let script = PathBuf::from(&args[0]);
        if !script.is_absolute() {
            return Err(bad(format!(
                "batch script {:?} is not an absolute path",
                args[0]
            )));
        }
        args[0] = STARTUP.into();
        Some(script)
    } else {
        // slurmstepd resolved the command in the job's PATH on the node
        // before handing it over; inside the image that path may not exist
        // (`/usr/bin/id` on the node, `/bin/id` in a busybox image). Undo
        // exactly that resolution, so that the image's own PATH decides.
        let path = env.get("PATH").map(String::as_str).unwrap_or("");
        args[0] = unresolve(&args[0], path, |p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
        None
    };
    Ok(SlurmJob { args, env, startup })
}

/// `arg0` back to the bare name it was resolved from, when it is exactly
/// what a PATH search for that name finds first on the node
/// (`executable`); anything else (a path the user wrote that a search would
/// not give) is left as it is.
pub fn unresolve(arg0: &str, path: &str, executable: impl Fn(&Path) -> bool) -> String {
    let Some((_, base)) = arg0.rsplit_once('/') else {
        return arg0.to_string();
    };
    if base.is_empty() || !arg0.starts_with('/') {
        return arg0.to_string();
    }
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(base);
        if executable(&candidate) {
            return if candidate == Path::new(arg0) {
                base.to_string()
            } else {
                arg0.to_string()
            };
        }
    }
    arg0.to_string()
}

/// The image a task names with `--container` (`%r`), as berth's request
/// names images (`LSB_CONTAINER_IMAGE`): an absolute path is an OCI bundle
/// in the site's cache (`bundle:NAME`); on Slurm 23.02+ with
/// IgnoreFileConfigJson, where `--container` reaches berth unchanged,
/// `bundle:NAME` names a bundle and anything else is an image reference
/// (`docker.io/library/alpine:3.19`), checked by the policy like any job's.
pub fn image_of(policy: &Policy, container: &Path) -> Result<String> {
    if container.is_absolute() {
        return Ok(format!("bundle:{}", bundle_name(policy, container)?));
    }
    let text = container.to_str().ok_or_else(|| {
        Error::Malformed(format!("--container {} is not UTF-8", container.display()))
    })?;
    if let Some(name) = text.strip_prefix("bundle:") {
        // The same check as LSB_CONTAINER_IMAGE=bundle:NAME.
        return Ok(format!("bundle:{name}"));
    }
    if text.starts_with('.') {
        return Err(Error::Malformed(format!(
            "--container={text}: a bundle must be named by its absolute path, or as bundle:NAME"
        )));
    }
    Ok(text.to_string())
}

/// The request berth sends the broker for a Slurm task.
pub fn hello(
    policy: &Policy,
    job: SlurmJob,
    rootfs: &Path,
    id: &str,
    task_dir: Option<PathBuf>,
) -> Result<Hello> {
    let image = image_of(policy, rootfs)?;
    let mut env = job.env;
    // The image is the one the user named with --container; nothing in the
    // job's environment chooses another.
    env.insert("LSB_CONTAINER_IMAGE".into(), image);
    let fields: Vec<&str> = id.rsplitn(4, '.').collect();
    // id = %n.%u.%j.%s.%t (the node name may hold dots): j, s from the end.
    let (step, jobid) = match fields.as_slice() {
        [_task, step, jobid, _rest] => (step.to_string(), jobid.to_string()),
        _ => {
            return Err(Error::Malformed(format!(
                "slurm container id {id:?} is not %n.%u.%j.%s.%t"
            )))
        }
    };
    env.insert("LSB_JOBID".into(), jobid);
    env.insert("LSB_JOBINDEX".into(), step);
    env.remove("LS_SUBCWD");
    let cwd = env.get("SLURM_SUBMIT_DIR").cloned();
    if let Some(c) = &cwd {
        env.insert("LS_SUBCWD".into(), c.clone());
    }
    let mut tmp_files = Vec::new();
    if let Some(src) = &job.startup {
        // Read as the job user (this process): Slurm's spool copy.
        let content = std::fs::read(src).map_err(|e| {
            Error::Malformed(format!(
                "cannot read the batch script {}: {e}",
                src.display()
            ))
        })?;
        tmp_files.push(TmpFile {
            path: "slurm/startup".into(),
            content,
            mode: 0o700,
        });
    }
    Ok(Hello {
        version: VERSION,
        scheduler: "slurm".into(),
        env,
        cwd,
        command: job.args,
        tmp_files,
        slurm_id: Some(id.to_string()),
        explain: None,
        bundle: None,
        slurm_task_dir: task_dir.map(|d| d.display().to_string()),
    })
}

/// `berth slurm run [--env-file FILE] SPOOL ROOTFS ID [-- ARGS…]`: the task
/// from `SPOOL/config.json`, or (Slurm 23.02+, IgnoreFileConfigJson=true)
/// from ARGS and FILE.
pub fn run(
    policy_path: &Path,
    spool: &Path,
    rootfs: &Path,
    id: &str,
    env_file: Option<&Path>,
    args: &[String],
) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    let job =
        match env_file {
            Some(f) => {
                let bytes = std::fs::read(f)
                    .map_err(|e| Error::Malformed(format!("cannot read {}: {e}", f.display())))?;
                job_from_argv(&bytes, args.to_vec(), id)?
            }
            None if !args.is_empty() => return Err(Error::Malformed(
                "a command after -- (Slurm's %@) needs --env-file %e; see wrapper/slurm/README.md"
                    .into(),
            )),
            None => {
                let cfg = spool.join("config.json");
                let text = std::fs::read_to_string(&cfg)
                    .map_err(|e| Error::Malformed(format!("cannot read {}: {e}", cfg.display())))?;
                parse_config(&text)?
            }
        };
    // The task's spool directory: where slurmstepd wrote `%e`, and this
    // process's cwd (the broker checks it before an MPI task gets it).
    let task_dir = env_file
        .and_then(Path::parent)
        .filter(|d| d.is_absolute())
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok());
    let h = hello(&policy, job, rootfs, id, task_dir)?;
    crate::broker::client::launch(&policy.broker.socket, &h)
}

/// `(major, minor)` of `slurmd -V` / `sinfo -V` output (`slurm 22.05.8`,
/// `slurm-wlm 24.11.5`).
pub fn parse_slurm_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().nth(1)?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether an oci.conf suits the installed Slurm: `Ok(what it gives)` or
/// `Err(what to change)`.
pub fn oci_conf_fit(version: (u32, u32), text: &str) -> std::result::Result<String, String> {
    let ignore = text.lines().any(|l| {
        // Comments run to the end of the line, as in slurm.conf.
        let l = l.split('#').next().unwrap_or("").trim();
        l.split_once('=').is_some_and(|(k, v)| {
            let v = v.trim().trim_matches('"');
            k.trim().eq_ignore_ascii_case("IgnoreFileConfigJson")
                && ["true", "yes", "1"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t))
        })
    });
    let (maj, min) = version;
    let current = (maj, min) >= (23, 2);
    match (current, ignore) {
        (false, true) => Err(format!(
            "Slurm {maj}.{min:02} refuses IgnoreFileConfigJson and fails every --container step: install /usr/share/berth/wrapper/slurm/oci.conf instead"
        )),
        (false, false) => Ok(format!(
            "fits Slurm {maj}.{min:02}: users give a bundle's path with --container"
        )),
        (true, true) => Ok(format!(
            "fits Slurm {maj}.{min:02}: --container takes a bundle's path, bundle:NAME or an image by name"
        )),
        (true, false) => Ok(format!(
            "works on Slurm {maj}.{min:02} for bundle paths; oci.conf.23.02-ignore-config-json would also let users name an image (--container=IMAGE)"
        )),
    }
}

/// The containers of Slurm's container id `%n.%u.%j.%s.%t`. The label is
/// whatever the client sent (any user can run `berth slurm run` with any
/// id), so only a container the broker started for the user the id names
/// (its `berth.user` label, from the kernel's identity) counts.
fn find(engine: &Engine, id: &str) -> Result<Vec<Value>> {
    Ok(engine
        .list_containers(&[format!("berth.slurm={id}")])?
        .into_iter()
        .filter(|c| {
            c.pointer("/Labels/berth.user")
                .and_then(Value::as_str)
                .is_some_and(|u| id_names_user(id, u))
        })
        .collect())
}

/// Whether `id` (`%n.%u.%j.%s.%t`; node and user names may hold dots) names
/// `user`.
fn id_names_user(id: &str, user: &str) -> bool {
    let mut fields = id.rsplitn(4, '.');
    let (_t, _s, _j) = (fields.next(), fields.next(), fields.next());
    fields
        .next()
        .and_then(|node_user| node_user.strip_suffix(user))
        .is_some_and(|node| node.ends_with('.') && node.len() > 1)
}

/// `berth slurm query ID`: OCI state JSON, `{}` when there is no container.
/// Slurm parses everything this prints as JSON, so errors go to the log
/// and the answer is `{}` (nothing berth can act on).
pub fn query(policy_path: &Path, id: &str) -> Result<i32> {
    match query_state(policy_path, id) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            log_to_syslog(&format!("slurm query {id}: {e}"));
            println!("{{}}");
        }
    }
    Ok(0)
}

fn log_to_syslog(msg: &str) {
    let f = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "berth".into(),
        pid: std::process::id(),
    };
    if let Ok(mut l) = syslog::unix(f) {
        let _ = l.err(msg);
    }
}

fn query_state(policy_path: &Path, id: &str) -> Result<Value> {
    let policy = Policy::load(policy_path)?;
    let engine = Engine::new(&policy.docker.socket);
    let state = match find(&engine, id)?.first() {
        None => serde_json::json!({}),
        Some(c) => {
            let status = match c.get("State").and_then(Value::as_str).unwrap_or("") {
                "created" => "created",
                "running" | "restarting" => "running",
                "paused" => "paused",
                _ => "stopped",
            };
            let name = c.get("Id").and_then(Value::as_str).unwrap_or("");
            let pid = engine
                .inspect_container(name)?
                .and_then(|i| i.pointer("/State/Pid").and_then(Value::as_i64))
                .unwrap_or(0);
            serde_json::json!({"ociVersion": "1.0.2", "id": id, "status": status, "pid": pid, "bundle": ""})
        }
    };
    Ok(state)
}

/// `berth slurm kill ID [SIGNAL]`: signal the container (default SIGKILL:
/// Slurm calls this to end the step).
pub fn kill(policy_path: &Path, id: &str, signal: &str) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    let engine = Engine::new(&policy.docker.socket);
    let sig = signal.trim_start_matches("SIG").to_ascii_uppercase();
    if sig.is_empty() || !sig.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::Malformed(format!("signal {signal:?}")));
    }
    for c in find(&engine, id)? {
        if let Some(cid) = c.get("Id").and_then(Value::as_str) {
            engine.kill(cid, &sig)?;
        }
    }
    Ok(0)
}

/// `berth slurm delete ID`: remove the container; the broker's job thread
/// then cleans up the per-job directory.
pub fn delete(policy_path: &Path, id: &str) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    let engine = Engine::new(&policy.docker.socket);
    for c in find(&engine, id)? {
        if let Some(cid) = c.get("Id").and_then(Value::as_str) {
            engine.remove(cid)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = r#"{"ociVersion":"1.0.0","process":{"args":["/tmp/slurm/startup"],"env":["PATH=/bin","A=bundle","SLURM_JOB_ID=17","SLURM_SUBMIT_DIR=/storage1/fs1/alice","A=job"],"cwd":"/"},"root":{"path":"/c/b/rootfs"},"mounts":[{"destination":"/tmp/slurm/startup","source":"/var/spool/slurmd/job17/slurm_script","options":["bind","ro"]},{"destination":"/tmp/slurm/stdout","source":"/x/out"}]}"#;

    #[test]
    fn batch_config() {
        let j = parse_config(BATCH).unwrap();
        assert_eq!(j.args, vec!["/tmp/slurm/startup"]);
        assert_eq!(j.env.get("A").map(String::as_str), Some("job"));
        assert_eq!(
            j.startup,
            Some(PathBuf::from("/var/spool/slurmd/job17/slurm_script"))
        );
    }

    #[test]
    fn a_node_resolved_command_goes_back_to_its_name() {
        let on_node =
            |p: &Path| ["/usr/bin/id", "/bin/id", "/opt/x/run"].contains(&p.to_str().unwrap());
        let path = "/usr/local/bin:/usr/bin:/bin";
        assert_eq!(unresolve("/usr/bin/id", path, on_node), "id");
        // Not what a search finds first: the user's own path.
        assert_eq!(unresolve("/bin/id", path, on_node), "/bin/id");
        assert_eq!(unresolve("/opt/x/run", path, on_node), "/opt/x/run");
        assert_eq!(unresolve("id", path, on_node), "id");
        assert_eq!(unresolve("./run", path, on_node), "./run");
        assert_eq!(unresolve("/usr/bin/", path, on_node), "/usr/bin/");
        assert_eq!(unresolve("/usr/bin/id", "", on_node), "/usr/bin/id");
    }

    #[test]
    fn a_task_from_argv_and_an_env_file() {
        let env = b"PATH=/bin\0SLURM_SUBMIT_DIR=/storage1/fs1/alice\0A=1\0A=2\0\0";
        let j = job_from_argv(env, vec!["id".into(), "-u".into()], "vm.alice.17.0.0").unwrap();
        assert_eq!(j.args, ["id", "-u"]);
        assert_eq!(j.env["A"], "2");
        assert_eq!(j.env["SLURM_SUBMIT_DIR"], "/storage1/fs1/alice");
        assert_eq!(j.startup, None);
        // newline-terminated (CreateEnvFile=newline), a batch step
        let j = job_from_argv(
            b"B=x y\nC=\n",
            vec![
                "/var/spool/slurmd/job00017/slurm_script".into(),
                "arg".into(),
            ],
            "vm.alice.17.4294967291.0",
        )
        .unwrap();
        assert_eq!(j.args, [STARTUP, "arg"]);
        assert_eq!(j.env["B"], "x y");
        assert_eq!(j.env["C"], "");
        assert_eq!(
            j.startup,
            Some(PathBuf::from("/var/spool/slurmd/job00017/slurm_script"))
        );
        assert!(job_from_argv(b"", vec![], "vm.alice.17.0.0").is_err());
        assert!(job_from_argv(b"", vec!["rel".into()], "vm.alice.17.4294967291.0").is_err());
        assert!(job_from_argv(b"LSB_X=\xff\0", vec!["id".into()], "vm.a.1.0.0").is_err());
        let j = job_from_argv(b"X=\xff\0Y=1\0", vec!["id".into()], "vm.a.1.0.0").unwrap();
        assert_eq!(j.env.keys().collect::<Vec<_>>(), ["Y"]);
    }

    #[test]
    fn the_oci_conf_in_place_fits_the_installed_slurm() {
        assert_eq!(parse_slurm_version("slurm 22.05.8\n"), Some((22, 5)));
        assert_eq!(parse_slurm_version("slurm-wlm 24.11.5"), Some((24, 11)));
        assert_eq!(parse_slurm_version("nonsense"), None);
        let plain = include_str!("../../wrapper/slurm/oci.conf");
        let named = include_str!("../../wrapper/slurm/oci.conf.23.02-ignore-config-json");
        assert!(oci_conf_fit((22, 5), plain).is_ok());
        assert!(oci_conf_fit((22, 5), named)
            .unwrap_err()
            .contains("refuses"));
        assert!(oci_conf_fit((24, 11), named).unwrap().contains("by name"));
        assert!(oci_conf_fit((23, 2), plain)
            .unwrap()
            .contains("23.02-ignore"));
        // A commented-out key is not set; Slurm's other spellings of true are.
        assert!(oci_conf_fit((22, 5), "#IgnoreFileConfigJson=true\n").is_ok());
        for on in [
            "IgnoreFileConfigJson=yes",
            "ignorefileconfigjson = 1 # on",
            "IgnoreFileConfigJson=\"True\"",
        ] {
            assert!(oci_conf_fit((22, 5), on).is_err(), "{on}");
        }
    }

    #[test]
    fn bundle_names_as_23_02_passes_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("pt2/rootfs")).unwrap();
        let mut p = Policy::default();
        p.bundles.cache = Some(cache.clone());
        for r in [cache.join("pt2/rootfs"), cache.join("pt2")] {
            assert_eq!(bundle_name(&p, &r).unwrap(), "pt2", "{}", r.display());
            assert_eq!(image_of(&p, &r).unwrap(), "bundle:pt2");
        }
        std::fs::create_dir_all(cache.join("users/alice/pt3/rootfs")).unwrap();
        for r in [
            cache.join("users/alice/pt3/rootfs"),
            cache.join("users/alice/pt3"),
        ] {
            assert_eq!(bundle_name(&p, &r).unwrap(), "alice/pt3", "{}", r.display());
        }
        assert!(bundle_name(&p, &cache.join("users/alice")).is_err());
        for r in [
            dir.path().to_path_buf(),
            cache.clone(),
            PathBuf::from("/"),
            cache.join("pt2/rootfs/x"),
        ] {
            assert!(image_of(&p, &r).is_err(), "{}", r.display());
        }
        // By name (23.02+): a bundle, or an image reference the policy checks.
        let by_name = |s: &str| image_of(&p, Path::new(s));
        assert_eq!(by_name("bundle:pt2").unwrap(), "bundle:pt2");
        assert_eq!(by_name("alpine:3.19").unwrap(), "alpine:3.19");
        assert_eq!(
            by_name("docker.io/library/alpine:3.19").unwrap(),
            "docker.io/library/alpine:3.19"
        );
        assert_eq!(by_name("pt2").unwrap(), "pt2");
        assert!(by_name("./pt2").is_err() && by_name("../x").is_err());
    }

    #[test]
    fn the_id_names_its_user() {
        assert!(id_names_user("vm.berth-alice.17.0.0", "berth-alice"));
        assert!(id_names_user("n1.example.org.a.b.17.4294967291.0", "a.b"));
        assert!(!id_names_user("vm.berth-bob.17.0.0", "berth-alice"));
        assert!(!id_names_user("vm.xberth-alice.17.0.0", "berth-alice"));
        assert!(!id_names_user("berth-alice.17.0.0", "berth-alice"));
        assert!(!id_names_user(".berth-alice.17.0.0", "berth-alice"));
        assert!(!id_names_user("vm.berth-alice.17.0", "berth-alice"));
        assert!(!id_names_user("", "berth-alice"));
    }

    #[test]
    fn hostile_configs() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"process":{}}"#,
            r#"{"process":{"args":[]}}"#,
            r#"{"process":{"args":[1]}}"#,
            r#"{"process":{"args":["x"],"env":[3]}}"#,
        ] {
            assert!(
                matches!(parse_config(bad), Err(Error::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hello_from_a_bundle_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("pt2/rootfs")).unwrap();
        let mut p = Policy::default();
        p.bundles.cache = Some(cache.clone());
        let mut j = parse_config(BATCH).unwrap();
        j.startup = None;
        j.env
            .insert("LSB_CONTAINER_IMAGE".into(), "docker.io/evil/x".into());
        let h = hello(
            &p,
            j,
            &cache.join("pt2/rootfs"),
            "node.a.b.alice.17.4294967291.0",
            Some("/var/spool/slurmd/oci-job17-4294967291/task-0".into()),
        )
        .unwrap();
        assert_eq!(
            h.slurm_task_dir.as_deref(),
            Some("/var/spool/slurmd/oci-job17-4294967291/task-0")
        );
        assert_eq!(h.env["LSB_CONTAINER_IMAGE"], "bundle:pt2");
        assert_eq!(h.env["LSB_JOBID"], "17");
        assert_eq!(h.env["LSB_JOBINDEX"], "4294967291");
        assert_eq!(h.cwd.as_deref(), Some("/storage1/fs1/alice"));
        assert_eq!(
            h.slurm_id.as_deref(),
            Some("node.a.b.alice.17.4294967291.0")
        );
        // A bundle outside the cache is refused.
        std::fs::create_dir_all(dir.path().join("elsewhere/rootfs")).unwrap();
        let j = parse_config(BATCH).unwrap();
        let e = hello(
            &p,
            j,
            &dir.path().join("elsewhere/rootfs"),
            "n.u.1.0.0",
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Denied(d) if d.rule == "bundles.cache"));
    }
}
