//! Every libc call berth makes lives here: process hardening, acting with a
//! user's credentials, and randomness. Each `unsafe` block says why it is
//! sound.

use crate::error::{Error, Result};
use crate::identity::Identity;
use nix::unistd::{Gid, Uid};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// First thing every entry point does: refuse to run with elevated file
/// privileges (setuid/setgid bits, file capabilities), set no_new_privs so
/// nothing berth execs can gain privileges, make sure fds 0-2 are open and
/// close every other inherited descriptor.
pub fn harden() -> Result<()> {
    // SAFETY: getauxval only reads the auxiliary vector.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) };
    if secure != 0
        || nix::unistd::geteuid() != nix::unistd::getuid()
        || nix::unistd::getegid() != nix::unistd::getgid()
    {
        return Err(Error::Config(
            "berth is installed setuid/setgid or with file capabilities; remove them (chmod u-s,g-s; setcap -r): berth never needs them".into(),
        ));
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(Error::internal(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            std::io::Error::last_os_error(),
        ));
    }
    for fd in 0..3 {
        // SAFETY: F_GETFD on a small integer has no effect beyond the query.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let flags = if fd == 0 {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            // SAFETY: the path is a NUL-terminated literal.
            let n = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
            if n != fd {
                return Err(Error::internal(
                    "reopening a closed standard descriptor",
                    std::io::Error::last_os_error(),
                ));
            }
        }
    }
    close_inherited_fds();
    if is_root() {
        sane_rlimits();
        drop_capabilities()?;
        // The docker client needs a few dozen descriptors; below that it
        // fails with a misleading "cannot connect to the Docker daemon".
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            if soft < MIN_NOFILE {
                return Err(Error::Config(format!(
                    "the caller's open-file limit is {soft} and cannot be raised; berth and docker need at least {MIN_NOFILE}: raise RLIMIT_NOFILE (ulimit -n) for the scheduler's starter"
                )));
            }
        }
    }
    Ok(())
}

/// Fewest open files berth runs with (the docker client needs a few dozen).
const MIN_NOFILE: u64 = 64;

/// What berth, as root, uses of root's power: switching to the job user's
/// credentials (SETUID, SETGID), handing the per-job /tmp to the user
/// (CHOWN, FOWNER), reaching and removing what users left in their 0700
/// directories (DAC_OVERRIDE, DAC_READ_SEARCH), and pinning volumes
/// (SYS_ADMIN, for mount). Everything else is dropped from the bounding,
/// permitted, effective and inheritable sets, so neither berth nor the
/// docker client it runs (a mere client of dockerd's socket) holds it.
const KEPT_CAPS: [caps::Capability; 7] = [
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_SYS_ADMIN,
];

fn drop_capabilities() -> Result<()> {
    let keep: caps::CapsHashSet = KEPT_CAPS.into_iter().collect();
    let fail = |what: &str, e: caps::errors::CapsError| {
        Error::internal(&format!("dropping capabilities ({what})"), e)
    };
    // The bounding set first (needs CAP_SETPCAP, dropped with the rest).
    for c in caps::all() {
        if !keep.contains(&c) && caps::has_cap(None, caps::CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, caps::CapSet::Bounding, c).map_err(|e| fail("bounding", e))?;
        }
    }
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| fail("ambient", e))?;
    caps::clear(None, caps::CapSet::Inheritable).map_err(|e| fail("inheritable", e))?;
    let have = caps::read(None, caps::CapSet::Permitted).map_err(|e| fail("permitted", e))?;
    let kept: caps::CapsHashSet = have.intersection(&keep).cloned().collect();
    caps::set(None, caps::CapSet::Effective, &kept).map_err(|e| fail("effective", e))?;
    caps::set(None, caps::CapSet::Permitted, &kept).map_err(|e| fail("permitted", e))?;
    Ok(())
}

/// Undo resource limits a hostile caller may have set for root berth (and
/// the docker client it runs): a zero file size kills it with SIGXFSZ
/// half-way through preparing a job, eight descriptors starve docker's
/// client, a tiny CPU or memory limit kills it mid-cleanup.
fn sane_rlimits() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    for r in [
        Resource::RLIMIT_FSIZE,
        Resource::RLIMIT_CPU,
        Resource::RLIMIT_AS,
        Resource::RLIMIT_DATA,
    ] {
        if setrlimit(r, RLIM_INFINITY, RLIM_INFINITY).is_err() {
            // Without CAP_SYS_RESOURCE the hard limit stays: use all of it.
            if let Ok((_, hard)) = getrlimit(r) {
                let _ = setrlimit(r, hard, hard);
            }
        }
    }
    // A file-size limit that could not be lifted must make writes fail
    // (EFBIG: berth reports it and cleans up), not kill berth half-way.
    // SAFETY: SIG_IGN installs no handler. docker gets the default back.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let at_least = |r: Resource, min: u64| {
        if let Ok((soft, hard)) = getrlimit(r) {
            if soft != RLIM_INFINITY && soft < min {
                let hard = if hard == RLIM_INFINITY {
                    hard
                } else {
                    hard.max(min)
                };
                let _ = setrlimit(r, min, hard);
            }
        }
    };
    at_least(Resource::RLIMIT_NOFILE, 4096);
    at_least(Resource::RLIMIT_STACK, 8 << 20);
}

/// Close every descriptor above 2 that berth did not open itself.
pub fn close_inherited_fds() {
    // SAFETY: close_range on [3, max] closes descriptors this process owns no
    // Rust object for yet (called before any are created).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Kernels before 5.9: walk /proc/self/fd instead.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|fd| *fd > 2)
                .collect();
            for fd in fds {
                // SAFETY: see above; closing the read_dir fd (already gone) fails harmlessly.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Close every descriptor but `keep` (0-2 included), in a child about to
/// act with a user's credentials.
fn close_all_but(keep: std::os::fd::RawFd) {
    let keep = keep as u32;
    // SAFETY: close_range on ranges that exclude `keep`; nothing in this
    // child uses the descriptors closed.
    let ok = unsafe {
        (keep == 0 || libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32) == 0)
            && libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32) == 0
    };
    if !ok {
        // Kernels before 5.9.
        for fd in 0..65536 {
            if fd != keep as i32 {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}

pub fn real_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: the buffer is valid for n - got bytes from got.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), n - got, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::internal("getrandom", e));
        }
        got += r as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// How berth can act with the job user's credentials.
fn as_user_mode(id: &Identity) -> Result<bool> {
    if is_root() {
        Ok(true)
    } else if real_uid() == id.uid {
        Ok(false)
    } else {
        Err(Error::Config(format!(
            "berth runs as uid {} for user {}, so it cannot check paths with the user's credentials; run it as root or through the broker",
            real_uid(),
            id.name
        )))
    }
}

/// Run `f` in a child process holding exactly the user's credentials and
/// return the bytes it writes. `f` must only make async-signal-safe calls
/// (the child of a fork); everything it needs is prepared before.
fn with_user_creds(id: &Identity, f: impl FnOnce(&mut dyn FnMut(&[u8])) -> i32) -> Result<Vec<u8>> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::internal("pipe", e))?;
    let mut gids: Vec<Gid> = vec![Gid::from_raw(id.gid)];
    gids.extend(id.groups.iter().map(|g| Gid::from_raw(g.gid)));
    // SAFETY: berth is single-threaded when it plans (the signal thread and
    // broker workers start later), so the child may run Rust code; it only
    // calls setgroups/setres*id, access/open/read/write and _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::internal("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            // Forked from a broker, this child holds every descriptor the
            // daemon does (other jobs' stdio among them): keep only its
            // channel, so /proc/self/fd/N names nothing of anyone else's.
            close_all_but(w.as_raw_fd());
            let ok = nix::unistd::setgroups(&gids).is_ok()
                && nix::unistd::setresgid(
                    Gid::from_raw(id.gid),
                    Gid::from_raw(id.gid),
                    Gid::from_raw(id.gid),
                )
                .is_ok()
                && nix::unistd::setresuid(
                    Uid::from_raw(id.uid),
                    Uid::from_raw(id.uid),
                    Uid::from_raw(id.uid),
                )
                .is_ok();
            let code = if ok {
                let mut write = |b: &[u8]| {
                    let _ = nix::unistd::write(&w, b);
                };
                f(&mut write)
            } else {
                99
            };
            // SAFETY: _exit skips atexit handlers and buffers of the parent.
            unsafe { libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut out = Vec::new();
            let mut file = std::fs::File::from(r);
            use std::io::Read;
            file.read_to_end(&mut out)
                .map_err(|e| Error::internal("reading from credential child", e))?;
            let status =
                nix::sys::wait::waitpid(child, None).map_err(|e| Error::internal("waitpid", e))?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(out),
                nix::sys::wait::WaitStatus::Exited(_, 99) => Err(Error::internal(
                    "switching to the user's credentials",
                    "setresuid failed",
                )),
                nix::sys::wait::WaitStatus::Exited(_, c) => {
                    Err(Error::Internal(format!("credential child exited {c}")))
                }
                s => Err(Error::Internal(format!("credential child: {s:?}"))),
            }
        }
    }
}

/// For each path: can the user read and search it with their own
/// credentials (every parent's search permission included, ACLs honoured)?
pub fn user_can_access(id: &Identity, paths: &[PathBuf]) -> Result<Vec<bool>> {
    let cpaths: Vec<CString> = paths
        .iter()
        .map(|p| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::Malformed(format!("path {p:?} holds a NUL byte")))
        })
        .collect::<Result<_>>()?;
    let check = |p: &CString| {
        // SAFETY: p is a valid NUL-terminated string.
        unsafe { libc::access(p.as_ptr(), libc::R_OK | libc::X_OK) == 0 }
    };
    if !as_user_mode(id)? {
        return Ok(cpaths.iter().map(check).collect());
    }
    let out = with_user_creds(id, |write| {
        for p in &cpaths {
            write(if check(p) { b"1" } else { b"0" });
        }
        0
    })?;
    if out.len() != paths.len() {
        return Err(Error::Internal(
            "access check answered for the wrong number of paths".into(),
        ));
    }
    Ok(out.iter().map(|b| *b == b'1').collect())
}

/// Read a file the job names (an env file) with the user's credentials,
/// at most `limit` bytes.
pub fn read_file_as_user(id: &Identity, path: &Path, limit: usize) -> Result<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Malformed(format!("path {path:?} holds a NUL byte")))?;
    let read = |write: &mut dyn FnMut(&[u8])| -> i32 {
        // SAFETY: c is NUL-terminated; O_NONBLOCK keeps a FIFO from hanging us.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            return 2;
        }
        // SAFETY: fd was just opened and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: st is plain old data filled by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is valid for writes.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0
            || st.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            return 3;
        }
        let mut buf = [0u8; 8192];
        let mut total = 0;
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            total += n as usize;
            if total > limit {
                return 4;
            }
            write(&buf[..n as usize]);
        }
        0
    };
    let shown = path.display();
    let map = |e: Error| match e {
        Error::Internal(m) if m.contains("exited 2") => Error::Denied(crate::error::Denial::new(
            "env_file.access",
            shown.to_string(),
            format!("env file {shown} cannot be opened by the job user"),
            "name a file you can read",
        )),
        Error::Internal(m) if m.contains("exited 3") => Error::Denied(crate::error::Denial::new(
            "env_file.kind",
            shown.to_string(),
            format!("env file {shown} is not a regular file"),
            "name a regular file",
        )),
        Error::Internal(m) if m.contains("exited 4") => {
            Error::Malformed(format!("env file {shown} is larger than {limit} bytes"))
        }
        e => e,
    };
    if !as_user_mode(id)? {
        let mut out = Vec::new();
        let code = read(&mut |b: &[u8]| out.extend_from_slice(b));
        return if code == 0 {
            Ok(out)
        } else {
            Err(map(Error::Internal(format!(
                "credential child exited {code}"
            ))))
        };
    }
    with_user_creds(id, read).map_err(map)
}

/// Whether `path` carries file capabilities (a `security.capability`
/// extended attribute).
pub fn has_file_capabilities(path: &Path) -> std::io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 only
    // asks the kernel for the attribute's length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    if n >= 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// CLOCK_BOOTTIME in clock ticks (the unit of a process's start time in
/// `/proc/<pid>/stat`).
pub fn boottime_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        return u64::MAX;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000
}

/// The node's short host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Open each directory with the user's own credentials (so every parent's
/// search permission and the directory's read and search permission are
/// checked by the kernel as the user, ACLs included) and return the open
/// descriptors; `None` where the user cannot. When berth is root the
/// opening happens in a child that holds exactly the user's credentials and
/// passes the descriptors back over a socket pair.
pub fn open_dirs_as_user(
    uid: u32,
    gid: u32,
    groups: &[u32],
    paths: &[PathBuf],
) -> Result<Vec<Option<OwnedFd>>> {
    let cpaths: Vec<CString> = paths
        .iter()
        .map(|p| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::Malformed(format!("path {p:?} holds a NUL byte")))
        })
        .collect::<Result<_>>()?;
    let open = |p: &CString| -> Option<OwnedFd> {
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
    };
    if !is_root() {
        if real_uid() != uid {
            return Err(Error::Config(
                "berth must be root (or the job user) to open the job's volumes".into(),
            ));
        }
        return Ok(cpaths.iter().map(open).collect());
    }
    use nix::sys::socket::{
        socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
        SockType,
    };
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::internal("socketpair", e))?;
    let mut gids: Vec<Gid> = vec![Gid::from_raw(gid)];
    gids.extend(groups.iter().map(|g| Gid::from_raw(*g)));
    // SAFETY: the child only calls setgroups/setres*id, open/openat/close,
    // sendmsg and _exit; glibc keeps malloc usable after fork, which nix's
    // sendmsg may use to build its control buffer.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::internal("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop(parent_end);
            close_all_but(child_end.as_raw_fd());
            let ok = nix::unistd::setgroups(&gids).is_ok()
                && nix::unistd::setresgid(
                    Gid::from_raw(gid),
                    Gid::from_raw(gid),
                    Gid::from_raw(gid),
                )
                .is_ok()
                && nix::unistd::setresuid(
                    Uid::from_raw(uid),
                    Uid::from_raw(uid),
                    Uid::from_raw(uid),
                )
                .is_ok();
            if !ok {
                // SAFETY: leave at once.
                unsafe { libc::_exit(99) };
            }
            for p in &cpaths {
                let fd = open(p);
                let iov = [std::io::IoSlice::new(if fd.is_some() {
                    b"1"
                } else {
                    b"0"
                })];
                let raw = fd.as_ref().map(|f| [f.as_raw_fd()]);
                let cmsg: Vec<ControlMessage> = raw
                    .as_ref()
                    .map(|r| vec![ControlMessage::ScmRights(r)])
                    .unwrap_or_default();
                if nix::sys::socket::sendmsg::<()>(
                    child_end.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::empty(),
                    None,
                )
                .is_err()
                {
                    // SAFETY: leave at once.
                    unsafe { libc::_exit(98) };
                }
            }
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(child_end);
            let mut out = Vec::with_capacity(paths.len());
            for _ in 0..paths.len() {
                let mut b = [0u8; 1];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut b)];
                let msg = nix::sys::socket::recvmsg::<()>(
                    parent_end.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(|e| Error::internal("receiving a volume descriptor", e))?;
                if msg.bytes != 1 {
                    break;
                }
                let mut fd = None;
                for c in msg
                    .cmsgs()
                    .map_err(|e| Error::internal("volume descriptor", e))?
                {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        for raw in v {
                            // SAFETY: the kernel installed this descriptor for us.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                out.push(if b[0] == b'1' { fd } else { None });
            }
            let status =
                nix::sys::wait::waitpid(child, None).map_err(|e| Error::internal("waitpid", e))?;
            if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0))
                || out.len() != paths.len()
            {
                return Err(Error::Internal(format!(
                    "opening volumes as the user failed: {status:?}"
                )));
            }
            Ok(out)
        }
    }
}

/// The path an open descriptor refers to now.
pub fn fd_path(fd: &OwnedFd) -> Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| Error::internal("reading a descriptor's path", e))
}

/// Bind-mount the directory behind `fd` (and what is mounted below it, as
/// docker's own binds do) onto `target`, private so nothing propagates.
pub fn bind_fd(fd: &OwnedFd, target: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(src.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::internal(&format!("bind mount onto {}", target.display()), e))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::internal(&format!("making {} private", target.display()), e))
}

/// Detach a pinned mount (lazily: a busy mount goes when its last user
/// does). Never deletes anything below it.
pub fn unbind(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
}
