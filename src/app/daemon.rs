//! `berth daemon`: accept jobs on the broker socket, one thread each.
//!
//! Per connection: identity from SO_PEERCRED → the same `decide()` as
//! `berth run` → prepare → docker with the client's descriptors → wait for
//! docker or the client, whichever ends first. A client that disconnects
//! (killed, even with SIGKILL) gets its container killed and removed and its
//! per-job directory cleaned. SIGHUP reloads the policy; SIGTERM stops the
//! daemon after abandoning running jobs.

use crate::app::job::{decide, Caller, Decision};
use crate::audit::Audit;
use crate::broker::proto::{self, ClientMsg, DaemonMsg};
use crate::cli::Scheduler;
use crate::core::error::{Error, Result};
use crate::core::plan::{LaunchPlan, TaskKind};
use crate::core::policy::Policy;
use crate::engine::Engine;
use crate::launch::{self, supervise, supervise::Event, supervise::Outcome, supervise::Stdio};
use crate::sys::trusted::check_trusted_path;
use nix::sys::signal::{SigSet, Signal};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Age past which a per-job directory or pin with no container is stale.
const STALE_AFTER: Duration = Duration::from_secs(300);

/// Most jobs one daemon runs at once; more are refused (69, requeue).
const MAX_CONNECTIONS: usize = 1024;

/// Most connections one uid may hold that have not yet sent their request:
/// idle or slow connections of one user never fill the broker for all
/// (far below MAX_CONNECTIONS; far above a burst of one user's job starts,
/// whose requests arrive at once).
const MAX_PENDING_PER_UID: usize = 128;

/// Most connections of all users together still waiting for their request:
/// half the job limit, so that colluding users holding idle connections
/// can never fill the broker (the other half is for requests already sent
/// and jobs running), and each waits at most [`HELLO_DEADLINE`].
const MAX_PENDING_TOTAL: usize = MAX_CONNECTIONS / 2;

/// How long a connection may take to send its whole request.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);

struct State {
    policy_path: PathBuf,
    policy: RwLock<Arc<Policy>>,
    audit: Mutex<Audit>,
    /// Running jobs: container name → plan, for shutdown.
    active: Mutex<HashMap<String, LaunchPlan>>,
    connections: AtomicUsize,
    /// Set (under the `active` lock) when SIGTERM abandons the jobs: a job
    /// ending after it was killed by the stop, not by itself.
    stopping: AtomicBool,
    /// Connections per peer uid still waiting for their request.
    pending: Mutex<HashMap<u32, usize>>,
    /// MPI steps' holders on this node, counted by their running ranks,
    /// and LSF jobs' containers on this host, counted by their tasks.
    holders: launch::holder::Holders,
    /// LSF tasks running as execs, for shutdown (a task in a job's own
    /// container is not ended by removing a holder).
    tasks: launch::tasks::Running,
}

/// A connection counted against its uid until its request is read.
struct Pending {
    state: Arc<State>,
    uid: u32,
}

impl Pending {
    fn admit(state: &Arc<State>, uid: u32) -> Option<Pending> {
        let mut m = state.pending.lock().unwrap_or_else(|e| e.into_inner());
        if m.values().sum::<usize>() >= MAX_PENDING_TOTAL {
            return None;
        }
        let n = m.entry(uid).or_insert(0);
        if *n >= MAX_PENDING_PER_UID {
            return None;
        }
        *n += 1;
        Some(Pending {
            state: state.clone(),
            uid,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut m = self.state.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

/// The label of containers run for a broker client; its value is the
/// broker's socket (one broker per socket, so one per node).
pub const BROKER_LABEL: &str = "berth.broker";

/// Containers labelled as this broker's: at its start-up, every one is an
/// orphan of a broker that died. With each, the name of the plan whose
/// files it used when that is another's (`berth.dirs`).
fn orphans(engine: &Engine, socket: &Path) -> Vec<(String, Option<String>)> {
    match engine.list_containers(&[format!("{BROKER_LABEL}={}", socket.display())]) {
        Ok(list) => list
            .iter()
            .filter_map(|c| {
                let name = c["Names"][0].as_str()?.trim_start_matches('/');
                let dirs = c["Labels"][launch::holder::DIRS_LABEL]
                    .as_str()
                    .map(str::to_string);
                Some((name.to_string(), dirs))
            })
            .filter(|(n, _)| n.starts_with("berth-"))
            .collect(),
        Err(e) => {
            log::warn!("cannot list containers left by a previous broker: {e}");
            Vec::new()
        }
    }
}

pub fn serve(policy_path: &Path) -> Result<i32> {
    crate::sys::harden(true)?;
    launch::require_root()?;
    let policy = Policy::load(policy_path)?;
    let socket = policy.broker.socket.clone();
    let audit = Audit::open(&policy.audit.log)?;
    // Never sweep under a live broker: its jobs are not leftovers.
    if UnixStream::connect(&socket).is_ok() {
        return Err(Error::Config(format!(
            "another broker is listening on {}",
            socket.display()
        )));
    }
    // Jobs a previous broker (or a rebooted node) left behind: cleaned
    // before the socket accepts anyone. Containers of a broker that died
    // have no client any more: killed and removed, with their files.
    let engine = Engine::new(&policy.docker.socket);
    for (name, dirs) in orphans(&engine, &socket) {
        log::warn!("removing container {name}: its broker died and its client is gone");
        launch::abandon_by_name(&policy, &engine, &name);
        if let Some(d) = dirs {
            launch::remove_files_of(&policy, &d);
        }
    }
    for p in launch::sweep(&policy, &engine, STALE_AFTER) {
        log::warn!(
            "removed {}, left by a job whose container is gone",
            p.display()
        );
    }
    let listener = bind(&socket)?;
    let state = Arc::new(State {
        policy_path: policy_path.to_path_buf(),
        policy: RwLock::new(Arc::new(policy)),
        audit: Mutex::new(audit),
        active: Mutex::new(HashMap::new()),
        connections: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        pending: Mutex::new(HashMap::new()),
        holders: Default::default(),
        tasks: Default::default(),
    });

    let mut set = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    let _ = set.thread_block();
    let st = state.clone();
    let sock = socket.clone();
    std::thread::spawn(move || control_loop(st, set, sock));

    log::warn!("broker listening on {}", socket.display());
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let st = state.clone();
        let uid =
            match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            {
                Ok(c) => c.uid(),
                Err(e) => {
                    log::warn!("no peer credentials: {e}");
                    continue;
                }
            };
        let Some(pending) = Pending::admit(&st, uid) else {
            log::warn!(
                "uid {uid}: too many connections without a request (at most {MAX_PENDING_PER_UID} per user, {MAX_PENDING_TOTAL} in all); refused"
            );
            let mut s = stream;
            let _ = proto::write_frame(
                &mut s,
                &DaemonMsg::Error {
                    code: crate::core::error::exit::UNAVAILABLE,
                    message: format!(
                        "unavailable: too many connections to the broker have not sent their request (uid {uid} may hold {MAX_PENDING_PER_UID}, all users {MAX_PENDING_TOTAL}); close idle ones, or requeue the job"
                    ),
                },
            );
            continue;
        };
        if st.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            st.connections.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = proto::write_frame(
                &mut s,
                &DaemonMsg::Error {
                    code: crate::core::error::exit::UNAVAILABLE,
                    message: "unavailable: the broker is at its job limit; requeue the job".into(),
                },
            );
            continue;
        }
        // A system out of threads refuses this job (the client sees its
        // connection close: 69), never ends the daemon (spawn would panic).
        let counted = st.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("job".into())
            .spawn(move || {
                handle(&st, stream, pending);
                st.connections.fetch_sub(1, Ordering::SeqCst);
            })
        {
            counted.connections.fetch_sub(1, Ordering::SeqCst);
            log::error!("cannot start a thread for a connection: {e}; refused");
        }
    }
    Ok(0)
}

/// Create the socket: its directory root-owned and not writable by
/// others (all the way up), the socket itself reachable by every user.
fn bind(socket: &Path) -> Result<UnixListener> {
    let dir = socket
        .parent()
        .ok_or_else(|| Error::Config("broker.socket has no directory".into()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    check_trusted_path(dir, 0)?;
    // Every user must be able to reach the socket: a root-owned directory
    // left 0700 (e.g. made by a pin before the broker first ran) is opened
    // up to 0755; its contents keep their own modes.
    let mode = std::fs::metadata(dir)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o055 != 0o055 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::Config(format!("chmod 0755 {}: {e}", dir.display())))?;
        log::warn!(
            "made {} searchable by all (was {:o}) so users reach the broker socket",
            dir.display(),
            mode & 0o7777
        );
    }
    if let Ok(md) = std::fs::symlink_metadata(socket) {
        if !md.file_type().is_socket() {
            return Err(Error::Config(format!(
                "{} exists and is not a socket; remove it",
                socket.display()
            )));
        }
        // A live daemon answers: never steal its socket.
        if UnixStream::connect(socket).is_ok() {
            return Err(Error::Config(format!(
                "another broker is listening on {}",
                socket.display()
            )));
        }
        std::fs::remove_file(socket)
            .map_err(|e| Error::Config(format!("cannot remove stale {}: {e}", socket.display())))?;
    }
    let l = UnixListener::bind(socket)
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::Config(format!("chmod {}: {e}", socket.display())))?;
    Ok(l)
}

fn control_loop(state: Arc<State>, set: SigSet, socket: PathBuf) {
    loop {
        let Some(sig) = launch::wait_signal(&set, Duration::from_secs(3600)) else {
            continue;
        };
        match sig {
            Signal::SIGHUP => match Policy::load(&state.policy_path) {
                Ok(p) => {
                    match Audit::open(&p.audit.log) {
                        Ok(a) => *state.audit.lock().unwrap_or_else(|e| e.into_inner()) = a,
                        Err(e) => {
                            log::error!("policy reload: {e}; keeping the old audit destination")
                        }
                    }
                    *state.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
                    log::warn!("policy reloaded from {}", state.policy_path.display());
                }
                Err(e) => log::error!("policy reload failed, keeping the old policy: {e}"),
            },
            _ => {
                log::warn!("stopping: abandoning running jobs");
                let _ = std::fs::remove_file(&socket);
                let jobs: Vec<LaunchPlan> = {
                    let active = state.active.lock().unwrap_or_else(|e| e.into_inner());
                    state.stopping.store(true, Ordering::SeqCst);
                    active.values().cloned().collect()
                };
                for plan in &jobs {
                    launch::abandon(plan, &Engine::new(&plan.socket));
                }
                // (`stopping` is set: a task starting now is refused.)
                let tasks: Vec<(String, String, PathBuf)> = state
                    .tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(exec, (_, container, socket))| {
                        (exec.clone(), container.clone(), socket.clone())
                    })
                    .collect();
                for (exec, container, socket) in &tasks {
                    launch::tasks::kill_until_gone(&Engine::new(socket), exec, container);
                }
                // Every holder, also one whose ranks are between their hold
                // and their place in `active`.
                state.holders.destroy_all();
                std::process::exit(0);
            }
        }
    }
}

fn send(stream: &UnixStream, msg: &DaemonMsg) {
    let mut s = stream;
    let _ = proto::write_frame(&mut s, msg);
}

fn handle(state: &State, stream: UnixStream, pending: Pending) {
    let creds =
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("no peer credentials: {e}");
                return;
            }
        };
    // Before anything else: a process that started after this moment
    // cannot be the one that connected (SPEC §11's same-process check).
    let accepted_ticks = crate::sys::boottime_ticks();
    let _ = stream.set_read_timeout(Some(HELLO_DEADLINE));
    let hello = proto::recv_hello(&stream);
    drop(pending);
    let (hello, fds) = match hello {
        Ok(x) => x,
        Err(e) => {
            log::warn!("uid {}: bad request: {e}", creds.uid());
            send(
                &stream,
                &DaemonMsg::Error {
                    code: crate::core::error::exit::MALFORMED,
                    message: format!("malformed request: {e}"),
                },
            );
            return;
        }
    };
    if hello.version != proto::VERSION {
        send(
            &stream,
            &DaemonMsg::Error {
                code: crate::core::error::exit::MALFORMED,
                message: format!(
                    "malformed request: protocol version {} (this broker speaks {})",
                    hello.version,
                    proto::VERSION
                ),
            },
        );
        return;
    }
    // A user's bundle command (SPEC §15): the peer is the owner.
    if let Some(op) = &hello.bundle {
        let policy = state
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let r = crate::bundle::serve::serve(&policy, creds.uid(), op, fds, &stream, &mut |r| {
            state
                .audit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(r)
        });
        send(
            &stream,
            &match r {
                Ok(a) => DaemonMsg::Explained {
                    code: a.code,
                    text: a.text,
                },
                Err(e) => DaemonMsg::Error {
                    code: e.exit_code(),
                    message: e.to_string(),
                },
            },
        );
        // Ends a push's watcher of the client, too.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    // `berth lsf control|monitor` from a relay or a job's owner: the caller
    // is the peer; crate::sched::lsf checks it may act on the job's container.
    if let Some(what) = hello.scheduler.strip_prefix("lsf-") {
        let policy = state
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let r =
            crate::sched::lsf::serve(&policy, creds.uid(), what, &hello.command, &hello.env, &fds);
        send(
            &stream,
            &match r {
                Ok(code) => DaemonMsg::Exit { code },
                Err(e) => DaemonMsg::Error {
                    code: e.exit_code(),
                    message: e.to_string(),
                },
            },
        );
        return;
    }
    let scheduler = match hello.scheduler.as_str() {
        "lsf" => Scheduler::Lsf,
        // Slurm's runtime runs as the job user: the peer is the owner.
        "env" | "slurm" => Scheduler::Env,
        other => {
            send(
                &stream,
                &DaemonMsg::Error {
                    code: crate::core::error::exit::MALFORMED,
                    message: format!("malformed request: scheduler {other:?}"),
                },
            );
            return;
        }
    };
    let caller = Caller {
        uid: creds.uid(),
        env: hello.env,
        cwd: hello.cwd.map(PathBuf::from),
        command: hello.command,
        scheduler,
        tmp_files: hello.tmp_files,
        slurm_id: hello.slurm_id,
        slurm_task_dir: hello.slurm_task_dir.map(PathBuf::from),
        launching: hello.explain.is_none(),
        peer: crate::sys::cgroup::Peer {
            pid: creds.pid(),
            uid: creds.uid(),
            accepted_ticks,
        },
    };
    let policy = state
        .policy
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let engine = Engine::new(&policy.docker.socket);
    if let Some(how) = &hello.explain {
        // `berth explain` for a user: the same decision, nothing started,
        // nothing audited as a launch.
        let Decision { plan, .. } = decide(&policy, &caller, Some(&engine));
        let msg = match crate::app::job::explanation(plan, how == "json", true) {
            Ok((text, code)) => DaemonMsg::Explained { code, text },
            Err(e) => DaemonMsg::Error {
                code: e.exit_code(),
                message: e.to_string(),
            },
        };
        return send(&stream, &msg);
    }
    let Decision { plan, mut record } = decide(&policy, &caller, Some(&engine));
    record.caller_uid = creds.uid();
    record.detail = Some(format!("broker peer pid {}", creds.pid()));
    let written = state
        .audit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record_checked(&record);
    let plan = match (plan, written) {
        (Ok(_), Err(e)) => Err(crate::app::job::unaudited(&policy, e)),
        (p, _) => p,
    };
    let plan = match plan {
        Ok(mut p) => {
            // Its container lives only as long as this broker: one a
            // crashed broker left is found by this label and removed.
            let label = (
                BROKER_LABEL.to_string(),
                policy.broker.socket.display().to_string(),
            );
            p.spec.labels.insert(label.0.clone(), label.1.clone());
            if let Some(h) = &mut p.holder {
                h.labels.insert(label.0.clone(), label.1.clone());
            }
            if let Some(t) = &mut p.task {
                t.host_spec.labels.insert(label.0, label.1);
            }
            p
        }
        Err(e) => {
            send(
                &stream,
                &DaemonMsg::Error {
                    code: e.exit_code(),
                    message: e.to_string(),
                },
            );
            return;
        }
    };
    // A bundle job: load the bundle's image once on this node (§6).
    if let Err(e) = crate::bundle::prepare(&engine, &policy, &plan, &record, &mut |r| {
        state
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(r)
    }) {
        send(
            &stream,
            &DaemonMsg::Error {
                code: e.exit_code(),
                message: e.to_string(),
            },
        );
        return;
    }
    let code = run_job(state, &stream, &plan, &engine, fds, &mut record);
    record.finish(code.as_ref().copied());
    state
        .audit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(&record);
    match code {
        Ok(Some(code)) => send(&stream, &DaemonMsg::Exit { code }),
        Ok(None) => {}
        Err(e) => send(
            &stream,
            &DaemonMsg::Error {
                code: e.exit_code(),
                message: e.to_string(),
            },
        ),
    }
}

/// Run the job with the client's descriptors. `Ok(None)`: the client left.
fn run_job(
    state: &State,
    stream: &UnixStream,
    plan: &LaunchPlan,
    engine: &Engine,
    fds: Vec<OwnedFd>,
    record: &mut crate::audit::Record,
) -> Result<Option<i32>> {
    // An MPI rank in its step's container (SPEC §14): a process of it,
    // unless it asks for other settings than the container was made with
    // (its own GPUs); then a container of its own, joined to it.
    let mut joined = None;
    match plan.task.as_ref().map(|t| t.kind) {
        Some(TaskKind::Blaunch) => return run_task(state, stream, plan, engine, fds, record, None),
        Some(TaskKind::Rank) => match state.holders.hold_rank(engine, plan)? {
            (hold, true) => return run_task(state, stream, plan, engine, fds, record, Some(hold)),
            (hold, false) => joined = Some(hold),
        },
        None => {}
    }
    launch::prepare(plan).inspect_err(|_| launch::remove_job_dir(&plan.job_dir))?;
    launch::pin(plan).inspect_err(|_| launch::cleanup(plan))?;
    // An MPI rank joins its step's holder, which its hold keeps until the
    // step's last rank here is gone (dropped when this returns, before the
    // client hears the exit code).
    let _hold = match (joined, &plan.holder) {
        (Some(h), _) => Some(h),
        (None, Some(h)) => Some(
            state
                .holders
                .hold(engine, h, plan.placement.as_ref())
                .inspect_err(|_| launch::cleanup(plan))?,
        ),
        (None, None) => None,
    };
    let stdio = stdio_of(fds);
    {
        let mut active = state.active.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopping.load(Ordering::SeqCst) {
            drop(active);
            launch::cleanup(plan);
            return Err(stopped());
        }
        active.insert(plan.name.clone(), plan.clone());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = listen(stream, tx.clone());
    let result = match spawned {
        Err(e) => Err(e),
        Ok(_) => supervise::run(plan, engine, stdio, tx, &rx, &mut || {
            send(
                stream,
                &DaemonMsg::Started {
                    container: plan.name.clone(),
                },
            )
        }),
    };
    // End the reader: nothing more is wanted from the client.
    let _ = stream.shutdown(std::net::Shutdown::Read);
    launch::cleanup(plan);
    state
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&plan.name);
    match result {
        // Killed by the daemon's own stop: not the job's exit code.
        _ if state.stopping.load(Ordering::SeqCst) => Err(stopped()),
        Ok(Outcome::Exited(code)) => Ok(Some(code)),
        Ok(Outcome::Abandoned) => {
            log::warn!(
                "client of {} disconnected: its container was killed and removed",
                plan.name
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// An LSF blaunch task (SPEC §14): a process in its job's container on this
/// host — the job's own, or the one the host's tasks share, which the
/// first makes and the last removes (after the task's end, before the
/// client hears its code, as a rank's holder).
fn run_task(
    state: &State,
    stream: &UnixStream,
    plan: &LaunchPlan,
    engine: &Engine,
    fds: Vec<OwnedFd>,
    record: &mut crate::audit::Record,
    held: Option<launch::holder::Hold<'_>>,
) -> Result<Option<i32>> {
    let host_name = || {
        plan.task
            .as_ref()
            .map(|t| t.host_spec.name.clone())
            .unwrap_or_default()
    };
    let (_hold, container) = match held {
        // A rank in its step's container.
        Some(h) => {
            record.container = Some(host_name());
            (Some(h), host_name())
        }
        None => match launch::tasks::own_container(engine, plan)? {
            Some((id, name)) => {
                // The exit record names the container the task really ran in.
                record.container = Some(name);
                (None, id)
            }
            None => {
                let h = state.holders.hold_host(engine, plan)?;
                (Some(h), host_name())
            }
        },
    };
    let shown = record
        .container
        .clone()
        .unwrap_or_else(|| plan.name.clone());
    let stdio = stdio_of(fds);
    if state.stopping.load(Ordering::SeqCst) {
        return Err(stopped_task());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    listen(stream, tx.clone())?;
    let result = launch::tasks::run_exec(
        plan,
        engine,
        &container,
        stdio,
        tx,
        &rx,
        &state.tasks,
        &state.stopping,
        &mut || {
            send(
                stream,
                &DaemonMsg::Started {
                    container: shown.clone(),
                },
            )
        },
    );
    let _ = stream.shutdown(std::net::Shutdown::Read);
    match result {
        _ if state.stopping.load(Ordering::SeqCst) => Err(stopped_task()),
        Ok(Outcome::Exited(code)) => Ok(Some(code)),
        Ok(Outcome::Abandoned) => {
            log::warn!(
                "client of task {} of {} disconnected: the task was killed",
                plan.task.as_ref().map_or(0, |t| t.id),
                plan.name
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The client's descriptors, as the job's stdin, stdout and stderr.
fn stdio_of(fds: Vec<OwnedFd>) -> Stdio {
    let mut fds = fds.into_iter();
    Stdio {
        stdin: fds.next(),
        stdout: fds.next(),
        stderr: fds.next(),
    }
}

/// The client's frames become events: signals to forward, and its end
/// (killed, disconnected) abandons the job. A client that sends half a
/// frame blocks only this reader thread, never the job.
fn listen(stream: &UnixStream, tx: std::sync::mpsc::Sender<Event>) -> Result<()> {
    let _ = stream.set_read_timeout(None);
    let mut reader = stream
        .try_clone()
        .map_err(|e| Error::internal("cloning the client socket", e))?;
    std::thread::Builder::new()
        .name("client".into())
        .spawn(move || client_events(&mut reader, &tx))
        .map(|_| ())
        .map_err(|e| {
            Error::Unavailable(format!(
                "the broker cannot start a thread for the job ({e}); requeue the job"
            ))
        })
}

/// Read a client's frames until it goes away.
fn client_events(r: &mut UnixStream, tx: &std::sync::mpsc::Sender<Event>) {
    loop {
        match proto::read_frame::<ClientMsg>(r, proto::MAX_FRAME) {
            Ok(Some(ClientMsg::Signal { signal })) => {
                let Ok(sig) = Signal::from_str(&signal) else {
                    continue;
                };
                if launch::FORWARDED.contains(&sig) && tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
            _ => {
                let _ = tx.send(Event::Abandon);
                return;
            }
        }
    }
}

fn stopped() -> Error {
    Error::Unavailable(
        "the berth broker was stopped while the job ran; its container was removed: requeue the job"
            .into(),
    )
}

fn stopped_task() -> Error {
    Error::Unavailable(
        "the berth broker was stopped while the task (an LSF blaunch task or an MPI rank) ran; the task was killed: requeue the job"
            .into(),
    )
}

/// The environment a client sends: the job's, as strings.
pub fn client_env() -> Result<BTreeMap<String, String>> {
    crate::sys::environment()
}
