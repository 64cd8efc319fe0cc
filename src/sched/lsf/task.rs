//! LSF parallel jobs (SPEC §14): the tasks `blaunch` starts.
//!
//! LSF starts one job process on the first execution host; the job starts
//! its other parts with `blaunch`, which asks the RES on each named host of
//! the allocation to run a task there. RES runs the task through the same
//! job starter as the job and marks it with `LSF_PM_TASKID` (LSF numbers
//! tasks from 1; Open MPI's LSF support reads it to name its daemons). IBM's
//! Docker driver runs one container per execution host: berth runs a task
//! as a process of its job's container on the host — the job's own on the
//! first host, elsewhere one the host's first task makes and its last
//! removes (`launch::tasks`).

use crate::core::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The task id RES gave, if this is a blaunch task (`None`: the job
/// itself). Anything but a positive decimal number is refused: a job that
/// names itself a task must be one berth can name.
pub fn task_id(env: &BTreeMap<String, String>) -> Result<Option<u32>> {
    let Some(v) = env.get("LSF_PM_TASKID") else {
        return Ok(None);
    };
    match v.parse::<u32>() {
        Ok(n) if n > 0 && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(Error::Malformed(format!(
            "LSF_PM_TASKID={:?} is not a task number (LSF sets it to 1, 2, … for blaunch tasks); unset it",
            v.chars().take(40).collect::<String>()
        ))),
    }
}

/// Whether the job's allocation spans hosts: `LSB_MCPU_HOSTS` (`host n
/// host n …`, as LSF sets it for every job) names more than one.
pub fn spans_hosts(env: &BTreeMap<String, String>) -> bool {
    let words: Vec<&str> = env
        .get("LSB_MCPU_HOSTS")
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default();
    let mut hosts: Vec<&str> = words.iter().step_by(2).copied().collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts.len() > 1
}

/// The name suffix of the job's container on this host for `uid`'s tasks:
/// the same for every task of the job here, another for another user, so no
/// job's task can name another user's container.
pub fn host_nonce(hostname: &str, uid: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"berth lsf host\0");
    h.update(hostname.as_bytes());
    h.update(b"\0");
    h.update(uid.to_string().as_bytes());
    h.finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &str) -> BTreeMap<String, String> {
        [("LSF_PM_TASKID".to_string(), v.to_string())].into()
    }

    #[test]
    fn task_ids_are_positive_numbers() {
        assert_eq!(task_id(&BTreeMap::new()).unwrap(), None);
        assert_eq!(task_id(&env("1")).unwrap(), Some(1));
        assert_eq!(task_id(&env("17")).unwrap(), Some(17));
        for bad in ["", "0", "-1", "+2", "1x", "99999999999", " 1", "4294967296"] {
            assert!(task_id(&env(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_job_spans_hosts_when_its_allocation_names_two() {
        let e = |v: &str| BTreeMap::from([("LSB_MCPU_HOSTS".to_string(), v.to_string())]);
        assert!(!spans_hosts(&BTreeMap::new()));
        assert!(!spans_hosts(&e("node1 4")));
        assert!(!spans_hosts(&e("node1 2 node1 2")));
        assert!(spans_hosts(&e("node1 2 node2 2")));
    }

    #[test]
    fn the_host_name_is_per_host_and_user_and_hex() {
        let a = host_nonce("node1", 2001);
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, host_nonce("node1", 2001));
        assert_ne!(a, host_nonce("node2", 2001));
        assert_ne!(a, host_nonce("node1", 2002));
    }
}
