//! LSF's job file in the container.
//!
//! When LSF hands the starter the job file it wrote (`$LSB_JOBFILENAME`,
//! usually `~/.lsbatch/<time>.<jobid>`) rather than the user's command,
//! that path is on the execution host and rarely under an allowed volume
//! root. berth reads the file with the job user's own credentials (never
//! its own: a symlink cannot make it read what the user could not), places
//! the copy in the job's fresh /tmp (`/tmp/.lsbatch/<name>`, owned by the
//! user) and runs that path under `/bin/sh -c`, like LSF would. Nothing of
//! the host path is bind-mounted, so nothing can be swapped under dockerd.

use crate::broker::proto::TmpFile;
use crate::core::error::{Denial, Error, Result};
use crate::core::identity::Identity;
use crate::core::policy::{Policy, TmpKind};
use crate::core::request::PLACE_HOLDER;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest job file copied (the limit of a file in the job's /tmp).
pub const MAX_JOB_FILE: usize = 4 << 20;

/// What the job file turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    /// The command for the request.
    pub command: Vec<String>,
    /// The copy for the job's /tmp; `None` in raw-args mode.
    pub tmp_file: Option<TmpFile>,
    /// Variables of the job's environment that name the job file, pointed
    /// at the copy: a job file LSF wrote for a script read from stdin
    /// (`bsub < script`) writes the script to `$LSB_CHKFILENAME.shell` and
    /// runs `$LSB_JOBFILENAME.shell`, which must be where the container can
    /// write (the copy's directory, the user's own in the job's /tmp), not
    /// the host's `~/.lsbatch`.
    pub env: Vec<(String, String)>,
}

/// If the command is exactly `$LSB_JOBFILENAME`, read the job file as the
/// user and say how to run it; otherwise `None` (the command is the user's
/// own, as with `JOB_STARTER = starter "%USRCMD"`).
pub fn job_file(
    policy: &Policy,
    id: &Identity,
    env: &BTreeMap<String, String>,
    command: &[String],
) -> Result<Option<JobFile>> {
    let Some(name) = env.get("LSB_JOBFILENAME").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if command.len() != 1 || command[0].trim() != name.as_str() {
        return Ok(None);
    }
    if policy.tmp.kind != TmpKind::Host {
        return Err(Error::Denied(Denial::new(
            "tmp.kind",
            name.as_str(),
            "LSF handed the starter the job file, which berth copies into the job's /tmp; that needs tmp.kind = host",
            "ask your administrator to set [tmp] kind = \"host\", or to use JOB_STARTER = berth-starter \"%USRCMD\"",
        )));
    }
    let path = Path::new(name);
    if !path.is_absolute() {
        return Err(Error::Malformed(format!(
            "LSB_JOBFILENAME={name:?} is not an absolute path"
        )));
    }
    let content = crate::sys::read_file_as_user(id, path, MAX_JOB_FILE).map_err(|e| match e {
        Error::Denied(d) => Error::Denied(Denial::new(
            "lsf.job_file",
            name.as_str(),
            format!(
                "LSF's job file {name} cannot be read by {} as a regular file ({})",
                id.name, d.message
            ),
            "check JOB_SPOOL_DIR and the permissions of the user's .lsbatch directory",
        )),
        Error::Malformed(_) => Error::Malformed(format!(
            "LSF's job file {name} is larger than {MAX_JOB_FILE} bytes"
        )),
        e => e,
    })?;
    Ok(Some(plan_job_file(env, path, content)))
}

/// The pure part of [`job_file`].
pub fn plan_job_file(env: &BTreeMap<String, String>, path: &Path, content: Vec<u8>) -> JobFile {
    let raw = env
        .get("LSF_DOCKER_RUN_RAW_ARGS")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "y"));
    if raw && user_input(&content).is_some_and(|u| u.trim() == PLACE_HOLDER) {
        return JobFile {
            command: vec![PLACE_HOLDER.into()],
            tmp_file: None,
            env: Vec::new(),
        };
    }
    let base: String = path
        .file_name()
        .and_then(|b| b.to_str())
        .filter(|b| {
            !b.starts_with('.')
                && b.len() <= 128
                && b.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        })
        .unwrap_or("jobfile")
        .to_string();
    let copy = format!("/tmp/.lsbatch/{base}");
    JobFile {
        command: vec![copy.clone()],
        tmp_file: Some(TmpFile {
            path: format!(".lsbatch/{base}"),
            content,
            mode: 0o700,
        }),
        env: ["LSB_JOBFILENAME", "LSB_CHKFILENAME"]
            .into_iter()
            .map(|k| (k.to_string(), copy.clone()))
            .collect(),
    }
}

/// The user's command in an LSF job file: the lines between
/// `# LSBATCH: User input` and the `ExitStat=$?` (or
/// `# LSBATCH: End user input`) that follows it.
pub fn user_input(content: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(content).ok()?;
    let mut lines = text.lines();
    lines.find(|l| l.trim() == "# LSBATCH: User input")?;
    let mut out = Vec::new();
    for l in lines {
        let t = l.trim();
        if t == "ExitStat=$?" || t == "# LSBATCH: End user input" {
            return Some(out.join("\n"));
        }
        out.push(l);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const JOB: &str = "#! /bin/sh\n\n$LSB_TRAPSIGS\n# LSBATCH: User input\nLSB_DOCKER_PLACE_HOLDER\nExitStat=$?\nwait\n# LSBATCH: End user input\ntrue\nexit `expr $ExitStat`\n";

    #[test]
    fn copied_into_tmp() {
        let j = plan_job_file(
            &env(&[]),
            Path::new("/home/a/.lsbatch/1700000000.42"),
            b"echo hi\n".to_vec(),
        );
        assert_eq!(j.command, vec!["/tmp/.lsbatch/1700000000.42"]);
        let f = j.tmp_file.unwrap();
        assert_eq!(
            (f.path.as_str(), f.content.as_slice(), f.mode),
            (".lsbatch/1700000000.42", &b"echo hi\n"[..], 0o700)
        );
        // A stdin script's job file writes and runs `$LSB_JOBFILENAME.shell`:
        // both names point at the copy, whose directory is the user's.
        assert_eq!(
            j.env,
            vec![
                (
                    "LSB_JOBFILENAME".to_string(),
                    "/tmp/.lsbatch/1700000000.42".to_string()
                ),
                (
                    "LSB_CHKFILENAME".to_string(),
                    "/tmp/.lsbatch/1700000000.42".to_string()
                ),
            ]
        );
        // Odd names get a plain one.
        for odd in ["/s/..", "/s/a b", "/s/.hidden", "/s/x:y"] {
            let j = plan_job_file(&env(&[]), Path::new(odd), vec![]);
            assert_eq!(j.command, vec!["/tmp/.lsbatch/jobfile"], "{odd}");
        }
    }

    #[test]
    fn raw_args_placeholder_in_the_job_file() {
        assert_eq!(
            user_input(JOB.as_bytes()).as_deref(),
            Some("LSB_DOCKER_PLACE_HOLDER")
        );
        let raw = env(&[("LSF_DOCKER_RUN_RAW_ARGS", "1")]);
        let j = plan_job_file(&raw, Path::new("/s/1.2"), JOB.as_bytes().to_vec());
        assert_eq!(
            (j.command, j.tmp_file),
            (vec![PLACE_HOLDER.to_string()], None)
        );
        // Without the variable, or with another command, the file runs.
        let j = plan_job_file(&env(&[]), Path::new("/s/1.2"), JOB.as_bytes().to_vec());
        assert!(j.tmp_file.is_some());
        let other = JOB.replace("LSB_DOCKER_PLACE_HOLDER", "echo LSB_DOCKER_PLACE_HOLDER");
        let j = plan_job_file(&raw, Path::new("/s/1.2"), other.into_bytes());
        assert!(j.tmp_file.is_some());
        assert_eq!(user_input(b"no markers\n"), None);
        assert_eq!(user_input(b"# LSBATCH: User input\nunterminated\n"), None);
    }

    #[test]
    fn only_when_the_command_is_the_job_file() {
        let p = Policy::default();
        let id = crate::core::identity::resolve(
            &crate::core::identity::fake::FakeDb::standard(),
            &p,
            2001,
            None,
        )
        .unwrap();
        let e = env(&[("LSB_JOBFILENAME", "/home/a/.lsbatch/1.2")]);
        assert_eq!(job_file(&p, &id, &e, &["echo hi".into()]).unwrap(), None);
        assert_eq!(job_file(&p, &id, &env(&[]), &["/x".into()]).unwrap(), None);
        assert_eq!(
            job_file(&p, &id, &e, &["/home/a/.lsbatch/1.2".into(), "x".into()]).unwrap(),
            None
        );
        let tmpfs = Policy::parse("[tmp]\nkind = \"tmpfs\"\n", "t").unwrap();
        match job_file(&tmpfs, &id, &e, &["/home/a/.lsbatch/1.2".into()]) {
            Err(Error::Denied(d)) => assert_eq!(d.rule, "tmp.kind"),
            other => panic!("{other:?}"),
        }
        let rel = env(&[("LSB_JOBFILENAME", "rel/1.2")]);
        assert!(matches!(
            job_file(&p, &id, &rel, &["rel/1.2".into()]),
            Err(Error::Malformed(_))
        ));
    }
}
