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
