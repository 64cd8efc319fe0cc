//! The command line. Kept free of logic so man pages and completions can be
//! generated from it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Run HPC batch jobs in Docker containers, safely, as the job's user",
    long_about = "berth turns a batch job's request (LSF or Slurm) into one docker run command that the site policy allows, runs it as the job's user, and returns the container's exit code.\n\nExit codes: the container's own; 64 malformed request; 69 docker or broker unavailable; 70 internal error; 77 denied by policy; 78 invalid or unsafe policy or installation."
)]
pub struct Cli {
    /// Site policy file (never taken from the environment)
    #[arg(long, global = true, value_name = "FILE", default_value = crate::core::policy::DEFAULT_PATH)]
    pub policy: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Plan and launch a job; exit with the container's exit code
    Run(RunArgs),
    /// Print the plan for a job without running anything (exit 77 if denied)
    Explain(ExplainArgs),
    /// Validate policy files
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check this node: docker engine and runc, policy, directories, broker, scheduler glue
    #[command(
        long_about = "Checks that this node can run berth jobs safely, and changes nothing: berth's own binary (not setuid, no file capabilities, root-owned); the policy file (root-owned, not writable by group or others, valid; its warnings); the docker client (docker.path); the engine on docker.socket (reachable, versions, who else can reach it); runc 1.1.12 or later (CVE-2024-21626: a warning, or a failure with docker.old_runc = \"fail\"); docker-init; tmp.base, images.facts_cache, mounts.pin_dir, bundles.cache and bundles.lock_dir (owned by root, not writable by others); the broker socket; the audit destination; the scheduler glue (/usr/share/berth/wrapper) and, when present, /etc/slurm/oci.conf and $LSF_SERVERDIR/esub.docker.\n\nPrints one ok, warn or fail line per check and a summary. Exit codes: 0 no failure (warnings allowed); 78 at least one failure."
    )]
    Doctor {
        /// Print the checks as JSON
        #[arg(long)]
        json: bool,
    },
    /// LSF integration: the esub, and the EXEC_DRIVER controller and monitor
    #[command(subcommand)]
    Lsf(LsfCommand),
    /// Run the broker: a root daemon through which unprivileged job users start containers
    Daemon,
    /// Slurm OCI runtime entry points (RunTimeRun, RunTimeQuery, RunTimeKill, RunTimeDelete in oci.conf)
    #[command(subcommand)]
    Slurm(SlurmCommand),
    /// Manage the shared bundle cache: images kept as tar files on a shared filesystem
    #[command(
        subcommand,
        long_about = "A bundle is a directory <cache>/<name>/ (policy bundles.cache) holding image.tar (a docker save tar of one image), bundle.toml (its image id, sha256 and size, entrypoint, cmd, workdir, env, whether /bin/sh exists, who created it and when), and an OCI config.json with an empty rootfs/ so the directory is also a bundle for sbatch --container. Jobs use one with LSB_CONTAINER_IMAGE=bundle:NAME: if the node's engine has the image id, nothing is read; otherwise image.tar is loaded once per node (concurrent jobs wait for one load), after checking that its config digest is the recorded image id, and the job runs by image id. The cache and every bundle must be owned by root (or bundles.owner) and not writable by group or others (exit 78 otherwise)."
    )]
    Bundle(BundleCommand),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scheduler {
    /// LSF job environment: LSFUSER names the job owner when the caller is a trusted relay
    Lsf,
    /// Plain environment: the caller is always the job owner
    Env,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Where the job's request comes from
    #[arg(long, value_enum, default_value_t = Scheduler::Lsf)]
    pub scheduler: Scheduler,

    /// The job's command (one argument is run as a /bin/sh -c script)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Print the plan as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a policy file: syntax, unknown keys, roots, unsafe settings, ownership
    Check {
        /// Policy file to check (default: the --policy file)
        file: Option<PathBuf>,
        /// Print findings as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LsfCommand {
    /// esub for `bsub -a 'docker(IMAGE)'`: validate the submission against the policy and set LSB_CONTAINER_IMAGE, or reject it
    #[command(
        long_about = "Run by LSF at submission (as the submitting user, on the submission host) through wrapper/lsf/esub.docker.\n\nReads LSB_SUB_PARM_FILE, takes the image from the esub argument (`bsub -a 'docker(IMAGE)'`, or `docker(bundle:NAME)`), falling back to LSB_SUB_ADDITIONAL and then to LSB_CONTAINER_IMAGE, and validates the image and every LSF_DOCKER_* variable of the submission environment against the policy: syntax, image allow-list, volume roots and characters, reserved destinations, the user's own access to each volume, network, ports, raw args. Needs neither root nor the docker engine.\n\nOn success appends LSB_CONTAINER_IMAGE=\"IMAGE\" to LSB_SUB_MODIFY_ENVFILE (and, with --app, LSB_SUB_APP_NAME to LSB_SUB_MODIFY_FILE) and exits 0. Otherwise prints the reason on stderr, writes nothing, and exits with LSB_SUB_ABORT_VALUE (or berth's own exit code when LSF did not set it)."
    )]
    Esub(EsubArgs),
    /// Suspend, resume or terminate the job's container (EXEC_DRIVER controller, JOB_CONTROLS)
    #[command(
        long_about = "Acts on the container berth started for the job named by LSB_JOBID and LSB_JOBINDEX (found by its berth.job and berth.index labels). suspend = docker pause (the processes stop making progress), resume = docker unpause, terminate = SIGTERM, then SIGKILL after docker.stop_timeout seconds, then removal; the job's berth run then removes the per-job /tmp. Any other signal is passed to the container.\n\nThe caller must be root, a relay listed in identity.relays, or the job's own user.\n\nExit codes: 0 done (terminating a job whose container is already gone is done); 1 the job has no container to suspend or resume; 64 unknown action; 69 docker not reachable; 77 the caller may not act on this job."
    )]
    Control(ControlArgs),
    /// Print the CPU and memory usage of the job's container (EXEC_DRIVER monitor)
    #[command(
        long_about = "Prints one KEY=value line per measure for the container of the job named by LSB_JOBID and LSB_JOBINDEX, in LSF's units: CONTAINER, STATE (running, paused, exited, or none when the job has no container yet), CPU_TIME (seconds of CPU used, user + system), CPU_PERCENT (of one CPU, over the last second), MEM (resident memory, KB), MEM_USED (memory charged to the container minus inactive page cache, KB, as docker stats shows it), MEM_LIMIT (KB), SWAP (KB), NPROCS (processes and threads) and PID (host pid of the container's init). With --json the same as one JSON object.\n\nThe caller must be root, a relay listed in identity.relays, or the job's own user."
    )]
    Monitor(MonitorArgs),
}

#[derive(Args, Debug)]
pub struct EsubArgs {
    /// Application profile to submit -a docker jobs to (writes LSB_SUB_APP_NAME to LSB_SUB_MODIFY_FILE unless the user chose one with -app)
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,

    /// The esub's arguments as LSF passes them: the image of `docker(IMAGE)`
    #[arg(value_name = "IMAGE")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct JobSelector {
    /// Job id (default: LSB_JOBID from the environment)
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,

    /// Array index (default: LSB_JOBINDEX from the environment, else 0)
    #[arg(long, value_name = "N")]
    pub index: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// suspend, resume or terminate; or the signal LSF passes (SIGSTOP, SIGTSTP, SIGCONT, SIGTERM, SIGKILL, SIGINT, a number such as 19 or -19); other signals (SIGUSR1, SIGUSR2, SIGHUP) are sent to the container
    #[arg(value_name = "ACTION", allow_hyphen_values = true)]
    pub action: String,

    #[command(flatten)]
    pub job: JobSelector,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Print the usage as one JSON object
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub job: JobSelector,
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Create (or atomically replace) a bundle from an image, a docker save tar or a docker export tar
    Create(BundleCreateArgs),
    /// Publish your own bundle from a docker save or export tar, through the broker (users; SPEC §15)
    #[command(
        long_about = "Run as an ordinary user on any node: opens TAR with your own credentials (a file you can read; not a pipe or a device) and passes it to the berth broker, which publishes <cache>/users/<you>/<NAME>/ with the same checks as berth bundle create: hostile entries refused, layers hashed against the image config, an export converted into a one-layer image deterministically, published by one atomic rename (a push that fails or is interrupted leaves nothing). Jobs then run it with LSB_CONTAINER_IMAGE=bundle:~/NAME (yours) or bundle:USER/NAME (someone's that is shared with you), or sbatch --container=bundle:~/NAME on Slurm 23.02+.

Needs [bundles] user_push = true; all of your bundles together must fit bundles.user_quota (checked before anything is written); --share kinds must be in bundles.user_share, and a group share names one of your groups. Shows progress on a terminal, and one summary line at the end.

Exit codes: 0 published; 64 bad name, tar or --change; 69 the broker is not reachable, or the push was interrupted; 77 refused by the policy (user_push, user_quota, user_share, share); 78 the cache is unsafe."
    )]
    Push(BundlePushArgs),
    /// List bundles: the site's, and (for a user) your own and those shared with you
    List {
        /// Print every bundle.toml as JSON
        #[arg(long)]
        json: bool,
    },
    /// Re-hash a bundle's image.tar and compare with bundle.toml, and each layer with the image config (exit 78 if corrupt)
    Verify {
        /// Bundle name
        name: String,
    },
    /// Remove a bundle from the cache (running jobs are not affected); users remove their own, root anyone's
    Rm {
        /// Bundle name: NAME (a site bundle, as root; your own, as a user), ~/NAME, or USER/NAME (root)
        name: String,
    },
    /// Remove leftovers of interrupted creates, and this node's images that berth loaded for bundles no longer in the cache
    Gc {
        /// Only remove temporary directories older than this many seconds (a create may still be writing younger ones)
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        min_age: u64,
        /// Clean the cache only; leave this node's engine alone
        #[arg(long)]
        cache_only: bool,
    },
    /// Load a bundle's image into this node's engine now (e.g. from a prolog); nothing is read if it is already there
    Load {
        /// Bundle name
        name: String,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_save", "from_export"])))]
pub struct BundlePushArgs {
    /// Bundle name: 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit
    pub name: String,

    /// A docker save tar (classic manifest.json or OCI layout) holding one image
    #[arg(long, value_name = "TAR")]
    pub from_save: Option<PathBuf>,

    /// A flat root filesystem tar (docker export), made into a one-layer image
    #[arg(long, value_name = "TAR")]
    pub from_export: Option<PathBuf>,

    /// With --from-export: a Dockerfile line applied to the image config (ENTRYPOINT, CMD, ENV, WORKDIR, USER, LABEL); repeatable
    #[arg(long, value_name = "LINE")]
    pub change: Vec<String>,

    /// Let others run it: group:GROUP (members of one of your groups) or all, as the site's bundles.user_share allows
    #[arg(long, value_name = "group:GROUP|all")]
    pub share: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_image", "from_save", "from_export"])))]
pub struct BundleCreateArgs {
    /// Bundle name: 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit
    pub name: String,

    /// Save this image from the node's engine (docker save)
    #[arg(long, value_name = "IMAGE")]
    pub from_image: Option<String>,

    /// A docker save tar (classic manifest.json or OCI layout) holding one image
    #[arg(long, value_name = "TAR")]
    pub from_save: Option<PathBuf>,

    /// A flat root filesystem tar (docker export, or tar -C rootfs -c .), made into a one-layer image
    #[arg(long, value_name = "TAR")]
    pub from_export: Option<PathBuf>,

    /// With --from-export: a Dockerfile line applied to the image config, as docker import --change takes (ENTRYPOINT, CMD, ENV, WORKDIR, USER, LABEL); repeatable
    #[arg(long, value_name = "LINE")]
    pub change: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum SlurmCommand {
    /// RunTimeRun: run the task described by Slurm's config.json, through the broker, as the job user
    #[command(
        long_about = "oci.conf: RunTimeRun=\"exec berth slurm run %b %r %n.%u.%j.%s.%t\" (exec: the task is berth itself). Reads the task's command, environment and batch script from SPOOL/config.json, takes the image from the bundle the user named with --container (ROOTFS is <bundle>/rootfs; the bundle must be in the site's bundle cache), uses SLURM_SUBMIT_DIR as the working directory, and starts the container through the broker. Exits with the container's exit code. Slurm 23.02+ with IgnoreFileConfigJson=true writes no config.json: there, RunTimeRun=\"exec berth slurm run --env-file %e %b %r %n.%u.%j.%s.%t -- %@\" takes the command from ARGS and the environment from FILE, ROOTFS is what the user gave with --container (an absolute bundle path in the cache, bundle:NAME, or an image reference checked by the policy like LSB_CONTAINER_IMAGE), a command slurmstepd resolved in the job's PATH on the node goes back to its bare name, and a batch step's script (ARGS[0], a path on the node) is copied into the job's /tmp (tested on Slurm 24.11)."
    )]
    Run {
        /// Slurm's spool directory for the step (%b), holding its config.json
        spool: std::path::PathBuf,
        /// The bundle's root filesystem path (%r): <cache>/<name>/rootfs; also <cache>/<name> or a bare NAME (what 23.02+ passes under IgnoreFileConfigJson=true)
        rootfs: std::path::PathBuf,
        /// The container id, %n.%u.%j.%s.%t
        id: String,
        /// Slurm 23.02+ with IgnoreFileConfigJson=true: the task's environment file (%e, CreateEnvFile=null or newline); the command is then ARGS (%@) and SPOOL/config.json is not read
        #[arg(long, value_name = "FILE")]
        env_file: Option<std::path::PathBuf>,
        /// With --env-file: the task's command (%@)
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// RunTimeQuery: print the container's OCI state as JSON ({} when it is gone)
    Query {
        /// The container id, %n.%u.%j.%s.%t
        id: String,
    },
    /// RunTimeKill: signal the container
    Kill {
        /// The container id, %n.%u.%j.%s.%t
        id: String,
        /// Signal to send
        #[arg(default_value = "KILL")]
        signal: String,
    },
    /// RunTimeDelete: remove the container
    Delete {
        /// The container id, %n.%u.%j.%s.%t
        id: String,
    },
}
