//! Where a job is, from its cgroup (SPEC §11): a strict parser of
//! `/proc/<pid>/cgroup` for the layouts Slurm and LSF document, and the
//! placement a container gets inside that job. Pure: the kernel's text in,
//! a decision out; the files are read by `sys::cgroup`.
//!
//! Strict means: every component of the path is accounted for, ids are
//! bounded decimal numbers, nothing is `.` or `..`, and a Slurm v1 path's
//! `uid_<uid>` must be the job user's. Anything else is "not a job".

use serde::Serialize;

/// Which scheduler's layout a cgroup path follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Slurm,
    Lsf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Version {
    V1,
    V2,
}

/// The job a process belongs to, as its cgroup says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobCgroup {
    pub scheduler: Scheduler,
    pub version: Version,
    /// The scheduler's job id (Slurm `job_<id>`; LSF `job.<id>.…`).
    pub job_id: String,
    /// LSF's array index (0 for a plain job); Slurm: none.
    pub index: Option<u32>,
    /// Slurm's step (`0`, `batch`, `extern`, `interactive`).
    pub step: Option<String>,
    /// The process's cgroup path in the hierarchy placement uses (v1: the
    /// memory controller's, which Slurm and LSF both constrain; v2: the
    /// unified one).
    pub path: String,
    /// v1: the process's cgroup in the devices hierarchy, when it is in
    /// the same job (where the job's device allocation is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
}

impl JobCgroup {
    /// The node name a multiple-slurmd v1 layout carries (`/slurm_<node>/…`).
    pub fn slurm_node(&self) -> Option<&str> {
        (self.scheduler == Scheduler::Slurm && self.version == Version::V1)
            .then(|| {
                self.path
                    .trim_start_matches('/')
                    .split('/')
                    .next()?
                    .strip_prefix("slurm_")
            })
            .flatten()
    }
}

/// A job found from the kernel, with the caller's allowed CPUs and the
/// job's memory limit (the facts placement is decided from).
pub type Found = (JobCgroup, Option<String>, Option<u64>);

/// Where the container goes, and the limits it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub job: JobCgroup,
    /// The absolute cgroup parent given to the engine.
    pub parent: String,
    /// The caller's allowed CPUs (`0-3,8`), for the container's cpuset.
    pub cpus: Option<String>,
    /// The job's memory limit in bytes (`None`: unlimited).
    pub memory: Option<u64>,
    /// v1: the node's GPU and control device nodes, whose mknod bit the
    /// launcher lifts from the scheduler's deny rules on the way down to
    /// `parent`. docker writes `c *:* m` into every container's device
    /// cgroup, which the kernel refuses under a parent denying `c 195:1
    /// rwm` (Slurm's ConstrainDevices). Read and write stay denied, and no
    /// job process can mknod (CAP_MKNOD is never given).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mknod: Vec<crate::core::devices::DeviceNode>,
}

/// Longest job id accepted (Slurm's are 32-bit, LSF's below 10^10).
const MAX_ID_DIGITS: usize = 10;

fn number(s: &str) -> Option<&str> {
    (!s.is_empty()
        && s.len() <= MAX_ID_DIGITS
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0')))
    .then_some(s)
}

fn slurm_step(s: &str) -> Option<&str> {
    match s {
        "batch" | "extern" | "interactive" => Some(s),
        _ => number(s),
    }
}

/// A component of a path that is not a job's: plain names only.
fn plain(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && c.len() <= 255
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b))
}

/// The lines of `/proc/<pid>/cgroup`: (hierarchy id, controllers, path).
pub fn parse_proc_cgroup(text: &str) -> Option<Vec<(u32, Vec<String>, String)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let mut it = line.splitn(3, ':');
        let id: u32 = it.next()?.parse().ok()?;
        let ctrls = it.next()?;
        let path = it.next()?;
        if !path.starts_with('/') || path.contains('\0') {
            return None;
        }
        let ctrls = if ctrls.is_empty() {
            Vec::new()
        } else {
            ctrls.split(',').map(str::to_string).collect()
        };
        out.push((id, ctrls, path.to_string()));
    }
    Some(out)
}

/// Slurm v1: `/slurm[_<node>]/uid_<uid>/job_<id>/step_<step>[/task_<n>]`.
fn slurm_v1(path: &str, uid: u32) -> Option<JobCgroup> {
    let c: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if !(c.len() == 4 || c.len() == 5) {
        return None;
    }
    let root_ok = c[0] == "slurm" || c[0].strip_prefix("slurm_").is_some_and(plain);
    let uid_ok = c[1].strip_prefix("uid_").and_then(number) == Some(&uid.to_string());
    let job = c[2].strip_prefix("job_").and_then(number)?;
    let step = c[3].strip_prefix("step_").and_then(slurm_step)?;
    if c.len() == 5 {
        c[4].strip_prefix("task_").and_then(number)?;
    }
    (root_ok && uid_ok).then(|| JobCgroup {
        scheduler: Scheduler::Slurm,
        version: Version::V1,
        job_id: job.to_string(),
        index: None,
        step: Some(step.to_string()),
        path: path.to_string(),
        devices: None,
    })
}

/// Slurm v2: `…/slurmstepd.scope/job_<id>/step_<step>/user/task_<n>`.
fn slurm_v2(path: &str) -> Option<JobCgroup> {
    let c: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let at = c.iter().position(|x| *x == "slurmstepd.scope")?;
    let (head, tail) = c.split_at(at + 1);
    if !head.iter().all(|x| plain(x)) || tail.len() != 4 {
        return None;
    }
    let job = tail[0].strip_prefix("job_").and_then(number)?;
    let step = tail[1].strip_prefix("step_").and_then(slurm_step)?;
    if tail[2] != "user" {
        return None;
    }
    tail[3].strip_prefix("task_").and_then(number)?;
    Some(JobCgroup {
        scheduler: Scheduler::Slurm,
        version: Version::V2,
        job_id: job.to_string(),
        index: None,
        step: Some(step.to_string()),
        path: path.to_string(),
        devices: None,
    })
}

/// `job.<id>.<index>.<time>` of LSF.
fn lsf_job(c: &str) -> Option<(String, u32)> {
    let rest = c.strip_prefix("job.")?;
    let p: Vec<&str> = rest.split('.').collect();
    if p.len() != 3 {
        return None;
    }
    let id = number(p[0])?;
    let index: u32 = number(p[1])?.parse().ok()?;
    number(p[2])?;
    Some((id.to_string(), index))
}

/// LSF v1: `/lsf/<cluster>/job.<id>.<index>.<time>`; v2 (unified):
/// `…/lsf/<cluster>/job.<id>.<index>.<time>/leaf`.
fn lsf(path: &str, v2: bool) -> Option<JobCgroup> {
    let c: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let at = c.iter().position(|x| *x == "lsf")?;
    let (head, tail) = c.split_at(at + 1);
    let want = if v2 { 3 } else { 2 };
    if tail.len() != want || !plain(tail[0]) || (!v2 && at != 0) {
        return None;
    }
    if !head.iter().all(|x| plain(x)) || (v2 && tail[2] != "leaf") {
        return None;
    }
    let (id, index) = lsf_job(tail[1])?;
    Some(JobCgroup {
        scheduler: Scheduler::Lsf,
        version: if v2 { Version::V2 } else { Version::V1 },
        job_id: id,
        index: Some(index),
        step: None,
        path: path.to_string(),
        devices: None,
    })
}

/// A job cgroup path up to its job component (`…/job_17`, `…/job.5.0.x`).
fn job_dir(path: &str) -> Option<&str> {
    let mut end = 0;
    for c in path.split('/') {
        end += c.len() + 1;
        if c.starts_with("job_") || c.starts_with("job.") {
            return Some(&path[..end - 1]);
        }
    }
    None
}

/// The job of a process of user `uid`, from its `/proc/<pid>/cgroup`
/// text; `None` when it is in no recognised job (or in another user's).
pub fn find_job(text: &str, uid: u32) -> Option<JobCgroup> {
    let lines = parse_proc_cgroup(text)?;
    let v1_memory = lines
        .iter()
        .find(|(_, c, _)| c.iter().any(|x| x == "memory"))
        .map(|(_, _, p)| p.as_str());
    if let Some(p) = v1_memory {
        let mut job = slurm_v1(p, uid).or_else(|| lsf(p, false))?;
        job.devices = lines
            .iter()
            .find(|(_, c, _)| c.iter().any(|x| x == "devices"))
            .map(|(_, _, d)| d.as_str())
            .filter(|d| {
                slurm_v1(d, uid)
                    .or_else(|| lsf(d, false))
                    .is_some_and(|j| j.job_id == job.job_id && j.scheduler == job.scheduler)
                    // The same job's directory, not the same id under
                    // another node's or cluster's prefix.
                    && job_dir(d).is_some()
                    && job_dir(d) == job_dir(&job.path)
            })
            .map(str::to_string);
        return Some(job);
    }
    // Pure v2: the one line `0::/path`.
    let unified = lines
        .iter()
        .find(|(id, c, _)| *id == 0 && c.is_empty())
        .map(|(_, _, p)| p.as_str())?;
    slurm_v2(unified).or_else(|| lsf(unified, true))
}

/// The cgroup parent of a container of `job`: v1, the caller's own cgroup
/// (so the scheduler's per-task accounting counts the container); v2, a
/// sibling of the task's leaf (no processes may live in an inner node).
pub fn parent_for(job: &JobCgroup, container: &str) -> String {
    match job.version {
        Version::V1 => job.path.clone(),
        Version::V2 => {
            let dir = job.path.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{container}")
        }
    }
}

/// The cgroup parent of an MPI step's holder container (SPEC §14): the
/// step's own cgroup, which outlives each of its tasks (v1: the caller's
/// cgroup without its `task_<n>`; v2: beside the task's leaf, as a task's
/// container is).
pub fn step_parent(job: &JobCgroup, container: &str) -> String {
    match job.version {
        Version::V1 => match job.path.rsplit_once('/') {
            Some((dir, leaf)) if leaf.starts_with("task_") && !dir.is_empty() => dir.to_string(),
            _ => job.path.clone(),
        },
        Version::V2 => parent_for(job, container),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLURM_V1: &str = "12:pids:/slurm_vm/uid_2001/job_17/step_0/task_0
11:freezer:/slurm_vm/uid_2001/job_17/step_0
4:memory:/slurm_vm/uid_2001/job_17/step_0/task_0
3:cpuset:/slurm_vm/uid_2001/job_17/step_0
0::/
";

    #[test]
    fn slurm_v1_is_found_for_its_own_user_only() {
        let j = find_job(SLURM_V1, 2001).unwrap();
        assert_eq!(j.scheduler, Scheduler::Slurm);
        assert_eq!(j.version, Version::V1);
        assert_eq!(j.job_id, "17");
        assert_eq!(j.step.as_deref(), Some("0"));
        assert_eq!(j.path, "/slurm_vm/uid_2001/job_17/step_0/task_0");
        assert_eq!(parent_for(&j, "berth-x"), j.path);
        // Another user's job is not this caller's.
        assert!(find_job(SLURM_V1, 2002).is_none());
        // The batch step, and no task level.
        let b = find_job("4:memory:/slurm/uid_2001/job_5/step_batch\n", 2001).unwrap();
        assert_eq!(b.step.as_deref(), Some("batch"));
        // The devices cgroup counts only in the same job's directory (the
        // fuzzer's case: the same job id under another node's prefix).
        let with = |d: &str| {
            find_job(
                &format!("4:memory:/slurm_vm/uid_2001/job_17/step_0/task_0\n3:devices:{d}\n"),
                2001,
            )
            .unwrap()
            .devices
        };
        assert_eq!(
            with("/slurm_vm/uid_2001/job_17/step_0").as_deref(),
            Some("/slurm_vm/uid_2001/job_17/step_0")
        );
        assert_eq!(with("/slurm_other/uid_2001/job_17/step_0"), None);
        assert_eq!(with("/slurm_vm/uid_2001/job_18/step_0"), None);
    }

    #[test]
    fn hostile_paths_are_not_jobs() {
        for p in [
            "/slurm_vm/uid_2001/job_17/step_0/task_0/x",
            "/slurm_vm/uid_2001/job_17/step_0/../task_0",
            "/slurm_vm/uid_2001/job_17/..",
            "/slurm_vm/uid_2001/job_017/step_0",
            "/slurm_vm/uid_2001/job_12345678901/step_0",
            "/slurm_vm/uid_2001/job_-1/step_0",
            "/slurm_vm/uid_2001/job_1/step_evil",
            "/slurm_../uid_2001/job_1/step_0",
            "/x/slurm/uid_2001/job_1/step_0",
            "/slurm/uid_02001/job_1/step_0",
            "/slurm/uid_2001/job_1",
            "/user.slice/job_1",
            "/lsf/c1/job.1.0",
            "/lsf/c1/job.1.0.5/x",
            "/lsf/../job.1.0.5",
            "/a/lsf/c1/job.1.0.5",
        ] {
            let text = format!("4:memory:{p}\n");
            assert!(find_job(&text, 2001).is_none(), "{p}");
        }
        assert!(parse_proc_cgroup("x:memory:/a").is_none());
        assert!(parse_proc_cgroup("4:memory:relative").is_none());
    }

    #[test]
    fn lsf_v1_and_both_v2_layouts() {
        let l = find_job("4:memory:/lsf/cluster1/job.123.4.1700000000\n", 2001).unwrap();
        assert_eq!(
            (l.scheduler, l.job_id.as_str(), l.index),
            (Scheduler::Lsf, "123", Some(4))
        );
        let s = find_job(
            "0::/system.slice/slurmstepd.scope/job_9/step_0/user/task_0\n",
            2001,
        )
        .unwrap();
        assert_eq!((s.version, s.job_id.as_str()), (Version::V2, "9"));
        assert_eq!(
            parent_for(&s, "berth-9-0-ab"),
            "/system.slice/slurmstepd.scope/job_9/step_0/user/berth-9-0-ab"
        );
        let l2 = find_job("0::/lsf/c1/job.5.0.17/leaf\n", 2001).unwrap();
        assert_eq!((l2.version, l2.job_id.as_str()), (Version::V2, "5"));
        assert!(find_job("0::/user.slice/user-2001.slice/session-1.scope\n", 2001).is_none());
        assert!(find_job(
            "0::/system.slice/slurmstepd.scope/job_9/step_0/user/task_0/more\n",
            2001
        )
        .is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_only_accepts_digits(s in "\\PC{0,200}", uid in 0u32..5000) {
            if let Some(j) = find_job(&s, uid) {
                proptest::prop_assert!(j.job_id.bytes().all(|b| b.is_ascii_digit()));
                proptest::prop_assert!(!j.path.split('/').any(|c| c == ".."));
            }
        }
    }
}
