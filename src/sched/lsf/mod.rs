//! LSF integration (SPEC §9): `bsub -a 'docker(IMAGE)'` end to end.
//!
//! * [`esub`]: the submission hook (validate, set `LSB_CONTAINER_IMAGE`).
//! * the starter is `berth run --scheduler lsf` itself (wrapper/lsf/).
//! * [`control`]: suspend/resume/terminate the job's container.
//! * [`monitor`]: its CPU and memory usage.
//!
//! Control and monitor find the container by the labels every plan sets
//! (`berth.job`, `berth.index`, `berth.uid`), never by a name the caller
//! passes, and act only for root, a trusted relay or the job's own user.

pub mod control;
pub mod esub;
pub mod jobfile;
pub mod monitor;
pub mod task;

use crate::cli::{JobSelector, LsfCommand};
use crate::core::error::{Denial, Error, Result};
use crate::core::identity;
use crate::core::policy::Policy;
use crate::core::request::JobId;
use crate::engine::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

pub fn main(policy_path: &Path, cmd: &LsfCommand) -> Result<i32> {
    match cmd {
        // The esub reports its own errors: LSF wants LSB_SUB_ABORT_VALUE.
        LsfCommand::Esub(a) => Ok(esub::run(policy_path, a)),
        LsfCommand::Control(a) => control::run(policy_path, a),
        LsfCommand::Monitor(a) => monitor::run(policy_path, a),
    }
}

/// The job to act on: `--job`/`--index`, else `LSB_JOBID`/`LSB_JOBINDEX`.
pub fn job_from(sel: &JobSelector, env: &BTreeMap<String, String>) -> Result<JobId> {
    let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let id = match sel.job.as_deref().or_else(|| get("LSB_JOBID")) {
        None => {
            return Err(Error::Malformed(
                "no job: LSB_JOBID is not set; run from LSF or give --job ID".into(),
            ))
        }
        Some(v) if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.to_string()
        }
        Some(v) => {
            return Err(Error::Malformed(format!(
                "job id {v:?} is not a job number"
            )))
        }
    };
    let index = match sel.index {
        Some(i) => i,
        None => match get("LSB_JOBINDEX") {
            None => 0,
            Some(v) => match v.parse::<u32>() {
                Ok(i) if v.bytes().all(|b| b.is_ascii_digit()) => i,
                _ => {
                    return Err(Error::Malformed(format!(
                        "LSB_JOBINDEX={v:?} is not an array index"
                    )))
                }
            },
        },
    };
    Ok(JobId { id, index })
}

/// A container berth started for a job, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContainer {
    pub id: String,
    pub name: String,
    /// created, running, paused, restarting, removing, exited, dead
    pub state: String,
    pub user: String,
    pub uid: Option<u32>,
    pub created: i64,
}

/// Read one entry of `GET /containers/json`, keeping it only if it is
/// berth's container for `job` (labels and the name berth gives agree).
pub fn job_container(v: &Value, job: &JobId) -> Option<JobContainer> {
    let labels = v.get("Labels")?;
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if label("berth.job") != Some(job.id.as_str())
        || label("berth.index") != Some(job.index.to_string().as_str())
    {
        return None;
    }
    let name = v
        .get("Names")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .map(|n| n.trim_start_matches('/'))
        .find(|n| n.starts_with(&format!("berth-{}-{}-", job.id, job.index)))?
        .to_string();
    Some(JobContainer {
        id: v.get("Id")?.as_str()?.to_string(),
        name,
        state: v
            .get("State")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        user: label("berth.user").unwrap_or("").to_string(),
        uid: label("berth.uid").and_then(|u| u.parse().ok()),
        created: v.get("Created").and_then(Value::as_i64).unwrap_or(0),
    })
}

/// The job's containers, oldest first.
pub fn find(engine: &Engine, job: &JobId) -> Result<Vec<JobContainer>> {
    let labels = [
        format!("berth.job={}", job.id),
        format!("berth.index={}", job.index),
    ];
    let mut v: Vec<JobContainer> = engine
        .list_containers(&labels)?
        .iter()
        .filter_map(|c| job_container(c, job))
        .collect();
    v.sort_by_key(|c| c.created);
    Ok(v)
}

/// Whether `caller` may act on these containers: root or a trusted relay
/// always; anyone else only on containers running as their own uid.
pub fn authorize(
    db: &dyn identity::UserDb,
    policy: &Policy,
    caller: u32,
    what: &str,
    job: &JobId,
    containers: &[JobContainer],
) -> Result<()> {
    if identity::is_trusted_relay(db, policy, caller)? {
        return Ok(());
    }
    match containers.iter().find(|c| c.uid != Some(caller)) {
        None => Ok(()),
        Some(c) => Err(Error::Denied(Denial::new(
            "lsf.control",
            c.name.clone(),
            format!(
                "uid {caller} may not {what} job {}[{}], which runs as {} (uid {})",
                job.id,
                job.index,
                if c.user.is_empty() { "?" } else { &c.user },
                c.uid.map_or("?".to_string(), |u| u.to_string())
            ),
            "only the job's owner, root or a relay in identity.relays may",
        ))),
    }
}

/// `berth lsf control|monitor` run by anyone but root: ask the broker,
/// which takes the caller from SO_PEERCRED and checks it like [`authorize`].
pub fn via_broker(policy: &Policy, what: &str, job: &JobId, command: Vec<String>) -> Result<i32> {
    let env = BTreeMap::from([
        ("LSB_JOBID".to_string(), job.id.clone()),
        ("LSB_JOBINDEX".to_string(), job.index.to_string()),
    ]);
    let hello = crate::broker::proto::Hello {
        version: crate::broker::proto::VERSION,
        scheduler: format!("lsf-{what}"),
        env,
        cwd: None,
        command,
        tmp_files: Vec::new(),
        slurm_id: None,
        explain: None,
        bundle: None,
        slurm_task_dir: None,
    };
    crate::broker::client::launch(&policy.broker.socket, &hello)
}

/// The broker's side of [`via_broker`]: `what` is `control` or `monitor`,
/// `caller` the peer's uid, `fds` the client's stdin, stdout and stderr.
pub fn serve(
    policy: &Policy,
    caller: u32,
    what: &str,
    command: &[String],
    env: &BTreeMap<String, String>,
    fds: &[OwnedFd],
) -> Result<i32> {
    let none = JobSelector {
        job: None,
        index: None,
    };
    let job = job_from(&none, env)?;
    let writer = |i: usize| -> Box<dyn Write> {
        match fds.get(i).and_then(|fd| fd.try_clone().ok()) {
            Some(fd) => Box::new(std::fs::File::from(fd)),
            None => Box::new(std::io::sink()),
        }
    };
    match (what, command) {
        ("control", [a]) => {
            let action = control::parse_action(a)?;
            control::control(policy, caller, &action, &job, &mut writer(2))
        }
        ("monitor", [how]) if how == "json" || how == "lines" => {
            monitor::monitor(policy, caller, &job, how == "json", &mut writer(1))
        }
        _ => Err(Error::Malformed(format!(
            "lsf {what} request {command:?} is not understood"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::fake::FakeDb;

    fn entry(job: &str, index: &str, name: &str, uid: &str) -> Value {
        serde_json::json!({
            "Id": "abc",
            "Names": [format!("/{name}")],
            "State": "running",
            "Created": 5,
            "Labels": {"berth.job": job, "berth.index": index, "berth.user": "alice", "berth.uid": uid},
        })
    }

    fn job(id: &str, index: u32) -> JobId {
        JobId {
            id: id.into(),
            index,
        }
    }

    #[test]
    fn containers_match_labels_and_name() {
        let c = job_container(&entry("12", "3", "berth-12-3-beef", "2001"), &job("12", 3)).unwrap();
        assert_eq!(
            (c.name.as_str(), c.uid, c.state.as_str()),
            ("berth-12-3-beef", Some(2001), "running")
        );
        // Another element of the array, another job, a foreign name.
        assert!(
            job_container(&entry("12", "3", "berth-12-3-beef", "2001"), &job("12", 4)).is_none()
        );
        assert!(
            job_container(&entry("12", "3", "berth-12-3-beef", "2001"), &job("1", 3)).is_none()
        );
        assert!(job_container(&entry("12", "3", "mine", "2001"), &job("12", 3)).is_none());
        assert!(
            job_container(&entry("12", "3", "berth-12-30-beef", "2001"), &job("12", 3)).is_none()
        );
        assert!(job_container(&serde_json::json!({"Id": "x"}), &job("12", 3)).is_none());
    }

    #[test]
    fn job_selection() {
        let env = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let none = JobSelector {
            job: None,
            index: None,
        };
        assert_eq!(
            job_from(&none, &env(&[("LSB_JOBID", "7"), ("LSB_JOBINDEX", "2")])).unwrap(),
            job("7", 2)
        );
        assert_eq!(
            job_from(&none, &env(&[("LSB_JOBID", "7")])).unwrap(),
            job("7", 0)
        );
        let sel = JobSelector {
            job: Some("9".into()),
            index: Some(1),
        };
        assert_eq!(
            job_from(&sel, &env(&[("LSB_JOBID", "7")])).unwrap(),
            job("9", 1)
        );
        for bad in [
            env(&[]),
            env(&[("LSB_JOBID", "7;rm")]),
            env(&[("LSB_JOBID", "7"), ("LSB_JOBINDEX", "-1")]),
            env(&[("LSB_JOBID", "7"), ("LSB_JOBINDEX", "+1")]),
        ] {
            assert!(
                matches!(job_from(&none, &bad), Err(Error::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn who_may_act() {
        let db = FakeDb::standard();
        let policy = Policy::parse("[identity]\nrelays=['lsfadmin']\n", "t").unwrap();
        let j = job("12", 0);
        let cs = vec![job_container(&entry("12", "0", "berth-12-0-aa", "2001"), &j).unwrap()];
        // root, the relay and the owner may; bob may not.
        for caller in [0, 900, 2001] {
            authorize(&db, &policy, caller, "suspend", &j, &cs).unwrap();
        }
        match authorize(&db, &policy, 2002, "suspend", &j, &cs) {
            Err(Error::Denied(d)) => assert_eq!(d.rule, "lsf.control"),
            other => panic!("{other:?}"),
        }
        // A container without a uid label is nobody's but root's and a relay's.
        let mut anon = cs.clone();
        anon[0].uid = None;
        assert!(authorize(&db, &policy, 2001, "suspend", &j, &anon).is_err());
        authorize(&db, &policy, 900, "suspend", &j, &anon).unwrap();
        // Nothing to act on: nothing to refuse.
        authorize(&db, &policy, 2002, "suspend", &j, &[]).unwrap();
    }
}
