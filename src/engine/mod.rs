//! A small client for the Docker Engine API on its unix socket. Asking the
//! engine directly costs about a millisecond where a docker CLI call costs
//! ~22 ms (see bench/), and a job start has a budget of ~12 ms.

use crate::core::error::{Error, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod check;
mod container;
pub mod exec;
pub mod facts;
pub use container::{Attach, ContainerApi, Wait};

/// The Engine API version berth speaks, pinned: what it sends and reads
/// never changes under it when the engine is upgraded. 1.41 is Docker
/// 20.10's (Debian 12); later engines still serve it.
pub const API: &str = "/v1.41";

pub struct Engine {
    socket: PathBuf,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::internal("engine reply is not JSON", e))
    }
    pub(crate) fn message(&self) -> String {
        message_of(&self.body)
    }
}

/// The engine's error message in a reply body (`{"message": …}`), or the
/// body's first 300 characters.
pub(crate) fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(300)
                .collect()
        })
        .replace(['\n', '\r'], " ")
}

/// Percent-encode a query value or path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Engine {
    pub fn new(socket: &Path) -> Engine {
        Engine {
            socket: socket.to_path_buf(),
        }
    }

    /// The engine's socket (a holder is removed through the engine that made it).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new connection to the engine's socket.
    pub(crate) fn connect(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket).map_err(|e| self.unavailable(e))
    }

    pub(crate) fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!(
            "docker engine at {} is not reachable ({e}); start dockerd on this node, or requeue the job",
            self.socket.display()
        ))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Response> {
        let mut s = self.connect()?;
        s.set_read_timeout(Some(timeout)).ok();
        s.set_write_timeout(Some(timeout)).ok();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {API}{path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth/{}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| self.unavailable(e))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| self.unavailable(e))?;
        parse_response(&raw, method == "HEAD")
            .ok_or_else(|| self.unavailable("malformed HTTP reply"))
    }

    fn get(&self, path: &str) -> Result<Response> {
        self.request("GET", path, None, Duration::from_secs(30))
    }

    /// A GET of one object: its JSON, `None` if the engine has no such
    /// object (404), unavailable otherwise.
    fn get_optional(&self, path: &str, what: &str) -> Result<Option<Value>> {
        let r = self.get(path)?;
        match r.status {
            200 => r.json().map(Some),
            404 => Ok(None),
            s => Err(self.unavailable(format!("{what} HTTP {s}: {}", r.message()))),
        }
    }

    /// `GET /version`: engine and API versions, and its components (runc).
    pub fn version(&self) -> Result<Value> {
        let r = self.get("/version")?;
        if r.status != 200 {
            return Err(self.unavailable(format!("HTTP {}: {}", r.status, r.message())));
        }
        r.json()
    }

    /// The engine's cgroup driver (`cgroupfs`, `systemd`) from `GET /info`.
    pub fn cgroup_driver(&self) -> Option<String> {
        self.info()?
            .get("CgroupDriver")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// `GET /info`; `None` when the engine does not answer it.
    pub fn info(&self) -> Option<Value> {
        let r = self.get("/info").ok()?;
        if r.status != 200 {
            return None;
        }
        r.json().ok()
    }

    /// Inspect an image by reference or id; `None` when the engine has none.
    pub fn inspect_image(&self, reference: &str) -> Result<Option<Value>> {
        self.get_optional(
            &format!("/images/{}/json", encode(reference)),
            "image inspect",
        )
    }

    /// Pull an image (`POST /images/create`), reading the progress stream to
    /// its end; an error in the stream fails the pull.
    pub fn pull(&self, reference: &str) -> Result<()> {
        let (name, tag) = match reference.rsplit_once('@') {
            Some((n, d)) => (n.to_string(), d.to_string()),
            None => {
                let slash = reference.rfind('/').map_or(0, |i| i + 1);
                match reference[slash..].rfind(':') {
                    Some(i) => (
                        reference[..slash + i].to_string(),
                        reference[slash + i + 1..].to_string(),
                    ),
                    None => (reference.to_string(), "latest".to_string()),
                }
            }
        };
        let r = self.request(
            "POST",
            &format!(
                "/images/create?fromImage={}&tag={}",
                encode(&name),
                encode(&tag)
            ),
            None,
            Duration::from_secs(3600),
        )?;
        if r.status != 200 {
            return Err(pull_error(reference, r.status, &r.message()));
        }
        for line in r.body.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if let Some(e) = v.get("error").and_then(Value::as_str) {
                    return Err(pull_error(reference, 200, e));
                }
            }
        }
        Ok(())
    }

    /// Send a signal to a container. `Ok(false)` if it does not exist or
    /// is not running.
    pub fn kill(&self, name: &str, signal: &str) -> Result<bool> {
        let r = self.request(
            "POST",
            &format!(
                "/containers/{}/kill?signal={}",
                encode(name),
                encode(signal)
            ),
            None,
            Duration::from_secs(10),
        )?;
        Ok(r.status == 204)
    }

    /// Force-remove a container; `Ok(false)` if there was none.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let r = self.request(
            "DELETE",
            &format!("/containers/{}?force=1&v=1", encode(name)),
            None,
            Duration::from_secs(30),
        )?;
        match r.status {
            204 => Ok(true),
            404 => Ok(false),
            // 409: removal already in progress (the --rm of docker run).
            409 => Ok(true),
            s => Err(Error::Unavailable(format!(
                "remove {name}: HTTP {s}: {}",
                r.message()
            ))),
        }
    }

    pub fn inspect_container(&self, name: &str) -> Result<Option<Value>> {
        self.get_optional(
            &format!("/containers/{}/json", encode(name)),
            "container inspect",
        )
    }

    /// `GET /containers/json?all=1` filtered by labels (`key=value` each):
    /// every container, running or not, that carries all of them.
    pub fn list_containers(&self, labels: &[String]) -> Result<Vec<Value>> {
        let filters = serde_json::json!({ "label": labels }).to_string();
        let r = self.get(&format!(
            "/containers/json?all=1&filters={}",
            encode(&filters)
        ))?;
        if r.status != 200 {
            return Err(self.unavailable(format!(
                "container list HTTP {}: {}",
                r.status,
                r.message()
            )));
        }
        match r.json()? {
            Value::Array(a) => Ok(a),
            _ => Err(Error::Internal("container list is not a JSON array".into())),
        }
    }

    /// Freeze every process of a container (`docker pause`). `Ok(false)` if
    /// there is no such container; an error if it cannot be paused (e.g.
    /// it is not running).
    pub fn pause(&self, name: &str) -> Result<bool> {
        self.post_action(name, "pause")
    }

    /// Thaw a paused container (`docker unpause`).
    pub fn unpause(&self, name: &str) -> Result<bool> {
        self.post_action(name, "unpause")
    }

    fn post_action(&self, name: &str, action: &str) -> Result<bool> {
        let r = self.request(
            "POST",
            &format!("/containers/{}/{action}", encode(name)),
            None,
            Duration::from_secs(30),
        )?;
        match r.status {
            204 => Ok(true),
            404 => Ok(false),
            s => Err(Error::Unavailable(format!(
                "{action} {name}: HTTP {s}: {}",
                r.message()
            ))),
        }
    }

    /// One sample of a container's resource usage (`GET
    /// /containers/{name}/stats?stream=false`, which waits for a second
    /// sample so CPU percentages can be computed). `None` if it is gone.
    pub fn stats(&self, name: &str) -> Result<Option<Value>> {
        self.get_optional(
            &format!("/containers/{}/stats?stream=false", encode(name)),
            "container stats",
        )
    }

    /// Whether `/bin/sh` in the image resolves to an executable regular
    /// file. The engine only answers path questions about containers, so a
    /// never-started container is created, asked, and removed (~70 ms, once
    /// per image id: the answer is cached by the caller).
    pub fn probe_shell(&self, image_id: &str, name: &str) -> Result<bool> {
        let body = serde_json::json!({
            "Image": image_id,
            "Entrypoint": ["/bin/sh"],
            "Cmd": [],
            "NetworkDisabled": true,
            "Labels": {"berth.probe": "1"},
            "HostConfig": {"NetworkMode": "none"},
        });
        let r = self.request(
            "POST",
            &format!("/containers/create?name={}", encode(name)),
            Some(&body),
            Duration::from_secs(60),
        )?;
        if r.status != 201 {
            return Err(Error::Unavailable(format!(
                "cannot inspect the files of image {image_id}: {}",
                r.message()
            )));
        }
        let result = self.stat_shell(name);
        let _ = self.remove(name);
        result
    }

    fn stat_shell(&self, name: &str) -> Result<bool> {
        let mut path = "/bin/sh".to_string();
        for _ in 0..16 {
            let r = self.request(
                "HEAD",
                &format!(
                    "/containers/{}/archive?path={}",
                    encode(name),
                    encode(&path)
                ),
                None,
                Duration::from_secs(30),
            )?;
            if r.status == 404 {
                return Ok(false);
            }
            if r.status != 200 {
                return Err(Error::Unavailable(format!(
                    "stat {path} in image: HTTP {}",
                    r.status
                )));
            }
            let Some(stat) = r.header("X-Docker-Container-Path-Stat") else {
                return Ok(false);
            };
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(stat.trim())
                .map_err(|e| Error::internal("path stat header", e))?;
            let v: Value =
                serde_json::from_slice(&raw).map_err(|e| Error::internal("path stat JSON", e))?;
            let mode = v.get("mode").and_then(Value::as_u64).unwrap_or(0);
            // Go's os.FileMode: type bits at the top, permissions below.
            const SYMLINK: u64 = 1 << 27;
            // ModeDir | ModeSymlink | ModeDevice | ModeNamedPipe | ModeSocket
            // | ModeCharDevice | ModeIrregular
            const TYPE: u64 =
                (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19);
            if mode & SYMLINK != 0 {
                let target = v.get("linkTarget").and_then(Value::as_str).unwrap_or("");
                if target.is_empty() || target == path {
                    return Ok(false);
                }
                path = if target.starts_with('/') {
                    target.to_string()
                } else {
                    let dir = Path::new(&path).parent().unwrap_or(Path::new("/"));
                    dir.join(target).display().to_string()
                };
                continue;
            }
            return Ok(mode & TYPE == 0 && mode & 0o111 != 0);
        }
        Ok(false)
    }
}

/// Images: load, list, tag, remove (bundles, SPEC §6).
impl Engine {
    /// Stream `len` bytes of a tar into `POST /images/load` (sendfile from
    /// the file, never buffered in memory). `Ok(Ok(refs))`: what the engine
    /// reports loaded (`sha256:…` ids, or references); `Ok(Err(msg))`: the
    /// engine refused the tar (e.g. a layer not matching its diff_id).
    pub fn load(
        &self,
        tar: &std::fs::File,
        len: u64,
        tick: &mut dyn FnMut(u64, u64),
    ) -> Result<std::result::Result<Vec<String>, String>> {
        let mut s = self.connect()?;
        let t = Some(Duration::from_secs(3600));
        s.set_read_timeout(t).ok();
        s.set_write_timeout(t).ok();
        let head = format!(
            "POST {API}/images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth/{}\r\nConnection: close\r\nContent-Type: application/x-tar\r\nContent-Length: {len}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
        );
        s.write_all(head.as_bytes())
            .map_err(|e| self.unavailable(e))?;
        // pread from 0 whatever the file's offset; progress every 100 ms.
        let sent = (|| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; 1 << 20];
            let (mut done, mut last) = (0u64, std::time::Instant::now());
            while done < len {
                let want = buf.len().min((len - done) as usize);
                let n = tar.read_at(&mut buf[..want], done)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                s.write_all(&buf[..n])?;
                done += n as u64;
                if last.elapsed() >= Duration::from_millis(100) {
                    last = std::time::Instant::now();
                    tick(done, len);
                }
            }
            Ok(())
        })();
        // Read the reply even if the engine stopped reading early.
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        let r = parse_response(&raw, false);
        let r = match (r, sent, read) {
            (Some(r), _, _) => r,
            (None, Err(e), _) | (None, _, Err(e)) => return Err(self.unavailable(e)),
            (None, _, _) => return Err(self.unavailable("malformed HTTP reply to image load")),
        };
        if r.status != 200 {
            return Ok(Err(format!("HTTP {}: {}", r.status, r.message())));
        }
        let mut out = Vec::new();
        for line in r.body.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                return Ok(Err(e.to_string()));
            }
            if let Some(st) = v.get("stream").and_then(Value::as_str) {
                for l in st.lines() {
                    if let Some(id) = l.strip_prefix("Loaded image ID: ") {
                        out.push(id.trim().to_string());
                    } else if let Some(r) = l.strip_prefix("Loaded image: ") {
                        out.push(r.trim().to_string());
                    }
                }
            }
        }
        Ok(Ok(out))
    }

    /// Every image: its id and tags (`GET /images/json`).
    pub fn images(&self) -> Result<Vec<(String, Vec<String>)>> {
        let r = self.get("/images/json?all=1")?;
        if r.status != 200 {
            return Err(self.unavailable(format!("image list HTTP {}: {}", r.status, r.message())));
        }
        let v = r.json()?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        let id = i
                            .get("Id")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let tags = i
                            .get("RepoTags")
                            .and_then(Value::as_array)
                            .map(|t| {
                                t.iter()
                                    .filter_map(|x| x.as_str())
                                    .filter(|x| *x != "<none>:<none>")
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default();
                        (id, tags)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn image_ids(&self) -> Result<Vec<String>> {
        Ok(self.images()?.into_iter().map(|(id, _)| id).collect())
    }

    /// `DELETE /images/{ref}`: untag a reference, or remove an image by id
    /// (`force` also when tagged or used by a stopped container).
    /// `Ok(false)` if there was none.
    pub fn remove_image(&self, reference: &str, force: bool) -> Result<bool> {
        let r = self.request(
            "DELETE",
            &format!(
                "/images/{}?force={}&noprune=0",
                encode(reference),
                u8::from(force)
            ),
            None,
            Duration::from_secs(120),
        )?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(Error::Unavailable(format!(
                "remove image {reference}: HTTP {s}: {}",
                r.message()
            ))),
        }
    }

    /// `POST /images/{id}/tag`.
    pub fn tag_image(&self, id: &str, repo: &str, tag: &str) -> Result<()> {
        let r = self.request(
            "POST",
            &format!(
                "/images/{}/tag?repo={}&tag={}",
                encode(id),
                encode(repo),
                encode(tag)
            ),
            None,
            Duration::from_secs(30),
        )?;
        if r.status != 201 {
            return Err(Error::Unavailable(format!(
                "tag {id} as {repo}:{tag}: HTTP {}: {}",
                r.status,
                r.message()
            )));
        }
        Ok(())
    }
}

/// A failed pull: an image the registry says does not exist, or that the
/// node may not pull, is the user's error (a denial: requeueing cannot
/// help); anything else (registry or engine unreachable) is "unavailable".
fn pull_error(reference: &str, status: u16, msg: &str) -> Error {
    let m = msg.to_ascii_lowercase();
    let missing = status == 404
        || [
            "manifest unknown",
            "not found",
            "pull access denied",
            "unauthorized",
            "repository does not exist",
            "name unknown",
        ]
        .iter()
        .any(|k| m.contains(k));
    if missing {
        Error::Denied(crate::core::error::Denial::new(
            "images.missing",
            reference,
            format!("image {reference} does not exist in its registry, or this node may not pull it ({msg})"),
            "check the image name and tag (docker.io/library/NAME:TAG), or ask for access to the repository",
        ))
    } else {
        Error::Unavailable(format!(
            "pull of {reference} failed: {msg}; the registry may be unreachable: requeue the job"
        ))
    }
}

/// An HTTP reply's status and headers (the text before the blank line).
pub(crate) fn parse_head(head: &[u8]) -> Option<(u16, Vec<(String, String)>)> {
    let head_text = std::str::from_utf8(head).ok()?;
    let mut lines = head_text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Some((status, headers))
}

/// Decode a chunked body (RFC 9112 §7.1); `None` if it is cut short.
pub fn dechunk(mut p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let le = p.windows(2).position(|w| w == b"\r\n")?;
        let size_txt = std::str::from_utf8(&p[..le]).ok()?;
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        p = &p[le + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(p.get(..size)?);
        p = p.get(size + 2..)?;
    }
}

/// Parse an HTTP/1.1 reply read to EOF (Connection: close), decoding a
/// chunked body.
pub fn parse_response(raw: &[u8], head: bool) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (status, headers) = parse_head(&raw[..end])?;
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if head {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse_response(b"garbage", false).is_none());
    }

    #[test]
    fn a_missing_image_is_the_users_error_an_unreachable_registry_is_not() {
        for (status, msg) in [
            (404, "manifest for 127.0.0.1:5055/nosuch:1 not found: manifest unknown"),
            (200, "pull access denied for nosuch, repository does not exist or may require 'docker login'"),
            (500, "unauthorized: authentication required"),
        ] {
            match pull_error("127.0.0.1:5055/nosuch:1", status, msg) {
                Error::Denied(d) => assert_eq!(d.rule, "images.missing"),
                e => panic!("{msg}: {e:?}"),
            }
        }
        let e = pull_error(
            "127.0.0.1:5055/a:1",
            500,
            "Get \"https://127.0.0.1:5055/v2/\": dial tcp 127.0.0.1:5055: connect: connection refused",
        );
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }

    #[test]
    fn encodes() {
        assert_eq!(encode("docker.io/library/a:1"), "docker.io/library/a:1");
        assert_eq!(encode("a b&c?"), "a%20b%26c%3F");
    }
}
