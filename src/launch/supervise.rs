//! The one launcher: every path (root `berth run`, the broker for users and
//! Slurm, LSF's starters) runs a job through [`run`]. It creates the
//! container through the Engine API, attaches the job's streams, registers
//! the wait, starts, then follows one event loop until the container is
//! gone: signals to forward (with one kill escalation), the caller going
//! away (abandon), the engine's exit status. One cleanup, whatever ends it.

use super::streams::{self, Sink};
use crate::core::error::{Error, Result};
use crate::core::plan::LaunchPlan;
use crate::engine::Engine;
use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What the launcher hears while a job runs.
#[derive(Debug)]
pub enum Event {
    /// A job-control signal for the container (from berth's own signal
    /// handling, or a broker client's frame).
    Signal(Signal),
    /// The caller is gone (a broker client that disconnected): kill and
    /// remove the container.
    Abandon,
    /// The engine reported the container's end (internal to [`run`]).
    Exited(Result<i32>),
}

/// The job's stdin, stdout and stderr (`None`: /dev/null-like).
#[derive(Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// How a launch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The container ran and exited with this status.
    Exited(i32),
    /// The caller went away; the container was killed and removed.
    Abandoned,
}

/// Most events handled per wake-up. Everything queued is drained and a
/// repeated signal forwarded once, as the kernel coalesces a pending
/// standard signal: a client flooding signal frames costs one engine call
/// per wake-up, never one call (or thread) per frame.
const MAX_BATCH: usize = 1 << 16;

/// How long the output may trail the exit status (the engine closes the
/// attach stream as the container's pipes close, normally before the wait
/// returns).
const OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// Run the job planned in `plan` (prepared and pinned by the caller) with
/// `stdio`. `events` carries signals and abandonment; `tx` is its sender,
/// used for the engine's own events. `started` is called once the
/// container runs.
pub fn run(
    plan: &LaunchPlan,
    engine: &Engine,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let body = plan.spec.create_body(&plan.env);
    // The cgroup directories the engine will make inside the job: berth
    // removes them after the container (the scheduler cannot remove its
    // own while they exist).
    let made = plan
        .placement
        .as_ref()
        .map(|p| crate::sys::cgroup::missing_dirs(p.job.version, &p.parent))
        .unwrap_or_default();
    let id = match engine.create(&plan.name, &body) {
        Ok(id) => id,
        Err(e) => {
            crate::sys::cgroup::remove_dirs(&made);
            return Err(placement_error(e));
        }
    };
    // From here the container exists: every way out removes it.
    let result = run_created(plan, engine, &id, stdio, tx, events, started);
    match &result {
        Ok(Outcome::Exited(_)) => {}
        _ => destroy(engine, &id),
    }
    crate::sys::cgroup::remove_dirs(&made);
    result
}

/// An engine that cannot place containers in a job cgroup (its systemd
/// cgroup driver takes only `*.slice` parents) is the node's setup, not
/// the job's: say how to fix it.
fn placement_error(e: Error) -> Error {
    match &e {
        Error::Internal(m) if m.contains("systemd cgroup") || m.contains(".slice") => {
            Error::Config(format!(
                "dockerd uses the systemd cgroup driver, which cannot place a container inside the job's cgroup ({m}); set \"exec-opts\": [\"native.cgroupdriver=cgroupfs\"] in /etc/docker/daemon.json and restart dockerd, or set [cgroup] placement = \"none\""
            ))
        }
        _ => e,
    }
}

fn run_created(
    plan: &LaunchPlan,
    engine: &Engine,
    id: &str,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let attach = engine.attach(id)?;
    let wait = engine.wait(id)?;
    // A termination that arrived while the container was being created:
    // never start it.
    let mut early = Vec::new();
    while let Ok(ev) = events.try_recv() {
        match ev {
            Event::Abandon => return Ok(Outcome::Abandoned),
            Event::Signal(s) if is_termination(s) => {
                log::info!("{s} before the container started: not starting it");
                // Never started, so never auto-removed: remove it here.
                destroy(engine, id);
                return Ok(Outcome::Exited(128 + s as i32));
            }
            other => early.push(other),
        }
    }

    let mut out_stream = attach
        .stream
        .try_clone()
        .map_err(|e| Error::internal("cloning the attach stream", e))?;
    let mut in_stream = attach
        .stream
        .try_clone()
        .map_err(|e| Error::internal("cloning the attach stream", e))?;
    let (stop_r, stop_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::internal("pipe", e))?;
    let (out_done_tx, out_done) = std::sync::mpsc::channel::<u64>();
    let Stdio {
        stdin,
        stdout,
        stderr,
    } = stdio;
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot start a thread for the job's streams ({e}); the node is out of threads: requeue the job"
                ))
            })
    };
    let early_bytes = attach.early;
    spawn(
        "job-output",
        Box::new(move || {
            let mut o = Sink::new(stdout);
            let mut e = Sink::new(stderr);
            let n = streams::demux(&mut out_stream, early_bytes, &mut o, &mut e);
            let _ = out_done_tx.send(n);
        }),
    )?;
    spawn(
        "job-input",
        Box::new(move || streams::feed(stdin, &mut in_stream, stop_r)),
    )?;
    let waiter_tx = tx.clone();
    spawn(
        "job-wait",
        Box::new(move || {
            let _ = waiter_tx.send(Event::Exited(wait.result()));
        }),
    )?;
    drop(tx);

    engine.start(id)?;
    started();

    let mut killer = Killer::new(plan.stop_timeout);
    for ev in early {
        if let Event::Signal(s) = ev {
            killer.forward(engine, id, s);
        }
    }
    let status = loop {
        let timeout = killer
            .kill_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let first = match events.recv_timeout(timeout) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                killer.escalate(engine, id);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Err(Error::Internal("lost the job's wait".into()))
            }
        };
        // Everything already queued is handled together: a repeated signal
        // is forwarded once.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match events.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let mut sent: Vec<Signal> = Vec::new();
        let mut end = None;
        for ev in batch {
            match ev {
                Event::Exited(r) => end = Some(r),
                Event::Abandon => {
                    let _ = nix::unistd::write(&stop_w, b"x");
                    let _ = attach.stream.shutdown(std::net::Shutdown::Both);
                    return Ok(Outcome::Abandoned);
                }
                Event::Signal(s) if !sent.contains(&s) => {
                    sent.push(s);
                    killer.forward(engine, id, s);
                }
                Event::Signal(_) => {}
            }
        }
        if let Some(r) = end {
            break r;
        }
    };
    // The container is gone (or the engine is): its output ends now.
    if out_done.recv_timeout(OUTPUT_GRACE).is_err() {
        log::warn!("the output of {} did not end with it; cut", plan.name);
    }
    let _ = nix::unistd::write(&stop_w, b"x");
    let _ = attach.stream.shutdown(std::net::Shutdown::Both);
    status.map(Outcome::Exited)
}

fn is_termination(s: Signal) -> bool {
    matches!(s, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)
}

/// Signal forwarding with the one escalation: a termination signal is
/// followed by SIGKILL after `stop_timeout` seconds if the container is
/// still there. A paused (LSF-suspended) container is thawed after a
/// termination signal, so it can act on it.
struct Killer {
    stop_timeout: u32,
    kill_at: Option<Instant>,
}

impl Killer {
    fn new(stop_timeout: u32) -> Killer {
        Killer {
            stop_timeout,
            kill_at: None,
        }
    }

    fn forward(&mut self, engine: &Engine, id: &str, sig: Signal) {
        log::info!("forwarding {sig} to container {id}");
        let _ = engine.kill(id, sig.as_str());
        if is_termination(sig) {
            let _ = engine.unpause(id);
            if self.kill_at.is_none() {
                self.kill_at = Some(Instant::now() + Duration::from_secs(self.stop_timeout.into()));
            }
        }
    }

    fn escalate(&mut self, engine: &Engine, id: &str) {
        if self.kill_at.is_some_and(|at| Instant::now() >= at) {
            let _ = engine.unpause(id);
            let _ = engine.kill(id, "KILL");
            self.kill_at = None;
        }
    }
}

/// Kill and remove a container (it may be paused, running or created).
pub fn destroy(engine: &Engine, id: &str) {
    let _ = engine.unpause(id);
    let _ = engine.kill(id, "KILL");
    if let Err(e) = engine.remove(id) {
        log::warn!("cannot remove container {id}: {e}");
    }
}
