//! The job's request, parsed from its environment (SPEC §4). Everything here
//! is untrusted: this module only checks syntax (a value that does not parse
//! is a malformed request, exit 64); the planner decides what is allowed.

use crate::core::error::{Error, Result};
use crate::core::image::ImageRef;
use crate::core::policy::Mode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum ImageSpec {
    Registry(ImageRef),
    Bundle(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    /// The spec as the user wrote it, for messages.
    pub raw: String,
    pub src: PathBuf,
    pub dst: PathBuf,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", content = "path", rename_all = "lowercase")]
pub enum Workdir {
    /// `LSF_DOCKER_WORKDIR`: a path inside the container.
    Explicit(PathBuf),
    /// The submission directory on the host (`LS_SUBCWD`, else the cwd).
    Submission(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub raw: String,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobId {
    pub id: String,
    pub index: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub image: ImageSpec,
    pub volumes: Vec<VolumeSpec>,
    pub workdir: Workdir,
    pub network: Option<String>,
    pub ipc: Option<String>,
    pub shm_size: Option<String>,
    pub ports: Vec<PortSpec>,
    pub env_files: Vec<PathBuf>,
    pub preserve_env: Option<bool>,
    pub entrypoint: Option<String>,
    pub add_hosts: Vec<(String, IpAddr)>,
    pub log_level: Option<log::LevelFilter>,
    pub job: JobId,
    /// The command after `--`; empty in raw-args mode.
    pub command: Vec<String>,
    /// `LSF_DOCKER_RUN_RAW_ARGS=1` with `LSB_DOCKER_PLACE_HOLDER`: run the
    /// image's own entrypoint and cmd.
    pub raw_args: bool,
    /// The job's environment, candidates for passing into the container.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
}

pub const PLACE_HOLDER: &str = "LSB_DOCKER_PLACE_HOLDER";

fn malformed<T>(var: &str, value: &str, why: &str) -> Result<T> {
    Err(Error::Malformed(format!("{var}={value:?}: {why}")))
}

/// Parse the request from the job's environment, its cwd and the command.
pub fn from_env(
    env: &BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    command: Vec<String>,
) -> Result<Request> {
    let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());

    let image = match get("LSB_CONTAINER_IMAGE") {
        None => {
            return Err(Error::Malformed(
                "LSB_CONTAINER_IMAGE is not set; submit with bsub -a 'docker(IMAGE)' or set it to an image or bundle:NAME".into(),
            ))
        }
        Some(v) => parse_image(v)?,
    };

    let volumes = match get("LSF_DOCKER_VOLUMES") {
        None => Vec::new(),
        Some(v) => v
            .split_ascii_whitespace()
            .map(parse_volume)
            .collect::<Result<_>>()?,
    };

    let workdir = match get("LSF_DOCKER_WORKDIR") {
        Some(w) => Workdir::Explicit(PathBuf::from(w)),
        None => match get("LS_SUBCWD") {
            Some(c) => Workdir::Submission(PathBuf::from(c)),
            None => match cwd {
                Some(c) => Workdir::Submission(c),
                None => {
                    return Err(Error::Malformed(
                        "no working directory: LS_SUBCWD is unset and the current directory is unknown; set LSF_DOCKER_WORKDIR".into(),
                    ))
                }
            },
        },
    };

    let network = get("LSF_DOCKER_NETWORK")
        .map(|v| mode_name("LSF_DOCKER_NETWORK", v))
        .transpose()?;
    let ipc = get("LSF_DOCKER_IPC")
        .map(|v| mode_name("LSF_DOCKER_IPC", v))
        .transpose()?;
    let shm_size = match get("LSF_DOCKER_SHM_SIZE") {
        Some(v) if crate::core::size::parse(v).is_none() => {
            return malformed("LSF_DOCKER_SHM_SIZE", v, "not a size like 4g or 512m")
        }
        // size::parse allows surrounding blanks; docker's parser does not,
        // and a newline must never reach an argv element.
        v => v.map(|s| s.trim().to_string()),
    };
    let ports = match get("LSF_DOCKER_PORTS") {
        None => Vec::new(),
        Some(v) => v
            .split_ascii_whitespace()
            .map(parse_port)
            .collect::<Result<_>>()?,
    };
    let env_files = match get("LSF_DOCKER_ENV_FILE") {
        None => Vec::new(),
        Some(v) => v.split_ascii_whitespace().map(PathBuf::from).collect(),
    };
    let preserve_env = match get("LSF_DOCKER_PRESERVE_ENVIRONMENT") {
        None => None,
        Some(v) => Some(parse_bool("LSF_DOCKER_PRESERVE_ENVIRONMENT", v)?),
    };
    let entrypoint = get("LSF_DOCKER_ENTRYPOINT").map(str::to_string);
    let add_hosts = match get("LSF_DOCKER_ADD_HOST") {
        None => Vec::new(),
        Some(v) => v
            .split_ascii_whitespace()
            .map(parse_add_host)
            .collect::<Result<_>>()?,
    };
    let log_level = match get("LSF_DOCKER_RUN_LOGLEVEL") {
        None => None,
        Some(v) => Some(match v.to_ascii_uppercase().as_str() {
            "CRITICAL" | "ERROR" => log::LevelFilter::Error,
            "WARNING" | "WARN" => log::LevelFilter::Warn,
            "INFO" => log::LevelFilter::Info,
            "DEBUG" => log::LevelFilter::Debug,
            _ => {
                return malformed(
                    "LSF_DOCKER_RUN_LOGLEVEL",
                    v,
                    "use CRITICAL, ERROR, WARNING, INFO or DEBUG",
                )
            }
        }),
    };
    let job = JobId {
        id: match get("LSB_JOBID") {
            None => "local".into(),
            Some(v) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => v.to_string(),
            Some(v) => return malformed("LSB_JOBID", v, "not a job number"),
        },
        index: match get("LSB_JOBINDEX") {
            None => 0,
            Some(v) => match v.parse::<u32>() {
                Ok(i) if v.bytes().all(|b| b.is_ascii_digit()) => i,
                _ => return malformed("LSB_JOBINDEX", v, "not an array index"),
            },
        },
    };
    let raw_requested = match get("LSF_DOCKER_RUN_RAW_ARGS") {
        None => false,
        Some(v) => parse_bool("LSF_DOCKER_RUN_RAW_ARGS", v)?,
    };
    let raw_args = raw_requested && command.len() == 1 && command[0].trim() == PLACE_HOLDER;
    if !raw_args && command.iter().all(|c| c.trim().is_empty()) {
        return Err(Error::Malformed(
            "no command: give the job's command after --".into(),
        ));
    }
    Ok(Request {
        image,
        volumes,
        workdir,
        network,
        ipc,
        shm_size,
        ports,
        env_files,
        preserve_env,
        entrypoint,
        add_hosts,
        log_level,
        job,
        command: if raw_args { Vec::new() } else { command },
        raw_args,
        env: env.clone(),
    })
}

pub fn parse_image(v: &str) -> Result<ImageSpec> {
    match v.strip_prefix("bundle:") {
        Some(name) if crate::core::share::parse_key(name).is_some() => {
            Ok(ImageSpec::Bundle(name.to_string()))
        }
        Some(name) => malformed(
            "LSB_CONTAINER_IMAGE",
            v,
            &format!(
                "bundle name {name:?} must be NAME (a site bundle), ~/NAME (your own) or USER/NAME, each NAME 1-64 of A-Z a-z 0-9 . _ - not starting with . or -"
            ),
        ),
        None => Ok(ImageSpec::Registry(ImageRef::parse(v)?)),
    }
}

/// `SRC[:DST[:ro|rw]]`. A path holding ':' cannot be written in this syntax;
/// such specs reach the planner with fields that it refuses by name.
pub fn parse_volume(spec: &str) -> Result<VolumeSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s] => (*s, *s, None),
        [s, d] => (*s, *d, None),
        [s, d, "ro"] => (*s, *d, Some(Mode::Ro)),
        [s, d, "rw"] => (*s, *d, Some(Mode::Rw)),
        _ => {
            // More fields than SRC:DST:MODE: a ':' inside a path, or options
            // docker would read (`:z`, `:shared`). Keep the whole thing as the
            // source so the planner refuses it with the character named.
            (spec, "", None)
        }
    };
    if src.is_empty() {
        return malformed(
            "LSF_DOCKER_VOLUMES",
            spec,
            "empty source; write SRC:DST[:ro]",
        );
    }
    Ok(VolumeSpec {
        raw: spec.to_string(),
        src: PathBuf::from(src),
        dst: PathBuf::from(dst),
        mode,
    })
}

fn mode_name(var: &str, v: &str) -> Result<String> {
    let ok = v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
    if ok {
        Ok(v.to_string())
    } else {
        malformed(var, v, "not a network or ipc mode name")
    }
}

fn parse_bool(var: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" => Ok(true),
        "0" | "false" | "no" | "n" => Ok(false),
        _ => malformed(var, v, "use true or false"),
    }
}

/// `[IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`.
pub fn parse_port(spec: &str) -> Result<PortSpec> {
    let bad = || {
        malformed(
            "LSF_DOCKER_PORTS",
            spec,
            "write HOSTPORT:CONTAINERPORT[/tcp|udp]",
        )
    };
    let (body, proto) = match spec.rsplit_once('/') {
        Some((b, p)) if p == "tcp" || p == "udp" => (b, p),
        Some(_) => return bad(),
        None => (spec, "tcp"),
    };
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0 && s.bytes().all(|b| b.is_ascii_digit()))
    };
    let (ip, hp, cp) = match body.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
        [c, h] => (None, *h, *c),
        [c, h, i] => {
            let Ok(ip) = i.parse::<IpAddr>() else {
                return bad();
            };
            (Some(ip), *h, *c)
        }
        _ => return bad(),
    };
    let (Some(host_port), Some(container_port)) = (port(hp), port(cp)) else {
        return bad();
    };
    Ok(PortSpec {
        raw: spec.to_string(),
        host_ip: ip,
        host_port,
        container_port,
        proto: proto.to_string(),
    })
}

/// A host port range from policy: `8080` or `8000-8999`.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let p = |x: &str| x.parse::<u16>().ok().filter(|v| *v > 0);
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (p(a)?, p(b)?);
            (a <= b).then_some((a, b))
        }
        None => p(s).map(|v| (v, v)),
    }
}

/// `HOST:IP` (the IP may be IPv6 and hold colons).
pub fn parse_add_host(spec: &str) -> Result<(String, IpAddr)> {
    let Some((host, ip)) = spec.split_once(':') else {
        return malformed("LSF_DOCKER_ADD_HOST", spec, "write HOST:IP");
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    match (host_ok, ip.parse::<IpAddr>()) {
        (true, Ok(ip)) => Ok((host.to_string(), ip)),
        _ => malformed(
            "LSF_DOCKER_ADD_HOST",
            spec,
            "write HOST:IP with a valid host name and address",
        ),
    }
}

/// Parse `VAR=value` lines of an env file (comments and blank lines skipped).
pub fn parse_env_file(origin: &str, text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            return Err(Error::Malformed(format!(
                "{origin}:{}: {line:?} is not VAR=value",
                i + 1
            )));
        };
        if !crate::core::envfilter::valid_name(k) {
            return Err(Error::Malformed(format!(
                "{origin}:{}: {k:?} is not a valid variable name",
                i + 1
            )));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(pairs: &[(&str, &str)]) -> Result<Request> {
        from_env(
            &env(pairs),
            Some("/storage1/fs1/a".into()),
            vec!["true".into()],
        )
    }

    #[test]
    fn minimal_request() {
        let r = req(&[("LSB_CONTAINER_IMAGE", "alpine"), ("LSB_JOBID", "42")]).unwrap();
        assert_eq!(
            r.job,
            JobId {
                id: "42".into(),
                index: 0
            }
        );
        assert_eq!(r.workdir, Workdir::Submission("/storage1/fs1/a".into()));
        let r = req(&[("LSB_CONTAINER_IMAGE", "alpine"), ("LS_SUBCWD", "/x")]).unwrap();
        assert_eq!(r.workdir, Workdir::Submission("/x".into()));
        let r = req(&[
            ("LSB_CONTAINER_IMAGE", "bundle:pt2"),
            ("LSF_DOCKER_WORKDIR", "/w"),
        ])
        .unwrap();
        assert_eq!(r.image, ImageSpec::Bundle("pt2".into()));
        for key in ["~/pt2", "alice/pt2"] {
            assert_eq!(
                parse_image(&format!("bundle:{key}")).unwrap(),
                ImageSpec::Bundle(key.into())
            );
        }
        for bad in [
            "bundle:a/b/c",
            "bundle:~/../x",
            "bundle:../x/y",
            "bundle:/etc/x",
        ] {
            assert!(parse_image(bad).is_err(), "{bad}");
        }
        assert_eq!(r.workdir, Workdir::Explicit("/w".into()));
    }

    #[test]
    fn malformed_values_are_64() {
        for pairs in [
            vec![],
            vec![("LSB_CONTAINER_IMAGE", "-x")],
            vec![("LSB_CONTAINER_IMAGE", "bundle:../x")],
            vec![
                ("LSB_CONTAINER_IMAGE", "a"),
                ("LSF_DOCKER_SHM_SIZE", "lots"),
            ],
            vec![("LSB_CONTAINER_IMAGE", "a"), ("LSF_DOCKER_PORTS", "80")],
            vec![("LSB_CONTAINER_IMAGE", "a"), ("LSF_DOCKER_PORTS", "x:80")],
            vec![
                ("LSB_CONTAINER_IMAGE", "a"),
                ("LSF_DOCKER_ADD_HOST", "nohost"),
            ],
            vec![
                ("LSB_CONTAINER_IMAGE", "a"),
                ("LSF_DOCKER_ADD_HOST", "h:999.1.1.1"),
            ],
            vec![
                ("LSB_CONTAINER_IMAGE", "a"),
                ("LSF_DOCKER_NETWORK", "a b;c"),
            ],
            vec![
                ("LSB_CONTAINER_IMAGE", "a"),
                ("LSF_DOCKER_PRESERVE_ENVIRONMENT", "maybe"),
            ],
            vec![("LSB_CONTAINER_IMAGE", "a"), ("LSB_JOBID", "1; rm")],
            vec![("LSB_CONTAINER_IMAGE", "a"), ("LSB_JOBINDEX", "-1")],
            vec![
                ("LSB_CONTAINER_IMAGE", "a"),
                ("LSF_DOCKER_RUN_LOGLEVEL", "LOUD"),
            ],
        ] {
            match req(&pairs) {
                Err(Error::Malformed(_)) => {}
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
        let r = from_env(
            &env(&[("LSB_CONTAINER_IMAGE", "a")]),
            Some("/".into()),
            vec![],
        );
        assert!(matches!(r, Err(Error::Malformed(_))));
    }

    #[test]
    fn shm_size_is_trimmed() {
        // Found by fuzzing: "64m\n" parsed and went into argv as is.
        let r = req(&[
            ("LSB_CONTAINER_IMAGE", "a"),
            ("LSF_DOCKER_SHM_SIZE", " 64m\n"),
        ])
        .unwrap();
        assert_eq!(r.shm_size.as_deref(), Some("64m"));
    }

    #[test]
    fn volumes() {
        let v = parse_volume("/storage1/fs1/a:/data:ro").unwrap();
        assert_eq!(
            (v.src.to_str(), v.dst.to_str(), v.mode),
            (Some("/storage1/fs1/a"), Some("/data"), Some(Mode::Ro))
        );
        let v = parse_volume("/storage1/fs1/a").unwrap();
        assert_eq!(v.dst, v.src);
        // Extra fields keep the whole spec as source, for the planner to refuse.
        let v = parse_volume("/s/we:ird:/data").unwrap();
        assert_eq!(v.src.to_str(), Some("/s/we:ird:/data"));
        let v = parse_volume("/s:/d:z").unwrap();
        assert_eq!(v.dst.to_str(), Some(""));
    }

    #[test]
    fn ports_and_hosts() {
        let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto.as_str()),
            (8080, 80, "udp")
        );
        assert_eq!(parse_port_range("8000-8999"), Some((8000, 8999)));
        assert_eq!(parse_port_range("9-1"), None);
        assert_eq!(parse_add_host("db:10.0.0.1").unwrap().0, "db");
        assert!(parse_add_host("v6:fe80::1").is_ok());
    }

    #[test]
    fn raw_args_only_with_placeholder() {
        let e = env(&[
            ("LSB_CONTAINER_IMAGE", "a"),
            ("LSF_DOCKER_RUN_RAW_ARGS", "1"),
        ]);
        let r = from_env(&e, Some("/".into()), vec![PLACE_HOLDER.into()]).unwrap();
        assert!(r.raw_args && r.command.is_empty());
        let r = from_env(&e, Some("/".into()), vec!["ls".into()]).unwrap();
        assert!(!r.raw_args);
    }

    #[test]
    fn env_files() {
        let v = parse_env_file("f", "# c\n\nA=1\n  B=x=y\n").unwrap();
        assert_eq!(
            v,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(parse_env_file("f", "NOEQ\n").is_err());
        assert!(parse_env_file("f", "BAD-NAME=1\n").is_err());
    }
}
