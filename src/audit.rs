//! One structured record per launch, per denial and per exit, to syslog
//! (journald reads it from /dev/log) or to a JSON-lines file, per policy.

use crate::core::error::{Error, Result};
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    pub time: u64,
    pub event: &'static str,
    pub host: String,
    pub caller_uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
    /// The job's cgroup the container was placed in (SPEC §11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The GPU device nodes the container was given (SPEC §12).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// Turn the launch record into the job's last one: its exit code, or
    /// why it did not run (a refusal at launch, e.g. a volume that changed
    /// or that the user cannot open, is a denial with its rule).
    pub fn finish(
        &mut self,
        outcome: std::result::Result<Option<i32>, &crate::core::error::Error>,
    ) {
        self.event = "exit";
        self.decision = "allow";
        match outcome {
            Ok(Some(c)) => self.exit_code = Some(c),
            Ok(None) => {
                self.reason = Some("client disconnected: container killed and removed".into())
            }
            Err(crate::core::error::Error::Denied(d)) => {
                self.event = "denial";
                self.decision = "deny";
                self.rule = Some(d.rule.to_string());
                self.reason = Some(format!("denied: {d}"));
            }
            Err(e) => self.reason = Some(e.to_string()),
        }
    }

    /// Mark the record refused by `e`: a denial (with its rule) or an
    /// error, and why.
    pub fn refused(&mut self, e: &crate::core::error::Error) {
        self.decision = "error";
        if let crate::core::error::Error::Denied(d) = e {
            self.decision = "deny";
            self.rule = Some(d.rule.to_string());
        }
        self.reason = Some(e.to_string());
    }

    pub fn new(event: &'static str, decision: &'static str) -> Record {
        Record {
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            event,
            decision,
            host: crate::sys::hostname(),
            caller_uid: crate::sys::real_uid(),
            ..Default::default()
        }
    }
}

pub enum Audit {
    None,
    File(std::fs::File),
    Syslog(syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>),
    /// syslog was asked for but /dev/log is absent: records go to stderr.
    Stderr,
}

impl Audit {
    pub fn open(dest: &str) -> Result<Audit> {
        match dest {
            "none" => Ok(Audit::None),
            "syslog" => {
                let f = syslog::Formatter3164 {
                    facility: syslog::Facility::LOG_AUTHPRIV,
                    hostname: None,
                    process: "berth".into(),
                    pid: std::process::id(),
                };
                match syslog::unix(f) {
                    Ok(l) => Ok(Audit::Syslog(l)),
                    Err(_) => Ok(Audit::Stderr),
                }
            }
            path => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map(Audit::File)
                .map_err(|e| {
                    Error::Config(format!(
                        "audit log {path} cannot be opened: {e}; fix audit.log in the policy"
                    ))
                }),
        }
    }

    /// Write a record; a failure is logged (use [`Audit::record_checked`]
    /// where a launch must not happen unrecorded).
    pub fn record(&mut self, r: &Record) {
        if let Err(e) = self.record_checked(r) {
            log::warn!("audit record lost: {e}");
        }
    }

    /// Write a record, or say why it could not be written.
    pub fn record_checked(&mut self, r: &Record) -> std::io::Result<()> {
        let line = serde_json::to_string(r).unwrap_or_default();
        match self {
            Audit::None => Ok(()),
            // One write per record: O_APPEND keeps concurrent jobs' lines whole.
            Audit::File(f) => f.write_all(format!("{line}\n").as_bytes()),
            Audit::Syslog(l) => {
                let res = if r.decision == "deny" {
                    l.warning(&line)
                } else {
                    l.info(&line)
                };
                res.map_err(|e| std::io::Error::other(e.to_string()))
            }
            Audit::Stderr => {
                log::info!("audit: {line}");
                Ok(())
            }
        }
    }
}
