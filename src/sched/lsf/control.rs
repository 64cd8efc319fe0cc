//! `berth lsf control ACTION`: what LSF's SUSPEND, RESUME and TERMINATE
//! job controls (or the EXEC_DRIVER controller) do to the job's container.
//!
//! * suspend: `docker pause` — the cgroup freezer stops every process, so
//!   the job stops making progress (a SIGSTOP to `berth run` would only stop
//!   the docker client, not the container);
//! * resume: `docker unpause`;
//! * terminate: unpause if needed, SIGTERM, SIGKILL after
//!   `docker.stop_timeout` seconds, remove. The job's `berth run` then sees
//!   docker exit and removes the per-job directory (its /tmp);
//! * any other signal is sent to the container as is.

use crate::audit::{Audit, Record};
use crate::cli::ControlArgs;
use crate::core::error::{Error, Result};
use crate::core::policy::Policy;
use crate::core::request::JobId;
use crate::engine::Engine;
use crate::sys::nss::Nss;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long suspend/resume wait for a container that `berth run` may still
/// be creating.
const CREATE_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Suspend,
    Resume,
    Terminate,
    /// Send this signal (docker's name, e.g. `USR1`) to the container.
    Signal(&'static str),
}

impl Action {
    pub fn verb(&self) -> String {
        match self {
            Action::Suspend => "suspend".into(),
            Action::Resume => "resume".into(),
            Action::Terminate => "terminate".into(),
            Action::Signal(s) => format!("signal SIG{s}"),
        }
    }
}

/// An action word, or a signal as LSF may pass it (`SIGSTOP`, `STOP`,
/// `19`, `-19`), case-insensitive. Signal numbers are Linux's.
pub fn parse_action(s: &str) -> Result<Action> {
    let t = s.trim().trim_start_matches('-').to_ascii_uppercase();
    let t = t.strip_prefix("SIG").unwrap_or(&t);
    let a = match t {
        "SUSPEND" | "STOP" | "TSTP" | "TTIN" | "TTOU" | "19" | "20" | "21" | "22" => {
            Action::Suspend
        }
        "RESUME" | "CONT" | "18" => Action::Resume,
        "TERMINATE" | "KILL" | "TERM" | "INT" | "QUIT" | "9" | "15" | "2" | "3" => {
            Action::Terminate
        }
        "HUP" | "1" => Action::Signal("HUP"),
        "USR1" | "10" => Action::Signal("USR1"),
        "USR2" | "12" => Action::Signal("USR2"),
        "WINCH" | "28" => Action::Signal("WINCH"),
        "ALRM" | "14" => Action::Signal("ALRM"),
        "XCPU" | "24" => Action::Signal("XCPU"),
        "XFSZ" | "25" => Action::Signal("XFSZ"),
        _ => {
            return Err(Error::Malformed(format!(
                "{s:?} is not suspend, resume, terminate or a signal berth passes on"
            )))
        }
    };
    Ok(a)
}

pub fn run(policy_path: &Path, args: &ControlArgs) -> Result<i32> {
    let action = parse_action(&args.action)?;
    let policy = Policy::load(policy_path)?;
    let env = crate::sys::environment()?;
    let job = super::job_from(&args.job, &env)?;
    if !crate::sys::is_root() {
        // A relay or the job's owner: the broker acts, and takes the
        // caller from the kernel.
        return super::via_broker(&policy, "control", &job, vec![args.action.clone()]);
    }
    let mut err = std::io::stderr();
    control(&policy, crate::sys::real_uid(), &action, &job, &mut err)
}

/// Act on the job's containers for `caller` (checked: root, a relay, or
/// the owner). Messages for the caller go to `err`; returns the exit code.
pub fn control(
    policy: &Policy,
    caller: u32,
    action: &Action,
    job: &JobId,
    err: &mut dyn Write,
) -> Result<i32> {
    let engine = Engine::new(&policy.docker.socket);
    let mut audit = Audit::open(&policy.audit.log)?;
    let wanted = |state: &str| match action {
        Action::Terminate => true,
        _ => matches!(state, "running" | "paused"),
    };
    let deadline = Instant::now()
        + if *action == Action::Terminate {
            Duration::ZERO
        } else {
            CREATE_PATIENCE
        };
    let containers = loop {
        let found: Vec<_> = super::find(&engine, job)?
            .into_iter()
            .filter(|c| wanted(&c.state))
            .collect();
        if !found.is_empty() || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    super::authorize(&Nss, policy, caller, &action.verb(), job, &containers)?;
    if containers.is_empty() {
        if *action == Action::Terminate {
            log::info!(
                "job {}[{}] has no container: nothing to terminate",
                job.id,
                job.index
            );
            return Ok(0);
        }
        let _ = writeln!(
            err,
            "berth: job {}[{}] has no running container to {}",
            job.id,
            job.index,
            action.verb()
        );
        return Ok(1);
    }
    for c in &containers {
        let mut record = Record::new("control", "allow");
        record.caller_uid = caller;
        record.job = Some(job.id.clone());
        record.index = Some(job.index);
        record.container = Some(c.name.clone());
        record.user = Some(c.user.clone());
        record.uid = c.uid;
        record.detail = Some(action.verb());
        let r = act(&engine, &c.id, action, policy.docker.stop_timeout);
        if let Err(e) = &r {
            record.decision = "error";
            record.reason = Some(e.to_string());
        }
        audit.record(&record);
        r?;
    }
    Ok(0)
}

fn state(engine: &Engine, id: &str) -> Result<Option<String>> {
    Ok(engine.inspect_container(id)?.map(|v| {
        v.pointer("/State/Status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_string()
    }))
}

fn act(engine: &Engine, id: &str, action: &Action, stop_timeout: u32) -> Result<()> {
    match action {
        Action::Suspend => {
            if state(engine, id)?.as_deref() == Some("paused") {
                return Ok(());
            }
            engine.pause(id).map(|_| ())
        }
        Action::Resume => {
            if state(engine, id)?.as_deref() != Some("paused") {
                return Ok(());
            }
            engine.unpause(id).map(|_| ())
        }
        Action::Signal(sig) => {
            if state(engine, id)?.as_deref() == Some("paused") {
                // A frozen process would only see it when thawed: say so.
                log::warn!("container {id} is suspended; SIG{sig} is delivered when it resumes");
            }
            engine.kill(id, sig).map(|_| ())
        }
        Action::Terminate => terminate(engine, id, stop_timeout),
    }
}

/// SIGTERM, SIGKILL after `stop_timeout` seconds, then remove.
pub fn terminate(engine: &Engine, id: &str, stop_timeout: u32) -> Result<()> {
    let running = |engine: &Engine| -> Result<bool> {
        Ok(matches!(
            state(engine, id)?.as_deref(),
            Some("running" | "paused" | "restarting")
        ))
    };
    if state(engine, id)?.as_deref() == Some("paused") {
        // The engine refuses to signal a paused container.
        let _ = engine.unpause(id)?;
    }
    if running(engine)? {
        let _ = engine.kill(id, "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(stop_timeout.into());
        while running(engine)? && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if running(engine)? {
            let _ = engine.kill(id, "KILL")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while running(engine)? && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    engine.remove(id).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_signals() {
        let table: &[(&str, Action)] = &[
            ("suspend", Action::Suspend),
            ("SUSPEND", Action::Suspend),
            ("SIGSTOP", Action::Suspend),
            ("SIGTSTP", Action::Suspend),
            ("stop", Action::Suspend),
            ("19", Action::Suspend),
            ("-19", Action::Suspend),
            ("20", Action::Suspend),
            ("resume", Action::Resume),
            ("SIGCONT", Action::Resume),
            ("-18", Action::Resume),
            ("terminate", Action::Terminate),
            ("SIGTERM", Action::Terminate),
            ("SIGKILL", Action::Terminate),
            ("sigint", Action::Terminate),
            ("-9", Action::Terminate),
            ("15", Action::Terminate),
            ("SIGUSR1", Action::Signal("USR1")),
            ("12", Action::Signal("USR2")),
            ("HUP", Action::Signal("HUP")),
        ];
        for (s, want) in table {
            assert_eq!(&parse_action(s).unwrap(), want, "{s}");
        }
        for bad in ["", "pause", "SIGFOO", "99", "0", "suspend;rm", "SIGSEGV"] {
            assert!(
                matches!(parse_action(bad), Err(Error::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
