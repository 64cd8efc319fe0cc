//! MPI steps (SPEC §14): whether a Slurm task is a rank of a PMIx step, and
//! what its container then needs — the node's network (PMIx 4 talks TCP to
//! the node's loopback), the step's PMIx directories, a namespace shared
//! with the step's other ranks on the node, the fabric and the memlock
//! limit the policy allows. Pure: the job's variables, the policy and what
//! the broker verified about the step in; a decision or a denial out.
//!
//! What Slurm 24.11 does for a container step is recorded in notes/mpi.md:
//! the PMIx server keeps its files in the step's spool directory
//! (`<SlurmdSpoolDir>/oci-job<J>-<S>/`), tells the ranks it is at
//! `MountSpoolDir`, and gives their client directory by its host path.

use crate::core::error::{Denial, Error, Result};
use crate::core::policy::{Memlock, MpiIpc, Policy};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The step a Slurm container task belongs to, as the broker verified it:
/// ids from the caller's cgroup, the spool directory checked on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The node's name (Slurm's, from the cgroup when it has one).
    pub node: String,
    pub job: String,
    /// `0`, `1`, …, `batch`, `interactive`.
    pub step: String,
    /// The step's spool directory on the node (`…/oci-job<J>-<S>`): owned
    /// by the job user inside a root-owned SlurmdSpoolDir.
    pub dir: PathBuf,
    /// The CPUs of the step's cpuset on the node, as the kernel has it
    /// (`None`: unknown): the bound of its ranks here that berth believes
    /// (`SLURM_STEP_NUM_TASKS` is the job's to set).
    pub cpus: Option<u32>,
}

/// How a rank shares memory with the step's other ranks on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Sharing {
    /// Joins the IPC and PID namespaces of the step's holder container.
    Step {
        holder: String,
    },
    Host,
    Private,
}

/// What an MPI task's container gets beyond a plain job's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MpiPlan {
    /// `PMIX_RANK` as the task has it (shown by explain).
    pub rank: String,
    /// Tasks in the step (`SLURM_STEP_NUM_TASKS`).
    pub tasks: u32,
    /// (host directory, container path): the step's spool directory at its
    /// own path (the client directory PMIx names) and at MountSpoolDir.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    pub sharing: Sharing,
    /// Fabric device nodes given (those of `mpi.fabric_devices` present).
    pub devices: Vec<PathBuf>,
    pub memlock_unlimited: bool,
}

/// What the decision says about the job's `PMIX_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pmix {
    /// No PMIx variable: nothing MPI about this job.
    Absent,
    /// Dropped, for the reason given (explain shows it): the program runs
    /// as an MPI singleton, as it did before berth knew MPI.
    Dropped(&'static str),
    /// Passed: the task is a rank, with what its container needs.
    Task(MpiPlan),
}

/// Is `name` one of the variables PMIx gives its clients?
pub fn is_pmix_var(name: &str) -> bool {
    name.starts_with("PMIX_")
}

/// Decide a job's PMIx. `asked_network` is the network the job asked for,
/// `fabric` the nodes of `mpi.fabric_devices` present on the node.
pub fn decide(
    policy: &Policy,
    env: &BTreeMap<String, String>,
    asked_network: Option<&str>,
    step: Option<&Step>,
    uid: u32,
    fabric: &[PathBuf],
) -> Result<Pmix> {
    if !env.keys().any(|k| is_pmix_var(k)) {
        return Ok(Pmix::Absent);
    }
    if !policy.mpi.pmix {
        return Ok(Pmix::Dropped("mpi.pmix is off at this site"));
    }
    let (Some(rank), Some(_)) = (env.get("PMIX_RANK"), env.get("PMIX_NAMESPACE")) else {
        return Ok(Pmix::Dropped(
            "no PMIX_RANK and PMIX_NAMESPACE: not a PMIx task",
        ));
    };
    let Some(step) = step else {
        return Ok(Pmix::Dropped(
            "not a Slurm container step: no PMIx directories to give",
        ));
    };
    let tasks = env
        .get("SLURM_STEP_NUM_TASKS")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    let network = asked_network.unwrap_or(&policy.docker.default_network);
    // A one-task step that keeps its own network (a site whose MpiDefault
    // is pmix, a serial job): the program starts as a singleton.
    if tasks <= 1 && network != "host" {
        return Ok(Pmix::Dropped(
            "a one-task step without the host network runs as an MPI singleton",
        ));
    }
    if let Some(n) = asked_network.filter(|n| *n != "host") {
        return Err(Error::Denied(Denial::new(
            "docker.networks",
            n,
            format!(
                "an MPI task reaches its node's PMIx server over the node's loopback (PMIx talks TCP to 127.0.0.1), which network {n} cannot"
            ),
            "unset LSF_DOCKER_NETWORK: berth gives an MPI task the host network where the site allows it",
        )));
    }
    if !policy.docker.networks.iter().any(|n| n == "host") {
        return Err(Error::Denied(Denial::new(
            "docker.networks",
            "host",
            format!(
                "this {tasks}-task MPI step needs the host network (each rank reaches its node's PMIx server over the node's loopback), which this site does not allow"
            ),
            "ask your administrator to allow \"host\" in docker.networks for MPI jobs, or run the step with --mpi=none",
        )));
    }
    let sharing = match policy.mpi.ipc {
        MpiIpc::Step => Sharing::Step {
            holder: holder_name(step, uid)?,
        },
        MpiIpc::Host => Sharing::Host,
        MpiIpc::Private => Sharing::Private,
    };
    let mut mounts = vec![(step.dir.clone(), step.dir.clone())];
    if policy.mpi.mount_spool_dir != step.dir {
        mounts.push((step.dir.clone(), policy.mpi.mount_spool_dir.clone()));
    }
    Ok(Pmix::Task(MpiPlan {
        rank: rank.clone(),
        tasks,
        mounts,
        sharing,
        devices: fabric.to_vec(),
        memlock_unlimited: policy.mpi.memlock == Memlock::Unlimited,
    }))
}

/// The holder of a step's shared namespaces on this node: one per node,
/// job, step and user, so never another job's (nor another user's).
pub fn holder_name(step: &Step, uid: u32) -> Result<String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !ok(&step.node) || !ok(&step.job) || !ok(&step.step) {
        return Err(Error::Malformed(format!(
            "MPI step {}.{} on node {:?} has unexpected characters",
            step.job, step.step, step.node
        )));
    }
    Ok(format!(
        "berth-mpi-{}-{}-{}-{uid}",
        step.node, step.job, step.step
    ))
}

/// The spool directory name Slurm gives step `step` of job `job`.
pub fn step_dir_name(job: &str, step: &str) -> String {
    format!("oci-job{job}-{step}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut Policy)) -> Policy {
        let mut p = Policy::default();
        p.mpi.pmix = true;
        p.docker.networks = vec!["none".into(), "host".into()];
        f(&mut p);
        p
    }

    fn env(tasks: u32) -> BTreeMap<String, String> {
        [
            ("PMIX_RANK", "1"),
            ("PMIX_NAMESPACE", "slurm.pmix.7.0"),
            ("PMIX_SERVER_URI41", "pmix-server.1;tcp4://127.0.0.1:4000"),
            ("SLURM_STEP_NUM_TASKS", &tasks.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn step() -> Step {
        Step {
            node: "n1".into(),
            job: "7".into(),
            step: "0".into(),
            dir: "/var/spool/slurmd/oci-job7-0".into(),
            cpus: Some(2),
        }
    }

    #[test]
    fn a_rank_of_a_multi_task_step_gets_the_host_network_its_dirs_and_its_holder() {
        let p = policy(|_| {});
        let Pmix::Task(m) = decide(&p, &env(4), None, Some(&step()), 2001, &[]).unwrap() else {
            panic!()
        };
        assert_eq!(m.tasks, 4);
        assert_eq!(
            m.mounts,
            vec![
                (step().dir, step().dir),
                (step().dir, PathBuf::from("/var/run/slurm"))
            ]
        );
        assert_eq!(
            m.sharing,
            Sharing::Step {
                holder: "berth-mpi-n1-7-0-2001".into()
            }
        );
        assert!(!m.memlock_unlimited);
    }

    #[test]
    fn pmix_off_or_no_step_drops_the_variables() {
        let off = policy(|p| p.mpi.pmix = false);
        assert!(matches!(
            decide(&off, &env(4), None, Some(&step()), 1, &[]).unwrap(),
            Pmix::Dropped(_)
        ));
        let p = policy(|_| {});
        assert!(matches!(
            decide(&p, &env(4), None, None, 1, &[]).unwrap(),
            Pmix::Dropped(_)
        ));
        // One task with its own network: a singleton.
        assert!(matches!(
            decide(&p, &env(1), None, Some(&step()), 1, &[]).unwrap(),
            Pmix::Dropped(_)
        ));
        // One task that asked for the host network is a rank.
        assert!(matches!(
            decide(&p, &env(1), Some("host"), Some(&step()), 1, &[]).unwrap(),
            Pmix::Task(_)
        ));
        assert_eq!(
            decide(&p, &BTreeMap::new(), None, Some(&step()), 1, &[]).unwrap(),
            Pmix::Absent
        );
    }

    #[test]
    fn a_rank_without_the_host_network_is_denied_with_the_rule() {
        let no_host = policy(|p| p.docker.networks = vec!["none".into()]);
        let e = decide(&no_host, &env(2), None, Some(&step()), 1, &[]).unwrap_err();
        assert!(e.to_string().contains("docker.networks"), "{e}");
        let p = policy(|_| {});
        let e = decide(&p, &env(2), Some("bridge"), Some(&step()), 1, &[]).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn host_or_private_sharing_and_the_fabric() {
        let p = policy(|p| {
            p.mpi.ipc = MpiIpc::Host;
            p.mpi.memlock = Memlock::Unlimited;
        });
        let fabric = [PathBuf::from("/dev/infiniband/uverbs0")];
        let Pmix::Task(m) = decide(&p, &env(2), None, Some(&step()), 1, &fabric).unwrap() else {
            panic!()
        };
        assert_eq!(m.sharing, Sharing::Host);
        assert_eq!(m.devices, fabric);
        assert!(m.memlock_unlimited);
    }

    #[test]
    fn a_holder_name_refuses_odd_ids() {
        let mut s = step();
        s.node = "n1/../x".into();
        assert!(holder_name(&s, 1).is_err());
        s.node = "n1".into();
        s.step = "batch".into();
        assert_eq!(holder_name(&s, 5).unwrap(), "berth-mpi-n1-7-batch-5");
    }
}
