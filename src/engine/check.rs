//! Is the Docker engine known to be vulnerable? The launcher's check,
//! costing nothing per job.
//!
//! `berth doctor` asks the engine (`GET /version`) every time it runs. The
//! launcher cannot afford an API round trip per job, so it keeps the
//! verdict in a root-owned cache file, `<images.facts_cache>/engine.json`,
//! keyed by the identity of the engine's socket (device, inode and change
//! time: dockerd creates its socket anew at every start) and at most
//! [`MAX_AGE`] old (runc is executed per container, so a runc upgraded
//! under a running dockerd is seen within that time). A job start costs one
//! `stat` of the socket and one read of a small file; the `GET /version`
//! happens on the first job after an engine (re)start, after `MAX_AGE`, or
//! when the cache is missing or not trusted (not root-owned, writable by
//! others). Only root writes the cache; a failed `GET /version` is not
//! cached (the job then fails on the engine anyway).
//!
//! What is known-vulnerable ([`assess`], a pure function of the engine's
//! `/version`): runc before 1.1.12 (CVE-2024-21626: a leaked descriptor
//! lets a `/proc/self/fd/N` working directory escape; berth refuses such
//! workdirs, but an image's own symlinks can aim there), except vendor
//! builds known to carry the fix (Debian 12's `1.1.5+ds1-1+deb12u1` and
//! later); and Docker Engine before 20.10.18 (CVE-2022-36109: supplementary
//! groups set up wrongly, which berth's `--group-add` relies on). The
//! policy's `docker.old_runc` decides: `warn` (one `berth: warning:` line
//! per job) or `fail` (the job is refused, exit 78).

use crate::core::error::{Error, Result};
use crate::core::policy::{OldRunc, Policy};
use crate::engine::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a cached verdict holds for the same engine start.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// The cache file's name in `images.facts_cache`.
pub const CACHE_FILE: &str = "engine.json";

/// One known vulnerability of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `runc` or `Engine`.
    pub component: String,
    /// The version the engine reports (and its build, if it says).
    pub version: String,
    pub cve: String,
    pub summary: String,
    /// The first release with the fix.
    pub fixed_in: String,
}

impl Finding {
    /// One line for a warning or a refusal.
    pub fn message(&self) -> String {
        format!(
            "the engine's {} {} is affected by {} ({}); upgrade it to {} or later",
            self.component, self.version, self.cve, self.summary, self.fixed_in
        )
    }
}

/// The leading `major.minor.patch` of a version such as `1.1.5+ds1`.
pub fn parse_version(v: &str) -> Option<[u32; 3]> {
    let v = v.trim().trim_start_matches('v');
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let mut parts = v[..end].split('.').filter(|s| !s.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    Some([major, minor, patch])
}

fn component<'a>(version: &'a Value, name: &str) -> Option<&'a Value> {
    version
        .get("Components")?
        .as_array()?
        .iter()
        .find(|c| c.get("Name").and_then(Value::as_str) == Some(name))
}

/// Vendor builds of an older runc that carry the CVE-2024-21626 fix:
/// Debian 12's `1.1.5+ds1-1+deb12uN`, N >= 1 (its changelog: "CVE-2024-21626:
/// several container breakouts due to internally leaked fds").
fn runc_backported(version: &str, build: &str) -> bool {
    let debian = |s: &str| {
        s.strip_prefix("1.1.5+ds1-1+deb12u")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 1)
    };
    debian(build) || debian(version)
}

/// The known vulnerabilities of an engine, from its `GET /version` reply.
/// A component whose version cannot be read is reported as possibly
/// affected (fail closed).
pub fn assess(version: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let runc = component(version, "runc");
    let (ver, build) = match runc {
        Some(c) => (
            c.get("Version").and_then(Value::as_str).unwrap_or(""),
            c.pointer("/Details/GitCommit")
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
        None => ("", ""),
    };
    let old = parse_version(ver).map_or(true, |v| v < [1, 1, 12]);
    if old && !runc_backported(ver, build) {
        let shown = match (ver, build) {
            ("", _) => "(version not reported)".to_string(),
            (v, "") => v.to_string(),
            (v, b) if b == v => v.to_string(),
            (v, b) => format!("{v} (build {b})"),
        };
        out.push(Finding {
            component: "runc".into(),
            version: shown,
            cve: "CVE-2024-21626".into(),
            summary: "container escape through a leaked /proc/self/fd working directory".into(),
            fixed_in: "1.1.12".into(),
        });
    }
    let engine = version
        .get("Version")
        .and_then(Value::as_str)
        .or_else(|| {
            component(version, "Engine")
                .and_then(|c| c.get("Version"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    // Docker's own versions only (a podman or other engine says otherwise).
    if let Some(v) = parse_version(engine).filter(|v| v[0] >= 17 && v[0] < 100) {
        if v < [20, 10, 18] {
            out.push(Finding {
                component: "Engine".into(),
                version: engine.to_string(),
                cve: "CVE-2022-36109".into(),
                summary: "supplementary groups set up wrongly in containers".into(),
                fixed_in: "20.10.18".into(),
            });
        }
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    /// The socket's identity: `dev:ino:ctime_sec.ctime_nsec`.
    key: String,
    /// Seconds since the epoch.
    checked: u64,
    findings: Vec<Finding>,
}

/// The identity of the engine's start, read from its socket.
fn engine_key(socket: &Path) -> Option<String> {
    let md = std::fs::metadata(socket).ok()?;
    Some(format!(
        "{}:{}:{}.{}",
        md.dev(),
        md.ino(),
        md.ctime(),
        md.ctime_nsec()
    ))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A root-owned path that group and others cannot write.
fn trusted(p: &Path, dir: bool) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| {
        m.uid() == 0 && m.mode() & 0o022 == 0 && if dir { m.is_dir() } else { m.is_file() }
    })
}

fn read_cache(file: &Path, key: &str) -> Option<Vec<Finding>> {
    let dir = file.parent()?;
    if !trusted(dir, true) || !trusted(file, false) {
        return None;
    }
    let c: Cached = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    let fresh = now().saturating_sub(c.checked) < MAX_AGE.as_secs() && c.checked <= now();
    (c.key == key && fresh).then_some(c.findings)
}

fn write_cache(file: &Path, key: &str, findings: &[Finding]) {
    if !crate::sys::is_root() {
        return;
    }
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = file.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        let tmp = dir.join(format!(".{CACHE_FILE}.{}", std::process::id()));
        let c = Cached {
            key: key.to_string(),
            checked: now(),
            findings: findings.to_vec(),
        };
        std::fs::write(&tmp, serde_json::to_vec(&c).unwrap_or_default())?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        log::info!("cannot cache the engine check in {}: {e}", file.display());
    }
}

/// Where the verdict is cached.
pub fn cache_path(policy: &Policy) -> PathBuf {
    policy.images.facts_cache.join(CACHE_FILE)
}

/// The engine's known vulnerabilities, from the cache when it holds a
/// verdict for this engine start, else from the engine (and cached).
/// `None` when the engine cannot be asked.
pub fn findings(policy: &Policy, engine: &Engine) -> Option<Vec<Finding>> {
    let file = cache_path(policy);
    let key = engine_key(&policy.docker.socket);
    if let Some(k) = &key {
        if let Some(f) = read_cache(&file, k) {
            return Some(f);
        }
    }
    let v = engine.version().ok()?;
    let f = assess(&v);
    if let Some(k) = &key {
        write_cache(&file, k, &f);
    }
    Some(f)
}

/// The launcher's check: warn (one line per finding) or, when the policy
/// says `docker.old_runc = "fail"`, refuse the job (exit 78).
pub fn check(policy: &Policy, engine: &Engine) -> Result<()> {
    let Some(found) = findings(policy, engine) else {
        return Ok(());
    };
    for f in &found {
        match policy.docker.old_runc {
            OldRunc::Fail => {
                return Err(Error::Config(format!(
                    "{}; jobs are refused until then (docker.old_runc = \"fail\")",
                    f.message()
                )))
            }
            OldRunc::Warn => log::warn!(
                "{} (docker.old_runc = \"fail\" refuses jobs on such an engine)",
                f.message()
            ),
        }
    }
    Ok(())
}

/// [`check`], when there is an engine to ask (`berth explain` may have none).
pub fn check_if(policy: &Policy, engine: Option<&Engine>) -> Result<()> {
    engine.map_or(Ok(()), |e| check(policy, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn version(engine: &str, runc: &str, build: &str) -> Value {
        json!({
            "Version": engine,
            "Components": [
                {"Name": "Engine", "Version": engine},
                {"Name": "runc", "Version": runc, "Details": {"GitCommit": build}},
            ]
        })
    }

    fn cves(v: &Value) -> Vec<String> {
        assess(v).into_iter().map(|f| f.cve).collect()
    }

    #[test]
    fn runc_before_1_1_12_is_vulnerable() {
        assert_eq!(
            cves(&version("24.0.7", "1.1.5", "v1.1.5-0-gf19387a")),
            ["CVE-2024-21626"]
        );
        assert_eq!(cves(&version("24.0.7", "1.1.11", "")), ["CVE-2024-21626"]);
        assert!(cves(&version("25.0.2", "1.1.12", "v1.1.12-0-g51d5e94")).is_empty());
        assert!(cves(&version("27.0.1", "1.2.0", "")).is_empty());
    }

    #[test]
    fn debian_backport_is_patched() {
        // What the testbed's Debian 12 engine reports.
        assert!(cves(&version(
            "20.10.24+dfsg1",
            "1.1.5+ds1",
            "1.1.5+ds1-1+deb12u1"
        ))
        .is_empty());
        assert!(cves(&version(
            "20.10.24+dfsg1",
            "1.1.5+ds1",
            "1.1.5+ds1-1+deb12u3"
        ))
        .is_empty());
        // The release before the fix is not.
        assert_eq!(
            cves(&version("20.10.24+dfsg1", "1.1.5+ds1", "1.1.5+ds1-1")),
            ["CVE-2024-21626"]
        );
    }

    #[test]
    fn unknown_runc_fails_closed() {
        assert_eq!(cves(&json!({"Version": "24.0.7"})), ["CVE-2024-21626"]);
        assert_eq!(cves(&version("24.0.7", "weird", "")), ["CVE-2024-21626"]);
    }

    #[test]
    fn old_engine_groups_bug() {
        assert_eq!(cves(&version("20.10.17", "1.1.12", "")), ["CVE-2022-36109"]);
        assert!(cves(&version("20.10.18", "1.1.12", "")).is_empty());
        // Not Docker's numbering: not judged.
        assert!(cves(&version("4.9.3", "1.1.12", "")).is_empty());
    }

    #[test]
    fn messages_are_one_line_and_name_the_fix() {
        for f in assess(&version("20.10.17", "1.1.5", "x\ny")) {
            let m = f.message();
            assert!(m.contains(&f.cve) && m.contains(&f.fixed_in), "{m}");
        }
        let f = &assess(&version("24.0.7", "1.1.5", "v1.1.5-0-gf19387a"))[0];
        assert_eq!(f.version, "1.1.5 (build v1.1.5-0-gf19387a)");
    }

    #[test]
    fn cache_is_keyed_and_trusted() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(CACHE_FILE);
        let f = assess(&version("24.0.7", "1.1.5", ""));
        // Never a silent pass: only a root-owned cache is trusted.
        assert!(
            crate::sys::is_root(),
            "this test must run as root (tests/run.sh and CI do)"
        );
        write_cache(&file, "1:2:3.4", &f);
        assert_eq!(read_cache(&file, "1:2:3.4"), Some(f.clone()));
        // Another engine start, or a stale verdict, is a miss.
        assert_eq!(read_cache(&file, "1:2:3.5"), None);
        let stale = Cached {
            key: "1:2:3.4".into(),
            checked: now() - MAX_AGE.as_secs() - 1,
            findings: f,
        };
        std::fs::write(&file, serde_json::to_vec(&stale).unwrap()).unwrap();
        assert_eq!(read_cache(&file, "1:2:3.4"), None);
        // A cache others can write is not trusted.
        write_cache(&file, "1:2:3.4", &[]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_cache(&file, "1:2:3.4"), None);
    }
}
