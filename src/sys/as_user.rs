//! Acting with a job user's credentials from root — also from the broker,
//! which has threads. A forked child of a threaded process may only make
//! async-signal-safe calls until it execs, so berth does not do the work in
//! one: it execs itself (`/proc/self/exe`, opened once, early) as
//!
//! ```text
//! berth __as-user UID GID GROUP,GROUP,...
//! ```
//!
//! with a socket as its standard input, /dev/null as its output, an empty
//! environment and every other descriptor closed on exec (the forked child
//! only marks them close-on-exec: one system call, before exec). The helper
//! then, as a fresh single-threaded process and before it touches any
//! path, switches to exactly the user's groups, gid and uid, checks that it
//! cannot switch back to root and holds no capability, and answers
//! requests on the socket: resolve a path, stat it, check access, read a
//! file, open a directory (the descriptor is passed back with SCM_RIGHTS).
//! Every answer is what the user would see: a path the user cannot reach
//! fails with "permission denied", whatever is there.
//!
//! When berth is not root it already is the user, and [`UserView`] does the
//! same operations in-process.
//!
//! Wire format, both directions in native byte order: a request is
//! `op: u8, limit: u64, len: u32` and `len` bytes of path; a reply is
//! `status: u8, nfds: u8, len: u32` (the descriptor, if any, travels with
//! these six bytes) and `len` bytes.

use crate::core::error::{Error, Result};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The hidden first argument that makes berth the helper (see `main.rs`).
pub const SUBCOMMAND: &str = "__as-user";

const OP_RESOLVE: u8 = 1;
const OP_IS_DIR: u8 = 2;
const OP_ACCESS: u8 = 3;
const OP_READ: u8 = 4;
const OP_OPEN_DIR: u8 = 5;

const OK: u8 = 0;
/// The operation failed for the user; the payload is the errno (`i32`).
const ERRNO: u8 = 1;
const READ_CANNOT_OPEN: u8 = 2;
const READ_NOT_REGULAR: u8 = 3;
const READ_TOO_LARGE: u8 = 4;

/// Longest path a request carries (the kernel refuses anything over
/// PATH_MAX anyway, and one environment variable holds at most 128 KiB).
const MAX_PATH: usize = 256 << 10;

/// Exit codes of the helper.
const EXIT_USAGE: i32 = 2;
const EXIT_PROTOCOL: i32 = 3;
const EXIT_SWITCH: i32 = 99;
const EXIT_STILL_ROOT: i32 = 97;

/// How long the helper may take over one answer (a hung filesystem, or a
/// user who stopped it) before berth gives up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a file could not be read as the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    CannotOpen,
    NotRegular,
    TooLarge,
}

/// The filesystem as one user sees it: a helper running with exactly the
/// user's credentials when berth is root, berth itself when it already is
/// that user.
pub struct UserView {
    helper: Option<Helper>,
}

impl UserView {
    /// The view of user `uid` (primary group `gid`, supplementary `groups`).
    /// Root starts a helper; anyone else must be that user.
    pub fn new(uid: u32, gid: u32, groups: &[u32]) -> Result<UserView> {
        if super::is_root() {
            return Ok(UserView {
                helper: Some(Helper::start(uid, gid, groups)?),
            });
        }
        if super::real_uid() != uid {
            return Err(Error::Config(format!(
                "berth runs as uid {}, so it cannot check paths with the credentials of uid {uid}; run it as root or through the broker",
                super::real_uid()
            )));
        }
        Ok(UserView { helper: None })
    }

    /// realpath(3), as the user.
    pub fn resolve(&mut self, p: &Path) -> Result<std::io::Result<PathBuf>> {
        match &mut self.helper {
            None => Ok(std::fs::canonicalize(p)),
            Some(h) => {
                let r = h.call(OP_RESOLVE, 0, p)?;
                Ok(r.errno()
                    .map(|()| PathBuf::from(OsString::from_vec(r.payload))))
            }
        }
    }

    /// Whether `p` is a directory (following symlinks), as the user.
    pub fn is_dir(&mut self, p: &Path) -> Result<std::io::Result<bool>> {
        match &mut self.helper {
            None => Ok(std::fs::metadata(p).map(|m| m.is_dir())),
            Some(h) => {
                let r = h.call(OP_IS_DIR, 0, p)?;
                Ok(r.errno().map(|()| r.payload == [1]))
            }
        }
    }

    /// Whether the user can read and search `p` (every parent's search
    /// permission included, ACLs honoured).
    pub fn can_access(&mut self, p: &Path) -> Result<bool> {
        match &mut self.helper {
            None => Ok(access(&cpath(p)?)),
            Some(h) => Ok(h.call(OP_ACCESS, 0, p)?.payload == [1]),
        }
    }

    /// The contents of regular file `p`, at most `limit` bytes, read as the
    /// user (a FIFO never blocks).
    pub fn read_file(
        &mut self,
        p: &Path,
        limit: usize,
    ) -> Result<std::result::Result<Vec<u8>, ReadError>> {
        match &mut self.helper {
            None => Ok(read_file(&cpath(p)?, limit)),
            Some(h) => {
                let r = h.call(OP_READ, limit as u64, p)?;
                Ok(match r.status {
                    OK if r.payload.len() <= limit => Ok(r.payload),
                    READ_CANNOT_OPEN => Err(ReadError::CannotOpen),
                    READ_NOT_REGULAR => Err(ReadError::NotRegular),
                    READ_TOO_LARGE => Err(ReadError::TooLarge),
                    s => return Err(protocol(&format!("read answered status {s}"))),
                })
            }
        }
    }

    /// Directory `p` opened by the user (read and search permission on it
    /// and search on every parent), or `None` where the user cannot.
    pub fn open_dir(&mut self, p: &Path) -> Result<Option<OwnedFd>> {
        match &mut self.helper {
            None => Ok(open_dir(&cpath(p)?)),
            Some(h) => {
                let r = h.call(OP_OPEN_DIR, 0, p)?;
                match (r.status, r.fd) {
                    (OK, Some(fd)) => Ok(Some(fd)),
                    (ERRNO, None) => Ok(None),
                    (s, _) => Err(protocol(&format!("open answered status {s}"))),
                }
            }
        }
    }
}

fn protocol(what: &str) -> Error {
    Error::Internal(format!("credential helper: {what}"))
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Malformed(format!("path {p:?} holds a NUL byte")))
}

// ---------------------------------------------------------------------------
// the operations, as whoever runs them (the helper, or berth as the user)
// ---------------------------------------------------------------------------

fn access(p: &CString) -> bool {
    // SAFETY: p is a valid NUL-terminated string.
    unsafe { libc::access(p.as_ptr(), libc::R_OK | libc::X_OK) == 0 }
}

fn read_file(p: &CString, limit: usize) -> std::result::Result<Vec<u8>, ReadError> {
    // SAFETY: p is NUL-terminated; O_NONBLOCK keeps a FIFO from hanging us.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(ReadError::CannotOpen);
    }
    // SAFETY: fd was just opened and is owned here.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => {}
        _ => return Err(ReadError::NotRegular),
    }
    let mut out = Vec::new();
    match file.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(ReadError::TooLarge),
        Ok(_) => Ok(out),
        Err(_) => Err(ReadError::CannotOpen),
    }
}

fn open_dir(p: &CString) -> Option<OwnedFd> {
    // SAFETY: p is NUL-terminated; the flags open a directory only.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Looking up "." needs search permission on the directory itself.
    // SAFETY: fd is open; "." is a NUL-terminated literal.
    let dot = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            c".".as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if dot < 0 {
        return None;
    }
    // SAFETY: dot is ours to close.
    unsafe { libc::close(dot) };
    Some(fd)
}

// ---------------------------------------------------------------------------
// the parent's side
// ---------------------------------------------------------------------------

/// berth's own binary, opened once (with its device and inode): the helper
/// is exactly the program that is running, whatever happens to its path.
static SELF_EXE: OnceLock<std::result::Result<SelfExe, String>> = OnceLock::new();

/// The descriptor and the (device, inode) it had when opened.
type SelfExe = (OwnedFd, (u64, u64));

fn dev_ino(fd: RawFd) -> std::io::Result<(u64, u64)> {
    // SAFETY: st is plain old data filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes; a bad fd only fails.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

/// Open `/proc/self/exe` for the helper; done by `harden()` in root entry
/// points, before anything else happens, and otherwise at first use. The
/// descriptor, checked to still be that file.
pub fn open_self_exe() -> Result<RawFd> {
    let (fd, id) = SELF_EXE
        .get_or_init(|| {
            // SAFETY: a NUL-terminated literal; the descriptor is owned below.
            let fd =
                unsafe { libc::open(c"/proc/self/exe".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            // SAFETY: fd was just opened and is owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let id = dev_ino(fd.as_raw_fd()).map_err(|e| e.to_string())?;
            Ok((fd, id))
        })
        .as_ref()
        .map_err(|e| {
            Error::Internal(format!("opening berth's own binary (/proc/self/exe): {e}"))
        })?;
    if dev_ino(fd.as_raw_fd()).ok() != Some(*id) {
        return Err(Error::Internal(
            "the descriptor of berth's own binary was closed or replaced".into(),
        ));
    }
    Ok(fd.as_raw_fd())
}

/// The descriptor [`open_self_exe`] holds, if it was opened: the one
/// `close_inherited_fds` keeps.
pub(super) fn self_exe_fd() -> Option<RawFd> {
    SELF_EXE
        .get()
        .and_then(|r| r.as_ref().ok())
        .map(|(fd, _)| fd.as_raw_fd())
}

struct Helper {
    child: Child,
    chan: UnixStream,
}

struct Reply {
    status: u8,
    payload: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl Reply {
    /// `Ok` for status OK, the user's errno for ERRNO.
    fn errno(&self) -> std::io::Result<()> {
        match (self.status, self.payload.as_slice()) {
            (OK, _) => Ok(()),
            (ERRNO, b) if b.len() == 4 => {
                Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes([
                    b[0], b[1], b[2], b[3],
                ])))
            }
            _ => Err(std::io::Error::other(
                "malformed answer of the credential helper",
            )),
        }
    }
}

impl Helper {
    fn start(uid: u32, gid: u32, groups: &[u32]) -> Result<Helper> {
        let exe = open_self_exe()?;
        let (ours, theirs) = UnixStream::pair().map_err(|e| Error::internal("socketpair", e))?;
        ours.set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| Error::internal("socket timeout", e))?;
        let mut all = vec![gid];
        all.extend(groups.iter().copied().filter(|g| *g != gid));
        let groups: Vec<String> = all.iter().map(u32::to_string).collect();
        let mut cmd = Command::new(format!("/proc/self/fd/{exe}"));
        cmd.arg0("berth")
            .arg(SUBCOMMAND)
            .arg(uid.to_string())
            .arg(gid.to_string())
            .arg(groups.join(","))
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child of a process that may
        // have threads, so it makes only async-signal-safe system calls (no
        // allocation, no locks): it marks every descriptor but 0-2
        // close-on-exec (a descriptor of another job's client must not reach
        // the helper), keeping the exe descriptor usable for the exec itself.
        unsafe {
            cmd.pre_exec(|| {
                mark_cloexec_from(3);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::internal("starting the credential helper", e))?;
        Ok(Helper { child, chan: ours })
    }

    fn call(&mut self, op: u8, limit: u64, p: &Path) -> Result<Reply> {
        let path = p.as_os_str().as_bytes();
        if path.contains(&0) {
            return Err(Error::Malformed(format!("path {p:?} holds a NUL byte")));
        }
        if path.len() > MAX_PATH {
            return Err(Error::Malformed(format!(
                "a path of {} bytes is longer than berth accepts ({MAX_PATH})",
                path.len()
            )));
        }
        let mut req = Vec::with_capacity(13 + path.len());
        req.push(op);
        req.extend_from_slice(&limit.to_ne_bytes());
        req.extend_from_slice(&(path.len() as u32).to_ne_bytes());
        req.extend_from_slice(path);
        if let Err(e) = self.chan.write_all(&req) {
            return Err(self.failed(e));
        }
        let (head, fd) = self.recv_head().map_err(|e| self.failed(e))?;
        let len = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let max = if op == OP_READ {
            limit as usize
        } else {
            MAX_PATH
        };
        if len > max
            || (fd.is_some() && op != OP_OPEN_DIR)
            || head[1] as usize != usize::from(fd.is_some())
        {
            return Err(protocol("answer out of bounds"));
        }
        let mut payload = vec![0u8; len];
        if let Err(e) = self.chan.read_exact(&mut payload) {
            return Err(self.failed(e));
        }
        Ok(Reply {
            status: head[0],
            payload,
            fd,
        })
    }

    /// The six bytes of a reply's head and the descriptor sent with them.
    fn recv_head(&mut self) -> std::io::Result<([u8; 6], Option<OwnedFd>)> {
        let mut head = [0u8; 6];
        let mut got = 0;
        let mut fd = None;
        while got < head.len() {
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut head[got..])];
            let msg = match nix::sys::socket::recvmsg::<()>(
                self.chan.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if msg.bytes == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += msg.bytes;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(v) = c {
                    for raw in v {
                        // SAFETY: the kernel installed this descriptor for us.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        if fd.is_some() {
                            return Err(std::io::Error::other("two descriptors"));
                        }
                        fd = Some(owned);
                    }
                }
            }
        }
        Ok((head, fd))
    }

    /// What to say when talking to the helper failed with `e`.
    fn failed(&mut self, e: std::io::Error) -> Error {
        let _ = self.chan.shutdown(std::net::Shutdown::Both);
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Error::Internal(format!(
                "the credential helper did not answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            ));
        }
        // It closed its end: it is exiting (or has), so this wait is short.
        match self.child.wait().map(|s| s.code()) {
            Ok(Some(EXIT_SWITCH)) => {
                Error::internal("switching to the user's credentials", "setresuid failed")
            }
            Ok(Some(EXIT_STILL_ROOT)) => Error::Internal(
                "the credential helper could still regain root after switching to the user".into(),
            ),
            Ok(s) => Error::Internal(format!("credential helper ended ({s:?}) without answering")),
            Err(e) => Error::internal("waiting for the credential helper", e),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // No more requests: the helper has nothing left to do. Killed
        // rather than waited for, so that one the user stopped (it runs as
        // the user) cannot hold berth; the pid is ours until reaped.
        let _ = self.chan.shutdown(std::net::Shutdown::Both);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mark every descriptor from `from` up close-on-exec. Async-signal-safe:
/// system calls only.
fn mark_cloexec_from(from: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors; it closes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: one fcntl per possible descriptor.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is valid for writes.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(1 << 20) as i32
    } else {
        65536
    };
    for fd in from as i32..max {
        // SAFETY: F_SETFD on any integer is harmless (EBADF if not open).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

// ---------------------------------------------------------------------------
// the helper's side
// ---------------------------------------------------------------------------

/// `berth __as-user UID GID GROUPS`: become the user, then answer requests
/// on standard input until it closes. Never returns.
pub fn helper_main(args: &[OsString]) -> ! {
    let code = match serve(args) {
        Ok(()) => 0,
        Err(code) => code,
    };
    std::process::exit(code)
}

struct Creds {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn parse_args(args: &[OsString]) -> Option<Creds> {
    let [uid, gid, groups] = args else {
        return None;
    };
    let num = |s: &OsStr| s.to_str()?.parse::<u32>().ok();
    let groups = groups.to_str()?;
    let groups = if groups.is_empty() {
        Vec::new()
    } else {
        groups
            .split(',')
            .map(|g| g.parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()?
    };
    Some(Creds {
        uid: num(uid)?,
        gid: num(gid)?,
        groups,
    })
}

fn serve(args: &[OsString]) -> std::result::Result<(), i32> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only;
    // PR_SET_NAME a NUL-terminated literal (shown by ps instead of "3",
    // the descriptor it was exec'd through).
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"berth-as-user".as_ptr(), 0, 0, 0);
    }
    // Nothing but the channel and /dev/null (close-on-exec did it; this is
    // for a caller that did not).
    super::close_inherited_fds();
    let c = parse_args(args).ok_or(EXIT_USAGE)?;
    // Never act as root, whoever asks.
    if c.uid == 0 || c.gid == 0 || c.groups.contains(&0) {
        return Err(EXIT_USAGE);
    }
    become_user(&c).map_err(|()| EXIT_SWITCH)?;
    verify_user(&c).map_err(|()| EXIT_STILL_ROOT)?;
    // SAFETY: fd 0 is the channel the parent gave us; owned from here on.
    let mut chan = UnixStream::from(unsafe { OwnedFd::from_raw_fd(0) });
    loop {
        let mut head = [0u8; 13];
        match read_full(&mut chan, &mut head) {
            Ok(0) => return Ok(()),
            Ok(13) => {}
            _ => return Err(EXIT_PROTOCOL),
        }
        let op = head[0];
        let limit = u64::from_ne_bytes(head[1..9].try_into().expect("8 bytes"));
        let len = u32::from_ne_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        if len > MAX_PATH {
            return Err(EXIT_PROTOCOL);
        }
        let mut path = vec![0u8; len];
        chan.read_exact(&mut path).map_err(|_| EXIT_PROTOCOL)?;
        let p = CString::new(path).map_err(|_| EXIT_PROTOCOL)?;
        let (status, payload, fd) = answer(op, limit, &p).ok_or(EXIT_PROTOCOL)?;
        send(&chan, status, &payload, fd.as_ref()).map_err(|_| EXIT_PROTOCOL)?;
    }
}

/// Read until `buf` is full or EOF; how many bytes came.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn answer(op: u8, limit: u64, p: &CString) -> Option<(u8, Vec<u8>, Option<OwnedFd>)> {
    let path = Path::new(OsStr::from_bytes(p.as_bytes()));
    let errno = |e: std::io::Error| {
        (
            ERRNO,
            e.raw_os_error().unwrap_or(libc::EIO).to_ne_bytes().to_vec(),
            None,
        )
    };
    Some(match op {
        OP_RESOLVE => match std::fs::canonicalize(path) {
            Ok(real) => (OK, real.into_os_string().into_vec(), None),
            Err(e) => errno(e),
        },
        OP_IS_DIR => match std::fs::metadata(path) {
            Ok(m) => (OK, vec![u8::from(m.is_dir())], None),
            Err(e) => errno(e),
        },
        OP_ACCESS => (OK, vec![u8::from(access(p))], None),
        OP_READ => match read_file(p, usize::try_from(limit).ok()?) {
            Ok(bytes) => (OK, bytes, None),
            Err(ReadError::CannotOpen) => (READ_CANNOT_OPEN, Vec::new(), None),
            Err(ReadError::NotRegular) => (READ_NOT_REGULAR, Vec::new(), None),
            Err(ReadError::TooLarge) => (READ_TOO_LARGE, Vec::new(), None),
        },
        OP_OPEN_DIR => match open_dir(p) {
            Some(fd) => (OK, Vec::new(), Some(fd)),
            None => (ERRNO, libc::EACCES.to_ne_bytes().to_vec(), None),
        },
        _ => return None,
    })
}

fn send(
    chan: &UnixStream,
    status: u8,
    payload: &[u8],
    fd: Option<&OwnedFd>,
) -> std::io::Result<()> {
    let mut head = [0u8; 6];
    head[0] = status;
    head[1] = u8::from(fd.is_some());
    head[2..6].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage> = raw
        .as_ref()
        .map(|r| vec![ControlMessage::ScmRights(r)])
        .unwrap_or_default();
    let iov = [std::io::IoSlice::new(&head)];
    let n = nix::sys::socket::sendmsg::<()>(chan.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    let mut w = chan;
    w.write_all(&head[n..])?;
    w.write_all(payload)
}

fn become_user(c: &Creds) -> std::result::Result<(), ()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let mut gids: Vec<Gid> = vec![Gid::from_raw(c.gid)];
    gids.extend(
        c.groups
            .iter()
            .filter(|g| **g != c.gid)
            .map(|g| Gid::from_raw(*g)),
    );
    let (u, g) = (Uid::from_raw(c.uid), Gid::from_raw(c.gid));
    setgroups(&gids).map_err(|_| ())?;
    setresgid(g, g, g).map_err(|_| ())?;
    setresuid(u, u, u).map_err(|_| ())
}

/// Exactly the user's credentials, no capability, and no way back to root.
fn verify_user(c: &Creds) -> std::result::Result<(), ()> {
    use nix::unistd::{getgroups, getresgid, getresuid, setresgid, setresuid, Gid, Uid};
    let u = getresuid().map_err(|_| ())?;
    let g = getresgid().map_err(|_| ())?;
    let ids = [u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()];
    let gids = [g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()];
    if ids != [c.uid; 3] || gids != [c.gid; 3] {
        return Err(());
    }
    let mut want: Vec<u32> = c.groups.clone();
    want.push(c.gid);
    want.sort_unstable();
    want.dedup();
    let mut have: Vec<u32> = getgroups()
        .map_err(|_| ())?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    have.sort_unstable();
    have.dedup();
    if have != want {
        return Err(());
    }
    let root = Uid::from_raw(0);
    if setresuid(root, root, root).is_ok()
        || setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).is_ok()
    {
        return Err(());
    }
    // (The ambient set is always within the permitted one.)
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        if !caps::read(None, set).map_err(|_| ())?.is_empty() {
            return Err(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_are_exactly_uid_gid_groups() {
        let c = parse_args(&os(&["2001", "2001", "2001,3001"])).unwrap();
        assert_eq!((c.uid, c.gid, c.groups), (2001, 2001, vec![2001, 3001]));
        assert!(parse_args(&os(&["2001", "2001", ""]))
            .unwrap()
            .groups
            .is_empty());
        for bad in [
            &["2001", "2001"][..],
            &["2001", "2001", "1", "x"],
            &["-1", "2001", ""],
            &["2001", "2001", "1,,2"],
            &["2001", "2001", "1, 2"],
            &["alice", "2001", ""],
        ] {
            assert!(parse_args(&os(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn reads_regular_files_only_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"A=1\n").unwrap();
        assert_eq!(read_file(&c(&f), 4), Ok(b"A=1\n".to_vec()));
        assert_eq!(read_file(&c(&f), 3), Err(ReadError::TooLarge));
        assert_eq!(
            read_file(&c(&dir.path().join("none")), 9),
            Err(ReadError::CannotOpen)
        );
        assert_eq!(read_file(&c(dir.path()), 9), Err(ReadError::NotRegular));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(read_file(&c(&fifo), 9), Err(ReadError::NotRegular));
    }

    #[test]
    fn opens_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(open_dir(&c(dir.path())).is_some());
        assert!(open_dir(&c(&dir.path().join("f"))).is_none());
        assert!(open_dir(&c(&dir.path().join("none"))).is_none());
        if !super::super::is_root() {
            // Not searchable by its owner: "." cannot be looked up.
            let d = dir.path().join("noexec");
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(open_dir(&c(&d)).is_none());
        }
    }
}
