//! Every libc call berth makes lives here: process hardening, acting with a
//! user's credentials, and randomness. Each `unsafe` block says why it is
//! sound.

pub mod as_user;
pub mod cgroup;
pub mod devices;
pub mod mpi;
pub mod nss;
pub mod process;
pub mod trusted;
pub mod userfs;

use crate::core::error::{Error, Result};
use crate::core::identity::Identity;
pub use as_user::{ReadError, UserView};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// First thing every entry point does: refuse to run with elevated file
/// privileges (setuid/setgid bits, file capabilities), set no_new_privs so
/// nothing berth execs can gain privileges, make sure fds 0-2 are open and
/// close every other inherited descriptor.
pub fn harden(daemon: bool) -> Result<()> {
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
        // The credential helper is this very binary: hold on to it.
        as_user::open_self_exe()?;
        sane_rlimits();
        drop_capabilities(daemon)?;
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
/// directories (DAC_OVERRIDE, DAC_READ_SEARCH), pinning volumes
/// (SYS_ADMIN, for mount). The broker keeps [`TASK_CAPS`] too. Everything
/// else is dropped from the bounding,
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

/// What only the broker (`berth daemon`) keeps besides [`KEPT_CAPS`]: it
/// runs blaunch tasks and MPI ranks as processes of shared containers,
/// which the engine has no call to signal, so it signals the job user's
/// processes itself (KILL), and binds a rank to its Slurm task's CPUs
/// (SYS_NICE, for sched_setaffinity on another user's process).
const TASK_CAPS: [caps::Capability; 2] =
    [caps::Capability::CAP_KILL, caps::Capability::CAP_SYS_NICE];

fn drop_capabilities(daemon: bool) -> Result<()> {
    let mut keep: caps::CapsHashSet = KEPT_CAPS.into_iter().collect();
    if daemon {
        keep.extend(TASK_CAPS);
    }
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

/// Close every descriptor above 2 that berth did not open itself (it keeps
/// only its own binary, once opened for the credential helper).
pub fn close_inherited_fds() {
    let keep = as_user::self_exe_fd().map(|fd| fd as u32);
    let ranges = match keep {
        Some(k) if k >= 3 => [(3, k - 1), (k + 1, u32::MAX)],
        _ => [(3, u32::MAX), (1, 0)],
    };
    let mut ok = true;
    for (lo, hi) in ranges.into_iter().filter(|(lo, hi)| lo <= hi) {
        // SAFETY: close_range on descriptors this process owns no Rust
        // object for (called before any are created, but the one kept).
        ok &= unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) } == 0;
    }
    if !ok {
        // Kernels before 5.9: walk /proc/self/fd instead.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|fd| *fd > 2 && Some(*fd as u32) != keep)
                .collect();
            for fd in fds {
                // SAFETY: see above; closing the read_dir fd (already gone) fails harmlessly.
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

/// The filesystem as the job user sees it (see [`as_user`]).
fn view_of(id: &Identity) -> Result<UserView> {
    let groups: Vec<u32> = id.groups.iter().map(|g| g.gid).collect();
    UserView::new(id.uid, id.gid, &groups)
}

/// For each path: can the user read and search it with their own
/// credentials (every parent's search permission included, ACLs honoured)?
pub fn user_can_access(id: &Identity, paths: &[PathBuf]) -> Result<Vec<bool>> {
    let mut view = view_of(id)?;
    paths.iter().map(|p| view.can_access(p)).collect()
}

/// Read a file the job names (an env file) with the user's credentials,
/// at most `limit` bytes.
pub fn read_file_as_user(id: &Identity, path: &Path, limit: usize) -> Result<Vec<u8>> {
    let shown = path.display();
    match view_of(id)?.read_file(path, limit)? {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::CannotOpen) => Err(Error::Denied(crate::core::error::Denial::new(
            "env_file.access",
            shown.to_string(),
            format!("env file {shown} cannot be opened by the job user"),
            "name a file you can read",
        ))),
        Err(ReadError::NotRegular) => Err(Error::Denied(crate::core::error::Denial::new(
            "env_file.kind",
            shown.to_string(),
            format!("env file {shown} is not a regular file"),
            "name a regular file",
        ))),
        Err(ReadError::TooLarge) => Err(Error::Malformed(format!(
            "env file {shown} is larger than {limit} bytes"
        ))),
    }
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
/// opening happens in a helper that holds exactly the user's credentials
/// and passes the descriptors back over a socket (see [`as_user`]).
pub fn open_dirs_as_user(
    uid: u32,
    gid: u32,
    groups: &[u32],
    paths: &[PathBuf],
) -> Result<Vec<Option<OwnedFd>>> {
    if !is_root() && real_uid() != uid {
        return Err(Error::Config(
            "berth must be root (or the job user) to open the job's volumes".into(),
        ));
    }
    let mut view = UserView::new(uid, gid, groups)?;
    paths.iter().map(|p| view.open_dir(p)).collect()
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

/// The job's environment as strings. A berth or scheduler variable that is
/// not UTF-8 is malformed (never silently ignored); other such variables
/// cannot be passed to docker and are left out.
pub fn environment() -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => {
                out.insert(k, v);
            }
            (Ok(k), Err(_))
                if k.starts_with("LSF_") || k.starts_with("LSB_") || k.starts_with("LS_") =>
            {
                return Err(Error::Malformed(format!("{k} is not valid UTF-8")));
            }
            _ => {}
        }
    }
    Ok(out)
}
