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
use std::path::{Component, Path, PathBuf};

/// The verified step of a task whose spool directory is `task_dir`.
pub fn verify_step(task_dir: &Path, job: &JobCgroup, uid: u32, node: &str) -> Result<Step> {
    let bad = |why: String| {
        Error::Malformed(format!(
            "the step's spool directory {}: {why}; berth passes PMIx only to the tasks of a step slurmstepd made, in a SlurmdSpoolDir only root may write (oci.conf without ContainerPath): run the step with --mpi=none, or ask the site to fix oci.conf or mpi.pmix",
            task_dir.display()
        ))
    };
    let step = job
        .step
        .clone()
        .ok_or_else(|| bad("the caller is in no Slurm step".into()))?;
    // Lexically first, touching nothing: an absolute path of plain names
    // on no FUSE mount (a user's FUSE daemon could say any owner, answer
    // a symlink later, or never answer), then no symlink on the way
    // (each component lstat'ed, none followed).
    if !task_dir.is_absolute()
        || task_dir
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(bad("it is not an absolute path of plain names".into()));
    }
    if let Some(m) = fuse_mount_over(task_dir) {
        return Err(bad(format!("it is on the FUSE mount {}", m.display())));
    }
    let mut walked = PathBuf::from("/");
    for c in task_dir.components().skip(1) {
        walked.push(c);
        let md = std::fs::symlink_metadata(&walked).map_err(|e| bad(e.to_string()))?;
        if md.file_type().is_symlink() {
            return Err(bad(format!("{} is a symbolic link", walked.display())));
        }
    }
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
        cpus: crate::sys::cgroup::step_cpus(job),
    })
}

/// The FUSE mount point at or above `path` in this mount namespace, from
/// /proc/self/mountinfo (never from the path itself).
fn fuse_mount_over(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    fuse_mount_in(&info, path)
}

fn fuse_mount_in(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let point = unescape(left.split_whitespace().nth(4)?);
        (fstype.starts_with("fuse") && path.starts_with(&point)).then_some(point)
    })
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                u8::try_from(d.iter().fold(0u16, |n, c| n * 8 + u16::from(c - b'0'))).ok()
            });
        if let Some(c) = octal {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_under_a_fuse_mount_is_found_from_mountinfo() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 0:50 / /tmp/my\\040fuse rw,nosuid,nodev shared:20 - fuse.sshfs host: rw\n\
                    41 22 0:51 / /var/spool/slurmd rw shared:21 - tmpfs tmpfs rw\n";
        assert_eq!(
            fuse_mount_in(info, Path::new("/tmp/my fuse/oci-job1-0/task-0")),
            Some(PathBuf::from("/tmp/my fuse"))
        );
        assert_eq!(
            fuse_mount_in(info, Path::new("/tmp/my fusex/oci-job1-0")),
            None
        );
        assert_eq!(
            fuse_mount_in(info, Path::new("/var/spool/slurmd/oci-job1-0/task-0")),
            None
        );
    }

    /// A spool like slurmstepd's, in a root-owned temporary directory:
    /// `<spool>/oci-job17-0/task-0`, both owned by uid 2001. Root only (the
    /// chown); tests/run.sh runs the unit tests as root.
    #[test]
    fn only_the_callers_own_step_directory_passes() {
        use std::os::unix::fs::{chown, symlink, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: verify_step is not exercised (tests/run.sh runs it as root)");
            return;
        }
        let t = tempfile::Builder::new()
            .prefix("berth-unit-mpi-")
            .tempdir()
            .unwrap();
        let spool = t.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let step = spool.join("oci-job17-0");
        let task = step.join("task-0");
        std::fs::create_dir_all(&task).unwrap();
        chown(&step, Some(2001), Some(2001)).unwrap();
        chown(&task, Some(2001), Some(2001)).unwrap();
        let job = crate::core::cgroup::find_job(
            "4:memory:/slurm_vm/uid_2001/job_17/step_0/task_0\n",
            2001,
        )
        .unwrap();
        let s = verify_step(&task, &job, 2001, "vm").unwrap();
        assert_eq!((s.job.as_str(), s.step.as_str()), ("17", "0"));
        assert_eq!(s.dir, step);
        // Another user, another job's name, a relative or dotted path.
        assert!(verify_step(&task, &job, 2002, "vm").is_err());
        let other = crate::core::cgroup::find_job(
            "4:memory:/slurm_vm/uid_2001/job_18/step_0/task_0\n",
            2001,
        )
        .unwrap();
        assert!(verify_step(&task, &other, 2001, "vm").is_err());
        assert!(verify_step(Path::new("oci-job17-0/task-0"), &job, 2001, "vm").is_err());
        assert!(verify_step(&step.join("task-0/../task-0"), &job, 2001, "vm").is_err());
        // A symbolic link on the way, even to the right directory.
        let link = t.path().join("link");
        symlink(&spool, &link).unwrap();
        let e = verify_step(&link.join("oci-job17-0/task-0"), &job, 2001, "vm").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A spool the user may write.
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = verify_step(&task, &job, 2001, "vm").unwrap_err();
        assert!(e.to_string().contains("--mpi=none"), "{e}");
    }
}
