//! The step of a Slurm container task, checked on the node (SPEC §14).
//!
//! `berth slurm run` names its task's spool directory (the directory of
//! slurmstepd's `%e` file, `<SlurmdSpoolDir>/oci-job<J>-<S>/task-<T>`); the
//! caller is unprivileged, so the broker believes none of it: the job and
//! step are those of the caller's cgroup, and the directory must be exactly
//! what slurmstepd made for that step — a real directory (no symlink on the
//! way), named for that job and step, owned by the caller, inside parents
//! that root owns and nobody else may write. Then binding it into the
//! task's container gives the user nothing they do not own already.

use crate::core::cgroup::JobCgroup;
use crate::core::error::{Error, Result};
use crate::core::mpi::{step_dir_name, Step};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The verified step of a task whose spool directory is `task_dir`.
pub fn verify_step(task_dir: &Path, job: &JobCgroup, uid: u32, node: &str) -> Result<Step> {
    let bad = |why: String| {
        Error::Malformed(format!(
            "the step's spool directory {}: {why}; berth passes PMIx only to the tasks of a step slurmstepd made (oci.conf without ContainerPath)",
            task_dir.display()
        ))
    };
    let step = job
        .step
        .clone()
        .ok_or_else(|| bad("the caller is in no Slurm step".into()))?;
    let canon = std::fs::canonicalize(task_dir).map_err(|e| bad(e.to_string()))?;
    let given: PathBuf = task_dir.components().collect();
    if canon != given {
        return Err(bad(format!("it resolves to {}", canon.display())));
    }
    let task_name = canon
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !task_name
        .strip_prefix("task-")
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("it is not a task-<n> directory".into()));
    }
    let dir = canon
        .parent()
        .ok_or_else(|| bad("it has no parent".into()))?
        .to_path_buf();
    let want = step_dir_name(&job.job_id, &step);
    if dir.file_name().and_then(|n| n.to_str()) != Some(want.as_str()) {
        return Err(bad(format!(
            "its step directory is not {want} (the caller's job {} step {step})",
            job.job_id
        )));
    }
    for d in [&canon, &dir] {
        let md = std::fs::symlink_metadata(d).map_err(|e| bad(e.to_string()))?;
        if !md.is_dir() || md.uid() != uid {
            return Err(bad(format!(
                "{} is not a directory owned by uid {uid}",
                d.display()
            )));
        }
    }
    let spool = dir.parent().ok_or_else(|| bad("it has no parent".into()))?;
    crate::sys::trusted::check_trusted_path(spool, 0)
        .map_err(|e| bad(format!("its SlurmdSpoolDir is not trusted: {e}")))?;
    Ok(Step {
        node: node.to_string(),
        job: job.job_id.clone(),
        step,
        dir,
    })
}
