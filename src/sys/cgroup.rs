//! The kernel's side of placement (SPEC §11): which cgroup a process is in
//! (re-checked to be the same process), the CPUs it may use, the job's
//! memory limit, and the cgroup directories the engine will create under a
//! job (so that berth removes them when the job ends: Slurm 22.05 cannot
//! remove a step whose cgroup still has children).

use crate::core::cgroup::{self as layout, JobCgroup, Placement, Version};
use crate::core::error::{Error, Result};
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// A process as the broker saw it connect.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    /// CLOCK_BOOTTIME in clock ticks when the connection was accepted: a
    /// process that started later cannot be the one that connected (the
    /// pid was reused).
    pub accepted_ticks: u64,
}

/// (start time in ticks since boot, real uid) of `pid`.
fn identity_of(pid: i32) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the ")" that ends the name.
    let after = stat.rsplit_once(')')?.1;
    let start: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((start, uid))
}

/// What the kernel says about `peer`: its cgroup text and allowed CPUs,
/// read between two identity checks. `Err` if the process is not the one
/// that connected (it exited, or its pid now names another process).
pub fn read_peer(peer: &Peer) -> Result<(String, Option<String>)> {
    let gone = || {
        Error::Denied(crate::core::error::Denial::new(
            "cgroup.job",
            peer.pid.to_string(),
            format!(
                "the process that connected (pid {}) is gone or is not the one that connected, so its job cannot be known",
                peer.pid
            ),
            "keep berth running until the job ends (do not detach it from its job)",
        ))
    };
    let before = identity_of(peer.pid).ok_or_else(gone)?;
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", peer.pid));
    let status = std::fs::read_to_string(format!("/proc/{}/status", peer.pid));
    let after = identity_of(peer.pid).ok_or_else(gone)?;
    if before != after || before.1 != peer.uid || before.0 > peer.accepted_ticks.saturating_add(1) {
        return Err(gone());
    }
    let cgroup = cgroup.map_err(|_| gone())?;
    let cpus = status.ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
    });
    Ok((cgroup, cpus))
}

/// This process, for root-run berth (LSF's starter): its own cgroup.
pub fn this_process(uid: u32) -> Peer {
    Peer {
        pid: std::process::id() as i32,
        uid,
        accepted_ticks: u64::MAX,
    }
}

/// The job's memory limit: the smallest limit on the path from the job's
/// level down to the process's cgroup. `None` when unlimited.
pub fn memory_limit(job: &JobCgroup) -> Option<u64> {
    let (base, file) = match job.version {
        Version::V1 => (format!("{ROOT}/memory"), "memory.limit_in_bytes"),
        Version::V2 => (ROOT.to_string(), "memory.max"),
    };
    let mut best: Option<u64> = None;
    let mut dir = PathBuf::from(&base);
    for c in job.path.trim_start_matches('/').split('/') {
        dir.push(c);
        let Ok(v) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        // v1 "unlimited" is a huge page-rounded number; v2 says "max".
        let Ok(n) = v.trim().parse::<u64>() else {
            continue;
        };
        if n < (1u64 << 62) {
            best = Some(best.map_or(n, |b: u64| b.min(n)));
        }
    }
    best
}

/// The hierarchies a container's cgroup is made in: each v1 controller
/// mount under /sys/fs/cgroup, or the unified one.
fn hierarchies(version: Version) -> Vec<PathBuf> {
    if version == Version::V2 {
        return vec![PathBuf::from(ROOT)];
    }
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in mounts.lines() {
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        // v1 controllers, and the hybrid's named or unified v2 mount: the
        // engine makes the container's path in each.
        if !right.starts_with("cgroup ") && !right.starts_with("cgroup2 ") {
            continue;
        }
        if let Some(mp) = left.split_whitespace().nth(4) {
            if mp.starts_with(ROOT) {
                out.push(PathBuf::from(mp));
            }
        }
    }
    out
}

/// The v1 controllers an MPI rank run in its step's container enters its
/// Slurm task's cgroup in: its CPUs (cpuset) and what Slurm accounts per
/// task (cpu, cpuacct, memory). Its pids, devices and freezer cgroups stay
/// its container's (the container's limits; how berth finds its processes).
const TASK_CONTROLLERS: [&str; 4] = ["cpuset", "cpu", "cpuacct", "memory"];

/// Move process `pid` of container `container_id` (an MPI rank held at its
/// gate: one thread, running nothing of the job's yet) into the job's task
/// cgroup `p.job.path` in [`TASK_CONTROLLERS`]' hierarchies (v1) and bind
/// it to the caller's CPUs `p.cpus` (v1 and v2), as slurmstepd placed and
/// bound the task: a rank's own container would have lived in that cgroup
/// with that cpuset.
///
/// The pid is the engine's word: a process of the container's user could
/// end the gated shell and its pid go to another process. So the process
/// is held by a pidfd, checked to be in the container, moved, and then
/// asked through the pidfd whether it still exists: if so its pid was
/// never free, and every write moved it and no other.
pub fn enter_task(pid: i32, container_id: &str, p: &Placement) -> Result<()> {
    let gone = || {
        Error::Unavailable(format!(
            "MPI rank process {pid} is no longer in its step's container: requeue the job"
        ))
    };
    let Some(fd) = crate::sys::process::pidfd_open(pid) else {
        return Err(Error::Unavailable(format!(
            "cannot hold MPI rank process {pid} (pidfd_open: {}; Linux 5.3 or later is needed to run ranks in their step's container): set mpi.ranks = \"container\", or requeue the job",
            std::io::Error::last_os_error()
        )));
    };
    if !crate::sys::process::in_container(pid, container_id) {
        return Err(gone());
    }
    if p.job.version == Version::V1 {
        for h in hierarchies(Version::V1) {
            // Only a hierarchy of the task's controllers alone: moving a
            // rank out of a co-mounted devices, pids or freezer cgroup
            // would take it out of its container's limits.
            let name = h.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.split(',').all(|c| TASK_CONTROLLERS.contains(&c)) {
                continue;
            }
            let procs = h
                .join(p.job.path.trim_start_matches('/'))
                .join("cgroup.procs");
            // A hierarchy Slurm keeps no task cgroup in.
            if !procs.exists() {
                continue;
            }
            std::fs::write(&procs, pid.to_string()).map_err(|e| {
                Error::Unavailable(format!(
                    "cannot move MPI rank process {pid} into its task's cgroup {}: {e}; the task is ending, or requeue the job",
                    procs.display()
                ))
            })?;
        }
    }
    if let Some(cpus) = p.cpus.as_ref().filter(|c| !cpu_list(c).is_empty()) {
        let mut set = nix::sched::CpuSet::new();
        for i in cpu_list(cpus) {
            set.set(i)
                .map_err(|e| Error::internal("a CPU of the task", e))?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set).map_err(|e| {
            Error::Unavailable(format!(
                "cannot bind MPI rank process {pid} to its task's CPUs {cpus}: {e}; requeue the job"
            ))
        })?;
    }
    if !crate::sys::process::pidfd_signal(&fd, None) {
        // It ended meanwhile: a write may have reached a process that took
        // its pid (not believed possible in this time, but said).
        log::error!(
            "MPI rank process {pid} ended while it was moved into its task's cgroup {}; a process that took its pid may have been moved",
            p.job.path
        );
        return Err(gone());
    }
    Ok(())
}

/// How many CPUs the cpuset of `job`'s Slurm step has on this node (v1:
/// the task cgroup's parent in the cpuset hierarchy; v2: the step's
/// `cpuset.cpus.effective`, two levels above the task's leaf).
pub fn step_cpus(job: &JobCgroup) -> Option<u32> {
    let path = job.path.trim_start_matches('/');
    let (file, step) = match job.version {
        Version::V1 => {
            let h = hierarchies(Version::V1).into_iter().find(|h| {
                h.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.split(',').any(|c| c == "cpuset"))
            })?;
            (h.join(path.rsplit_once('/')?.0), "cpuset.cpus")
        }
        Version::V2 => {
            let (user, _) = path.rsplit_once('/')?;
            let (step, _) = user.rsplit_once('/')?;
            (Path::new(ROOT).join(step), "cpuset.cpus.effective")
        }
    };
    let text = std::fs::read_to_string(file.join(step)).ok()?;
    let n = cpu_list(&text).len();
    (n > 0).then_some(n as u32)
}

/// The CPUs of a list as the kernel writes it (`0-3,8`); nothing for a
/// malformed part.
fn cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            if a <= b && b < nix::sched::CpuSet::count() {
                out.extend(a..=b);
            }
        }
    }
    out
}

/// The directories that do not exist yet on the way to `parent` in every
/// hierarchy (the engine will create them), deepest first.
pub fn missing_dirs(version: Version, parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in hierarchies(version) {
        let mut dir = h.clone();
        let mut chain = Vec::new();
        for c in parent.trim_start_matches('/').split('/') {
            dir.push(c);
            if !dir.exists() {
                chain.push(dir.clone());
            }
        }
        chain.reverse();
        out.extend(chain);
    }
    out
}

/// Remove the directories [`missing_dirs`] listed (empty cgroups only:
/// rmdir never removes one holding processes or children). The engine
/// removes the container's own cgroup as it removes the container, which
/// may take a moment.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        for attempt in 0..20 {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                // Busy with processes, or with the container's own cgroup
                // (named by its 64-hex id), which the engine removes in a
                // moment: waited for. Busy with another cgroup (a shared
                // parent holding another job's or rank's): not.
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && attempt < 19
                        && !has_other_child_cgroups(d) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    // Another job of the same user shares it: theirs to remove.
                    log::debug!("cgroup {} left: {e}", d.display());
                    break;
                }
            }
        }
    }
}

/// Whether `dir` has a child cgroup that is not an engine container's own.
fn has_other_child_cgroups(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !is_container_id(&e.file_name()))
    })
}

fn is_container_id(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Find the job of `peer` and the limits its container gets. `Ok(None)`:
/// the caller is in no recognised job.
/// `job_uid` is the job user's (a relay's peer runs as itself).
pub fn locate(peer: &Peer, job_uid: u32) -> Result<Option<layout::Found>> {
    let (text, cpus) = read_peer(peer)?;
    let Some(job) = layout::find_job(&text, job_uid) else {
        return Ok(None);
    };
    let memory = memory_limit(&job);
    Ok(Some((job, cpus, memory)))
}

/// Whether `p` is under the cgroup root (for doctor's report).
pub fn is_v1_hybrid() -> bool {
    Path::new(ROOT)
        .join("memory")
        .join("memory.limit_in_bytes")
        .exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_list_as_the_kernel_writes_it() {
        assert_eq!(cpu_list("0-2,5\n"), [0, 1, 2, 5]);
        assert_eq!(cpu_list("7"), [7]);
        // Malformed or reversed parts give nothing, never a wider set.
        assert_eq!(cpu_list("3-1,x,4-,-2,1"), [1]);
        assert_eq!(cpu_list("0-99999"), Vec::<usize>::new());
    }

    /// A parent busy with the container's own cgroup is waited for; one
    /// holding another job's cgroup is not (plain directories stand in).
    #[test]
    fn only_the_containers_own_child_cgroup_is_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let step = t.path().join("step_0");
        std::fs::create_dir(&step).unwrap();
        std::fs::write(step.join("cgroup.procs"), "").unwrap();
        assert!(!has_other_child_cgroups(&step));
        std::fs::create_dir(step.join("0123456789abcdef".repeat(4))).unwrap();
        assert!(!has_other_child_cgroups(&step));
        std::fs::create_dir(step.join("task_1")).unwrap();
        assert!(has_other_child_cgroups(&step));
        assert!(!is_container_id(std::ffi::OsStr::new(
            "g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )));
    }
}
