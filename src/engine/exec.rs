//! Exec calls (SPEC §14): a blaunch task runs as a process of its LSF
//! job's container on its host, an MPI rank as one of its Slurm step's
//! container on its node — create the exec, start it
//! on a hijacked connection carrying its streams (as attach does for a
//! container), and inspect it for its pid and exit status. The exec runs
//! with the container's own process settings (capabilities, no new
//! privileges, limits, cgroup); berth sets only its command, environment,
//! user and working directory.

use super::container::read_head;
use super::{encode, Engine, API};
use crate::core::error::{Error, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// An exec as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecState {
    pub running: bool,
    /// The process's pid on the host (0 before it started).
    pub pid: i32,
    pub exit_code: Option<i32>,
}

impl Engine {
    /// `POST /containers/{id}/exec`: the exec's id.
    pub fn exec_create(&self, container: &str, body: &Value) -> Result<String> {
        let r = self.request(
            "POST",
            &format!("/containers/{}/exec", encode(container)),
            Some(body),
            CALL_DEADLINE,
        )?;
        match r.status {
            201 => r
                .json()?
                .get("Id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::Internal("exec create reply without an Id".into())),
            // The host's container ended between the lookup and the exec.
            404 | 409 => Err(Error::Unavailable(format!(
                "the job's container on this host is not running ({}): the job has ended, is ending or is suspended; start the task again when the job runs",
                r.message()
            ))),
            s => Err(Error::Internal(format!(
                "the docker engine refused to create the task's exec (HTTP {s}: {})",
                r.message()
            ))),
        }
    }

    /// `POST /exec/{id}/start` on an upgraded connection: stdout and stderr
    /// multiplexed (no TTY), stdin written to it.
    pub fn exec_start(&self, exec: &str) -> Result<super::Attach> {
        let mut s = self.connect()?;
        s.set_write_timeout(Some(CALL_DEADLINE)).ok();
        s.set_read_timeout(Some(CALL_DEADLINE)).ok();
        let body = r#"{"Detach":false,"Tty":false}"#;
        let req = format!(
            "POST {API}/exec/{}/start HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth/{}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            encode(exec),
            env!("CARGO_PKG_VERSION"),
            body.len(),
        );
        s.write_all(req.as_bytes())
            .map_err(|e| self.unavailable(e))?;
        let (status, _, rest) = read_head(&mut s).map_err(|e| self.unavailable(e))?;
        if status != 101 && status != 200 {
            let mut body = rest;
            let _ = s.read_to_end(&mut body);
            return Err(Error::Internal(format!(
                "the docker engine refused to start the task's exec (HTTP {status}: {})",
                super::message_of(&body)
            )));
        }
        s.set_read_timeout(None).ok();
        s.set_write_timeout(None).ok();
        Ok(super::Attach {
            stream: s,
            early: rest,
        })
    }

    /// `GET /exec/{id}/json`; `None`: no such exec (its container is gone).
    pub fn exec_inspect(&self, exec: &str) -> Result<Option<ExecState>> {
        let Some(v) = self.get_optional(&format!("/exec/{}/json", encode(exec)), "exec inspect")?
        else {
            return Ok(None);
        };
        Ok(Some(ExecState {
            running: v.get("Running").and_then(Value::as_bool).unwrap_or(false),
            pid: v
                .get("Pid")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0),
            exit_code: v
                .get("ExitCode")
                .and_then(Value::as_i64)
                .map(|c| c.clamp(0, 255) as i32),
        }))
    }
}
