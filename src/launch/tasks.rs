//! LSF blaunch tasks (SPEC §14): each runs as a process of its job's
//! container on its host, as IBM's Docker driver runs a parallel job (one
//! container per execution host). On the first host that is the job's own
//! container; on another, the container the host's first task makes from
//! its plan (`TaskPlan::host_spec`, counted in the broker's holders so the
//! last task removes it).
//!
//! A task is an exec: the engine runs it with the container's process
//! settings (capabilities, no new privileges, limits, seccomp and AppArmor
//! profiles, cgroup, namespaces); berth gives its command, environment,
//! user (the job's uid:gid; the container's added groups) and working
//! directory, carries its streams as for a container, and reads its exit
//! status. Signals go to the task's processes only, found on the host by
//! the exec's pid and checked to be in that container's cgroup.

use super::supervise::{follow_events, pump, spawn_thread, Ended, Event, Outcome, Pumps, Stdio};
use crate::core::error::{Denial, Error, Result};
use crate::core::plan::{LaunchPlan, TaskKind};
use crate::engine::Engine;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
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
            return Err(differs(plan, name.trim_start_matches('/')));
        }
        found = Some((id.to_string(), name.trim_start_matches('/').to_string()));
    }
    Ok(found)
}

/// The denial of a task that asks for other container settings than the
/// container it would run in has.
pub fn differs(plan: &LaunchPlan, container: &str) -> Error {
    let (id, host) = plan
        .task
        .as_ref()
        .map_or((0, ""), |t| (t.id, t.host.as_str()));
    Denial::new(
        "lsf.task",
        container,
        format!(
            "blaunch task {id} of job {} would run in the job's container {container} on {host}, made with other settings than the task asks for (one of: image, user and groups, network, IPC, volumes, working directory, devices, shm size, extra hosts, ports)",
            plan.job.id
        ),
        "start tasks with the job's own LSF_DOCKER_* settings, image and working directory (blaunch passes the job's environment on; do not change those for a task)",
    )
    .into()
}

/// The tasks of this broker: exec id → (host pid, 0 until known; full id
/// of its container; the engine's socket), killed when the broker stops.
pub type Running = std::sync::Mutex<std::collections::HashMap<String, (i32, String, PathBuf)>>;

/// Run the task in container `container` (running) with `stdio`; `events`
/// carries signals and the client's end, as for a container. The task is
/// in `running` from before its start until it is gone; `stopping` (the
/// broker's stop, read under `running`'s lock) refuses a start.
#[allow(clippy::too_many_arguments)]
pub fn run_exec(
    plan: &LaunchPlan,
    engine: &Engine,
    container: &str,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    running: &Running,
    stopping: &std::sync::atomic::AtomicBool,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let task = plan
        .task
        .as_ref()
        .ok_or_else(|| Error::Internal("not an LSF task".into()))?;
    // Its processes are told from others by this container's cgroup: no
    // id, no task.
    let full_id = engine
        .inspect_container(container)?
        .and_then(|v| v.get("Id").and_then(Value::as_str).map(str::to_string))
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "the job's container {container} on this host is gone: the job has ended or is ending"
            ))
        })?;
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
    let exec = engine.exec_create(&full_id, &body)?;
    // A client gone, or a termination, before the start: never start it
    // (an exec never started runs nothing; the engine drops it with its
    // container).
    while let Ok(ev) = events.try_recv() {
        match ev {
            Event::Abandon => return Ok(Outcome::Abandoned),
            Event::Signal(s) if matches!(s, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) => {
                return Ok(Outcome::Exited(128 + s as i32))
            }
            _ => {}
        }
    }
    {
        let mut r = lock(running);
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "the berth broker is stopping; the task was not started: requeue the job".into(),
            ));
        }
        r.insert(
            exec.clone(),
            (0, full_id.clone(), engine.socket().to_path_buf()),
        );
    }
    let result = start_and_follow(
        plan, engine, &exec, &full_id, stdio, tx, events, running, started,
    );
    if !matches!(result, Ok(Outcome::Exited(_))) {
        // Abandoned, or lost (also a start whose answer was lost): the
        // task must not outlive its client.
        kill_until_gone(engine, &exec, &full_id);
    }
    lock(running).remove(&exec);
    result
}

#[allow(clippy::too_many_arguments)]
fn start_and_follow(
    plan: &LaunchPlan,
    engine: &Engine,
    exec: &str,
    full_id: &str,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    running: &Running,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let attach = engine.exec_start(exec)?;
    // The engine answers the start before the process exists: wait for its
    // pid (or its end), so that a kill from here on has a target.
    let pid = wait_pid(engine, exec, Duration::from_secs(30));
    if pid > 0 {
        if let Some(e) = lock(running).get_mut(exec) {
            e.0 = pid;
        }
    } else {
        log::warn!(
            "the engine gave no pid for task exec {exec} of {}",
            plan.name
        );
    }
    let mut early = Vec::new();
    if plan.task.as_ref().is_some_and(|t| t.kind == TaskKind::Rank) {
        // The client gone, or a termination, while the rank waited to be
        // placed: its gate never opens (the program never runs).
        while let Ok(ev) = events.try_recv() {
            match ev {
                Event::Abandon => return Ok(Outcome::Abandoned),
                Event::Signal(s)
                    if matches!(s, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) =>
                {
                    kill_until_gone(engine, exec, full_id);
                    return Ok(Outcome::Exited(128 + s as i32));
                }
                Event::Signal(s) => early.push(s),
                Event::Exited(_) => {}
            }
        }
        release_rank(plan, pid, full_id, &attach.stream)?;
    }
    follow(
        plan, engine, exec, full_id, attach, stdio, tx, events, early, started,
    )
}

/// The exec's host pid once it has one (0: it ended first, or the engine
/// did not say within `max`), asked with a growing pause.
fn wait_pid(engine: &Engine, exec: &str, max: Duration) -> i32 {
    // Every 2 ms for the first quarter second (the pid normally shows
    // within ~30 ms: a doubling pause would overshoot it by as much), then
    // a doubling pause up to 100 ms.
    let start = Instant::now();
    let until = start + max;
    let mut pause = Duration::from_millis(2);
    while Instant::now() < until {
        match engine.exec_inspect(exec) {
            Ok(Some(s)) if s.pid > 0 => return s.pid,
            Ok(Some(s)) if !s.running && s.exit_code.is_some() => return 0,
            Ok(None) => return 0,
            _ => {}
        }
        std::thread::sleep(pause);
        if start.elapsed() > Duration::from_millis(250) {
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
    0
}

/// An MPI rank's process waits at its gate (`plan::RANK_GATE`) until it
/// lives where its Slurm task lives: in the task's cgroups that keep its
/// CPUs and its accounting, bound to the task's CPUs. Then its program
/// starts (one line on its stdin), before any of the job's own input.
fn release_rank(
    plan: &LaunchPlan,
    pid: i32,
    container_id: &str,
    stream: &std::os::unix::net::UnixStream,
) -> Result<()> {
    if pid <= 0 {
        return Err(Error::Unavailable(format!(
            "the engine did not start MPI rank {} in its step's container: requeue the job",
            plan.task.as_ref().map_or(0, |t| t.id)
        )));
    }
    if let Some(p) = &plan.placement {
        crate::sys::cgroup::enter_task(pid, container_id, p)?;
    }
    use std::io::Write;
    (&*stream)
        .write_all(b"\n")
        .map_err(|e| Error::internal("releasing the MPI rank", e))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Signal the task while the engine says it runs (its pid is then still
/// the task's: never a process that took the pid after it).
fn signal_running(engine: &Engine, exec: &str, container_id: &str, sig: Signal) -> bool {
    match engine.exec_inspect(exec) {
        Ok(Some(s)) if s.running && s.pid > 0 => {
            signal_task(s.pid, container_id, sig);
            true
        }
        _ => false,
    }
}

/// SIGKILL the task until the engine says it is gone (at most 10 s).
pub fn kill_until_gone(engine: &Engine, exec: &str, container_id: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    // (A start whose answer was lost may still be starting; an exec the
    // stop caught before its start never will.)
    let _ = wait_pid(engine, exec, Duration::from_secs(2));
    while signal_running(engine, exec, container_id, Signal::SIGKILL) {
        if Instant::now() >= until {
            log::error!(
                "task exec {exec} still runs after 10 s of SIGKILL; it ends with its container"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[allow(clippy::too_many_arguments)]
fn follow(
    plan: &LaunchPlan,
    engine: &Engine,
    exec: &str,
    full_id: &str,
    attach: crate::engine::Attach,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    early_signals: Vec<Signal>,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let task = plan
        .task
        .as_ref()
        .ok_or_else(|| Error::Internal("not an LSF task".into()))?;
    let mut attach = attach;
    let early = std::mem::take(&mut attach.early);
    let Pumps { stop_w, out_done } = pump("task", &attach.stream, early, stdio)?;
    // The engine has no wait for an exec: its state is polled, briefly at
    // first (most tasks of a short step end within milliseconds), then
    // every quarter second, until it ends or this task is done with (the
    // flag: an abandoned task's poller stops with it). The end of its
    // output (its exit, as a rule) starts the brief polls again, so that a
    // long task's end is not heard up to a quarter second late. A failed
    // query is retried before it counts.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll_done = done.clone();
    let poll_engine = Engine::new(engine.socket());
    let poll_exec = exec.to_string();
    let (output_tx, output_ended) = std::sync::mpsc::channel::<u64>();
    spawn_thread(
        "task-wait",
        Box::new(move || {
            let mut pause = Duration::from_millis(5);
            let mut failures = 0;
            let mut output = Some(out_done);
            while !poll_done.load(std::sync::atomic::Ordering::SeqCst) {
                match poll_engine.exec_inspect(&poll_exec) {
                    Ok(Some(s)) if !s.running && s.exit_code.is_some() => {
                        let _ = tx.send(Event::Exited(Ok(s.exit_code.unwrap_or(0))));
                        break;
                    }
                    Ok(Some(_)) => failures = 0,
                    // The container went (the job ended, or was killed).
                    Ok(None) => {
                        let _ = tx.send(Event::Exited(Ok(137)));
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= 5 {
                            let _ = tx.send(Event::Exited(Err(e)));
                            break;
                        }
                    }
                }
                // Sleep `pause`, or until the output ends.
                match output.as_ref().map(|o| o.recv_timeout(pause)) {
                    Some(Ok(n)) => {
                        let _ = output_tx.send(n);
                        output = None;
                        pause = Duration::from_millis(2);
                        continue;
                    }
                    Some(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => {}
                    Some(Err(std::sync::mpsc::RecvTimeoutError::Disconnected)) => {
                        output = None;
                        std::thread::sleep(pause);
                    }
                    None => std::thread::sleep(pause),
                }
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            // Its end is still waited for by `follow`.
            if let Some(o) = output {
                if let Ok(n) = o.recv_timeout(OUTPUT_GRACE) {
                    let _ = output_tx.send(n);
                }
            }
        }),
    )?;
    started();

    let mut target = TaskTarget {
        engine,
        exec,
        full_id,
        name: format!("task {} of {}", task.id, plan.name),
    };
    let status = match follow_events(events, plan.stop_timeout, early_signals, &mut target) {
        Ended::Abandoned => {
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = nix::unistd::write(&stop_w, b"x");
            let _ = attach.stream.shutdown(std::net::Shutdown::Both);
            return Ok(Outcome::Abandoned);
        }
        Ended::Exited(r) => r,
    };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    if output_ended.recv_timeout(OUTPUT_GRACE).is_err() {
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

/// A task as the event loop's target: its processes, while it runs.
struct TaskTarget<'a> {
    engine: &'a Engine,
    exec: &'a str,
    full_id: &'a str,
    name: String,
}

impl super::supervise::Target for TaskTarget<'_> {
    fn forward(&mut self, sig: Signal) {
        log::info!("forwarding {sig} to {}", self.name);
        signal_running(self.engine, self.exec, self.full_id, sig);
    }

    fn kill(&mut self) {
        signal_running(self.engine, self.exec, self.full_id, Signal::SIGKILL);
    }
}

/// Signal the task's process and its descendants in its container.
fn signal_task(pid: i32, container_id: &str, sig: Signal) {
    crate::sys::process::signal_tree_in_container(pid, container_id, sig);
}
