//! The kernel's and the scheduler's side of GPUs (SPEC §12): the node's
//! GPU and control device nodes, which of them the job holds, and the
//! device-cgroup preparation a container under a constrained job needs.
//!
//! The allocation is read from trusted sources only, in this order:
//! 1. the job's v1 device cgroup. Under Slurm's ConstrainDevices (or LSF's
//!    GPU enforcement) it is default-allow with deny rules the kernel does
//!    not list (`devices.list` reads `a *:* rwm`), so berth asks the kernel
//!    itself: a scratch child cgroup set to deny-all, then `c M:N rw`
//!    allowed for each GPU, which the kernel accepts only if the job's
//!    cgroup allows it;
//! 2. when that cannot tell (cgroup v2, or a device cgroup that allows
//!    every GPU, as on a node without ConstrainDevices), Slurm's own record:
//!    `scontrol show job -d`'s GRES indices for this node;
//! 3. otherwise the job is given no GPU, and the reason says so.

use crate::core::cgroup::{JobCgroup, Scheduler, Version};
use crate::core::devices::{self, DeviceNode, Gpus};
use crate::core::policy::GpuPolicy;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEVICES: &str = "/sys/fs/cgroup/devices";

/// The character device nodes matching `patterns`, sorted by index.
/// Symbolic links and other files are not devices.
pub fn nodes(patterns: &[String]) -> Vec<DeviceNode> {
    let mut out: Vec<DeviceNode> = Vec::new();
    for pat in patterns {
        let Ok(paths) = glob::glob(pat) else { continue };
        for p in paths.flatten() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if !m.file_type().is_char_device() {
                continue;
            }
            let rdev = m.rdev();
            let node = DeviceNode {
                path: p,
                major: libc::major(rdev),
                minor: libc::minor(rdev),
                uuid: None,
            };
            if !out.contains(&node) {
                out.push(node);
            }
        }
    }
    out.sort_by_key(|d| (d.index(), d.path.clone()));
    out
}

/// The NVIDIA driver's minor → UUID table, from
/// `/proc/driver/nvidia/gpus/<pci>/information` (`Device Minor: 1`,
/// `GPU UUID: GPU-…`); empty without the driver.
fn nvidia_uuids() -> Vec<(u32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(t) = std::fs::read_to_string(e.path().join("information")) else {
            continue;
        };
        let field = |k: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if let (Some(minor), Some(uuid)) = (
            field("Device Minor:").and_then(|m| m.parse().ok()),
            field("GPU UUID:").filter(|u| devices::valid_gpu_uuid(u)),
        ) {
            out.push((minor, uuid));
        }
    }
    out
}

/// The GPU and control device nodes of this node.
pub fn on_node(policy: &GpuPolicy) -> (Vec<DeviceNode>, Vec<DeviceNode>) {
    let mut gpus = nodes(&policy.devices);
    let uuids = nvidia_uuids();
    for g in &mut gpus {
        // NVIDIA's character major is 195.
        if g.major == 195 {
            g.uuid = uuids
                .iter()
                .find(|(m, _)| *m == g.minor)
                .map(|(_, u)| u.clone());
        }
    }
    let control = nodes(&policy.control_devices)
        .into_iter()
        .filter(|c| !gpus.contains(c))
        .collect();
    (gpus, control)
}

/// Which of `gpus` the v1 device cgroup `cgroup` (a path under the devices
/// hierarchy) lets its processes read and write, asked of the kernel
/// through a scratch child that is removed again.
fn probe(cgroup: &str, gpus: &[DeviceNode]) -> std::io::Result<Vec<DeviceNode>> {
    let base = Path::new(DEVICES).join(cgroup.trim_start_matches('/'));
    // A probe of a berth that was killed midway is left behind, and Slurm
    // cannot remove a step with children: remove those of dead processes.
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("berth-probe-"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    // Unique per probe: the broker may probe one job for two clients at once.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = base.join(format!("berth-probe-{}-{n}", std::process::id()));
    std::fs::create_dir(&scratch)?;
    let result = (|| {
        write_rule(&scratch.join("devices.deny"), "a")?;
        let mut held = Vec::new();
        for g in gpus {
            match write_rule(
                &scratch.join("devices.allow"),
                &format!("c {}:{} rw", g.major, g.minor),
            ) {
                Ok(()) => held.push(g.clone()),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(held)
    })();
    let _ = std::fs::remove_dir(&scratch);
    result
}

/// One write to a device cgroup file (the kernel takes one rule per write).
fn write_rule(file: &Path, rule: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.write_all(rule.as_bytes())
}

/// What the job holds of the node's GPUs (`on_node`). `job`: the caller's
/// job, as its cgroup says (`None`: in no job, which holds no GPU).
pub fn allocation(
    policy: &GpuPolicy,
    (present, control): (Vec<DeviceNode>, Vec<DeviceNode>),
    job: Option<&JobCgroup>,
    node: &str,
) -> Option<Gpus> {
    if present.is_empty() {
        return None;
    }
    let mut found = Gpus {
        present,
        control,
        allocated: Vec::new(),
        source: String::new(),
    };
    let Some(job) = job else {
        found.source = "the caller is in no job, which holds no GPU".into();
        return Some(found);
    };
    if let (Version::V1, Some(dev)) = (job.version, &job.devices) {
        match probe(dev, &found.present) {
            Ok(held) if held.len() < found.present.len() => {
                found.allocated = held;
                found.source = "from the job's device cgroup".into();
                return Some(found);
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!(
                    "the device cgroup of job {} cannot be probed: {e}",
                    job.job_id
                );
            }
        }
    }
    match job.scheduler {
        Scheduler::Slurm => match slurm_record(policy, &job.job_id, node) {
            Ok(idx) => {
                found.allocated = devices::by_indices(&found.present, &idx);
                found.source = format!("from Slurm's record of job {}", job.job_id);
            }
            Err(why) => {
                log::warn!("GPUs of job {}: {why}", job.job_id);
                found.source =
                    format!("Slurm's record of job {} cannot be read: {why}", job.job_id);
            }
        },
        Scheduler::Lsf => {
            found.source = "the job's device cgroup does not constrain GPUs, so its allocation cannot be known (set LSB_RESOURCE_ENFORCE=\"gpu\" in lsf.conf)".into();
        }
    }
    Some(found)
}

/// The GRES indices Slurm allocated to `job` on `node`, from `scontrol
/// show job -d` run as root with a clean environment and a deadline, read
/// strictly (`devices::gres_for`: user-controlled fields share the text).
fn slurm_record(policy: &GpuPolicy, job: &str, node: &str) -> Result<Vec<u32>, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(&policy.scontrol)
        .args(["show", "job", "-d", job])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{} cannot be run ({e})", policy.scontrol.display()))?;
    // Read while it runs: a record over a pipe's 64 kB must not stall it.
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.by_ref().take(4 << 20).read_to_end(&mut out);
        out
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("scontrol did not answer within 10 s".into());
            }
        }
    };
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(format!("scontrol show job {job} failed ({status})"));
    }
    let g = devices::gres_for(&out, job, node)?;
    devices::parse_gres_indices(&g).ok_or_else(|| format!("its GRES {g:?} cannot be read"))
}

/// Lift the mknod bit of `devs` from the deny rules of every default-allow
/// device cgroup from the hierarchy's root down to `parent` (v1), so that
/// docker's `c *:* m` rule for the container is accepted under a job whose
/// cgroup denies some of them: the kernel checks a default-deny child's new
/// allow rule against its parent's deny rules, and a cgroup the engine
/// makes on the way copies its parent's, so every level is cleared (on a
/// default-allow level an allow write only removes bits from a matching
/// deny rule). Read and write access stay as the scheduler set them, and
/// the container is still given exactly its own devices. A level that is
/// default-deny (its own allow list) is left as it is.
pub fn unmask_mknod(parent: &str, devs: &[DeviceNode]) -> std::io::Result<()> {
    if devs.is_empty() || !Path::new(DEVICES).join("devices.list").exists() {
        return Ok(());
    }
    let mut dir = PathBuf::from(DEVICES);
    for c in parent.trim_start_matches('/').split('/') {
        dir.push(c);
        let Ok(list) = std::fs::read_to_string(dir.join("devices.list")) else {
            // Not made yet: the engine makes it, as a copy of its parent.
            break;
        };
        if devices::parse_devices_list(&list) != Some(devices::DeviceList::DefaultAllow) {
            continue;
        }
        for d in devs {
            write_rule(
                &dir.join("devices.allow"),
                &format!("c {}:{} m", d.major, d.minor),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel answers the probe. As root (tests/run.sh, hence CI, which
    /// also runs Slurm's cgroup/v1 here) the v1 devices hierarchy must be
    /// there; only a developer's unprivileged `cargo test` has nothing to
    /// probe, and the test says so.
    #[test]
    fn the_probe_asks_the_kernel_and_sweeps_dead_probes() {
        let root = Path::new(DEVICES);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: the probe is not exercised (tests/run.sh runs it as root)");
            return;
        }
        assert!(
            root.join("devices.list").exists(),
            "no v1 devices hierarchy at {DEVICES}: the test bed's Slurm needs it too"
        );
        let job = format!("berth-unit-probe-{}", std::process::id());
        let dir = root.join(&job);
        std::fs::create_dir(&dir).unwrap();
        write_rule(&dir.join("devices.deny"), "c 195:1 rwm").unwrap();
        // A probe a killed berth left (pid 2^22 + 1 is above pid_max's
        // ceiling, so never alive).
        let stale = dir.join("berth-probe-4194305-0");
        std::fs::create_dir(&stale).unwrap();
        let node = |m| DeviceNode {
            path: format!("/dev/nvidia{m}").into(),
            major: 195,
            minor: m,
            uuid: None,
        };
        let held = probe(&job, &[node(0), node(1)]);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect();
        let _ = std::fs::remove_dir(&stale);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(held.unwrap(), vec![node(0)]);
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn only_character_devices_are_nodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("nvidia0"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", d.path().join("nvidia1")).unwrap();
        let pat = format!("{}/nvidia[0-9]*", d.path().display());
        assert!(nodes(&[pat]).is_empty());
        let null = nodes(&["/dev/null".into(), "/dev/nul[l]".into()]);
        assert_eq!(null.len(), 1);
        assert_eq!((null[0].major, null[0].minor), (1, 3));
    }
}
