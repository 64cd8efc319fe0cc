//! The one launcher: every path (root `berth run`, the broker for users and
//! Slurm, LSF's starters) runs a job through [`run`]. It creates the
//! container through the Engine API, attaches the job's streams, registers
//! the wait, starts, then follows one event loop until the container is
//! gone: signals to forward (with one kill escalation), the caller going
//! away (abandon), the engine's exit status. One cleanup, whatever ends it.

use super::streams::{self, Sink};
use crate::core::error::{Error, Result};
use crate::core::plan::LaunchPlan;
use crate::engine::ContainerApi;
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
    engine: &dyn ContainerApi,
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
    if let Some(p) = &plan.placement {
        // Before the engine makes the container's device cgroup under the
        // job's (see Placement::mknod).
        crate::sys::devices::unmask_mknod(&p.parent, &p.mknod).map_err(|e| {
            Error::Internal(format!(
                "the job's device cgroup {} cannot be prepared for its container: {e}",
                p.parent
            ))
        })?;
    }
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

/// runc's `c *:* m` refused under a job whose device cgroup denies a device
/// berth does not know as a GPU: say which keys make it known.
fn device_error(e: Error) -> Error {
    match &e {
        Error::Internal(m) if m.contains("devices.allow") && m.contains("not permitted") => {
            Error::Config(format!(
                "the kernel refused the container's device rules under the job's device cgroup, which denies a device berth does not know ({m}); add that device's nodes to [gpus] devices or control_devices in the berth policy, or set [cgroup] placement = \"none\""
            ))
        }
        _ => e,
    }
}

fn run_created(
    plan: &LaunchPlan,
    engine: &dyn ContainerApi,
    id: &str,
    stdio: Stdio,
    tx: Sender<Event>,
    events: &Receiver<Event>,
    started: &mut dyn FnMut(),
) -> Result<Outcome> {
    let mut attach = engine.attach(id)?;
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

    let early_bytes = std::mem::take(&mut attach.early);
    let Pumps { stop_w, out_done } = pump("job", &attach.stream, early_bytes, stdio)?;
    let waiter_tx = tx.clone();
    spawn_thread(
        "job-wait",
        Box::new(move || {
            let _ = waiter_tx.send(Event::Exited(wait.result()));
        }),
    )?;
    drop(tx);

    engine.start(id).map_err(device_error)?;
    started();

    let early: Vec<Signal> = early
        .into_iter()
        .filter_map(|ev| match ev {
            Event::Signal(s) => Some(s),
            _ => None,
        })
        .collect();
    let status = match follow_events(
        events,
        plan.stop_timeout,
        early,
        &mut ContainerTarget {
            engine,
            id,
            init_ready: !plan.spec.init,
        },
    ) {
        Ended::Abandoned => {
            let _ = nix::unistd::write(&stop_w, b"x");
            let _ = attach.stream.shutdown(std::net::Shutdown::Both);
            return Ok(Outcome::Abandoned);
        }
        Ended::Exited(r) => r,
    };
    // The container is gone (or the engine is): its output ends now.
    if out_done.recv_timeout(OUTPUT_GRACE).is_err() {
        log::warn!("the output of {} did not end with it; cut", plan.name);
    }
    let _ = nix::unistd::write(&stop_w, b"x");
    let _ = attach.stream.shutdown(std::net::Shutdown::Both);
    status.map(Outcome::Exited)
}

/// The job's (or task's) stream threads, and how to stop and await them.
pub(super) struct Pumps {
    /// Written once the job is over: the input thread stops reading.
    pub stop_w: std::os::fd::OwnedFd,
    /// Receives the output byte count when the engine's stream ends.
    pub out_done: std::sync::mpsc::Receiver<u64>,
}

/// Start a thread, or say the node is out of them.
pub(super) fn spawn_thread(name: &str, f: Box<dyn FnOnce() + Send>) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot start a thread for the job's streams ({e}); the node is out of threads: requeue the job"
            ))
        })
}

/// Copy the engine's multiplexed stream (`early`: what came with its
/// upgrade) to the caller's stdout and stderr, and the caller's stdin to
/// it, each in a thread named `<what>-output` and `<what>-input`.
pub(super) fn pump(
    what: &str,
    stream: &std::os::unix::net::UnixStream,
    early: Vec<u8>,
    stdio: Stdio,
) -> Result<Pumps> {
    let mut out_stream = stream
        .try_clone()
        .map_err(|e| Error::internal("cloning the attach stream", e))?;
    let mut in_stream = stream
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
    spawn_thread(
        &format!("{what}-output"),
        Box::new(move || {
            let mut o = Sink::new(stdout);
            let mut e = Sink::new(stderr);
            let n = streams::demux(&mut out_stream, early, &mut o, &mut e);
            let _ = out_done_tx.send(n);
        }),
    )?;
    spawn_thread(
        &format!("{what}-input"),
        Box::new(move || streams::feed(stdin, &mut in_stream, stop_r)),
    )?;
    Ok(Pumps { stop_w, out_done })
}

fn is_termination(s: Signal) -> bool {
    matches!(s, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)
}

/// Where the event loop's signals go: a container, or a task in one.
pub(super) trait Target {
    /// Pass a job-control signal on.
    fn forward(&mut self, sig: Signal);
    /// The one escalation, `stop_timeout` after a termination signal.
    fn kill(&mut self);
}

/// How [`follow_events`] ended.
pub(super) enum Ended {
    /// The engine's report of the end (its exit status, or its loss).
    Exited(Result<i32>),
    /// The caller went away.
    Abandoned,
}

/// Follow `events` until the end: signals go to `target` (`early` ones
/// first), everything queued is handled together and a repeated signal
/// forwarded once, and a termination signal is followed by `target.kill()`
/// after `stop_timeout` seconds if the end has not come.
pub(super) fn follow_events(
    events: &Receiver<Event>,
    stop_timeout: u32,
    early: Vec<Signal>,
    target: &mut dyn Target,
) -> Ended {
    let mut kill_at: Option<Instant> = None;
    let forward = |target: &mut dyn Target, s: Signal, kill_at: &mut Option<Instant>| {
        target.forward(s);
        if is_termination(s) && kill_at.is_none() {
            *kill_at = Some(Instant::now() + Duration::from_secs(stop_timeout.into()));
        }
    };
    for s in early {
        forward(target, s, &mut kill_at);
    }
    loop {
        let timeout = kill_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let first = match events.recv_timeout(timeout) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    target.kill();
                    kill_at = None;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Ended::Exited(Err(Error::Internal("lost the job's wait".into())))
            }
        };
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
                Event::Abandon => return Ended::Abandoned,
                Event::Signal(s) if !sent.contains(&s) => {
                    sent.push(s);
                    forward(target, s, &mut kill_at);
                }
                Event::Signal(_) => {}
            }
        }
        if let Some(r) = end {
            return Ended::Exited(r);
        }
    }
}

/// A container as the event loop's target. A paused (LSF-suspended)
/// container is thawed after a termination signal, so it can act on it,
/// and before the escalation's SIGKILL.
struct ContainerTarget<'a> {
    engine: &'a dyn ContainerApi,
    id: &'a str,
    /// Whether the container's init is known to take signals.
    init_ready: bool,
}

impl ContainerTarget<'_> {
    /// The kernel drops a signal sent to a PID namespace's init that has
    /// no handler for it, and docker-init blocks signals (to pass them on)
    /// only once it runs: a termination right after the start could be
    /// lost, and the job end 137 after stop_timeout instead of 128+n. So
    /// the first signal waits (at most 300 ms) until the init blocks or
    /// catches it.
    fn await_init(&mut self, sig: Signal) {
        if self.init_ready {
            return;
        }
        self.init_ready = true;
        let Some(pid) = self.engine.init_pid(self.id) else {
            return;
        };
        let bit = 1u64 << (sig as i32 - 1);
        let takes = || {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|st| {
                st.lines().any(|l| {
                    ["SigBlk:", "SigCgt:"].iter().any(|k| {
                        l.strip_prefix(k)
                            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                            .is_some_and(|m| m & bit != 0)
                    })
                })
            })
        };
        let until = Instant::now() + std::time::Duration::from_millis(300);
        while !takes() && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Target for ContainerTarget<'_> {
    fn forward(&mut self, sig: Signal) {
        self.await_init(sig);
        log::info!("forwarding {sig} to container {}", self.id);
        let _ = self.engine.kill(self.id, sig.as_str());
        if is_termination(sig) {
            let _ = self.engine.unpause(self.id);
        }
    }

    fn kill(&mut self) {
        let _ = self.engine.unpause(self.id);
        let _ = self.engine.kill(self.id, "KILL");
    }
}

/// Kill and remove a container (it may be paused, running or created).
pub fn destroy(engine: &dyn ContainerApi, id: &str) {
    let _ = engine.unpause(id);
    let _ = engine.kill(id, "KILL");
    if let Err(e) = engine.remove(id) {
        log::warn!("cannot remove container {id}: {e}");
    }
}

#[cfg(test)]
mod tests {
    //! The launcher against a recording fake engine: the order of calls,
    //! streams, exit status, signals, termination before start, refusal.
    use super::*;
    use crate::core::plan::{Context, HostFs, LaunchPlan};
    use crate::engine::{Attach, Wait};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc::channel;
    use std::sync::Mutex;

    struct AnyFs;
    impl HostFs for AnyFs {
        fn canonicalize(&self, p: &Path) -> std::io::Result<PathBuf> {
            Ok(p.to_path_buf())
        }
        fn is_dir(&self, _: &Path) -> std::io::Result<bool> {
            Ok(true)
        }
        fn user_can_access(
            &self,
            _: &crate::core::identity::Identity,
            p: &[PathBuf],
        ) -> Result<Vec<bool>> {
            Ok(vec![true; p.len()])
        }
    }

    fn plan() -> LaunchPlan {
        let policy = crate::core::policy::Policy::parse(
            "[cgroup]\nrequire_job = false\n[images]\nallow = [\"docker.io/library/*\"]\n[[volumes]]\nroot = \"/storage1/fs1\"\nmode = \"rw\"\n[mounts]\npin = false\n[docker]\nstop_timeout = 1\n",
            "test",
        )
        .unwrap();
        let id = crate::core::identity::Identity {
            name: "alice".into(),
            uid: 2001,
            gid: 2001,
            groups: vec![],
            primary_group_name: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
        };
        let env = std::collections::BTreeMap::from([
            ("LSB_CONTAINER_IMAGE".to_string(), "alpine".to_string()),
            ("LS_SUBCWD".to_string(), "/storage1/fs1/alice".to_string()),
        ]);
        let req = crate::core::request::from_env(&env, None, vec!["true".into()]).unwrap();
        let facts = crate::core::facts::ImageFacts {
            id: format!("sha256:{}", "ab".repeat(32)),
            entrypoint: vec![],
            cmd: vec![],
            workdir: "/".into(),
            user: String::new(),
            has_shell: true,
            volumes: vec![],
            owner: None,
        };
        let ctx = Context {
            nonce: "ab".into(),
            ..Default::default()
        };
        crate::core::plan::plan(&policy, &id, &req, Some(&facts), &AnyFs, &ctx).unwrap()
    }

    /// What the fake does when started: write these frames, then exit.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        refuse_create: bool,
        /// Exit status reported once started (None: run until killed).
        exit: Option<i32>,
        output: Vec<(u8, Vec<u8>)>,
        engine_side: Mutex<Option<(UnixStream, UnixStream)>>,
        /// Queued into the job's events while the first forwarded signal
        /// is being delivered: a burst that arrives while berth is busy.
        burst: Mutex<Option<(Sender<Event>, Vec<Event>)>>,
    }

    impl Fake {
        fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn finish(&self, code: i32) {
            if let Some((mut out, mut wait)) = self.engine_side.lock().unwrap().take() {
                for (k, d) in &self.output {
                    let mut f = vec![*k, 0, 0, 0];
                    f.extend_from_slice(&(d.len() as u32).to_be_bytes());
                    f.extend_from_slice(d);
                    let _ = out.write_all(&f);
                }
                drop(out);
                let _ = write!(wait, "{{\"StatusCode\":{code}}}");
            }
        }
    }

    impl ContainerApi for Fake {
        fn create(&self, name: &str, body: &serde_json::Value) -> Result<String> {
            self.log(format!("create {name} {}", body["HostConfig"]["CapDrop"]));
            if self.refuse_create {
                return Err(Error::Internal(
                    "the docker engine refused to create the container (HTTP 500: no)".into(),
                ));
            }
            Ok("cid".into())
        }
        fn attach(&self, id: &str) -> Result<Attach> {
            self.log(format!("attach {id}"));
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (wait_ours, wait_theirs) = UnixStream::pair().unwrap();
            *self.engine_side.lock().unwrap() = Some((theirs, wait_theirs));
            // Park the wait end until wait() takes it.
            WAIT.with(|w| *w.borrow_mut() = Some(wait_ours));
            Ok(Attach {
                stream: ours,
                early: Vec::new(),
            })
        }
        fn wait(&self, id: &str) -> Result<Wait> {
            self.log(format!("wait {id}"));
            let s = WAIT.with(|w| w.borrow_mut().take()).unwrap();
            Ok(Wait::from_stream(s, false))
        }
        fn start(&self, id: &str) -> Result<()> {
            self.log(format!("start {id}"));
            if let Some(c) = self.exit {
                self.finish(c);
            }
            Ok(())
        }
        fn kill(&self, id: &str, signal: &str) -> Result<bool> {
            self.log(format!("kill {id} {signal}"));
            if let Some((tx, burst)) = self.burst.lock().unwrap().take() {
                for ev in burst {
                    tx.send(ev).unwrap();
                }
            }
            if signal == "SIGTERM" || signal == "KILL" {
                self.finish(if signal == "KILL" { 137 } else { 143 });
            }
            Ok(true)
        }
        fn unpause(&self, id: &str) -> Result<bool> {
            self.log(format!("unpause {id}"));
            Ok(false)
        }
        fn remove(&self, id: &str) -> Result<bool> {
            self.log(format!("remove {id}"));
            Ok(true)
        }
    }

    thread_local! {
        static WAIT: std::cell::RefCell<Option<UnixStream>> = const { std::cell::RefCell::new(None) };
    }

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), w)
    }

    #[test]
    fn creates_attaches_waits_then_starts_and_returns_the_status() {
        let fake = Fake {
            exit: Some(3),
            output: vec![(1, b"out".to_vec()), (2, b"err".to_vec())],
            ..Default::default()
        };
        let (mut out_r, out_w) = pipe();
        let (mut err_r, err_w) = pipe();
        let stdio = Stdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let (tx, rx) = channel();
        let mut started = 0;
        let r = run(&plan(), &fake, stdio, tx, &rx, &mut || started += 1).unwrap();
        assert_eq!(r, Outcome::Exited(3));
        assert_eq!(started, 1);
        let c = fake.calls();
        assert!(
            c[0].starts_with("create berth-local-0-ab [\"ALL\"]"),
            "{c:?}"
        );
        assert_eq!(&c[1..], ["attach cid", "wait cid", "start cid"]);
        let (mut o, mut e) = (String::new(), String::new());
        out_r.read_to_string(&mut o).unwrap();
        err_r.read_to_string(&mut e).unwrap();
        assert_eq!((o.as_str(), e.as_str()), ("out", "err"));
    }

    #[test]
    fn a_termination_before_start_never_starts_and_removes() {
        let fake = Fake::default();
        let (tx, rx) = channel();
        tx.send(Event::Signal(Signal::SIGTERM)).unwrap();
        let r = run(&plan(), &fake, Stdio::default(), tx, &rx, &mut || {}).unwrap();
        assert_eq!(r, Outcome::Exited(143));
        let c = fake.calls();
        assert!(!c.iter().any(|x| x.starts_with("start")), "{c:?}");
        assert!(c.iter().any(|x| x == "remove cid"), "{c:?}");
    }

    #[test]
    fn a_refused_create_is_the_engines_error_and_starts_nothing() {
        let fake = Fake {
            refuse_create: true,
            ..Default::default()
        };
        let (tx, rx) = channel();
        let e = run(&plan(), &fake, Stdio::default(), tx, &rx, &mut || {}).unwrap_err();
        assert_eq!(e.exit_code(), crate::core::error::exit::INTERNAL);
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn signals_are_forwarded_coalesced_and_thaw_a_paused_container() {
        // 50 SIGUSR1 and a SIGTERM arrive while berth is forwarding the
        // first SIGUSR1 (deterministic: the fake queues them from inside
        // that kill call, not from a racing thread).
        let fake = Fake::default();
        let (tx, rx) = channel();
        let mut burst: Vec<Event> = (0..50).map(|_| Event::Signal(Signal::SIGUSR1)).collect();
        burst.push(Event::Signal(Signal::SIGTERM));
        *fake.burst.lock().unwrap() = Some((tx.clone(), burst));
        let sender = tx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            sender.send(Event::Signal(Signal::SIGUSR1)).unwrap();
        });
        let r = run(&plan(), &fake, Stdio::default(), tx, &rx, &mut || {}).unwrap();
        t.join().unwrap();
        assert_eq!(r, Outcome::Exited(143));
        let c = fake.calls();
        let usr1 = c.iter().filter(|x| *x == "kill cid SIGUSR1").count();
        assert_eq!(usr1, 2, "51 signals should cost 2 engine calls: {c:?}");
        let term = c.iter().position(|x| x == "kill cid SIGTERM").unwrap();
        assert_eq!(c[term + 1], "unpause cid");
    }

    #[test]
    fn an_abandoned_job_is_killed_and_removed() {
        let fake = Fake::default();
        let (tx, rx) = channel();
        let sender = tx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            sender.send(Event::Abandon).unwrap();
        });
        let r = run(&plan(), &fake, Stdio::default(), tx, &rx, &mut || {}).unwrap();
        t.join().unwrap();
        assert_eq!(r, Outcome::Abandoned);
        let c = fake.calls();
        assert!(
            c.ends_with(&[
                "unpause cid".into(),
                "kill cid KILL".into(),
                "remove cid".into()
            ]),
            "{c:?}"
        );
    }
}
