//! Process-level calls the launcher, the bundle cache and the broker need:
//! each `unsafe` with its reason, so no other module holds one.

use nix::sys::signal::{SigSet, Signal};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// Which side of [`fork_single_threaded`] this is.
pub enum Forked {
    Child,
    Parent,
}

/// fork(2), for a caller that is single-threaded (so the child may
/// allocate and run ordinary Rust code): berth's reaper, forked before any
/// thread starts.
pub fn fork_single_threaded() -> nix::Result<Forked> {
    // SAFETY: the caller promises no other thread exists (see above).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { .. } => Ok(Forked::Parent),
    }
}

/// Leave now, without the parent's atexit handlers or destructors (a
/// forked child's exit).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Ignore `sig` in this process.
pub fn ignore_signal(sig: Signal) {
    // SAFETY: setting SIG_IGN installs no Rust handler.
    let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
}

/// Wait up to `timeout` for one of the (blocked) signals in `set`.
pub fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and ts are valid for the call; info may be null.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r <= 0 {
        None
    } else {
        Signal::try_from(r).ok()
    }
}

/// A duplicate of this process's descriptor 0, 1 or 2.
pub fn dup_stdio(fd: RawFd) -> std::io::Result<OwnedFd> {
    assert!((0..=2).contains(&fd), "not a standard descriptor: {fd}");
    // SAFETY: 0, 1 and 2 are always open (harden() reopens closed ones on
    // /dev/null) and outlive this borrow.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    b.try_clone_to_owned()
}

/// Take ownership of descriptors the kernel just installed in this process
/// (SCM_RIGHTS): nothing else owns them.
pub fn adopt_received(fds: Vec<RawFd>) -> Vec<OwnedFd> {
    // SAFETY: see above; each is owned exactly once.
    fds.into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// flock(LOCK_EX) on `file`, retried on EINTR.
pub fn flock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor the caller owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Open (creating, 0600, never through a symlink) a lock file and hold an
/// exclusive flock on it until the file is dropped.
pub fn open_locked(p: &Path) -> crate::core::error::Result<std::fs::File> {
    use crate::core::error::Error;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| Error::Config(format!("cannot open lock {}: {e}", p.display())))?;
    flock_exclusive(&f).map_err(|e| Error::internal(&format!("flock {}", p.display()), e))?;
    Ok(f)
}

/// flock(LOCK_EX | LOCK_NB): `Ok(false)` when another holds the lock.
pub fn flock_try_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor the caller owns.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(e)
}

/// renameat2(RENAME_EXCHANGE): swap two directories atomically.
pub fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A descriptor of process `pid` (pidfd_open(2)): it names that process
/// only, whatever later takes its pid. `None`: no such process, or a
/// kernel before 5.3.
pub fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open(2) on a pid, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: the descriptor was just returned to us and is closed once.
    (fd >= 0).then(|| unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32)
    })
}

/// Send `sig` (`None`: only ask whether it still exists) to the process
/// of `fd`; whether it was there to receive it.
pub fn pidfd_signal(fd: &std::os::fd::OwnedFd, sig: Option<Signal>) -> bool {
    // SAFETY: pidfd_send_signal(2) with a null siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(fd),
            sig.map_or(0, |s| s as i32),
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Whether process `pid` is in container `container_id`'s cgroup in some
/// hierarchy: `id:controllers:path`, the path ending in the container's
/// own cgroup (cgroupfs driver: `…/<id>`; systemd driver:
/// `…/docker-<id>.scope`). An MPI rank keeps its container's pids, devices
/// and freezer cgroups when it enters its task's others.
pub fn in_container(pid: i32, container_id: &str) -> bool {
    let scope = format!("docker-{container_id}.scope");
    container_id.len() == 64
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
            c.lines().any(|l| {
                l.splitn(3, ':')
                    .nth(2)
                    .and_then(|path| path.rsplit('/').next())
                    .is_some_and(|last| last == container_id || last == scope)
            })
        })
}

/// Signal the task's process and its descendants, each only while it is
/// in the container's cgroup (a pid the task left behind may name another
/// process by now): the process is pinned by a pidfd, then checked, then
/// signalled through the pidfd, so the check and the signal are about one
/// process. Descendants that a double fork handed to the container's init
/// are not found here; they end with the container.
pub fn signal_tree_in_container(pid: i32, container_id: &str, sig: Signal) {
    if container_id.len() != 64 {
        return;
    }
    let in_container = |p: i32| in_container(p, container_id);
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|x| x.parse::<i32>().ok());
            if let Some(pp) = ppid {
                children.entry(pp).or_default().push(p);
            }
        }
    }
    let mut todo = vec![pid];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        todo.extend(children.get(&p).into_iter().flatten().copied());
        // No pidfd (a kernel before 5.3), the process gone, no descriptor
        // left: skip it. Never a check-then-kill by pid: as root with
        // CAP_KILL that could hit a process that took a dead one's pid
        // (the task then ends with its container).
        let Some(fd) = pidfd_open(p) else {
            continue;
        };
        if in_container(p) {
            pidfd_signal(&fd, Some(sig));
        }
    }
}
