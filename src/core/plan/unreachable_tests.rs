//! A path behind a directory the user cannot search: the node's `HostFs`
//! answers "permission denied" for it whatever is there, and the planner
//! turns that into one denial naming only the path.

use super::*;
use crate::core::error::Denial;
use crate::core::identity::fake::FakeDb;
use crate::core::identity::resolve;
use crate::core::request::from_env;
use std::collections::BTreeMap;

/// `/data/bob/private` is closed to the user. `stat_only`: resolving works
/// but inspecting fails (the directory was closed in between).
struct ClosedFs {
    stat_only: bool,
}

const CLOSED: &str = "/data/bob/private";

fn closed(p: &Path) -> bool {
    p.starts_with(CLOSED) && p != Path::new(CLOSED)
}

impl HostFs for ClosedFs {
    fn canonicalize(&self, p: &Path) -> io::Result<PathBuf> {
        if closed(p) && !self.stat_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        Ok(p.to_path_buf())
    }
    fn is_dir(&self, p: &Path) -> io::Result<bool> {
        if closed(p) {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        Ok(true)
    }
    fn user_can_access(&self, _id: &Identity, paths: &[PathBuf]) -> Result<Vec<bool>> {
        Ok(paths.iter().map(|p| !closed(p)).collect())
    }
}

const POLICY: &str = r#"
[cgroup]
require_job = false
[images]
allow = ["docker.io/library/*"]
[[volumes]]
root = "/data"
mode = "rw"
"#;

fn denial(fs: &ClosedFs, env: &[(&str, &str)]) -> Denial {
    let policy = Policy::parse(POLICY, "test").unwrap();
    let mut e: BTreeMap<String, String> = BTreeMap::from([
        ("LSB_CONTAINER_IMAGE".into(), "alpine".into()),
        ("LSB_JOBID".into(), "42".into()),
        ("LS_SUBCWD".into(), "/data/alice".into()),
    ]);
    e.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let id = resolve(&FakeDb::standard(), &policy, 2001, None).unwrap();
    let req = from_env(&e, None, vec!["true".into()]).unwrap();
    let ctx = Context {
        nonce: "0badcafe".into(),
        ..Default::default()
    };
    match plan(&policy, &id, &req, None, fs, &ctx) {
        Err(Error::Denied(d)) => d,
        other => panic!("{env:?}: expected a denial, got {other:?}"),
    }
}

#[test]
fn an_unreachable_path_is_one_access_denial_naming_only_the_path() {
    for stat_only in [false, true] {
        for (var, value) in [
            ("LSF_DOCKER_VOLUMES", "/data/bob/private/x:/x"),
            ("LS_SUBCWD", "/data/bob/private/x"),
            ("LSF_DOCKER_WORKDIR", "/data/bob/private/x"),
        ] {
            let d = denial(&ClosedFs { stat_only }, &[(var, value)]);
            assert_eq!(
                (d.rule, d.value.as_str(), d.message.as_str()),
                (
                    "volumes.access",
                    "/data/bob/private/x",
                    "user alice cannot reach /data/bob/private/x with their own permissions"
                ),
                "{var}, stat_only {stat_only}"
            );
        }
    }
}
