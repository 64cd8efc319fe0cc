//! The container calls of a launch (SPEC §13): create, attach (a hijacked
//! connection carrying the job's streams), wait (registered before start,
//! so no exit is missed), start. Each is one connection on the engine's
//! socket with its own deadline; a connection that fails is "unavailable"
//! (69), an engine that answers with an error is "internal" (70) with the
//! engine's own message, never a job's exit code.

use super::{encode, parse_head, Engine, API};
use crate::core::error::{Error, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long the engine may take to answer a create or start. Both are
/// normally tens of milliseconds; a hung engine must not hang the job's
/// scheduler slot forever.
const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// The job's streams: an upgraded connection on which the engine sends
/// stdout and stderr multiplexed (8-byte frame headers, no TTY) and reads
/// stdin.
pub struct Attach {
    pub stream: UnixStream,
    /// Bytes of the stream that arrived with the upgrade's reply.
    pub early: Vec<u8>,
}

/// A wait registered with the engine: its reply arrives when the container
/// is gone.
pub struct Wait {
    stream: UnixStream,
    buf: Vec<u8>,
    chunked: bool,
}

impl Wait {
    /// A wait whose reply (after its head) arrives on `stream`: for
    /// engines other than dockerd's socket (the launcher's test fake).
    pub fn from_stream(stream: UnixStream, chunked: bool) -> Wait {
        Wait {
            stream,
            buf: Vec::new(),
            chunked,
        }
    }

    /// Block until the container exits and is removed; its exit status
    /// (128+N for a signal, as the engine reports it).
    pub fn result(mut self) -> Result<i32> {
        let _ = self.stream.set_read_timeout(None);
        let mut raw = std::mem::take(&mut self.buf);
        let lost = |e: String| {
            Error::Unavailable(format!(
                "lost the docker engine while the job ran ({e}); its container is removed when the engine returns: requeue the job"
            ))
        };
        self.stream
            .read_to_end(&mut raw)
            .map_err(|e| lost(e.to_string()))?;
        let body = if self.chunked {
            super::dechunk(&raw).ok_or_else(|| lost("the engine closed the wait early".into()))?
        } else {
            raw
        };
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| lost("the engine closed the wait early".into()))?;
        match v.get("StatusCode").and_then(Value::as_i64) {
            Some(c) => Ok(c.clamp(0, 255) as i32),
            None => Err(Error::Internal(format!(
                "the engine's wait reply has no exit status: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ))),
        }
    }
}

/// The container calls the launcher makes: the Engine API on its socket
/// ([`Engine`]), or a recording fake in the launcher's unit tests.
pub trait ContainerApi {
    fn create(&self, name: &str, body: &Value) -> Result<String>;
    fn attach(&self, id: &str) -> Result<Attach>;
    fn wait(&self, id: &str) -> Result<Wait>;
    fn start(&self, id: &str) -> Result<()>;
    /// `Ok(false)`: no such container, or not running.
    fn kill(&self, id: &str, signal: &str) -> Result<bool>;
    fn unpause(&self, id: &str) -> Result<bool>;
    fn remove(&self, id: &str) -> Result<bool>;
    /// The host pid of the container's first process, if it runs.
    fn init_pid(&self, _id: &str) -> Option<i32> {
        None
    }
}

impl ContainerApi for Engine {
    fn init_pid(&self, id: &str) -> Option<i32> {
        self.inspect_container(id)
            .ok()
            .flatten()
            .and_then(|v| v.pointer("/State/Pid").and_then(Value::as_i64))
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
    }
    fn create(&self, name: &str, body: &Value) -> Result<String> {
        Engine::create(self, name, body)
    }
    fn attach(&self, id: &str) -> Result<Attach> {
        Engine::attach(self, id)
    }
    fn wait(&self, id: &str) -> Result<Wait> {
        Engine::wait(self, id)
    }
    fn start(&self, id: &str) -> Result<()> {
        Engine::start(self, id)
    }
    fn kill(&self, id: &str, signal: &str) -> Result<bool> {
        Engine::kill(self, id, signal)
    }
    fn unpause(&self, id: &str) -> Result<bool> {
        Engine::unpause(self, id)
    }
    fn remove(&self, id: &str) -> Result<bool> {
        Engine::remove(self, id)
    }
}

impl Engine {
    fn engine_error(&self, what: &str, status: u16, body: &[u8]) -> Error {
        let msg = super::message_of(body);
        Error::Internal(format!(
            "the docker engine refused to {what} (HTTP {status}: {msg})"
        ))
    }

    /// `POST /containers/create?name=…`; the container's id.
    pub fn create(&self, name: &str, body: &Value) -> Result<String> {
        let r = self.request(
            "POST",
            &format!("/containers/create?name={}", encode(name)),
            Some(body),
            CALL_DEADLINE,
        )?;
        match r.status {
            201 => r
                .json()?
                .get("Id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::Internal("create reply without an Id".into())),
            // The image was removed between the check and the create (an
            // admin's `docker rmi`): nothing ran, requeue.
            404 => Err(Error::Unavailable(format!(
                "the job's image is no longer on this node ({}); requeue the job",
                r.message()
            ))),
            s => Err(self.engine_error("create the container", s, &r.body)),
        }
    }

    /// Attach to the container's stdin, stdout and stderr, before it starts
    /// (so no output is lost).
    pub fn attach(&self, id: &str) -> Result<Attach> {
        let mut s = self.connect()?;
        s.set_write_timeout(Some(CALL_DEADLINE)).ok();
        s.set_read_timeout(Some(CALL_DEADLINE)).ok();
        let req = format!(
            "POST {API}/containers/{}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth/{}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
            encode(id),
            env!("CARGO_PKG_VERSION"),
        );
        s.write_all(req.as_bytes())
            .map_err(|e| self.unavailable(e))?;
        let (status, _, rest) = read_head(&mut s).map_err(|e| self.unavailable(e))?;
        if status != 101 && status != 200 {
            let mut body = rest;
            let _ = s.read_to_end(&mut body);
            return Err(self.engine_error("attach to the container", status, &body));
        }
        s.set_read_timeout(None).ok();
        s.set_write_timeout(None).ok();
        Ok(Attach {
            stream: s,
            early: rest,
        })
    }

    /// Register a wait for the container's removal (`condition=removed`:
    /// it is created with AutoRemove). Returns once the engine has the
    /// wait, before the container starts.
    pub fn wait(&self, id: &str) -> Result<Wait> {
        let mut s = self.connect()?;
        s.set_write_timeout(Some(CALL_DEADLINE)).ok();
        s.set_read_timeout(Some(CALL_DEADLINE)).ok();
        let req = format!(
            "POST {API}/containers/{}/wait?condition=removed HTTP/1.1\r\nHost: docker\r\nUser-Agent: berth/{}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            encode(id),
            env!("CARGO_PKG_VERSION"),
        );
        s.write_all(req.as_bytes())
            .map_err(|e| self.unavailable(e))?;
        let (status, headers, rest) = read_head(&mut s).map_err(|e| self.unavailable(e))?;
        if status != 200 {
            let mut body = rest;
            let _ = s.read_to_end(&mut body);
            return Err(self.engine_error("wait for the container", status, &body));
        }
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        Ok(Wait {
            stream: s,
            buf: rest,
            chunked,
        })
    }

    /// `POST /containers/{id}/start`.
    pub fn start(&self, id: &str) -> Result<()> {
        let r = self.request(
            "POST",
            &format!("/containers/{}/start", encode(id)),
            None,
            CALL_DEADLINE,
        )?;
        match r.status {
            204 | 304 => Ok(()),
            s => Err(self.engine_error("start the container", s, &r.body)),
        }
    }
}

/// Read an HTTP reply's status line and headers; what was read past them
/// is returned as the start of the body (or of the upgraded stream).
/// Status, headers, and the bytes read past the head.
type Head = (u16, Vec<(String, String)>, Vec<u8>);

pub(super) fn read_head(s: &mut UnixStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, headers) = parse_head(&buf[..end]).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP reply")
            })?;
            return Ok((status, headers, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 << 10 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "HTTP reply head over 64 KiB",
            ));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the engine closed the connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
