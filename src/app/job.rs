//! The top-level flow of each command, read as a checklist:
//! harden → policy → identity → request → image facts → plan → audit →
//! launch → audit.

use crate::audit::{Audit, Record};
use crate::cli::{Cli, Command, LsfCommand, PolicyCommand, RunArgs, Scheduler, SlurmCommand};
use crate::core::error::{Error, Result};
use crate::core::facts::ImageFacts;
use crate::core::identity::{self, Identity};
use crate::core::plan::{self, Context, LaunchPlan};
use crate::core::policy::{self, Policy, Severity};
use crate::core::request::{self, ImageSpec, Request};
use crate::engine::Engine;
use crate::sys::nss::Nss;
use crate::sys::trusted;
use crate::sys::userfs::{read_env_files, RealFs};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub fn main(cli: Cli) -> i32 {
    // Every command, first: root runs more than `berth run` (slurmstepd
    // runs `slurm query|kill|delete`, an admin `policy check`).
    let hardened = crate::sys::harden(matches!(cli.command, Command::Daemon));
    crate::app::logger::init(log::LevelFilter::Warn);
    let esub = matches!(cli.command, Command::Lsf(LsfCommand::Esub(_)));
    let result = hardened.and_then(|()| match cli.command {
        Command::Run(a) => run(&cli.policy, &a),
        Command::Explain(a) => explain(&cli.policy, &a.run, a.json),
        Command::Doctor { json } => crate::app::doctor::main(&cli.policy, json),
        Command::Daemon => crate::app::daemon::serve(&cli.policy),
        Command::Slurm(c) => match c {
            SlurmCommand::Run {
                spool,
                rootfs,
                id,
                env_file,
                args,
            } => crate::sched::slurm::run(
                &cli.policy,
                &spool,
                &rootfs,
                &id,
                env_file.as_deref(),
                &args,
            ),
            SlurmCommand::Query { id } => crate::sched::slurm::query(&cli.policy, &id),
            SlurmCommand::Kill { id, signal } => {
                crate::sched::slurm::kill(&cli.policy, &id, &signal)
            }
            SlurmCommand::Delete { id } => crate::sched::slurm::delete(&cli.policy, &id),
        },
        Command::Policy(PolicyCommand::Check { file, json }) => {
            policy_check(&file.unwrap_or(cli.policy), json)
        }
        Command::Lsf(c) => crate::sched::lsf::main(&cli.policy, &c),
        Command::Bundle(c) => crate::bundle::main(&cli.policy, &c),
    });
    match result {
        Ok(code) => code,
        // The esub reports its own errors, a failed harden too: LSF wants
        // LSB_SUB_ABORT_VALUE.
        Err(e) if esub => crate::sched::lsf::esub::reject(&e),
        Err(e) => {
            eprintln!("berth: {e}");
            e.exit_code()
        }
    }
}

/// Everything decided about a job, and what the audit record knows so far.
pub struct Decision {
    pub plan: Result<LaunchPlan>,
    pub record: Record,
}

/// Inputs of a decision that come from the caller's process.
pub struct Caller {
    pub uid: u32,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub command: Vec<String>,
    pub scheduler: Scheduler,
    pub tmp_files: Vec<crate::broker::proto::TmpFile>,
    pub slurm_id: Option<String>,
    /// The spool directory a Slurm container task names (unverified).
    pub slurm_task_dir: Option<PathBuf>,
    /// The decision is for a launch (not `explain`): volume access is then
    /// checked when the launcher pins each volume.
    pub launching: bool,
    /// The process whose cgroup says which job this is: the broker's
    /// peer, or this process.
    pub peer: crate::sys::cgroup::Peer,
}

impl Caller {
    pub fn from_process(args: &RunArgs) -> Result<Caller> {
        Ok(Caller {
            uid: crate::sys::real_uid(),
            env: crate::sys::environment()?,
            cwd: std::env::current_dir().ok(),
            command: args.command.clone(),
            scheduler: args.scheduler,
            tmp_files: Vec::new(),
            slurm_id: None,
            slurm_task_dir: None,
            launching: false,
            peer: crate::sys::cgroup::this_process(crate::sys::real_uid()),
        })
    }
}

/// Decide a job: resolve identity and request, learn image facts, plan.
/// `engine` is `None` when explaining without a reachable engine.
pub fn decide(policy: &Policy, caller: &Caller, engine: Option<&Engine>) -> Decision {
    let mut record = Record::new("launch", "allow");
    let plan = decide_inner(policy, caller, engine, &mut record);
    if let Err(e) = &plan {
        record.event = "denial";
        record.refused(e);
    }
    Decision { plan, record }
}

fn decide_inner(
    policy: &Policy,
    caller: &Caller,
    engine: Option<&Engine>,
    record: &mut Record,
) -> Result<LaunchPlan> {
    let named = match caller.scheduler {
        Scheduler::Lsf => caller.env.get("LSFUSER").map(String::as_str),
        Scheduler::Env => None,
    };
    let id = identity::resolve(&Nss, policy, caller.uid, named)?;
    record.user = Some(id.name.clone());
    record.uid = Some(id.uid);

    // LSF's job-file style: the starter's argument is the job file, which
    // is read as the user and copied into the job's /tmp.
    let mut command = caller.command.clone();
    let mut tmp_files = caller.tmp_files.clone();
    let mut scheduler_env = Vec::new();
    if caller.scheduler == Scheduler::Lsf {
        if let Some(jf) = crate::sched::lsf::jobfile::job_file(policy, &id, &caller.env, &command)?
        {
            command = jf.command;
            tmp_files.extend(jf.tmp_file);
            scheduler_env = jf.env;
        }
    }
    let mut req = request::from_env(&caller.env, caller.cwd.clone(), command)?;
    // `bundle:~/NAME` is the job user's own bundle.
    if let ImageSpec::Bundle(key) = &req.image {
        req.image = ImageSpec::Bundle(crate::core::share::resolve_home(key, &id.name));
    }
    record.job = Some(req.job.id.clone());
    record.index = Some(req.job.index);
    record.image = Some(match &req.image {
        ImageSpec::Registry(r) => r.to_string(),
        ImageSpec::Bundle(b) => format!("bundle:{b}"),
    });

    let nonce = crate::sys::random_hex(4)?;
    let hostname = crate::sys::hostname();
    let lsf_task = match caller.scheduler {
        Scheduler::Lsf => crate::sched::lsf::task::task_id(&caller.env)?,
        Scheduler::Env => None,
    };
    // A blaunch task's plan is that of its job's container on this host,
    // which every task of the job here shares: one name per (host, user).
    let name_nonce = match lsf_task {
        Some(_) => crate::sched::lsf::task::host_nonce(&hostname, id.uid),
        None => nonce.clone(),
    };
    let node_gpus = crate::sys::devices::on_node(&policy.gpus);
    let has_gpus = !node_gpus.0.is_empty();
    let job_cgroup = locate_job(policy, caller, &id, has_gpus)?;
    let gpus = has_gpus
        .then(|| {
            let job = job_cgroup.as_ref().map(|f| &f.0);
            let node = job
                .and_then(|j| j.slurm_node())
                .unwrap_or_else(|| hostname.split('.').next().unwrap_or(&hostname))
                .to_string();
            crate::sys::devices::allocation(&policy.gpus, node_gpus, job, &node)
        })
        .flatten();
    let mpi_step = mpi_step(policy, caller, &id, job_cgroup.as_ref(), &hostname)?;
    // What LSF says of the allocation counts only inside an LSF job the
    // kernel places the caller in: anyone can set LSB_MCPU_HOSTS.
    let lsf_parallel = caller.scheduler == Scheduler::Lsf
        && job_cgroup
            .as_ref()
            .is_some_and(|f| f.0.scheduler == crate::core::cgroup::Scheduler::Lsf)
        && crate::sched::lsf::task::spans_hosts(&caller.env);
    let fabric = if mpi_step.is_some() || lsf_parallel {
        crate::sys::devices::nodes(&policy.mpi.fabric_devices)
            .into_iter()
            .map(|d| d.path)
            .collect()
    } else {
        Vec::new()
    };
    let ctx = Context {
        env_file_vars: read_env_files(&id, &req)?,
        nonce: name_nonce,
        tmp_files,
        scheduler_env,
        slurm_id: caller.slurm_id.clone(),
        hostname: Some(hostname),
        job_cgroup,
        env_slurm_job_id: caller.env.get("SLURM_JOB_ID").cloned(),
        gpus,
        mpi_step,
        fabric,
        lsf_task,
        lsf_parallel,
    };
    // An image policy refuses is never asked about (nor pulled).
    plan::check_image(policy, &req)?;
    // A known-vulnerable engine: warn, or refuse (docker.old_runc); no API call per job.
    crate::engine::check::check_if(policy, engine)?;
    let facts = match engine {
        Some(e) => Some(image_facts(e, policy, &req, &nonce, &id.name)?),
        None => None,
    };
    if let Some(f) = &facts {
        record.image_id = Some(f.id.clone());
    }
    let fs = RealFs::as_user(&id, caller.launching && policy.mounts.pin);
    let p = plan::plan(policy, &id, &req, facts.as_ref(), &fs, &ctx);
    fs.failure()?;
    let p = p?;
    record.container = Some(p.name.clone());
    record.job = Some(p.job.id.clone());
    record.cgroup = p.placement.as_ref().map(|pl| pl.parent.clone());
    record.gpus = p
        .gpus
        .given
        .iter()
        .map(|g| g.path.display().to_string())
        .collect();
    record.mounts = p
        .mounts
        .iter()
        .map(|m| {
            format!(
                "{}:{}:{}",
                m.src.display(),
                m.dst.display(),
                m.mode.as_str()
            )
        })
        .collect();
    Ok(p)
}

/// The step of a Slurm container task that carries PMIx variables, checked
/// on the node, when the site passes PMIx (SPEC §14); `None` otherwise.
fn mpi_step(
    policy: &Policy,
    caller: &Caller,
    id: &Identity,
    job: Option<&crate::core::cgroup::Found>,
    hostname: &str,
) -> Result<Option<crate::core::mpi::Step>> {
    let wanted = policy.mpi.pmix && caller.env.keys().any(|k| crate::core::mpi::is_pmix_var(k));
    let (true, Some(dir), Some((job, _, _))) = (wanted, &caller.slurm_task_dir, job) else {
        return Ok(None);
    };
    let node = job
        .slurm_node()
        .unwrap_or_else(|| hostname.split('.').next().unwrap_or(hostname));
    crate::sys::mpi::verify_step(dir, job, id.uid, node).map(Some)
}

/// The job the caller is in, from the kernel (SPEC §11); not looked up
/// when the policy neither places containers nor requires a job, and the
/// node has no GPU whose allocation it would tell (`gpus`).
fn locate_job(
    policy: &Policy,
    caller: &Caller,
    id: &Identity,
    gpus: bool,
) -> Result<Option<crate::core::cgroup::Found>> {
    use crate::core::policy::PlacementRule;
    if policy.cgroup.placement == PlacementRule::None && !policy.cgroup.require_job && !gpus {
        return Ok(None);
    }
    crate::sys::cgroup::locate(&caller.peer, id.uid)
}

fn image_facts(
    engine: &Engine,
    policy: &Policy,
    req: &Request,
    nonce: &str,
    user: &str,
) -> Result<ImageFacts> {
    match &req.image {
        ImageSpec::Registry(r) => {
            crate::engine::facts::gather(engine, policy, &r.to_string(), nonce)
        }
        // Facts from bundle.toml (the cache is checked); the engine is
        // asked nothing until the launch loads it (crate::bundle::prepare).
        ImageSpec::Bundle(b) => crate::bundle::facts(policy, b, user),
    }
}

/// `LSF_DOCKER_RUN_LOGLEVEL` sets berth's own verbosity (in this process
/// only: the broker keeps its own).
fn apply_log_level(env: &BTreeMap<String, String>) {
    let level = match env
        .get("LSF_DOCKER_RUN_LOGLEVEL")
        .map(|v| v.to_ascii_uppercase())
    {
        Some(v) if v == "DEBUG" => log::LevelFilter::Debug,
        Some(v) if v == "INFO" => log::LevelFilter::Info,
        Some(v) if v == "CRITICAL" || v == "ERROR" => log::LevelFilter::Error,
        _ => return,
    };
    log::set_max_level(level);
}

/// The broker request of an unprivileged `berth run` (or `explain`).
fn hello_for(args: &RunArgs, explain: Option<&str>) -> Result<crate::broker::proto::Hello> {
    let caller = Caller::from_process(args)?;
    apply_log_level(&caller.env);
    Ok(crate::broker::proto::Hello {
        version: crate::broker::proto::VERSION,
        scheduler: match args.scheduler {
            Scheduler::Lsf => "lsf".into(),
            Scheduler::Env => "env".into(),
        },
        env: caller.env,
        cwd: caller.cwd.map(|c| c.display().to_string()),
        command: caller.command,
        tmp_files: Vec::new(),
        slurm_id: None,
        explain: explain.map(str::to_string),
        bundle: None,
        slurm_task_dir: None,
    })
}

fn run(policy_path: &Path, args: &RunArgs) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    if !crate::sys::is_root() {
        // Unprivileged callers (the job user, a relay) go through the broker.
        let hello = hello_for(args, None)?;
        return crate::broker::client::launch(&policy.broker.socket, &hello);
    }
    let mut audit = Audit::open(&policy.audit.log)?;
    let mut caller = Caller::from_process(args)?;
    caller.launching = true;
    apply_log_level(&caller.env);
    let engine = Engine::new(&policy.docker.socket);
    let Decision { plan, mut record } = decide(&policy, &caller, Some(&engine));
    let written = audit.record_checked(&record);
    let plan = plan?;
    written.map_err(|e| unaudited(&policy, e))?;
    crate::bundle::prepare(&engine, &policy, &plan, &record, &mut |r| audit.record(r))?;
    let code = crate::launch::run(&plan);
    record.finish(code.as_ref().map(|c| Some(*c)));
    audit.record(&record);
    code
}

/// A launch is never left unrecorded (a caller's file-size limit or a full
/// disk must not be a way around the audit log).
pub fn unaudited(policy: &Policy, e: std::io::Error) -> Error {
    Error::Config(format!(
        "the audit record cannot be written to {} ({e}); berth does not launch unaudited jobs: fix audit.log or the caller's limits",
        policy.audit.log
    ))
}

fn explain(policy_path: &Path, args: &RunArgs, json: bool) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    // A user cannot ask the engine (its socket is root's): the broker
    // decides for them, with the image's real facts, and starts nothing.
    // Without a broker, the local verdict says what it could not check.
    if !crate::sys::is_root() && UnixStream::connect(&policy.broker.socket).is_ok() {
        let hello = hello_for(args, Some(if json { "json" } else { "text" }))?;
        return crate::broker::client::launch(&policy.broker.socket, &hello);
    }
    let caller = Caller::from_process(args)?;
    let engine = Engine::new(&policy.docker.socket);
    let reachable = engine.version().is_ok();
    let Decision { plan, .. } = decide(&policy, &caller, reachable.then_some(&engine));
    let (text, code) = explanation(plan, json, reachable)?;
    print!("{text}");
    Ok(code)
}

/// What `berth explain` prints for a decision, and its exit code; a
/// denial in text form is the error itself (one `berth: denied:` line).
pub fn explanation(plan: Result<LaunchPlan>, json: bool, reachable: bool) -> Result<(String, i32)> {
    let plan = match plan {
        Ok(p) => p,
        Err(Error::Denied(d)) if json => {
            let mut v = serde_json::to_value(&d).unwrap_or_default();
            v["decision"] = "deny".into();
            let text = serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
            return Ok((text, crate::core::error::exit::DENIED));
        }
        Err(e) => return Err(e),
    };
    if json {
        let mut v = serde_json::to_value(&plan).map_err(|e| Error::internal("plan to JSON", e))?;
        v["decision"] = "allow".into();
        v["image_facts_checked"] = reachable.into();
        // What the launcher will send (variables by name only).
        v["create_body"] = plan.spec.shown_body();
        Ok((
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            0,
        ))
    } else {
        Ok((describe(&plan, reachable), 0))
    }
}

/// The plan in words, for `berth explain`.
pub fn describe(p: &LaunchPlan, facts_checked: bool) -> String {
    let mut s = String::new();
    let groups: Vec<String> = p.user.groups.iter().map(u32::to_string).collect();
    s += &format!(
        "job        {}[{}] as {} (uid {}, gid {}, groups {})\n",
        p.job.id,
        p.job.index,
        p.user.name,
        p.user.uid,
        p.user.gid,
        if groups.is_empty() {
            "none".into()
        } else {
            groups.join(" ")
        }
    );
    s += &format!(
        "image      {}{}\n",
        p.image.requested,
        match (&p.image.id, facts_checked) {
            (Some(id), _) => format!(" -> {id}"),
            (None, _) =>
                " (engine not reachable: image id, ENTRYPOINT and /bin/sh not checked)".into(),
        }
    );
    s += &format!("container  {}\n", p.name);
    s += &format!("workdir    {}\n", p.workdir.display());
    match &p.placement {
        Some(pl) => {
            s += &format!(
                "cgroup     {} (cpus {}, memory {})\n",
                pl.parent,
                pl.cpus.as_deref().unwrap_or("all"),
                pl.memory
                    .map(crate::core::size::human)
                    .unwrap_or_else(|| "unlimited".into())
            )
        }
        None => s += "cgroup     none: the container is not placed in a job's allocation\n",
    }
    s += &format!("gpus       {}\n", p.gpus.describe());
    if let Some(m) = &p.mpi {
        s += &format!(
            "mpi        rank {} of a {}-task step: network {}, {}{}{}\n",
            m.rank,
            m.tasks,
            p.spec.network,
            match &m.sharing {
                crate::core::mpi::Sharing::Step { holder } if p.task.is_some() => {
                    format!("IPC, PIDs and /dev/shm of the step's container {holder}")
                }
                crate::core::mpi::Sharing::Step { holder } => {
                    format!("IPC, PIDs and /dev/shm of the step's holder {holder}")
                }
                crate::core::mpi::Sharing::Host => "the node's IPC and /dev/shm".into(),
                crate::core::mpi::Sharing::Private => "its own IPC and /dev/shm".into(),
            },
            if m.devices.is_empty() {
                String::new()
            } else {
                let d: Vec<String> = m.devices.iter().map(|d| d.display().to_string()).collect();
                format!(", fabric {}", d.join(" "))
            },
            if m.memlock_unlimited {
                ", memlock unlimited"
            } else {
                ""
            }
        );
    }
    if let Some(t) = &p.task {
        let argv = t
            .argv
            .iter()
            .map(|a| plan::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        s += &match t.kind {
            plan::TaskKind::Blaunch => format!(
                "lsf task   {} on {}: runs in the job's container on this host (the job's own, else {}, made by the host's first task and removed after its last), as: {argv}\n",
                t.id, t.host, t.host_spec.name,
            ),
            plan::TaskKind::Rank => format!(
                "mpi task   {} on {}: a process of the step's container {} (made by the step's first rank here, removed after its last; pids limit {} for the node's ranks together), moved into its task's cpuset, cpu, cpuacct and memory cgroups (cgroup v1; on v2 only bound) and bound to CPUs {} before it starts, as: {argv}; the container below is what it gets only if it asks for other settings than {} was made with\n",
                t.id,
                t.host,
                t.host_spec.name,
                t.host_spec.pids_limit,
                p.placement
                    .as_ref()
                    .and_then(|pl| pl.cpus.as_deref())
                    .unwrap_or("the step's"),
                t.host_spec.name,
            ),
        };
    }
    for m in &p.mounts {
        s += &format!(
            "mount      {} -> {} ({}, {:?})\n",
            m.src.display(),
            m.dst.display(),
            m.mode.as_str(),
            m.kind
        );
    }
    match &p.tmp.dir {
        Some(d) => {
            s += &format!(
                "tmp        {} (0700, owned by {}), removed after the job\n",
                d.display(),
                p.user.name
            )
        }
        None => s += &format!("tmp        tmpfs of {}\n", p.tmp.size),
    }
    s += &format!("env        {} passed", p.env_names.len());
    if !p.env_dropped.is_empty() {
        let d: Vec<String> = p
            .env_dropped
            .iter()
            .map(|d| format!("{} ({})", d.name, d.reason))
            .collect();
        s += &format!(", dropped: {}", d.join(", "));
    }
    s += "\n";
    let argv: Vec<String> = p.argv.iter().map(|a| plan::shell_quote(a)).collect();
    s += &format!("command    {}\n", argv.join(" "));
    s
}

fn policy_check(path: &Path, json: bool) -> Result<i32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let origin = path.display().to_string();
    let parsed: std::result::Result<Policy, _> = toml::from_str(&text);
    let mut findings: Vec<policy::Finding> = Vec::new();
    match &parsed {
        Err(e) => findings.push(policy::Finding {
            severity: Severity::Error,
            message: e.to_string().replace('\n', " | "),
        }),
        Ok(p) => findings.extend(p.lint()),
    }
    // Placement needs dockerd's cgroupfs driver; said here when this node's
    // engine answers (the file may be checked away from any node).
    if let Ok(p) = &parsed {
        if p.cgroup.placement == crate::core::policy::PlacementRule::Job {
            if let Some(d) = Engine::new(&p.docker.socket).cgroup_driver() {
                if d != "cgroupfs" {
                    findings.push(policy::Finding {
                        severity: Severity::Error,
                        message: crate::app::doctor::cgroup_driver_message(&d),
                    });
                }
            }
        }
    }
    if let Err(e) = trusted::check_trusted_path(path, 0) {
        findings.push(policy::Finding {
            severity: Severity::Error,
            message: e.to_string(),
        });
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if json {
        println!(
            "{}",
            serde_json::json!({"file": origin, "ok": errors == 0, "findings": findings})
        );
    } else {
        for f in &findings {
            let sev = if f.severity == Severity::Error {
                "error"
            } else {
                "warning"
            };
            println!("{origin}: {sev}: {}", f.message);
        }
        if errors == 0 {
            println!("{origin}: ok ({} warnings)", findings.len());
        }
    }
    Ok(if errors == 0 {
        0
    } else {
        crate::core::error::exit::CONFIG
    })
}
