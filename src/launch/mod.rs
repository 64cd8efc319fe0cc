//! The launcher performs a [`LaunchPlan`] and nothing else:
//!
//! 1. create the root-owned per-job directory (tmp/ owned by the user,
//!    passwd, group, hosts);
//! 2. (root `berth run`) fork a reaper in its own session that cleans up if
//!    berth is killed, even with SIGKILL: kills and removes the container,
//!    removes the per-job directory;
//! 3. pin the volumes (opened as the user, bound where docker binds them);
//! 4. run the container through the Engine API ([`supervise::run`], the one
//!    launcher of every path), forwarding signals;
//! 5. clean up, and return the container's exit code.

pub mod holder;
pub mod streams;
pub mod supervise;
pub mod tasks;

use crate::core::error::{Error, Result};
use crate::core::plan::LaunchPlan;
use crate::core::policy::TmpKind;
use crate::engine::Engine;
use nix::sys::signal::{SigSet, Signal};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use supervise::{Event, Outcome, Stdio};

pub const FORWARDED: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Create the per-job directory and what docker mounts from it.
pub fn prepare(plan: &LaunchPlan) -> Result<()> {
    let base = plan
        .job_dir
        .parent()
        .ok_or_else(|| Error::Internal("job directory has no parent".into()))?;
    ensure_base(base)?;
    let io = |what: &str, e: std::io::Error| Error::internal(&format!("creating {what}"), e);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&plan.job_dir)
        .map_err(|e| io(&plan.job_dir.display().to_string(), e))?;
    let write = |name: &str, mode: u32, text: &str| -> Result<()> {
        let p = plan.job_dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| io(&p.display().to_string(), e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| io(&p.display().to_string(), e))?;
        // The umask may have narrowed the mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(&p.display().to_string(), e))
    };
    if let Some(p) = &plan.passwd {
        write("passwd", 0o644, p)?;
    }
    if let Some(g) = &plan.group {
        write("group", 0o644, g)?;
    }
    if let Some(h) = &plan.hosts {
        write("hosts", 0o644, h)?;
    }
    // The image's VOLUMEs: fresh, the user's, removed with the job.
    let vols: Vec<&crate::core::plan::MountPlan> = plan
        .mounts
        .iter()
        .filter(|m| m.kind == crate::core::plan::MountKind::ImageVolume)
        .collect();
    if !vols.is_empty() {
        let base = plan.job_dir.join("volumes");
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&base)
            .map_err(|e| io("volumes", e))?;
        for m in vols {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&m.src)
                .map_err(|e| io(&m.src.display().to_string(), e))?;
            std::fs::set_permissions(&m.src, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("a volume directory", e))?;
            nix::unistd::fchownat(
                None,
                &m.src,
                Some(nix::unistd::Uid::from_raw(plan.user.uid)),
                Some(nix::unistd::Gid::from_raw(plan.user.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| Error::internal("chown of an image volume", e))?;
        }
    }
    if plan.tmp.kind == TmpKind::Host {
        let tmp = plan.job_dir.join("tmp");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| io(&tmp.display().to_string(), e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("tmp", e))?;
        nix::unistd::fchownat(
            None,
            &tmp,
            Some(nix::unistd::Uid::from_raw(plan.user.uid)),
            Some(nix::unistd::Gid::from_raw(plan.user.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::internal("chown of the per-job /tmp", e))?;
        for f in &plan.tmp_files {
            write_tmp_file(plan, &tmp, f)?;
        }
    }
    Ok(())
}

/// Place a scheduler file (Slurm's batch script) in the job's fresh /tmp,
/// owned by the user. The planner checked the path is plain and relative;
/// the directory was created by berth a moment ago, so nothing is planted.
fn write_tmp_file(plan: &LaunchPlan, tmp: &Path, f: &crate::core::plan::TmpFile) -> Result<()> {
    let dst = tmp.join(&f.path);
    let uid = Some(nix::unistd::Uid::from_raw(plan.user.uid));
    let gid = Some(nix::unistd::Gid::from_raw(plan.user.gid));
    let chown = |p: &Path| {
        nix::unistd::fchownat(None, p, uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::internal(&format!("chown {}", p.display()), e))
    };
    let mut dir = tmp.to_path_buf();
    if let Some(parent) = Path::new(&f.path).parent() {
        for c in parent.components() {
            dir.push(c);
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| Error::internal("creating a /tmp subdirectory", e))?;
                chown(&dir)?;
            }
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(f.mode & 0o755)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dst)
        .map_err(|e| Error::internal(&format!("creating {}", dst.display()), e))?;
    file.write_all(&f.content)
        .map_err(|e| Error::internal("writing a /tmp file", e))?;
    chown(&dst)
}

/// The tmp base must be a root-owned directory others cannot write.
fn ensure_base(base: &Path) -> Result<()> {
    if !base.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(base)
            .map_err(|e| {
                Error::Config(format!("cannot create tmp.base {}: {e}", base.display()))
            })?;
    }
    let md = std::fs::symlink_metadata(base)
        .map_err(|e| Error::Config(format!("tmp.base {}: {e}", base.display())))?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(Error::Config(format!(
            "tmp.base {} must be a directory owned by root and not writable by others (chown root: ; chmod 0711)",
            base.display()
        )));
    }
    Ok(())
}

/// Pin every volume the plan stages: open it as the user, check it is still
/// the directory that was planned, and bind that very directory onto its
/// root-only staging path. After this, renaming or relinking anything on
/// the user's side cannot change what docker mounts.
pub fn pin(plan: &LaunchPlan) -> Result<()> {
    let staged: Vec<&crate::core::plan::MountPlan> =
        plan.mounts.iter().filter(|m| m.staged.is_some()).collect();
    if staged.is_empty() {
        return Ok(());
    }
    let Some(dir) = &plan.pins_dir else {
        return Ok(());
    };
    let parent = dir
        .parent()
        .ok_or_else(|| Error::Config("mounts.pin_dir has no parent".into()))?;
    if !parent.exists() {
        // Its parents (/run/berth) also hold the broker socket that every
        // user must reach: 0755 for them, 0700 for pin_dir itself.
        if let Some(up) = parent.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(up)
                .map_err(|e| Error::Config(format!("cannot create {}: {e}", up.display())))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot create mounts.pin_dir {}: {e}",
                    parent.display()
                )))
            }
        }
    }
    crate::sys::trusted::check_trusted_path(parent, 0)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::internal(&format!("creating {}", dir.display()), e))?;
    let srcs: Vec<std::path::PathBuf> = staged.iter().map(|m| m.src.clone()).collect();
    let fds =
        crate::sys::open_dirs_as_user(plan.user.uid, plan.user.gid, &plan.user.groups, &srcs)?;
    for (m, fd) in staged.iter().zip(fds) {
        let shown = m.src.display().to_string();
        let Some(fd) = fd else {
            return Err(crate::core::error::Denial::new(
                "volumes.access",
                shown.clone(),
                format!(
                    "user {} cannot read {shown} with their own permissions",
                    plan.user.name
                ),
                "mount a directory you can read; ask its owner for access",
            )
            .into());
        };
        let now = crate::sys::fd_path(&fd)?;
        if now != m.src {
            return Err(crate::core::error::Denial::new(
                "volumes.changed",
                shown.clone(),
                format!(
                    "volume {shown} changed while the job was starting (it now leads to {})",
                    now.display()
                ),
                "do not move or relink the directory while the job starts; resubmit",
            )
            .into());
        }
        let target = m.staged.as_ref().expect("filtered on staged");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(target)
            .map_err(|e| Error::internal(&format!("creating {}", target.display()), e))?;
        crate::sys::bind_fd(&fd, target)?;
    }
    Ok(())
}

/// Undo [`pin`]: detach each staging mount and remove the empty
/// directories, never recursively (a mount still there must not be
/// descended into).
pub fn unpin(plan: &LaunchPlan) {
    let Some(dir) = &plan.pins_dir else { return };
    if !dir.exists() {
        return;
    }
    for m in &plan.mounts {
        if let Some(t) = &m.staged {
            crate::sys::unbind(t);
            let _ = std::fs::remove_dir(t);
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        log::warn!("cannot remove {}: {e}", dir.display());
    }
}

/// Everything [`prepare`] and [`pin`] set up, undone.
pub fn cleanup(plan: &LaunchPlan) {
    unpin(plan);
    remove_job_dir(&plan.job_dir);
}

/// Clean what jobs left when the process that ran them died with them (a
/// broker killed mid-job, a node that rebooted): pins and per-job
/// directories named `berth-*`, older than `min_age` (a job being prepared
/// right now is younger), whose container the engine no longer has. Pins
/// are detached and their empty directories removed, never recursively.
/// Returns what was cleaned. If the engine cannot be asked, nothing is.
pub fn sweep(
    policy: &crate::core::policy::Policy,
    engine: &Engine,
    min_age: Duration,
) -> Vec<std::path::PathBuf> {
    let mut cleaned = Vec::new();
    let stale = |e: &std::fs::DirEntry| -> Option<std::path::PathBuf> {
        let name = e.file_name().into_string().ok()?;
        let md = std::fs::symlink_metadata(e.path()).ok()?;
        let age = md.modified().ok()?.elapsed().unwrap_or_default();
        let ours = name.starts_with("berth-") && md.is_dir() && md.uid() == 0;
        if !ours || age < min_age {
            return None;
        }
        match engine.inspect_container(&name) {
            Ok(None) => Some(e.path()),
            _ => None,
        }
    };
    if let Ok(rd) = std::fs::read_dir(&policy.mounts.pin_dir) {
        for e in rd.flatten() {
            let Some(dir) = stale(&e) else { continue };
            if let Ok(subs) = std::fs::read_dir(&dir) {
                for sub in subs.flatten() {
                    crate::sys::unbind(&sub.path());
                    let _ = std::fs::remove_dir(sub.path());
                }
            }
            if std::fs::remove_dir(&dir).is_ok() {
                cleaned.push(dir);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(&policy.tmp.base) {
        for e in rd.flatten() {
            let Some(dir) = stale(&e) else { continue };
            remove_job_dir(&dir);
            cleaned.push(dir);
        }
    }
    cleaned
}

/// Abandon a job known only by its container name (a crashed broker's):
/// kill and remove the container, then detach its pins and remove its
/// per-job directory, as [`cleanup`] would.
pub fn abandon_by_name(policy: &crate::core::policy::Policy, engine: &Engine, name: &str) {
    if !name.starts_with("berth-") || name.contains('/') {
        return;
    }
    destroy(engine, name, Duration::from_secs(3));
    remove_files_of(policy, name);
}

/// Detach the pins and remove the per-job directory of the plan named
/// `name` (a job's, or the first rank's of a step container: its
/// `berth.dirs` label).
pub fn remove_files_of(policy: &crate::core::policy::Policy, name: &str) {
    if !name.starts_with("berth-") || name.contains('/') || name.contains("..") {
        return;
    }
    let pins = crate::core::plan::pins_dir(policy, name);
    if let Ok(subs) = std::fs::read_dir(&pins) {
        for sub in subs.flatten() {
            crate::sys::unbind(&sub.path());
            let _ = std::fs::remove_dir(sub.path());
        }
        let _ = std::fs::remove_dir(&pins);
    }
    remove_job_dir(&policy.tmp.base.join(name));
}

/// Remove the per-job directory without following symlinks planted in it.
pub fn remove_job_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", dir.display()),
    }
}

/// Kill and remove the container. If it is not there yet, docker may still
/// be creating it: look again until `patience` runs out; once it has been
/// seen and removed, stop.
fn destroy(engine: &Engine, name: &str, patience: Duration) {
    let deadline = std::time::Instant::now() + patience;
    let mut seen = false;
    loop {
        // A paused (suspended) container is thawed so the kill lands.
        let _ = engine.unpause(name);
        let _ = engine.kill(name, "KILL");
        match engine.remove(name) {
            Ok(true) => seen = true,
            Ok(false) if seen => return,
            Ok(false) => {}
            Err(e) => {
                log::warn!("cannot remove container {name}: {e}");
                return;
            }
        }
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(if seen { 20 } else { 100 }));
    }
}

/// A process that outlives berth to clean up after it.
struct Reaper {
    pipe: std::fs::File,
}

impl Reaper {
    fn spawn(plan: &LaunchPlan) -> Result<Reaper> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::internal("pipe", e))?;
        // berth is single-threaded here: the signal thread starts after.
        match crate::sys::process::fork_single_threaded().map_err(|e| Error::internal("fork", e))? {
            crate::sys::process::Forked::Child => {
                drop(w);
                reaper_main(plan, r);
                crate::sys::process::exit_now(0)
            }
            crate::sys::process::Forked::Parent => {
                drop(r);
                Ok(Reaper {
                    pipe: std::fs::File::from(w),
                })
            }
        }
    }

    fn tell(&mut self, msg: &str) {
        let _ = self.pipe.write_all(msg.as_bytes());
    }
}

fn reaper_main(plan: &LaunchPlan, r: OwnedFd) {
    let _ = nix::unistd::setsid();
    for s in FORWARDED {
        crate::sys::process::ignore_signal(s);
    }
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
    // Hold no end of the job's stdin/stdout: readers must see EOF when
    // berth and docker are done.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    let mut f = std::fs::File::from(r);
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    if text.contains("D\n") {
        return;
    }
    // berth died before it cleaned up.
    let engine = Engine::new(&plan.socket);
    abandon(plan, &engine);
}

pub use crate::sys::process::wait_signal;

/// The job was abandoned (its client died, berth is stopping): kill and
/// remove the container, remove the per-job directory.
pub fn abandon(plan: &LaunchPlan, engine: &Engine) {
    destroy(engine, &plan.name, Duration::from_secs(3));
    cleanup(plan);
}

/// Check that this process may prepare jobs.
pub fn require_root() -> Result<()> {
    if crate::sys::is_root() {
        Ok(())
    } else {
        Err(Error::Config(
            "preparing a job needs root; unprivileged callers go through the broker (berth daemon)"
                .into(),
        ))
    }
}

/// Perform the plan in this process (root `berth run`); return the job's
/// exit code.
pub fn run(plan: &LaunchPlan) -> Result<i32> {
    require_root()?;
    if plan.holder.is_some() {
        // The count of a step's ranks on the node lives in the broker.
        return Err(Error::Config(
            "an MPI task sharing its step's namespaces (mpi.ipc = \"step\") runs through the broker (berth daemon)".into(),
        ));
    }
    if plan.task.is_some() {
        // Its host's container is shared by the job's tasks here, counted
        // by the broker.
        return Err(Error::Config(
            "an LSF blaunch task (LSF_PM_TASKID) runs through the broker: run the broker (berth daemon) on this host, and have LSF run the starter as the job's user or as a relay (wrapper/lsf/README.md), not as root".into(),
        ));
    }
    let engine = Engine::new(&plan.socket);
    // Job-control signals are held from here on (the signal thread takes
    // them once the job is prepared): a SIGTERM while berth prepares or
    // creates the container ends the job as 143, never berth by the
    // signal's default action.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let _ = set.thread_block();
    // The reaper first: berth killed while it prepares must leave nothing.
    let mut reaper = Reaper::spawn(plan)?;
    if let Err(e) = prepare(plan).and_then(|()| pin(plan)) {
        cleanup(plan);
        reaper.tell("D\n");
        return Err(e);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let sig_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Some(sig) = wait_signal(&set, Duration::from_secs(3600)) {
                if sig_tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    let result = match spawned {
        Err(e) => Err(Error::Unavailable(format!(
            "cannot start the thread that forwards signals to the job ({e}); the process limit (ulimit -u) is too low"
        ))),
        Ok(_) => own_stdio().and_then(|stdio| {
            supervise::run(plan, &engine, stdio, tx, &rx, &mut || {})
        }),
    };
    cleanup(plan);
    reaper.tell("D\n");
    match result? {
        Outcome::Exited(code) => Ok(code),
        Outcome::Abandoned => Ok(128 + Signal::SIGKILL as i32),
    }
}

/// This process's stdin, stdout and stderr, duplicated for the job.
fn own_stdio() -> Result<Stdio> {
    let dup = |fd: i32| -> Result<Option<OwnedFd>> {
        crate::sys::process::dup_stdio(fd)
            .map(Some)
            .map_err(|e| Error::internal("duplicating the job's descriptors", e))
    };
    Ok(Stdio {
        stdin: dup(0)?,
        stdout: dup(1)?,
        stderr: dup(2)?,
    })
}
