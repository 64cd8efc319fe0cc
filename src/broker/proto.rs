//! The broker's wire format: length-prefixed JSON frames (u32 big-endian
//! length, bounded), the client's stdin/stdout/stderr passed with the first
//! frame as SCM_RIGHTS. Nothing the client says about who it is counts: the
//! daemon takes the identity from SO_PEERCRED.

use crate::core::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

pub const VERSION: u32 = 1;
/// The largest request (the job's environment can be large).
pub const MAX_HELLO: usize = 4 << 20;
/// The largest of every other frame.
pub const MAX_FRAME: usize = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    /// `lsf`, `env` or `slurm`: where the request's variables come from.
    pub scheduler: String,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub command: Vec<String>,
    /// Files to place in the job's /tmp (Slurm's batch script), by path
    /// relative to /tmp.
    #[serde(default)]
    pub tmp_files: Vec<TmpFile>,
    /// Slurm's container id (`%n.%u.%j.%s.%t`), labelled for query/kill.
    #[serde(default)]
    pub slurm_id: Option<String>,
    /// `berth explain` by a user (`text` or `json`): decide as for a
    /// launch, with the engine's facts, and answer with the plan; start
    /// nothing.
    #[serde(default)]
    pub explain: Option<String>,
    /// A user's bundle command (SPEC §15) instead of a job. For a push the
    /// first descriptor is the tar, opened by the user.
    #[serde(default)]
    pub bundle: Option<BundleOp>,
    /// A Slurm container task's spool directory (the directory of its `%e`
    /// file), which the broker checks before it binds the step's into an
    /// MPI task (SPEC §14).
    #[serde(default)]
    pub slurm_task_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BundleOp {
    /// Publish `<cache>/users/<peer>/<name>` from the tar passed as the
    /// first descriptor: a save tar, or with `export` a rootfs tar.
    Push {
        name: String,
        export: bool,
        #[serde(default)]
        changes: Vec<String>,
        #[serde(default)]
        share: Option<String>,
    },
    /// The peer's bundles, those shared with it, and the site's.
    List {
        #[serde(default)]
        json: bool,
    },
    /// Remove one of the peer's own bundles.
    Rm { name: String },
}

/// Decided in the core; carried in [`Hello::tmp_files`] as is.
pub use crate::core::plan::TmpFile;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMsg {
    Signal { signal: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DaemonMsg {
    Started {
        container: String,
    },
    Exit {
        code: i32,
    },
    /// The answer to an explain request or a bundle command: what to print
    /// on stdout, and the exit code.
    Explained {
        code: i32,
        text: String,
    },
    Error {
        code: i32,
        message: String,
    },
    /// Bytes of a bundle push read so far, of the tar's size.
    Progress {
        done: u64,
        total: u64,
    },
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body =
        serde_json::to_vec(msg).map_err(|e| Error::internal("encoding a broker message", e))?;
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

pub fn write_frame<T: Serialize>(s: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let buf = encode(msg).map_err(|e| std::io::Error::other(e.to_string()))?;
    s.write_all(&buf)
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    s: &mut impl Read,
    max: usize,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    read_body(s, u32::from_be_bytes(len) as usize, max).map(Some)
}

fn read_body<T: for<'de> Deserialize<'de>>(
    s: &mut impl Read,
    n: usize,
    max: usize,
) -> std::io::Result<T> {
    if n > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes exceeds {max}"),
        ));
    }
    // Grow the buffer as bytes arrive: a peer that announces 4 MiB and
    // sends nothing must not make the daemon hold 4 MiB per connection.
    let mut body = Vec::with_capacity(n.min(64 << 10));
    s.take(n as u64).read_to_end(&mut body)?;
    if body.len() != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {} of {n} bytes", body.len()),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Send the hello frame with the three standard descriptors attached.
pub fn send_hello(s: &UnixStream, hello: &Hello, fds: [RawFd; 3]) -> Result<()> {
    let buf = encode(hello)?;
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let mut sent = nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&buf)],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::Unavailable(format!("sending the job to the broker: {e}")))?;
    let mut w = s;
    while sent < buf.len() {
        let n = w
            .write(&buf[sent..])
            .map_err(|e| Error::Unavailable(format!("sending the job to the broker: {e}")))?;
        sent += n;
    }
    Ok(())
}

/// Receive the hello frame and exactly three descriptors.
pub fn recv_hello(s: &UnixStream) -> std::io::Result<(Hello, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = nix::sys::socket::recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(v) = c {
                fds.extend(crate::sys::process::adopt_received(v));
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "client closed before its request",
        ));
    }
    // The socket's read timeout is the whole request's deadline, not each
    // read's: a client trickling a byte at a time cannot hold a slot long.
    let mut r = Deadline::new(s);
    if got < 4 {
        r.read_exact(&mut len[got..])?;
    }
    let hello: Hello = read_body(&mut r, u32::from_be_bytes(len) as usize, MAX_HELLO)?;
    if fds.len() != 3 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected 3 descriptors, got {}", fds.len()),
        ));
    }
    Ok((hello, fds))
}

/// Reads from a socket until the deadline its read timeout names (taken
/// when it is made), shortening the timeout as time passes.
struct Deadline<'a> {
    s: &'a UnixStream,
    until: Option<std::time::Instant>,
}

impl<'a> Deadline<'a> {
    fn new(s: &'a UnixStream) -> Deadline<'a> {
        let until = s
            .read_timeout()
            .ok()
            .flatten()
            .map(|t| std::time::Instant::now() + t);
        Deadline { s, until }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(until) = self.until {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request took too long to arrive",
                ));
            }
            self.s.set_read_timeout(Some(left))?;
        }
        let mut s = self.s;
        s.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickled_request_meets_one_deadline() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let t = std::time::Instant::now();
        let w = std::thread::spawn(move || {
            let mut a = a;
            // 100 bytes announced, one every 50 ms: each read is quick, the
            // whole would take 5 s.
            let _ = a.write_all(&100u32.to_be_bytes());
            for _ in 0..100 {
                if a.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let mut len = [0u8; 4];
        let mut r = Deadline::new(&b);
        r.read_exact(&mut len).unwrap();
        let e = read_body::<Hello>(&mut r, 100, MAX_HELLO).unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{e}");
        drop(b);
        w.join().unwrap();
    }

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        write_frame(&mut a, &DaemonMsg::Exit { code: 3 }).unwrap();
        assert_eq!(
            read_frame::<DaemonMsg>(&mut b, MAX_FRAME).unwrap(),
            Some(DaemonMsg::Exit { code: 3 })
        );
        a.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
        assert!(read_frame::<DaemonMsg>(&mut b, MAX_FRAME).is_err());
        drop(a);
        let (a, mut b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(read_frame::<DaemonMsg>(&mut b, MAX_FRAME).unwrap(), None);
        // A frame announced big and cut short is an error, not a hang or
        // an up-front allocation of the announced size.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(MAX_HELLO as u32).to_be_bytes()).unwrap();
        a.write_all(b"{}").unwrap();
        drop(a);
        let e = read_frame::<Hello>(&mut b, MAX_HELLO).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn hello_carries_three_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let h = Hello {
            version: VERSION,
            scheduler: "lsf".into(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            cwd: Some("/x".into()),
            command: vec!["id".into()],
            tmp_files: vec![],
            slurm_id: None,
            explain: None,
            bundle: None,
            slurm_task_dir: None,
        };
        send_hello(&a, &h, [0, 1, 2]).unwrap();
        let (got, fds) = recv_hello(&b).unwrap();
        assert_eq!(got, h);
        assert_eq!(fds.len(), 3);
        // Too few descriptors is refused.
        let (a, b) = UnixStream::pair().unwrap();
        let buf = encode(&h).unwrap();
        (&a).write_all(&buf).unwrap();
        assert!(recv_hello(&b).is_err());
    }
}
