//! The planner: a pure function from (policy, identity, request, image
//! facts) to a [`LaunchPlan`] or a [`Denial`]. Every security decision of
//! berth is made here; the launcher only performs what a plan says. The
//! host's filesystem is seen through [`HostFs`] so that rules are tested
//! without a node.

use crate::core::envfilter::{self, Dropped};
use crate::core::error::{deny, Error, Result};
use crate::core::facts::ImageFacts;
use crate::core::identity::Identity;
use crate::core::mpi;
use crate::core::paths::{is_under, normalize_abs, unsafe_char};
use crate::core::policy::{EntrypointRule, HostnameRule, Mode, MpiRanks, Policy, TmpKind};
use crate::core::request::{ImageSpec, Request, Workdir};
use serde::{Deserialize, Serialize};
pub use spec::ContainerSpec;
use std::io;
use std::path::{Path, PathBuf};

/// The host's filesystem, as the planner needs to see it: as the job user
/// sees it. The node's implementation resolves and inspects every path
/// with the user's own credentials, so a path behind a directory the user
/// cannot search fails with `PermissionDenied` whatever is there (missing,
/// a file, a directory, a link), and the planner says the same for all.
pub trait HostFs {
    /// Resolve every symlink (realpath).
    fn canonicalize(&self, p: &Path) -> io::Result<PathBuf>;
    fn is_dir(&self, p: &Path) -> io::Result<bool>;
    /// Whether the user can read and search each path with their own
    /// credentials (dockerd mounts as root and would skip that check).
    fn user_can_access(&self, id: &Identity, paths: &[PathBuf]) -> Result<Vec<bool>>;
}

/// A file the scheduler needs inside the job's /tmp, by path relative to
/// /tmp. Also part of the broker's wire format (`broker::proto::Hello`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TmpFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// Inputs that are neither policy, identity nor request: decided by the
/// launcher (randomness) or read by it as the user (env files).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Random suffix of the container name (hex).
    pub nonce: String,
    /// Variables from `LSF_DOCKER_ENV_FILE`, read with the user's credentials.
    pub env_file_vars: Vec<(String, String)>,
    /// Files the scheduler needs inside the job's /tmp (Slurm's batch
    /// script at /tmp/slurm/startup), by path relative to /tmp.
    pub tmp_files: Vec<TmpFile>,
    /// Variables the scheduler's own files need in the container whatever
    /// `LSF_DOCKER_PRESERVE_ENVIRONMENT` says (LSF's job file copy:
    /// `LSB_JOBFILENAME`, `LSB_CHKFILENAME`); they override the job's.
    pub scheduler_env: Vec<(String, String)>,
    pub slurm_id: Option<String>,
    /// The execution node's hostname (the container's, by default).
    pub hostname: Option<String>,
    /// The job the caller is in, as the kernel says (SPEC §11), with the
    /// caller's allowed CPUs and the job's memory limit; `None`: in none,
    /// or not looked up (`placement = "none"` without `require_job`).
    pub job_cgroup: Option<crate::core::cgroup::Found>,
    /// `SLURM_JOB_ID` as the job's environment has it (checked against the
    /// cgroup, never trusted).
    pub env_slurm_job_id: Option<String>,
    /// The node's GPUs and the ones the job holds, as the launcher read
    /// them from the kernel or the scheduler (SPEC §12); `None`: the node
    /// has no GPU device node.
    pub gpus: Option<crate::core::devices::Gpus>,
    /// The Slurm step of a container task, verified by the broker (its ids
    /// from the caller's cgroup, its spool directory on the node), when
    /// the site passes PMIx (SPEC §14).
    pub mpi_step: Option<crate::core::mpi::Step>,
    /// The node's device nodes that `mpi.fabric_devices` names.
    pub fabric: Vec<PathBuf>,
    /// An LSF parallel job's task, started on this host by blaunch (its
    /// `LSF_PM_TASKID`, SPEC §14): it runs in the job's container on this
    /// host, never a container of its own.
    pub lsf_task: Option<u32>,
    /// An LSF job whose allocation spans hosts (`LSB_MCPU_HOSTS`), or one
    /// of its tasks: its containers get the fabric and memlock limit the
    /// site's `[mpi]` allows, as a Slurm MPI rank's do.
    pub lsf_parallel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Volume,
    Workdir,
    Tmp,
    Passwd,
    Group,
    Hosts,
    /// A fresh per-job directory over a `VOLUME` the image declares, so
    /// docker makes no anonymous volume on the node's disk.
    ImageVolume,
    /// An MPI step's spool directory, where its PMIx server's files are.
    MpiSpool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountPlan {
    pub kind: MountKind,
    /// The host directory mounted (symlinks resolved).
    pub src: PathBuf,
    pub dst: PathBuf,
    pub mode: Mode,
    /// Where the launcher pins `src` (a bind mount of the directory the
    /// user opened) for docker to bind instead, so that nothing the user
    /// renames or relinks after the check changes what is mounted.
    pub staged: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TmpPlan {
    pub kind: TmpKind,
    /// host: the directory created for the job (0700, owned by the user).
    pub dir: Option<PathBuf>,
    pub size: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagePlan {
    /// What the job asked for, normalized (`docker.io/library/alpine:latest`
    /// or `bundle:NAME`).
    pub requested: String,
    /// The id the container runs from; `None` only when explaining without
    /// an engine.
    pub id: Option<String>,
    pub bundle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserPlan {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything the launcher does for one job, decided in advance.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchPlan {
    pub name: String,
    pub job: crate::core::request::JobId,
    pub image: ImagePlan,
    pub user: UserPlan,
    pub mounts: Vec<MountPlan>,
    pub workdir: PathBuf,
    pub tmp: TmpPlan,
    /// Root-owned per-job directory holding tmp/, passwd, group, env.
    pub job_dir: PathBuf,
    /// Root-only directory of the job's pinned mounts (`None`: no pins).
    pub pins_dir: Option<PathBuf>,
    /// Variables passed to the container in the create body (never in an
    /// argv, where any user on the node could read them).
    #[serde(skip)]
    pub env: Vec<(String, String)>,
    pub env_names: Vec<String>,
    pub env_dropped: Vec<Dropped>,
    pub passwd: Option<String>,
    pub group: Option<String>,
    /// Files written into the per-job /tmp before the container starts.
    #[serde(skip)]
    pub tmp_files: Vec<TmpFile>,
    /// A Slurm container id (`%n.%u.%j.%s.%t`), set as a label.
    pub slurm_id: Option<String>,
    /// `/etc/hosts` for a container without docker's network sandbox.
    pub hosts: Option<String>,
    /// Where the container lives in the job's allocation (SPEC §11).
    pub placement: Option<crate::core::cgroup::Placement>,
    /// The GPUs the container gets (SPEC §12).
    pub gpus: crate::core::devices::GpuPlan,
    /// A rank of an MPI step (SPEC §14).
    pub mpi: Option<crate::core::mpi::MpiPlan>,
    /// The container holding the step's shared IPC and PID namespaces on
    /// this node (`mpi.ipc = "step"`): created by the first rank, removed
    /// with the last.
    pub holder: Option<ContainerSpec>,
    /// An LSF blaunch task (SPEC §14): run as a process of the job's
    /// container on this host, created (as `task.host_spec`) by the first
    /// task here when the job's own container is elsewhere. Or an MPI
    /// rank run as a process of its step's container (`holder`, made by
    /// the step's first rank here), unless it asks for other settings.
    pub task: Option<TaskPlan>,
    /// The container, as the engine is asked to create it.
    pub spec: ContainerSpec,
    /// The equivalent docker command line, argv[0] the docker binary
    /// (printed by `berth explain`; never run).
    pub argv: Vec<String>,
    pub socket: PathBuf,
    pub stop_timeout: u32,
}

/// What a task is a process of a shared container for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// An LSF blaunch task (`LSF_PM_TASKID`).
    Blaunch,
    /// A rank of a Slurm MPI step (`mpi.ranks = "exec"`), in its step's
    /// container on the node; its process waits at [`RANK_GATE`].
    Rank,
}

/// How an LSF blaunch task runs (SPEC §14): IBM's model, one container
/// per execution host of a parallel job, each task a process in it. A
/// Slurm MPI rank runs the same way in its step's container on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskPlan {
    pub kind: TaskKind,
    /// `LSF_PM_TASKID` (LSF numbers a job's tasks from 1); a rank's
    /// Slurm task id (`%t`).
    pub id: u32,
    /// This host's name, the `berth.host` label of the job's containers.
    pub host: String,
    /// The task's process: `spec`'s entrypoint and command.
    pub argv: Vec<String>,
    /// The container of the job on this host when the job's own container
    /// runs elsewhere: the task's container settings, waiting on a stdin
    /// nobody writes; made by the first task here, removed after the last.
    pub host_spec: ContainerSpec,
}

fn roots_list(policy: &Policy) -> String {
    let v: Vec<String> = policy
        .volumes
        .iter()
        .map(|r| r.root.display().to_string())
        .collect();
    if v.is_empty() {
        "none configured".into()
    } else {
        v.join(", ")
    }
}

/// Plan a launch, or say why not.
pub fn plan(
    policy: &Policy,
    id: &Identity,
    req: &Request,
    facts: Option<&ImageFacts>,
    host: &dyn HostFs,
    ctx: &Context,
) -> Result<LaunchPlan> {
    let job = job_of(policy, req, ctx)?;
    let req = &Request { job, ..req.clone() };
    let image = plan_image(policy, req, facts, Some(id))?;
    let name = container_name(req, &ctx.nonce)?;
    let job_dir = normalize_abs(&policy.tmp.base)
        .ok_or_else(|| Error::Config("tmp.base must be absolute".into()))?
        .join(&name);

    // Host paths to mount: volumes, then the working directory.
    let mut mounts: Vec<MountPlan> = Vec::new();
    for v in &req.volumes {
        if !v.dst.as_os_str().is_empty() && !v.dst.is_absolute() {
            // `/a/we:ird` splits into source /a/we and destination ird.
            return deny(
                "volumes.destination",
                &v.raw,
                format!(
                    "volume {:?}: destination {:?} is not an absolute path (a ':' inside a path splits the spec, so paths holding ':' cannot be mounted)",
                    v.raw,
                    v.dst.display().to_string()
                ),
                "write SRC:/absolute/destination[:ro] with paths free of ':'",
            );
        }
        let (src, root_mode) = resolve_source(policy, host, id, &v.raw, &v.src, "volume")?;
        let dst = check_destination(policy, &v.raw, &v.dst)?;
        let mode = match (v.mode, root_mode) {
            (Some(Mode::Rw), Mode::Ro) => {
                return deny(
                    "volumes.mode",
                    &v.raw,
                    format!(
                        "volume {} may only be mounted read-only under its root",
                        v.src.display()
                    ),
                    format!("write {}:{}:ro", v.src.display(), v.dst.display()),
                )
            }
            (Some(m), _) => m,
            (None, r) => r,
        };
        if let Some(prev) = mounts.iter().find(|m| m.dst == dst) {
            return deny(
                "volumes.overlap",
                &v.raw,
                format!(
                    "two volumes are mounted at {} ({} and {})",
                    dst.display(),
                    prev.src.display(),
                    src.display()
                ),
                "give each volume its own destination",
            );
        }
        mounts.push(MountPlan {
            kind: MountKind::Volume,
            src,
            dst,
            mode,
            staged: None,
        });
    }

    let workdir = plan_workdir(policy, req, host, id, &mut mounts)?;
    check_nested(&mounts, host)?;

    // Every host source must be reachable by the user with their own
    // credentials: dockerd mounts as root and would skip parents' modes.
    let srcs: Vec<PathBuf> = mounts.iter().map(|m| m.src.clone()).collect();
    let ok = host.user_can_access(id, &srcs)?;
    for (m, ok) in mounts.iter().zip(ok) {
        if !ok {
            return deny(
                "volumes.access",
                m.src.display().to_string(),
                format!(
                    "user {} cannot read {} with their own permissions",
                    id.name,
                    m.src.display()
                ),
                "mount a directory you can read; ask its owner for access",
            );
        }
    }

    let tmp = match policy.tmp.kind {
        TmpKind::Host => {
            let dir = job_dir.join("tmp");
            mounts.push(MountPlan {
                kind: MountKind::Tmp,
                src: dir.clone(),
                dst: "/tmp".into(),
                mode: Mode::Rw,
                staged: None,
            });
            TmpPlan {
                kind: TmpKind::Host,
                dir: Some(dir),
                size: policy.tmp.size.clone(),
            }
        }
        TmpKind::Tmpfs => TmpPlan {
            kind: TmpKind::Tmpfs,
            dir: None,
            size: policy.tmp.size.clone(),
        },
    };
    for f in &ctx.tmp_files {
        let p = Path::new(&f.path);
        let ok = !p.is_absolute()
            && normalize_abs(&Path::new("/").join(p)).is_some_and(|n| n != Path::new("/"))
            && unsafe_char(p).is_none()
            && f.content.len() <= 4 << 20;
        if !ok {
            return Err(Error::Malformed(format!(
                "file {:?} for the job's /tmp is not a plain relative path (or is over 4 MiB)",
                f.path
            )));
        }
        if policy.tmp.kind != TmpKind::Host {
            return deny(
                "tmp.kind",
                &f.path,
                "this job needs a file in its /tmp (a Slurm batch script), which needs tmp.kind = host",
                "ask your administrator to set [tmp] kind = \"host\", or use srun instead of sbatch",
            );
        }
    }
    let slurm_id = match &ctx.slurm_id {
        Some(s)
            if s.len() <= 256
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b)) =>
        {
            Some(s.clone())
        }
        Some(s) => {
            return Err(Error::Malformed(format!(
                "slurm container id {s:?} has unexpected characters"
            )))
        }
        None => None,
    };
    let (passwd, group) = if policy.identity.passwd {
        mounts.push(MountPlan {
            kind: MountKind::Passwd,
            src: job_dir.join("passwd"),
            dst: "/etc/passwd".into(),
            mode: Mode::Ro,
            staged: None,
        });
        mounts.push(MountPlan {
            kind: MountKind::Group,
            src: job_dir.join("group"),
            dst: "/etc/group".into(),
            mode: Mode::Ro,
            staged: None,
        });
        (Some(passwd_file(id)), Some(group_file(id)))
    } else {
        (None, None)
    };

    // An MPI rank's network and IPC are its step's (SPEC §14).
    let pmix = mpi::decide(
        policy,
        &req.env,
        req.network.as_deref(),
        ctx.mpi_step.as_ref(),
        id.uid,
        &ctx.fabric,
    )?;
    let rank = match &pmix {
        mpi::Pmix::Task(m) => Some(m.clone()),
        _ => None,
    };
    let network = pick_mode(
        "network",
        if rank.is_some() {
            Some("host")
        } else {
            req.network.as_deref()
        },
        &policy.docker.networks,
        &policy.docker.default_network,
        "LSF_DOCKER_NETWORK",
    )?;
    let shared = rank.as_ref().map(|m| &m.sharing);
    if let (Some(asked), Some(mpi::Sharing::Step { .. } | mpi::Sharing::Host)) = (&req.ipc, shared)
    {
        return deny(
            "docker.ipc",
            asked,
            "an MPI task shares its IPC with its step's other ranks on the node, as the site's mpi.ipc says",
            "unset LSF_DOCKER_IPC",
        );
    }
    let (ipc, pid_mode) = match shared {
        Some(mpi::Sharing::Step { holder }) => {
            let c = format!("container:{holder}");
            (c.clone(), Some(c))
        }
        // The node's IPC and its PIDs with it: Open MPI's single-copy
        // transport (CMA) names its peers by pid, and ranks in PID
        // namespaces of their own crash in it (measured: Open MPI 5.0.7).
        Some(mpi::Sharing::Host) => ("host".to_string(), Some("host".to_string())),
        _ => (
            pick_mode(
                "ipc",
                req.ipc.as_deref(),
                &policy.docker.ipc,
                &policy.docker.default_ipc,
                "LSF_DOCKER_IPC",
            )?,
            None,
        ),
    };

    if let Some(shm) = &req.shm_size {
        let (want, max) = (
            crate::core::size::parse(shm).unwrap_or(u64::MAX),
            crate::core::size::parse(&policy.docker.max_shm_size).unwrap_or(0),
        );
        if want > max {
            return deny(
                "docker.max_shm_size",
                shm,
                format!(
                    "shm size {shm} is above the site maximum {}",
                    policy.docker.max_shm_size
                ),
                format!("ask for at most {}", policy.docker.max_shm_size),
            );
        }
    }
    for p in &req.ports {
        let allowed = policy
            .docker
            .ports
            .iter()
            .filter_map(|r| crate::core::request::parse_port_range(r))
            .any(|(lo, hi)| (lo..=hi).contains(&p.host_port));
        if !allowed {
            return deny(
                "docker.ports",
                &p.raw,
                format!(
                    "host port {} is not open to jobs here (allowed: {})",
                    p.host_port,
                    if policy.docker.ports.is_empty() {
                        "none".into()
                    } else {
                        policy.docker.ports.join(", ")
                    }
                ),
                "pick a port in an allowed range, or do without LSF_DOCKER_PORTS",
            );
        }
        if network == "none" || network == "host" {
            return deny(
                "docker.ports",
                &p.raw,
                format!("ports cannot be published with network {network}"),
                "set LSF_DOCKER_NETWORK=bridge",
            );
        }
    }
    if !req.add_hosts.is_empty() && !policy.docker.add_host {
        return deny(
            "docker.add_host",
            &req.add_hosts[0].0,
            "LSF_DOCKER_ADD_HOST is disabled by the site",
            "unset LSF_DOCKER_ADD_HOST",
        );
    }

    let (mut env, mut env_dropped) = plan_env(policy, req, ctx);
    if let mpi::Pmix::Dropped(why) = &pmix {
        env.retain(|(k, _)| {
            let drop = mpi::is_pmix_var(k);
            if drop {
                env_dropped.push(Dropped {
                    name: k.clone(),
                    reason: (*why).to_string(),
                });
            }
            !drop
        });
    }
    // GPUs come from the allocation only; berth owns the variables that
    // name them inside (the job's own are replaced, never trusted).
    let gpus = crate::core::devices::plan_gpus(&policy.gpus, ctx.gpus.as_ref())?;
    env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES" && k != "NVIDIA_VISIBLE_DEVICES");
    if let Some(c) = gpus.cuda_visible() {
        env.push(("CUDA_VISIBLE_DEVICES".into(), c));
    }
    env.push(("NVIDIA_VISIBLE_DEVICES".into(), gpus.nvidia_visible()));

    // The command, run under /bin/sh -c like every LSF job.
    let (entrypoint, tail) = plan_command(policy, req, facts)?;

    if policy.mounts.pin {
        for (i, m) in mounts.iter_mut().enumerate() {
            if matches!(m.kind, MountKind::Volume | MountKind::Workdir) {
                m.staged = Some(pins_dir(policy, &name).join(i.to_string()));
            }
        }
    }
    let hostname = match policy.docker.hostname {
        HostnameRule::Node => ctx.hostname.clone().filter(|h| valid_hostname(h)),
        HostnameRule::Engine => None,
    };
    // Without docker's network sandbox docker writes no /etc/hosts: berth
    // gives one with loopback and the container's name.
    let network_disabled = network == "none";
    let hosts = network_disabled.then(|| spec::hosts_file(hostname.as_deref()));
    if hosts.is_some() {
        mounts.push(MountPlan {
            kind: MountKind::Hosts,
            src: job_dir.join("hosts"),
            dst: "/etc/hosts".into(),
            mode: Mode::Ro,
            staged: None,
        });
    }
    let placement = match (&ctx.job_cgroup, policy.cgroup.placement) {
        (Some((job, cpus, memory)), crate::core::policy::PlacementRule::Job) => {
            Some(crate::core::cgroup::Placement {
                job: job.clone(),
                parent: crate::core::cgroup::parent_for(job, &name),
                cpus: cpus.clone().filter(|c| valid_cpu_list(c)),
                memory: *memory,
                mknod: match (job.version, &ctx.gpus) {
                    (crate::core::cgroup::Version::V1, Some(g)) => {
                        g.present.iter().chain(&g.control).cloned().collect()
                    }
                    _ => Vec::new(),
                },
            })
        }
        _ => None,
    };
    plan_image_volumes(facts, &job_dir, tmp.kind, &mut mounts)?;
    if let Some(m) = &rank {
        for (src, dst) in &m.mounts {
            if let Some(prev) = mounts.iter().find(|p| p.dst == *dst) {
                return deny(
                    "mpi.mount_spool_dir",
                    dst.display().to_string(),
                    format!(
                        "the MPI step's spool directory goes to {}, where {} is already mounted",
                        dst.display(),
                        prev.src.display()
                    ),
                    "mount nothing at the step's spool directory or at mpi.mount_spool_dir",
                );
            }
            mounts.push(MountPlan {
                kind: MountKind::MpiSpool,
                src: src.clone(),
                dst: dst.clone(),
                mode: Mode::Rw,
                staged: None,
            });
        }
    }
    let mut labels = std::collections::BTreeMap::new();
    if let Some(h) = &ctx.hostname {
        // An LSF parallel job's tasks on this host find its container by it.
        labels.insert("berth.host".to_string(), h.clone());
    }
    labels.insert("berth.job".to_string(), req.job.id.clone());
    labels.insert("berth.index".to_string(), req.job.index.to_string());
    labels.insert("berth.user".to_string(), id.name.clone());
    labels.insert("berth.uid".to_string(), id.uid.to_string());
    if let Some(s) = &slurm_id {
        labels.insert("berth.slurm".to_string(), s.clone());
    }
    let mut tmpfs = std::collections::BTreeMap::new();
    if tmp.kind == TmpKind::Tmpfs {
        let bytes = crate::core::size::parse(&tmp.size).unwrap_or(0);
        tmpfs.insert(
            "/tmp".to_string(),
            format!("rw,nosuid,nodev,size={bytes},mode=1777"),
        );
    }
    let spec = ContainerSpec {
        name: name.clone(),
        image: image.id.clone().unwrap_or_else(|| image.requested.clone()),
        user: format!("{}:{}", id.uid, id.gid),
        group_add: id.groups.iter().map(|g| g.gid).collect(),
        cap_add: policy
            .docker
            .cap_add
            .iter()
            .map(|c| c.to_ascii_uppercase())
            .collect(),
        pids_limit: policy.docker.pids_limit,
        network: network.clone(),
        network_disabled,
        ipc: ipc.clone(),
        shm_size: match shared {
            Some(mpi::Sharing::Step { .. } | mpi::Sharing::Host) => None,
            _ => req.shm_size.as_deref().and_then(crate::core::size::parse),
        },
        hostname,
        labels,
        binds: mounts
            .iter()
            .map(|m| spec::Bind {
                src: m.staged.clone().unwrap_or_else(|| m.src.clone()),
                dst: m.dst.clone(),
                readonly: m.mode == Mode::Ro,
            })
            .collect(),
        tmpfs,
        workdir: workdir.clone(),
        extra_hosts: req
            .add_hosts
            .iter()
            .map(|(h, ip)| format!("{h}:{ip}"))
            .collect(),
        publish: req
            .ports
            .iter()
            .map(|p| spec::Publish {
                host_ip: p.host_ip.map(|i| i.to_string()),
                host_port: p.host_port,
                container_port: p.container_port,
                proto: p.proto.clone(),
            })
            .collect(),
        entrypoint,
        cmd: tail,
        cgroup_parent: placement.as_ref().map(|p| p.parent.clone()),
        cpuset_cpus: placement.as_ref().and_then(|p| p.cpus.clone()),
        memory: placement.as_ref().and_then(|p| p.memory),
        env_names: env.iter().map(|(k, _)| k.clone()).collect(),
        devices: match gpus.mode {
            crate::core::policy::GpuMode::Devices => gpus
                .given
                .iter()
                .chain(&gpus.control)
                .map(|d| d.path.clone())
                .collect(),
            _ => Vec::new(),
        }
        .into_iter()
        .chain(rank.iter().flat_map(|m| m.devices.iter().cloned()))
        .chain(ctx.fabric.iter().filter(|_| ctx.lsf_parallel).cloned())
        .collect(),
        device_requests: match gpus.mode {
            _ if gpus.given.is_empty() => Vec::new(),
            crate::core::policy::GpuMode::Nvidia => vec![spec::DeviceRequest {
                driver: "nvidia".into(),
                ids: gpus.host_ids(),
            }],
            crate::core::policy::GpuMode::Cdi => vec![spec::DeviceRequest {
                driver: "cdi".into(),
                ids: gpus
                    .host_ids()
                    .iter()
                    .map(|i| format!("{}={i}", policy.gpus.cdi_kind))
                    .collect(),
            }],
            _ => Vec::new(),
        },
        init: pid_mode.is_none(),
        pid_mode,
        memlock_unlimited: rank.as_ref().is_some_and(|m| m.memlock_unlimited)
            || (ctx.lsf_parallel && policy.mpi.memlock == crate::core::policy::Memlock::Unlimited),
        attach: true,
    };
    let mut spec = spec;
    spec.labels
        .insert("berth.shape".to_string(), shape(&spec, &mounts));
    let argv = spec.argv(&policy.docker.path.display().to_string());
    let memory = ctx.job_cgroup.as_ref().and_then(|f| f.2);
    let holder = match (shared, &ctx.mpi_step, &rank) {
        (Some(mpi::Sharing::Step { holder }), Some(step), Some(m)) => {
            Some(match policy.mpi.ranks {
                MpiRanks::Exec => {
                    step_container_spec(holder, &spec, step, placement.as_ref(), memory, m.tasks)
                }
                MpiRanks::Container => holder_spec(holder, &spec, step, placement.as_ref(), memory),
            })
        }
        _ => None,
    };

    let task =
        match ctx.lsf_task {
            Some(_) if req.job.id == "local" => return Err(Error::Malformed(
                "LSF_PM_TASKID is set but LSB_JOBID is not: a blaunch task belongs to an LSF job"
                    .into(),
            )),
            Some(id) => Some(task_plan(id, ctx, &spec, rank.is_some())?),
            None => match (&holder, &ctx.mpi_step) {
                (Some(h), Some(step)) if policy.mpi.ranks == MpiRanks::Exec => {
                    rank_task(step, slurm_id.as_deref(), &spec, h, &req.command)
                }
                _ => None,
            },
        };

    // A rank that is no exec (no command of its own) joins a plain holder:
    // a step container made from its plan would hold its per-job
    // directory, which its own container's end removes.
    let holder = match (holder, &task, shared, &ctx.mpi_step) {
        (Some(_), None, Some(mpi::Sharing::Step { holder }), Some(step))
            if policy.mpi.ranks == MpiRanks::Exec =>
        {
            Some(holder_spec(holder, &spec, step, placement.as_ref(), memory))
        }
        (h, ..) => h,
    };
    let pins_dir = mounts
        .iter()
        .any(|m| m.staged.is_some())
        .then(|| pins_dir(policy, &name));
    Ok(LaunchPlan {
        name,
        job: req.job.clone(),
        image,
        user: UserPlan {
            name: id.name.clone(),
            uid: id.uid,
            gid: id.gid,
            groups: id.groups.iter().map(|g| g.gid).collect(),
        },
        mounts,
        workdir,
        tmp,
        pins_dir,
        job_dir,
        env_names: env.iter().map(|(k, _)| k.clone()).collect(),
        env,
        env_dropped,
        passwd,
        group,
        tmp_files: ctx.tmp_files.clone(),
        slurm_id,
        hosts,
        placement,
        gpus,
        mpi: rank,
        holder,
        task,
        spec,
        argv,
        socket: policy.docker.socket.clone(),
        stop_timeout: policy.docker.stop_timeout,
    })
}

/// The holder of an MPI step's shared namespaces on this node (SPEC §14):
/// the task's image and user, a shell that waits on a stdin nobody writes,
/// no network, no capability, a handful of processes, in the step's cgroup
/// (not a task's, which ends with its task); its /dev/shm, which every
/// rank of the step on the node shares, as big as the job's memory here.
fn holder_spec(
    name: &str,
    task: &ContainerSpec,
    step: &mpi::Step,
    placement: Option<&crate::core::cgroup::Placement>,
    memory: Option<u64>,
) -> ContainerSpec {
    let mut labels = std::collections::BTreeMap::new();
    for k in ["berth.job", "berth.user", "berth.uid"] {
        if let Some(v) = task.labels.get(k) {
            labels.insert(k.to_string(), v.clone());
        }
    }
    labels.insert(
        "berth.mpi".to_string(),
        format!("{}.{}.{}", step.node, step.job, step.step),
    );
    ContainerSpec {
        name: name.to_string(),
        image: task.image.clone(),
        user: task.user.clone(),
        group_add: Vec::new(),
        cap_add: Vec::new(),
        pids_limit: 8,
        network: "none".into(),
        network_disabled: true,
        ipc: "shareable".into(),
        shm_size: memory,
        hostname: None,
        labels,
        binds: Vec::new(),
        tmpfs: std::collections::BTreeMap::new(),
        workdir: "/".into(),
        extra_hosts: Vec::new(),
        publish: Vec::new(),
        entrypoint: Some("/bin/sh".into()),
        cmd: vec!["-c".into(), "read x".into()],
        cgroup_parent: placement.map(|p| crate::core::cgroup::step_parent(&p.job, name)),
        cpuset_cpus: None,
        memory: None,
        env_names: Vec::new(),
        devices: Vec::new(),
        device_requests: Vec::new(),
        pid_mode: None,
        init: true,
        memlock_unlimited: false,
        attach: false,
    }
}

/// The container of an MPI step on this node that its ranks run in
/// (`mpi.ranks = "exec"`, SPEC §14): what the rank's own container would
/// be (image, user and groups, the host network, mounts, its per-job /tmp,
/// devices, limits), waiting on a stdin nobody writes, in the step's cgroup
/// (not a task's, which ends with its task), its IPC shareable (a rank that
/// differs joins it in a container of its own), its /dev/shm as big as the
/// job's memory here. Its processes count against one pids limit: the
/// rank's, once for each of the node's ranks, which are at most the step's
/// CPUs here (the kernel's count, as Slurm places a task per CPU unless
/// overcommitted) and its tasks (the job's own claim, never believed
/// above that), within the kernel's largest limit. Never the task's Slurm
/// id (`berth slurm kill` of one task must not find the step's container).
fn step_container_spec(
    name: &str,
    task: &ContainerSpec,
    step: &mpi::Step,
    placement: Option<&crate::core::cgroup::Placement>,
    memory: Option<u64>,
    tasks: u32,
) -> ContainerSpec {
    let mut s = task.clone();
    s.name = name.to_string();
    s.labels.remove("berth.slurm");
    s.labels.insert(
        "berth.mpi".to_string(),
        format!("{}.{}.{}", step.node, step.job, step.step),
    );
    s.labels
        .insert("berth.role".to_string(), "step".to_string());
    s.entrypoint = Some("/bin/sh".into());
    s.cmd = vec!["-c".into(), "read x".into()];
    s.env_names = Vec::new();
    s.attach = false;
    s.init = true;
    s.ipc = "shareable".into();
    s.pid_mode = None;
    let ranks_here = tasks.min(step.cpus.unwrap_or(1)).max(1);
    s.pids_limit = task
        .pids_limit
        .saturating_mul(ranks_here)
        .min(PIDS_MAX_LIMIT);
    s.shm_size = memory.or(task.shm_size);
    s.cgroup_parent = placement.map(|p| crate::core::cgroup::step_parent(&p.job, name));
    s.cpuset_cpus = None;
    s.memory = None;
    s
}

/// The largest pids.max the kernel takes (PID_MAX_LIMIT on 64-bit).
const PIDS_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// The gate an MPI rank's exec waits at (SPEC §14): the broker moves the
/// waiting shell into its Slurm task's cgroups and CPUs, then writes one
/// line to its stdin, and the rank's own program starts where its task
/// lives, bound as Slurm bound the task.
pub const RANK_GATE: &str = "read -r berth_gate && exec \"$@\"";

/// An MPI rank as a process of its step's container (`mpi.ranks =
/// "exec"`): `None` (a container of its own) for a rank without a command.
/// A command of several words (srun's argv) is what the gate execs, as
/// srun execs it on bare metal: the rank's program is then the exec's own
/// process, which a signal to the task reaches first and whose status is
/// the task's (a `/bin/sh -c` between them would die of a signal the
/// program traps). One word stays `/bin/sh -c` (a job script, as ever).
fn rank_task(
    step: &mpi::Step,
    slurm_id: Option<&str>,
    spec: &ContainerSpec,
    step_container: &ContainerSpec,
    command: &[String],
) -> Option<TaskPlan> {
    // (Only when the container would run the words under /bin/sh -c: an
    // entrypoint the site lets the job choose comes first, as ever.)
    let shell_form = spec.entrypoint.as_deref() == Some("/bin/sh")
        && spec.cmd == ["-c".to_string(), shell_script(command)];
    let argv = if command.len() > 1 && shell_form {
        command.to_vec()
    } else {
        spec_argv(spec)
    };
    if argv.is_empty() {
        return None;
    }
    // `%t` of the Slurm id: the task's number on its step.
    let id = slurm_id
        .and_then(|s| s.rsplit('.').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Some(TaskPlan {
        kind: TaskKind::Rank,
        id,
        host: step.node.clone(),
        argv: ["/bin/sh", "-c", RANK_GATE, "berth-rank"]
            .into_iter()
            .map(str::to_string)
            .chain(argv)
            .collect(),
        host_spec: step_container.clone(),
    })
}

/// The process a container of `spec` runs: its entrypoint, then its cmd
/// (what a task run as an exec in a shared container runs instead).
fn spec_argv(spec: &ContainerSpec) -> Vec<String> {
    spec.entrypoint
        .iter()
        .cloned()
        .chain(spec.cmd.iter().cloned())
        .collect()
}

/// What a blaunch task or an MPI rank must share with the container it
/// runs in (SPEC §14): the image, the user and groups, the network and
/// IPC, the job's own mounts and working directory (not the per-container
/// /tmp, passwd or image volumes), devices and GPUs (nodes, or the
/// engine's device requests), /dev/shm's size, extra hosts and ports. An
/// exec cannot change any of them, so a task that would differ is refused
/// rather than run with what it did not ask for.
fn shape(spec: &ContainerSpec, mounts: &[MountPlan]) -> String {
    let mut own: Vec<String> = mounts
        .iter()
        .filter(|m| matches!(m.kind, MountKind::Volume | MountKind::Workdir))
        .map(|m| {
            format!(
                "{}\0{}\0{}",
                m.src.display(),
                m.dst.display(),
                m.mode.as_str()
            )
        })
        .collect();
    own.sort();
    let text = serde_json::json!({
        "image": spec.image,
        "user": spec.user,
        "groups": spec.group_add,
        "network": spec.network,
        "ipc": spec.ipc,
        "mounts": own,
        "devices": spec.devices,
        "gpus": spec.device_requests,
        "shm": spec.shm_size,
        "memlock": spec.memlock_unlimited,
        "hosts": spec.extra_hosts,
        "ports": spec.publish.iter().map(|p| format!("{:?}:{}:{}/{}", p.host_ip, p.host_port, p.container_port, p.proto)).collect::<Vec<_>>(),
    })
    .to_string();
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An LSF blaunch task's process and its host's container (SPEC §14).
fn task_plan(id: u32, ctx: &Context, spec: &ContainerSpec, mpi_rank: bool) -> Result<TaskPlan> {
    let host = ctx
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::Internal("an LSF task's host has no name".into()))?;
    if mpi_rank {
        return Err(Error::Malformed(
            "a job has both an LSF task id (LSF_PM_TASKID) and a Slurm PMIx rank".into(),
        ));
    }
    let argv = spec_argv(spec);
    if argv.is_empty() {
        return deny(
            "images.raw_args",
            "LSB_DOCKER_PLACE_HOLDER",
            "a blaunch task runs a command in the job's container on its host, and this one gives none (the image's own command runs only as a job)",
            "give blaunch the task's command, and unset LSF_DOCKER_RUN_RAW_ARGS for it",
        );
    }
    let mut host_spec = spec.clone();
    host_spec
        .labels
        .insert("berth.role".to_string(), "host".to_string());
    host_spec.entrypoint = Some("/bin/sh".into());
    host_spec.cmd = vec!["-c".into(), "read x".into()];
    host_spec.env_names = Vec::new();
    host_spec.attach = false;
    host_spec.init = true;
    Ok(TaskPlan {
        kind: TaskKind::Blaunch,
        id,
        host,
        argv,
        host_spec,
    })
}

/// The repository of the tags berth puts on images it loaded for bundles
/// (`berth-bundle/NAME:HEX`, the mark `berth bundle gc` looks for).
pub const BUNDLE_TAG_REPO: &str = "berth-bundle";

/// The image rules that need no facts: allow-list, bundles only.
pub fn check_image(policy: &Policy, req: &Request) -> Result<()> {
    plan_image(policy, req, None, None).map(|_| ())
}

fn plan_image(
    policy: &Policy,
    req: &Request,
    facts: Option<&ImageFacts>,
    id: Option<&Identity>,
) -> Result<ImagePlan> {
    let (requested, bundle) = match &req.image {
        ImageSpec::Registry(r) => {
            let s = r.to_string();
            if policy.bundles.only {
                return deny(
                    "bundles.only",
                    &s,
                    format!("image {s} is not a bundle, and this site runs only bundles"),
                    "use LSB_CONTAINER_IMAGE=bundle:NAME (berth bundle list shows them)",
                );
            }
            // berth's own marks on loaded bundles: a tag would run a
            // user's bundle for someone its share does not cover.
            if s.starts_with(&format!("docker.io/{BUNDLE_TAG_REPO}/")) {
                return deny(
                    "images.allow",
                    &s,
                    format!("{s} is berth's mark on a loaded bundle, never run by name"),
                    "run the bundle itself: LSB_CONTAINER_IMAGE=bundle:NAME (berth bundle list shows them)",
                );
            }
            let allowed = policy
                .images
                .allow
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .any(|p| p.matches(&s));
            if !allowed {
                return deny(
                    "images.allow",
                    &s,
                    format!(
                        "image {s} is not allowed here (allowed: {})",
                        if policy.images.allow.is_empty() {
                            "none".into()
                        } else {
                            policy.images.allow.join(", ")
                        }
                    ),
                    "use an allowed image or ask your administrator to add it",
                );
            }
            (s, None)
        }
        ImageSpec::Bundle(n) => {
            if policy.bundles.cache.is_none() {
                return deny(
                    "bundles.cache",
                    format!("bundle:{n}"),
                    "this site has no bundle cache",
                    "use a registry image",
                );
            }
            (format!("bundle:{n}"), Some(n.clone()))
        }
    };
    // A user's bundle (`OWNER/NAME`, `~/` already resolved): its owner and
    // share decide, and a bundle whose facts lack its owner never runs.
    if let (Some(key), Some(f), Some(id)) = (&bundle, facts, id) {
        if key.contains('/') {
            let owner = f.owner.as_ref().ok_or_else(|| {
                Error::Config(format!(
                    "bundle {key} records no owner; remove it (berth bundle rm {key}) and push it again"
                ))
            })?;
            crate::core::share::may_run(&policy.bundles, id, key, owner)?;
        }
    }
    let Some(f) = facts else {
        return Ok(ImagePlan {
            requested,
            id: None,
            bundle,
        });
    };
    if !crate::core::facts::valid_image_id(&f.id) {
        return Err(Error::Internal(format!(
            "engine returned an invalid image id {:?}",
            f.id
        )));
    }
    Ok(ImagePlan {
        requested,
        id: Some(f.id.clone()),
        bundle,
    })
}

fn plan_command(
    policy: &Policy,
    req: &Request,
    facts: Option<&ImageFacts>,
) -> Result<(Option<String>, Vec<String>)> {
    let img = || match &req.image {
        ImageSpec::Registry(r) => r.to_string(),
        ImageSpec::Bundle(n) => format!("bundle:{n}"),
    };
    if let Some(f) = facts {
        let ep_ok =
            f.entrypoint.is_empty() || f.entrypoint[0] == "/bin/sh" || f.entrypoint[0] == "sh";
        if policy.images.entrypoint == EntrypointRule::ShellOrNone && !ep_ok {
            return deny(
                "images.entrypoint",
                f.entrypoint.join(" "),
                format!("image {} has ENTRYPOINT {:?}; jobs need an image whose ENTRYPOINT is /bin/sh or empty", img(), f.entrypoint),
                "rebuild the image without ENTRYPOINT (or with ENTRYPOINT [\"/bin/sh\"])",
            );
        }
        if policy.images.require_shell && !f.has_shell {
            return deny(
                "images.require_shell",
                img(),
                format!(
                    "image {} has no /bin/sh, which runs every job command",
                    img()
                ),
                "use an image that contains a shell (e.g. add busybox)",
            );
        }
    }
    if req.raw_args {
        if !policy.images.raw_args {
            return deny(
                "images.raw_args",
                "LSF_DOCKER_RUN_RAW_ARGS",
                "running the image's own entrypoint is disabled by the site",
                "give the job's command instead of LSB_DOCKER_PLACE_HOLDER",
            );
        }
        return Ok((None, Vec::new()));
    }
    match &req.entrypoint {
        Some(ep) if ep == "/bin/sh" => {}
        Some(ep) => {
            if policy.images.entrypoint == EntrypointRule::ShellOrNone {
                return deny(
                    "images.entrypoint",
                    ep,
                    format!("LSF_DOCKER_ENTRYPOINT={ep:?} is not allowed; only /bin/sh"),
                    "unset LSF_DOCKER_ENTRYPOINT and put the program in the job command",
                );
            }
            let p = normalize_abs(Path::new(ep));
            if p.is_none() || unsafe_char(Path::new(ep)).is_some() {
                return deny(
                    "images.entrypoint",
                    ep,
                    format!("LSF_DOCKER_ENTRYPOINT={ep:?} is not an absolute path"),
                    "give the absolute path of a program in the image",
                );
            }
            return Ok((Some(ep.clone()), req.command.clone()));
        }
        None => {}
    }
    if facts.is_some_and(|f| !f.has_shell) {
        return deny(
            "images.require_shell",
            img(),
            format!("image {} has no /bin/sh to run the job command", img()),
            "use an image that contains a shell",
        );
    }
    Ok((
        Some("/bin/sh".into()),
        vec!["-c".into(), shell_script(&req.command)],
    ))
}

/// The root-only directory holding a job's pinned mounts, under
/// `mounts.pin_dir` and never under the per-job directory: removing that
/// recursively must never be able to descend into a user's volume.
pub fn pins_dir(policy: &Policy, name: &str) -> PathBuf {
    policy.mounts.pin_dir.join(name)
}

/// One argument is the job script as LSF passes it; several are quoted so
/// each stays one word.
pub fn shell_script(cmd: &[String]) -> String {
    if cmd.len() == 1 {
        return cmd[0].clone();
    }
    cmd.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./=:,+-@%".contains(&b))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn container_name(req: &Request, nonce: &str) -> Result<String> {
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Internal("container name nonce must be hex".into()));
    }
    Ok(format!("berth-{}-{}-{}", req.job.id, req.job.index, nonce))
}

/// Resolve a host path the job names to the directory docker will bind,
/// checking it stays under the same allowed root. Returns the root's mode.
fn resolve_source(
    policy: &Policy,
    host: &dyn HostFs,
    id: &Identity,
    raw: &str,
    src: &Path,
    what: &'static str,
) -> Result<(PathBuf, Mode)> {
    let rule = if what == "volume" {
        "volumes.source"
    } else {
        "workdir.source"
    };
    let shown = src.display().to_string();
    if let Some(c) = unsafe_char(src) {
        return deny(
            rule,
            raw,
            format!("{what} {shown:?} contains {c}, which docker would parse"),
            "rename the directory or mount a parent without such characters",
        );
    }
    let Some(norm) = normalize_abs(src) else {
        return deny(
            rule,
            raw,
            format!("{what} {shown} must be an absolute path without '.' or '..'"),
            format!(
                "write the full path under an allowed root ({})",
                roots_list(policy)
            ),
        );
    };
    let Some(root) = policy
        .volumes
        .iter()
        .find(|r| normalize_abs(&r.root).is_some_and(|rr| is_under(&norm, &rr)))
    else {
        return deny(
            rule,
            raw,
            format!(
                "{what} {shown} is not under an allowed root ({})",
                roots_list(policy)
            ),
            "mount a directory under one of them",
        );
    };
    // The user cannot reach it: one answer, whatever is there (nothing, a
    // file, a directory, a link to /etc), so that a denial never tells what
    // another user keeps in a directory closed to this one.
    let unreachable = || {
        deny(
            "volumes.access",
            &shown,
            format!(
                "user {} cannot reach {shown} with their own permissions",
                id.name
            ),
            if what == "volume" {
                "mount a directory you can read; ask its owner for access"
            } else {
                "submit from (or set LSF_DOCKER_WORKDIR to) a directory you can read"
            },
        )
    };
    let real = match host.canonicalize(&norm) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return unreachable(),
        Err(e) => {
            return deny(
                rule,
                raw,
                format!("{what} {shown} cannot be resolved: {e}"),
                "check that the directory exists on this node",
            )
        }
    };
    // The root itself may be a symlink (a GPFS mount point link): compare
    // resolved against resolved.
    let real_root = host
        .canonicalize(&root.root)
        .unwrap_or_else(|_| root.root.clone());
    if !is_under(&real, &real_root) {
        return deny(
            rule,
            raw,
            format!(
                "{what} {shown} resolves to {}, outside its root {}",
                real.display(),
                root.root.display()
            ),
            "mount the real directory under an allowed root, not a symlink leaving it",
        );
    }
    if unsafe_char(&real).is_some() {
        return deny(
            rule,
            raw,
            format!(
                "{what} {shown} resolves to {:?}, which holds characters docker would parse",
                real
            ),
            "rename the directory",
        );
    }
    match host.is_dir(&real) {
        Ok(true) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return unreachable(),
        Ok(false) => {
            return deny(
                rule,
                raw,
                format!("{what} {shown} is not a directory; only directories may be mounted"),
                "mount the directory that holds the file",
            )
        }
        Err(e) => {
            return deny(
                rule,
                raw,
                format!("{what} {shown}: {e}"),
                "check that the directory exists on this node",
            )
        }
    }
    Ok((real, root.mode))
}

fn check_destination(policy: &Policy, raw: &str, dst: &Path) -> Result<PathBuf> {
    let shown = dst.display().to_string();
    if let Some(c) = unsafe_char(dst) {
        return deny(
            "volumes.destination",
            raw,
            format!("volume destination {shown:?} contains {c}"),
            "choose a plain absolute path such as /data",
        );
    }
    let Some(norm) = normalize_abs(dst) else {
        return deny(
            "volumes.destination",
            raw,
            format!("volume destination {shown:?} must be an absolute path without '.' or '..'"),
            "write SRC:/absolute/destination",
        );
    };
    for r in &policy.mounts.reserved {
        let Some(r) = normalize_abs(r) else { continue };
        let hit = if r == Path::new("/") {
            norm == r
        } else {
            is_under(&norm, &r)
        };
        if hit {
            return deny(
                "mounts.reserved",
                raw,
                format!(
                    "volume destination {} is reserved ({} cannot be mounted over)",
                    norm.display(),
                    r.display()
                ),
                "mount it somewhere else, e.g. /data or the same path as on the host",
            );
        }
    }
    Ok(norm)
}

/// Whether container path `p`, under mount `m`'s destination, is an
/// existing directory in the mount's source (not leaving it by a symlink).
fn exists_in(host: &dyn HostFs, m: &MountPlan, p: &Path) -> bool {
    let host_path = m.src.join(p.strip_prefix(&m.dst).unwrap_or(Path::new("")));
    host.canonicalize(&host_path)
        .ok()
        .filter(|r| is_under(r, &m.src))
        .is_some_and(|r| host.is_dir(&r).unwrap_or(false))
}

/// runc creates a missing mount point as root, and inside another bind
/// mount that happens on the host: a user could have root create
/// directories where they may only read. A volume (or the working
/// directory) mounted inside another must find its mount point there.
fn check_nested(mounts: &[MountPlan], host: &dyn HostFs) -> Result<()> {
    for m in mounts {
        let parent = mounts
            .iter()
            .filter(|p| p.dst != m.dst && is_under(&m.dst, &p.dst))
            .max_by_key(|p| p.dst.components().count());
        let Some(p) = parent else { continue };
        if !exists_in(host, p, &m.dst) {
            return deny(
                "volumes.destination",
                m.dst.display().to_string(),
                format!(
                    "{} is mounted inside the volume at {} ({}), where that directory does not exist",
                    m.dst.display(),
                    p.dst.display(),
                    p.src.display()
                ),
                "create the directory in the outer volume first (docker would create it as root), or mount it elsewhere",
            );
        }
    }
    Ok(())
}

fn plan_workdir(
    policy: &Policy,
    req: &Request,
    host: &dyn HostFs,
    id: &Identity,
    mounts: &mut Vec<MountPlan>,
) -> Result<PathBuf> {
    let (path, from_submission) = match &req.workdir {
        Workdir::Explicit(p) => (p, false),
        Workdir::Submission(p) => (p, true),
    };
    let shown = path.display().to_string();
    let Some(norm) = normalize_abs(path) else {
        return deny(
            "workdir.path",
            &shown,
            format!("working directory {shown:?} must be an absolute path without '.' or '..'"),
            "set LSF_DOCKER_WORKDIR to an absolute path",
        );
    };
    for bad in ["/proc", "/sys", "/dev"] {
        if is_under(&norm, Path::new(bad)) {
            return deny(
                "workdir.path",
                &shown,
                format!("working directory {shown:?} is under {bad}"),
                "use a directory on a shared filesystem",
            );
        }
    }
    if let Some(c) = unsafe_char(&norm) {
        return deny(
            "workdir.path",
            &shown,
            format!("working directory {shown:?} contains {c}"),
            "submit from a directory without such characters",
        );
    }
    // runc creates a missing working directory as root, and under a volume
    // that happens on the host: a user could have root create directories
    // where they cannot write (in a directory they may only read). Under a
    // volume, the working directory must already exist in it.
    let inside = mounts
        .iter()
        .filter(|m| norm != m.dst && is_under(&norm, &m.dst))
        .max_by_key(|m| m.dst.components().count());
    if let Some(m) = inside {
        if !exists_in(host, m, &norm) {
            return deny(
                "workdir.path",
                &shown,
                format!(
                    "working directory {shown:?} is not a directory in the volume mounted at {} ({})",
                    m.dst.display(),
                    m.src.display()
                ),
                "create it first (docker would create it as root), or set LSF_DOCKER_WORKDIR to an existing directory",
            );
        }
    }
    let under_root = policy
        .volumes
        .iter()
        .any(|r| normalize_abs(&r.root).is_some_and(|rr| is_under(&norm, &rr)));
    if !policy.workdir.mount_cwd || (!from_submission && !under_root) {
        return Ok(norm);
    }
    if !under_root {
        return deny(
            "workdir.root",
            &shown,
            format!("the job's working directory {shown} is not under an allowed root ({}), so it cannot be mounted", roots_list(policy)),
            "submit the job from a directory under one of them, or set LSF_DOCKER_WORKDIR",
        );
    }
    let (src, mode) = resolve_source(policy, host, id, &shown, &norm, "working directory")?;
    if let Some(m) = mounts.iter().find(|m| m.dst == norm) {
        if m.src == src {
            return Ok(norm);
        }
        return deny(
            "volumes.overlap",
            &shown,
            format!(
                "a volume ({}) is mounted over the working directory {shown}",
                m.src.display()
            ),
            "mount the volume elsewhere or submit from another directory",
        );
    }
    mounts.push(MountPlan {
        kind: MountKind::Workdir,
        src,
        dst: norm.clone(),
        mode,
        staged: None,
    });
    Ok(norm)
}

fn pick_mode(
    what: &'static str,
    asked: Option<&str>,
    allowed: &[String],
    default: &str,
    var: &str,
) -> Result<String> {
    let rule = if what == "network" {
        "docker.networks"
    } else {
        "docker.ipc"
    };
    let v = asked.unwrap_or(default);
    // Sharing another container's or the host's namespace is never a job's
    // choice, whatever the list says.
    if v.starts_with("container:") || (what == "ipc" && v == "host") {
        return deny(
            rule,
            v,
            format!("{what} mode {v} joins another namespace"),
            format!("unset {var}"),
        );
    }
    if !allowed.iter().any(|a| a == v) {
        return deny(
            rule,
            v,
            format!(
                "{what} mode {v} is not allowed here (allowed: {})",
                allowed.join(", ")
            ),
            format!("set {var} to one of them"),
        );
    }
    Ok(v.to_string())
}

fn plan_env(
    policy: &Policy,
    req: &Request,
    ctx: &Context,
) -> (Vec<(String, String)>, Vec<Dropped>) {
    let deny = envfilter::compile(&policy.env.deny);
    let preserve = req.preserve_env.unwrap_or(policy.env.preserve);
    let mut vars: Vec<(&str, &str)> = Vec::new();
    if preserve {
        vars.extend(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    // Env files override the preserved environment.
    for (k, v) in ctx.env_file_vars.iter().chain(&ctx.scheduler_env) {
        vars.retain(|(x, _)| x != k);
        vars.push((k, v));
    }
    envfilter::filter(vars, &deny)
}

/// A minimal /etc/passwd: root and the job user.
pub fn passwd_file(id: &Identity) -> String {
    let clean = |s: &str| s.replace([':', '\n'], "_");
    format!(
        "root:x:0:0:root:/root:/bin/sh\n{}:x:{}:{}:{}:{}:/bin/sh\n",
        clean(&id.name),
        id.uid,
        id.gid,
        clean(&id.name),
        clean(&id.home)
    )
}

/// A minimal /etc/group: root (no members) and the user's host groups.
pub fn group_file(id: &Identity) -> String {
    let clean = |s: &str| s.replace([':', '\n', ','], "_");
    let mut s = "root:x:0:\n".to_string();
    s.push_str(&format!(
        "{}:x:{}:{}\n",
        clean(&id.primary_group_name),
        id.gid,
        clean(&id.name)
    ));
    for g in &id.groups {
        s.push_str(&format!(
            "{}:x:{}:{}\n",
            clean(&g.name),
            g.gid,
            clean(&id.name)
        ));
    }
    s
}

/// The job id for names, labels and audit: the one the kernel's cgroup
/// says when the caller is in a job (an id in the environment that
/// disagrees is a forgery), else the environment's. A caller in no job is
/// denied when the site requires one.
fn job_of(policy: &Policy, req: &Request, ctx: &Context) -> Result<crate::core::request::JobId> {
    let Some((job, _, _)) = &ctx.job_cgroup else {
        if policy.cgroup.require_job {
            return deny(
                "cgroup.job",
                &req.job.id,
                "berth runs containers only inside a scheduler job, and this process is in none",
                "submit the work as a job (bsub -a 'docker(IMAGE)' …, or sbatch/srun --container …)",
            );
        }
        return Ok(req.job.clone());
    };
    let forged = |what: &str, v: &str| {
        deny(
            "cgroup.job",
            v,
            format!(
                "{what}={v} names another job than the one this process is in ({} job {})",
                match job.scheduler {
                    crate::core::cgroup::Scheduler::Slurm => "Slurm",
                    crate::core::cgroup::Scheduler::Lsf => "LSF",
                },
                job.job_id
            ),
            format!("unset {what}, or run berth from the job it names"),
        )
    };
    if req.job.id != "local" && req.job.id != job.job_id {
        return forged("LSB_JOBID", &req.job.id);
    }
    if let Some(v) = &ctx.env_slurm_job_id {
        if *v != job.job_id && job.scheduler == crate::core::cgroup::Scheduler::Slurm {
            return forged("SLURM_JOB_ID", v);
        }
    }
    let index = match job.index {
        Some(i) if req.job.index != 0 && req.job.index != i => {
            return forged("LSB_JOBINDEX", &req.job.index.to_string())
        }
        Some(i) => i,
        None => req.job.index,
    };
    Ok(crate::core::request::JobId {
        id: job.job_id.clone(),
        index,
    })
}

/// Each `VOLUME` the image declares gets a per-job directory (under the
/// job's directory in tmp.base, removed with it) unless a mount of the job
/// is at that very path: docker would otherwise create an anonymous volume
/// on the node's own disk, outside berth's control and cleanup. A declared
/// volume inside another mount, or under /proc, /sys or /dev, is refused.
fn plan_image_volumes(
    facts: Option<&ImageFacts>,
    job_dir: &Path,
    tmp: TmpKind,
    mounts: &mut Vec<MountPlan>,
) -> Result<()> {
    let Some(f) = facts else { return Ok(()) };
    let mut n = 0;
    for v in &f.volumes {
        let refuse = |why: String| {
            deny(
                "images.volumes",
                v,
                why,
                format!("mount a directory of yours at {v} (LSF_DOCKER_VOLUMES=SRC:{v}), or use an image without this VOLUME"),
            )
        };
        let Some(dst) = normalize_abs(Path::new(v)).filter(|d| unsafe_char(d).is_none()) else {
            return refuse(format!(
                "the image declares VOLUME {v:?}, which is not a plain absolute path"
            ));
        };
        if mounts.iter().any(|m| m.dst == dst)
            || (tmp == TmpKind::Tmpfs && dst == Path::new("/tmp"))
        {
            continue;
        }
        if ["/proc", "/sys", "/dev"].iter().any(|r| dst.starts_with(r)) || dst == Path::new("/") {
            return refuse(format!("the image declares VOLUME {v} on a system path"));
        }
        let inside = mounts
            .iter()
            .find(|m| dst.starts_with(&m.dst))
            .map(|m| m.dst.clone())
            .or_else(|| (tmp == TmpKind::Tmpfs && dst.starts_with("/tmp")).then(|| "/tmp".into()));
        if let Some(outer) = inside {
            return refuse(format!(
                "the image declares VOLUME {v} inside the job's mount at {}, where docker would make a mount point as root",
                outer.display()
            ));
        }
        mounts.push(MountPlan {
            kind: MountKind::ImageVolume,
            src: job_dir.join("volumes").join(n.to_string()),
            dst,
            mode: Mode::Rw,
            staged: None,
        });
        n += 1;
    }
    Ok(())
}

/// A cpuset list as the kernel writes it (`0-3,8`).
fn valid_cpu_list(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4096
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
}

/// A hostname docker accepts (RFC 1123 labels); anything else falls back
/// to docker's default rather than failing the job.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub mod spec;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unreachable_tests;
