//! The site policy: a root-owned TOML file (SPEC §10). Every section and key
//! may be omitted and then takes the safe default documented in
//! `policy/default.toml`; unknown keys are an error.

use crate::core::error::{Error, Result};
use crate::core::paths::{is_under, normalize_abs};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/berth/policy.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub identity: IdentityPolicy,
    pub images: ImagePolicy,
    pub volumes: Vec<VolumeRoot>,
    pub mounts: MountPolicy,
    pub workdir: WorkdirPolicy,
    pub tmp: TmpPolicy,
    pub docker: DockerPolicy,
    pub env: EnvPolicy,
    pub bundles: BundlePolicy,
    pub broker: BrokerPolicy,
    pub audit: AuditPolicy,
    pub cgroup: CgroupPolicy,
    pub gpus: GpuPolicy,
    pub mpi: MpiPolicy,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityPolicy {
    pub min_uid: u32,
    pub min_gid: u32,
    /// Callers allowed to name the job user (LSFUSER); root always may.
    pub relays: Vec<String>,
    /// Bind a generated /etc/passwd and /etc/group holding the job user.
    pub passwd: bool,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        IdentityPolicy {
            min_uid: 1000,
            min_gid: 100,
            relays: Vec::new(),
            passwd: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    Never,
    Missing,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntrypointRule {
    ShellOrNone,
    Any,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagePolicy {
    /// Globs on the normalized reference (`docker.io/library/alpine:latest`).
    pub allow: Vec<String>,
    pub pull: Pull,
    pub require_shell: bool,
    pub entrypoint: EntrypointRule,
    /// Where facts learnt about an image (has /bin/sh) are cached, by image id.
    pub facts_cache: PathBuf,
    /// Whether `LSF_DOCKER_RUN_RAW_ARGS=1` may run the image's own entrypoint.
    pub raw_args: bool,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            allow: Vec::new(),
            pull: Pull::Never,
            require_shell: true,
            entrypoint: EntrypointRule::ShellOrNone,
            facts_cache: PathBuf::from("/var/cache/berth/images"),
            raw_args: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ro,
    Rw,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ro => "ro",
            Mode::Rw => "rw",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRoot {
    pub root: PathBuf,
    #[serde(default = "default_mode")]
    pub mode: Mode,
}

fn default_mode() -> Mode {
    Mode::Ro
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountPolicy {
    /// Container destinations a job may not mount over: the path itself and
    /// everything below it (`/` only itself).
    pub reserved: Vec<PathBuf>,
    /// Pin each volume at launch: open it with the user's credentials and
    /// hand docker a bind mount of that directory, so a path swapped after
    /// the check cannot change what is mounted.
    pub pin: bool,
    /// Where pinned mounts live while jobs run: a root-only directory on
    /// a filesystem nothing cleans recursively (never under tmp.base,
    /// whose per-job directories are removed recursively).
    pub pin_dir: PathBuf,
}

pub const DEFAULT_RESERVED: &[&str] = &[
    "/", "/proc", "/sys", "/dev", "/etc", "/tmp", "/run", "/var/run", "/bin", "/sbin", "/lib",
    "/lib32", "/lib64", "/libx32", "/usr", "/boot",
];

impl Default for MountPolicy {
    fn default() -> Self {
        MountPolicy {
            reserved: DEFAULT_RESERVED.iter().map(PathBuf::from).collect(),
            pin: true,
            pin_dir: PathBuf::from("/run/berth/mnt"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkdirPolicy {
    /// Bind the job's submission directory (it must be under an allowed root).
    pub mount_cwd: bool,
}

impl Default for WorkdirPolicy {
    fn default() -> Self {
        WorkdirPolicy { mount_cwd: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TmpKind {
    Host,
    Tmpfs,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TmpPolicy {
    pub kind: TmpKind,
    pub base: PathBuf,
    pub size: String,
}

impl Default for TmpPolicy {
    fn default() -> Self {
        TmpPolicy {
            kind: TmpKind::Host,
            base: PathBuf::from("/var/tmp/berth"),
            size: "10g".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerPolicy {
    pub path: PathBuf,
    /// The engine's API socket, asked directly for image facts.
    pub socket: PathBuf,
    pub networks: Vec<String>,
    pub default_network: String,
    pub ipc: Vec<String>,
    pub default_ipc: String,
    /// Largest `LSF_DOCKER_SHM_SIZE` a job may ask for.
    pub max_shm_size: String,
    pub pids_limit: u32,
    pub cap_add: Vec<String>,
    /// Whether jobs may publish ports, and which host ports (`8000-8999`).
    pub ports: Vec<String>,
    pub add_host: bool,
    /// Seconds between SIGTERM and SIGKILL when a job is terminated.
    pub stop_timeout: u32,
    /// The container's hostname: `node` (the execution node's, as sites'
    /// wrappers set it) or `engine` (docker's default, the container id).
    pub hostname: HostnameRule,
    /// What `berth doctor` reports when the engine's runc is older than
    /// 1.1.12 (CVE-2024-21626): `warn`, or `fail` (exit 78).
    pub old_runc: OldRunc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostnameRule {
    Node,
    Engine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OldRunc {
    Warn,
    Fail,
}

impl Default for DockerPolicy {
    fn default() -> Self {
        DockerPolicy {
            path: PathBuf::from("/usr/bin/docker"),
            socket: PathBuf::from("/var/run/docker.sock"),
            networks: vec!["none".into(), "bridge".into()],
            default_network: "none".into(),
            ipc: vec!["private".into(), "none".into()],
            default_ipc: "private".into(),
            max_shm_size: "1g".into(),
            pids_limit: 4096,
            cap_add: Vec::new(),
            ports: Vec::new(),
            add_host: true,
            stop_timeout: 10,
            hostname: HostnameRule::Node,
            old_runc: OldRunc::Warn,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvPolicy {
    /// Globs on variable names never passed into a container.
    pub deny: Vec<String>,
    /// Whether the job's environment is passed by default.
    pub preserve: bool,
}

pub const DEFAULT_ENV_DENY: &[&str] = &[
    "LD_*",
    "DOCKER_*",
    "NVIDIA_*",
    "HOSTNAME",
    "BASH_FUNC_*",
    "LSB_INTERACTIVE",
    "PATH",
    "TMPDIR",
];

impl Default for EnvPolicy {
    fn default() -> Self {
        EnvPolicy {
            deny: DEFAULT_ENV_DENY.iter().map(|s| s.to_string()).collect(),
            preserve: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundlePolicy {
    pub cache: Option<PathBuf>,
    pub owner: String,
    /// Users may run only bundles, never a registry or node image.
    pub only: bool,
    pub lock_dir: PathBuf,
    /// Users may publish their own bundles through the broker (SPEC §15),
    /// and run them; false also stops users' bundles from running.
    pub user_push: bool,
    /// All of one user's bundles together (`50g`).
    pub user_quota: String,
    /// Which `--share` kinds users may give their bundles.
    pub user_share: Vec<ShareKind>,
}

/// Whom a user's bundle is shared with, besides its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareKind {
    /// The members of one group the owner is in.
    Group,
    /// Every user of the cluster.
    All,
}

impl Default for BundlePolicy {
    fn default() -> Self {
        BundlePolicy {
            cache: None,
            owner: "root".into(),
            only: false,
            lock_dir: PathBuf::from("/run/berth/locks"),
            user_push: false,
            user_quota: "50g".into(),
            user_share: vec![ShareKind::Group],
        }
    }
}

/// Where containers live (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementRule {
    /// Inside the caller's job cgroup, with its CPUs and memory limit.
    Job,
    /// Where docker puts them (dockerd's cgroup): no allocation applies.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupPolicy {
    pub placement: PlacementRule,
    /// Deny a caller that is not inside a recognised scheduler job.
    pub require_job: bool,
}

impl Default for CgroupPolicy {
    fn default() -> Self {
        CgroupPolicy {
            placement: PlacementRule::Job,
            require_job: true,
        }
    }
}

/// How a job's GPUs reach its container (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// No GPU is ever given; a job that holds GPUs is denied (`gpus.mode`).
    None,
    /// The allocated device nodes and the control devices, passed as
    /// devices (the image or a volume brings the driver's libraries).
    Devices,
    /// The NVIDIA container toolkit (`--gpus device=<uuid>`).
    Nvidia,
    /// CDI device names (`<cdi_kind>=<uuid>`, docker 25 and later).
    Cdi,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuPolicy {
    pub mode: GpuMode,
    /// Which device nodes are GPUs (glob patterns under /dev). The job's
    /// allocation is read for these, and only these are ever given.
    pub devices: Vec<String>,
    /// Given with any GPU, when present on the node (glob patterns).
    pub control_devices: Vec<String>,
    /// The CDI kind GPUs are named with in `cdi` mode.
    pub cdi_kind: String,
    /// Slurm's scontrol, asked for the job's GRES indices when the job's
    /// device cgroup cannot tell (cgroup v2, or a node without
    /// ConstrainDevices).
    pub scontrol: PathBuf,
}

impl Default for GpuPolicy {
    fn default() -> Self {
        GpuPolicy {
            mode: GpuMode::None,
            devices: vec!["/dev/nvidia[0-9]*".into()],
            control_devices: vec![
                "/dev/nvidiactl".into(),
                "/dev/nvidia-uvm".into(),
                "/dev/nvidia-uvm-tools".into(),
            ],
            cdi_kind: "nvidia.com/gpu".into(),
            scontrol: PathBuf::from("/usr/bin/scontrol"),
        }
    }
}

/// How the task containers of one MPI step on one node share memory
/// (SPEC §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MpiIpc {
    /// One IPC and PID namespace (and /dev/shm, sized from the job's
    /// memory) per step, user and node, shared by that step's tasks only.
    Step,
    /// The node's own IPC namespace, /dev/shm and PID namespace.
    Host,
    /// Each task alone, as any job: ranks on a node cannot share memory.
    Private,
}

/// How the ranks of a step share their node's step container (`mpi.ipc =
/// "step"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MpiRanks {
    /// Each rank a process of the step's container on its node (an exec,
    /// in its Slurm task's cgroups and CPUs); a rank that asks for other
    /// container settings (its own GPUs) gets a container of its own.
    Exec,
    /// Each rank a container of its own, joined to the step container's
    /// IPC and PID namespaces.
    Container,
}

/// The memlock limit of MPI tasks (RDMA registers memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Memlock {
    /// The engine's default.
    Default,
    Unlimited,
}

/// MPI steps in containers (SPEC §14).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MpiPolicy {
    /// Pass a Slurm task its `PMIX_*` variables and its step's PMIx
    /// directories; without it they are dropped and MPI programs run as
    /// singletons.
    pub pmix: bool,
    pub ipc: MpiIpc,
    pub ranks: MpiRanks,
    /// Device nodes MPI tasks get (glob patterns under /dev, e.g.
    /// `/dev/infiniband/*`); only those present on the node are given.
    pub fabric_devices: Vec<String>,
    pub memlock: Memlock,
    /// Where slurmstepd tells a container step's tasks the PMIx server's
    /// directory is (oci.conf `MountSpoolDir`, Slurm's default
    /// `/var/run/slurm`): the step's spool directory is bound there.
    pub mount_spool_dir: PathBuf,
}

impl Default for MpiPolicy {
    fn default() -> Self {
        MpiPolicy {
            pmix: false,
            ipc: MpiIpc::Step,
            ranks: MpiRanks::Exec,
            fabric_devices: Vec::new(),
            memlock: Memlock::Default,
            mount_spool_dir: PathBuf::from("/var/run/slurm"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerPolicy {
    pub socket: PathBuf,
}

impl Default for BrokerPolicy {
    fn default() -> Self {
        BrokerPolicy {
            socket: PathBuf::from("/run/berth/berth.sock"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditPolicy {
    /// `syslog`, `none`, or an absolute file path (JSON lines).
    pub log: String,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        AuditPolicy {
            log: "syslog".into(),
        }
    }
}

impl Policy {
    /// Parse policy text; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Policy> {
        let p: Policy = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{origin}: {}", one_line(&e.to_string()))))?;
        let errors: Vec<String> = p
            .lint()
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.message)
            .collect();
        if !errors.is_empty() {
            return Err(Error::Config(format!("{origin}: {}", errors.join("; "))));
        }
        Ok(p)
    }

    /// The volume roots with their trailing slashes removed.
    pub fn roots(&self) -> impl Iterator<Item = &VolumeRoot> {
        self.volumes.iter()
    }

    /// Findings about settings that parse but are wrong or unsafe.
    pub fn lint(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut err = |m: String| out.push(Finding::error(m));
        for (i, v) in self.volumes.iter().enumerate() {
            match normalize_abs(&v.root) {
                None => err(format!(
                    "volumes[{i}].root {:?} must be an absolute path without '.', '..' or '//'",
                    v.root
                )),
                Some(r) if r == Path::new("/") => {
                    err("volumes root \"/\" would allow the whole node; name GPFS roots such as /storage1/fs1".into())
                }
                Some(_) => {}
            }
            for (j, w) in self.volumes.iter().enumerate().skip(i + 1) {
                if is_under(&v.root, &w.root) || is_under(&w.root, &v.root) {
                    err(format!(
                        "volumes[{i}].root {} and volumes[{j}].root {} overlap; keep one",
                        v.root.display(),
                        w.root.display()
                    ));
                }
            }
            for r in ["/proc", "/sys", "/dev", "/etc", "/run", "/var/run", "/boot"] {
                if is_under(&v.root, Path::new(r)) || is_under(Path::new(r), &v.root) {
                    err(format!(
                        "volumes[{i}].root {} overlaps the node's {r}; allow only shared filesystems",
                        v.root.display()
                    ));
                }
            }
        }
        if self.identity.min_uid == 0 || self.identity.min_gid == 0 {
            err(
                "identity.min_uid and min_gid must be at least 1 (root is never a job identity)"
                    .into(),
            );
        }
        for c in &self.docker.cap_add {
            let c = c.to_ascii_uppercase();
            let c = c.strip_prefix("CAP_").unwrap_or(&c);
            if matches!(
                c,
                "SYS_ADMIN"
                    | "ALL"
                    | "SYS_MODULE"
                    | "SYS_PTRACE"
                    | "DAC_READ_SEARCH"
                    | "SYS_RAWIO"
                    | "NET_ADMIN"
                    | "SETUID"
                    | "SETGID"
                    | "MKNOD"
                    | "SYS_CHROOT"
                    | "DAC_OVERRIDE"
                    | "CHOWN"
                    | "FOWNER"
                    | "BPF"
                    | "PERFMON"
                    | "SYS_BOOT"
                    | "SYS_TIME"
                    | "LINUX_IMMUTABLE"
                    | "MAC_ADMIN"
                    | "MAC_OVERRIDE"
            ) {
                err(format!(
                    "docker.cap_add {c} gives a job root-equivalent power; remove it"
                ));
            }
        }
        for n in &self.docker.networks {
            if n == "host" {
                out.push(Finding::warning(
                    "docker.networks allows \"host\": jobs share the node's network namespace"
                        .into(),
                ));
            } else if n.starts_with("container:") {
                out.push(Finding::error(format!(
                    "docker.networks {n:?}: container: namespaces are never allowed"
                )));
            }
        }
        if !self.docker.networks.contains(&self.docker.default_network) {
            out.push(Finding::error(format!(
                "docker.default_network {:?} is not in docker.networks",
                self.docker.default_network
            )));
        }
        for n in &self.docker.ipc {
            if n == "host" || n.starts_with("container:") {
                out.push(Finding::error(format!(
                    "docker.ipc {n:?} shares another namespace; allow only private, none or shareable"
                )));
            }
        }
        if !self.docker.ipc.contains(&self.docker.default_ipc) {
            out.push(Finding::error(format!(
                "docker.default_ipc {:?} is not in docker.ipc",
                self.docker.default_ipc
            )));
        }
        if self.docker.pids_limit == 0 {
            out.push(Finding::error(
                "docker.pids_limit must be positive (0 means unlimited: a fork bomb takes the node)".into(),
            ));
        }
        if !self.docker.path.is_absolute() || !self.docker.socket.is_absolute() {
            out.push(Finding::error(
                "docker.path and docker.socket must be absolute paths".into(),
            ));
        }
        if crate::core::size::parse(&self.tmp.size).is_none() {
            out.push(Finding::error(format!(
                "tmp.size {:?} is not a size like 10g",
                self.tmp.size
            )));
        }
        if crate::core::size::parse(&self.bundles.user_quota).is_none() {
            out.push(Finding::error(format!(
                "bundles.user_quota {:?} is not a size (e.g. 50g)",
                self.bundles.user_quota
            )));
        }
        if self.bundles.user_push && self.bundles.cache.is_none() {
            out.push(Finding::error(
                "bundles.user_push = true needs bundles.cache: users' bundles live in <cache>/users/"
                    .into(),
            ));
        }
        if crate::core::size::parse(&self.docker.max_shm_size).is_none() {
            out.push(Finding::error(format!(
                "docker.max_shm_size {:?} is not a size like 1g",
                self.docker.max_shm_size
            )));
        }
        match normalize_abs(&self.mounts.pin_dir) {
            None => out.push(Finding::error(format!("mounts.pin_dir {:?} must be an absolute path", self.mounts.pin_dir))),
            Some(p) if is_under(&p, &self.tmp.base) || is_under(&self.tmp.base, &p) || p == Path::new("/") => out.push(Finding::error(format!(
                "mounts.pin_dir {} must not overlap tmp.base {}: per-job directories are removed recursively, and must never reach a pinned volume",
                p.display(),
                self.tmp.base.display()
            ))),
            Some(_) => {}
        }
        if normalize_abs(&self.tmp.base).is_none() || self.tmp.base == Path::new("/") {
            out.push(Finding::error(format!(
                "tmp.base {:?} must be an absolute directory such as /var/tmp/berth",
                self.tmp.base
            )));
        }
        for p in &self.docker.ports {
            if crate::core::request::parse_port_range(p).is_none() {
                out.push(Finding::error(format!(
                    "docker.ports {p:?} is not a host port range like 8000-8999"
                )));
            }
        }
        for r in &self.mounts.reserved {
            if normalize_abs(r).is_none() {
                out.push(Finding::error(format!(
                    "mounts.reserved {:?} must be an absolute path",
                    r
                )));
            }
        }
        for pat in self.images.allow.iter().chain(self.env.deny.iter()) {
            if glob::Pattern::new(pat).is_err() {
                out.push(Finding::error(format!("{pat:?} is not a valid glob")));
            }
        }
        if self.images.allow.iter().any(|a| a == "*" || a == "**") {
            out.push(Finding::warning(
                "images.allow \"*\" allows every image; list registries or projects instead".into(),
            ));
        }
        if self.volumes.is_empty() {
            out.push(Finding::warning(
                "no [[volumes]] roots: jobs can mount nothing and must set LSF_DOCKER_WORKDIR"
                    .into(),
            ));
        }
        if self.images.allow.is_empty() && self.bundles.cache.is_none() {
            out.push(Finding::warning(
                "images.allow is empty and no bundle cache is set: every job will be refused"
                    .into(),
            ));
        }
        if self.images.entrypoint == EntrypointRule::Any {
            out.push(Finding::warning(
                "images.entrypoint = \"any\": job commands may not run under /bin/sh -c".into(),
            ));
        }
        if self.audit.log != "syslog"
            && self.audit.log != "none"
            && !Path::new(&self.audit.log).is_absolute()
        {
            out.push(Finding::error(format!(
                "audit.log {:?} must be syslog, none, or an absolute file path",
                self.audit.log
            )));
        }
        for (key, pats) in [
            ("gpus.devices", &self.gpus.devices),
            ("gpus.control_devices", &self.gpus.control_devices),
        ] {
            for pat in pats {
                let under_dev = normalize_abs(Path::new(pat))
                    .is_some_and(|p| p.starts_with("/dev") && p != Path::new("/dev"));
                if !under_dev || glob::Pattern::new(pat).is_err() || pat.contains("**") {
                    out.push(Finding::error(format!(
                        "{key} {pat:?} must be a glob of device nodes under /dev, such as /dev/nvidia[0-9]*"
                    )));
                }
            }
        }
        if !valid_cdi_kind(&self.gpus.cdi_kind) {
            out.push(Finding::error(format!(
                "gpus.cdi_kind {:?} must be a CDI kind such as nvidia.com/gpu",
                self.gpus.cdi_kind
            )));
        }
        if normalize_abs(&self.gpus.scontrol).is_none() {
            out.push(Finding::error(format!(
                "gpus.scontrol {:?} must be an absolute path",
                self.gpus.scontrol
            )));
        }
        for pat in &self.mpi.fabric_devices {
            let under_dev = normalize_abs(Path::new(pat))
                .is_some_and(|p| p.starts_with("/dev") && p != Path::new("/dev"));
            if !under_dev || glob::Pattern::new(pat).is_err() || pat.contains("**") {
                out.push(Finding::error(format!(
                    "mpi.fabric_devices {pat:?} must be a glob of device nodes under /dev, such as /dev/infiniband/*"
                )));
            }
        }
        match normalize_abs(&self.mpi.mount_spool_dir) {
            Some(p)
                if !["/", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/tmp"]
                    .iter()
                    .any(|r| is_under(&p, Path::new(r)) && (*r != "/" || p == Path::new("/"))) => {}
            _ => out.push(Finding::error(format!(
                "mpi.mount_spool_dir {:?} must be an absolute path off the image's system directories, as oci.conf MountSpoolDir (default /var/run/slurm)",
                self.mpi.mount_spool_dir
            ))),
        }
        if self.mpi.pmix && !self.docker.networks.iter().any(|n| n == "host") {
            out.push(Finding::warning(
                "mpi.pmix = true but docker.networks does not allow \"host\": an MPI task reaches its node's PMIx server over the node's loopback, so multi-task steps will be refused".into(),
            ));
        }
        if self.mpi.ipc == MpiIpc::Host {
            out.push(Finding::warning(
                "mpi.ipc = \"host\": MPI tasks share the node's IPC namespace, /dev/shm and PIDs with every job on it; \"step\" shares them within a step only".into(),
            ));
        }
        if self.audit.log == "none" {
            out.push(Finding::warning(
                "audit.log = \"none\": launches are not recorded".into(),
            ));
        }
        out
    }
}

/// A CDI kind: `vendor/class`, the vendor a domain name (CDI spec).
pub fn valid_cdi_kind(k: &str) -> bool {
    let Some((vendor, class)) = k.split_once('/') else {
        return false;
    };
    let label = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
    };
    label(vendor, b"-.") && label(class, b"-_")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn error(message: String) -> Self {
        Finding {
            severity: Severity::Error,
            message,
        }
    }
    fn warning(message: String) -> Self {
        Finding {
            severity: Severity::Warning,
            message,
        }
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_policy_is_the_safe_default() {
        let p = Policy::parse("", "t").unwrap();
        assert_eq!(p.identity.min_uid, 1000);
        assert_eq!(p.images.pull, Pull::Never);
        assert!(p.volumes.is_empty());
        assert_eq!(p.docker.default_network, "none");
        assert!(p.docker.cap_add.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_with_location() {
        let e = Policy::parse("[identity]\nmin_uidd = 5\n", "x.toml").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("x.toml") && m.contains("min_uidd") && m.contains("line 2"),
            "{m}"
        );
        assert_eq!(e.exit_code(), 78);
    }

    #[test]
    fn relative_and_overlapping_roots_are_refused() {
        let e = Policy::parse("[[volumes]]\nroot='storage'\n", "t").unwrap_err();
        assert!(e.to_string().contains("absolute"));
        let e = Policy::parse(
            "[[volumes]]\nroot='/storage1'\n[[volumes]]\nroot='/storage1/fs1'\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlap"));
        // A prefix look-alike is not an overlap.
        Policy::parse(
            "[[volumes]]\nroot='/storage1'\n[[volumes]]\nroot='/storage1x'\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn unsafe_settings_are_refused() {
        for bad in [
            "[docker]\ncap_add=['SYS_ADMIN']",
            "[docker]\npids_limit=0",
            "[docker]\nipc=['host']\ndefault_ipc='host'",
            "[identity]\nmin_uid=0",
            "[[volumes]]\nroot='/'",
            "[[volumes]]\nroot='/etc/x'",
            "[docker]\ndefault_network='host'",
        ] {
            assert!(Policy::parse(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn site_example_parses() {
        let text = include_str!("../../policy/example-site.toml");
        let p = Policy::parse(text, "example-site.toml").unwrap();
        assert_eq!(p.volumes.len(), 2);
        let text = include_str!("../../policy/default.toml");
        Policy::parse(text, "default.toml").unwrap();
    }
}
