//! LSF blaunch tasks (SPEC §14): each runs as a process of its job's
//! container on its host, as IBM's Docker driver runs a parallel job (one
//! container per execution host). On the first host that is the job's own
//! container; on another, the container the host's first task makes from
//! its plan (`TaskPlan::host_spec`, counted in the broker's holders so the
//! last task removes it).
//!
//! A task is an exec: the engine runs it with the container's process
//! settings (user namespace of ids, capabilities, no new privileges,
//! limits, cgroup); berth gives its command, environment, user and working
//! directory, carries its streams as for a container, and reads its exit
//! status. Signals go to the task's processes only, found on the host by
//! the exec's pid and checked to be in that container's cgroup.

use super::streams::{self, Sink};
use super::supervise::{Event, Outcome, Stdio};
use crate::core::error::{Denial, Error, Result};
use crate::core::plan::LaunchPlan;
use crate::engine::Engine;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How long output may trail a task's exit (a background process of the
/// task that keeps its stdout open is cut after this).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The job's own container on this host for the task's user, running:
/// `Some((id, name))`. A container of the job that differs from what the
/// task would get (image, user, network, mounts: the `berth.shape` label)
/// is refused, not joined.
pub fn own_container(engine: &Engine, plan: &LaunchPlan) -> Result<Option<(String, String)>> {
    let task = plan
        .task
        .as_ref()
        .ok_or_else(|| Error::Internal("not an LSF task".into()))?;
    let label = |k: &str| plan.spec.labels.get(k).cloned().unwrap_or_default();
    let labels = [
        format!("berth.job={}", plan.job.id),
        format!("berth.index={}", plan.job.index),
        format!("berth.uid={}", plan.user.uid),
        format!("berth.host={}", task.host),
    ];
    let mut found = None;
    for c in engine.list_containers(&labels)? {
        let l = |k: &str| {
            c.get("Labels")
                .and_then(|x| x.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        // The host's own container is joined through the broker's count.
        // A suspended job's container is still the job's: its task waits
        // for nothing else (the engine refuses the exec until it resumes).
        let state = c.get("State").and_then(Value::as_str);
        if l("berth.role").is_some() || !matches!(state, Some("running" | "paused")) {
            continue;
        }
        let (Some(id), Some(name)) = (
            c.get("Id").and_then(Value::as_str),
            c.get("Names")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str),
        ) else {
            continue;
        };
        if l("berth.shape") != Some(label("berth.shape")) {
            return Err(Denial::new(
                "lsf.task",
                name.trim_start_matches('/'),
                format!(
                    "blaunch task {} of job {} would run in the job's container {} on {}, which has another image, user, network or set of volumes than the task asks for",
                    task.id,
                    plan.job.id,
                    name.trim_start_matches('/'),
                    task.host
                ),
                "start tasks with the job's own LSF_DOCKER_* settings and image (blaunch passes the job's environment; do not change those variables for a task)",
            )
            .into());
        }
        found = Some((id.to_string(), name.trim_start_matches('/').to_string()));
    }
    Ok(found)
}

/// Run the task in container `container` (running) with `stdio`; `events`
/// carries signals and the client's end, as for a container.
pub fn run_exec(
    plan: &LaunchPlan,
    engine: &Engine,
    container: &str,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let task = plan
        .task
        .as_ref()
        .ok_or_else(|| Error::Internal("not an LSF task".into()))?;
    let env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let body = json!({
        "AttachStdin": true,
        "AttachStdout": true,
        "AttachStderr": true,
        "Tty": false,
        "Cmd": task.argv,
        "Env": env,
        "User": plan.spec.user,
        "WorkingDir": plan.spec.workdir.display().to_string(),
        "Privileged": false,
    });
    let exec = engine.exec_create(container, &body)?;
    let attach = engine.exec_start(&exec)?;
    let full_id = engine
        .inspect_container(container)?
        .and_then(|v| v.get("Id").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();

    let mut out_stream = attach
        .stream
        .try_clone()
        .map_err(|e| Error::internal("cloning the exec stream", e))?;
    let mut in_stream = attach
        .stream
        .try_clone()
        .map_err(|e| Error::internal("cloning the exec stream", e))?;
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
                    "cannot start a thread for the task's streams ({e}); the node is out of threads: requeue the job"
                ))
            })
    };
    let early = attach.early;
    spawn(
        "task-output",
        Box::new(move || {
            let mut o = Sink::new(stdout);
            let mut e = Sink::new(stderr);
            let n = streams::demux(&mut out_stream, early, &mut o, &mut e);
            let _ = out_done_tx.send(n);
        }),
    )?;
    spawn(
        "task-input",
        Box::new(move || streams::feed(stdin, &mut in_stream, stop_r)),
    )?;
    // The engine has no wait for an exec: its state is polled, briefly at
    // first (most tasks of a short step end within milliseconds), then
    // every quarter second.
    let poll_engine = Engine::new(engine.socket());
    let poll_exec = exec.clone();
    spawn(
        "task-wait",
        Box::new(move || {
            let mut pause = Duration::from_millis(5);
            loop {
                match poll_engine.exec_inspect(&poll_exec) {
                    Ok(Some(s)) if !s.running && s.exit_code.is_some() => {
                        let _ = tx.send(Event::Exited(Ok(s.exit_code.unwrap_or(0))));
                        return;
                    }
                    Ok(Some(_)) => {}
                    // The container went (the job ended, or was killed).
                    Ok(None) => {
                        let _ = tx.send(Event::Exited(Ok(137)));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Exited(Err(e)));
                        return;
                    }
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }),
    )?;
    started();

    let signal = |sig: Signal| {
        if let Ok(Some(s)) = engine.exec_inspect(&exec) {
            if s.running && s.pid > 0 {
                signal_task(s.pid, &full_id, sig);
            }
        }
    };
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        let timeout = kill_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match events.recv_timeout(timeout) {
            Ok(Event::Exited(r)) => break r,
            Ok(Event::Abandon) => {
                signal(Signal::SIGKILL);
                let _ = nix::unistd::write(&stop_w, b"x");
                let _ = attach.stream.shutdown(std::net::Shutdown::Both);
                return Ok(Outcome::Abandoned);
            }
            Ok(Event::Signal(s)) => {
                log::info!("forwarding {s} to task {} of {}", task.id, plan.name);
                signal(s);
                if matches!(s, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)
                    && kill_at.is_none()
                {
                    kill_at = Some(Instant::now() + Duration::from_secs(plan.stop_timeout.into()));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    signal(Signal::SIGKILL);
                    kill_at = None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Err(Error::Internal("lost the task's wait".into()))
            }
        }
    };
    if out_done.recv_timeout(OUTPUT_GRACE).is_err() {
        log::info!(
            "the output of task {} of {} outlived it (a background process); cut",
            task.id,
            plan.name
        );
    }
    let _ = nix::unistd::write(&stop_w, b"x");
    let _ = attach.stream.shutdown(std::net::Shutdown::Both);
    status.map(Outcome::Exited)
}

/// Signal the task's process and its descendants, each only while it is
/// in the container's cgroup (a pid the task left behind may name another
/// process by now).
fn signal_task(pid: i32, container_id: &str, sig: Signal) {
    if container_id.len() < 12 {
        return;
    }
    let in_container = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| c.contains(container_id))
    };
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|x| x.parse::<i32>().ok());
            if let Some(pp) = ppid {
                children.entry(pp).or_default().push(p);
            }
        }
    }
    let mut todo = vec![pid];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        if in_container(p) {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), sig);
        }
        todo.extend(children.get(&p).into_iter().flatten().copied());
    }
}
