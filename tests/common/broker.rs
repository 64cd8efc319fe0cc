//! The broker in integration tests: `berth daemon` as root on a socket in a
//! test's [`Bed`], and ways to run berth (or a hand-made client) as one of
//! the testbed's users.
//!
//! Included with `#[path = "common/broker.rs"] mod broker;` next to
//! `mod common;` by the tests that need it (tests/broker.rs,
//! tests/slurm.rs).
#![allow(dead_code)]

use crate::common::{berth_bin, wait_child, wait_until, Bed, Job, Out};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A testbed user: name, uid, primary gid and every group (from NSS, as
/// `initgroups` would give a login).
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl TestUser {
    #[track_caller]
    pub fn get(name: &str) -> TestUser {
        let u = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} is missing; run tests/setup/testbed.sh up"));
        let cname = std::ffi::CString::new(name).unwrap();
        let groups = nix::unistd::getgrouplist(&cname, u.gid)
            .unwrap_or_else(|e| panic!("getgrouplist({name}): {e}"))
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        TestUser {
            name: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
        }
    }

    /// Make `cmd` run as this user: groups, gid, uid, in that order, in the
    /// child before exec (as `runuser`, without a PAM session or a process
    /// in between, so a signal to the child reaches the program itself).
    pub fn apply(&self, cmd: &mut Command) {
        let groups: Vec<nix::unistd::Gid> = self
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        let gid = nix::unistd::Gid::from_raw(self.gid);
        let uid = nix::unistd::Uid::from_raw(self.uid);
        // SAFETY: only async-signal-safe system calls on data prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
}

/// Copy the berth binary under test to `dir/berth` (root, 0755), so that
/// the test users can run it whatever the permissions on the way to the
/// build directory.
pub fn install_berth(dir: &Path) -> PathBuf {
    let dst = dir.join("berth");
    let tmp = dir.join(".berth.tmp");
    std::fs::copy(berth_bin(), &tmp)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", berth_bin(), tmp.display()));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &dst).unwrap();
    // A child another test thread forked while the copy was open for
    // writing holds that descriptor until it execs: the kernel refuses to
    // run the copy meanwhile (ETXTBSY). Wait until it runs.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::process::Command::new(&dst)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Err(e)
                if e.raw_os_error() == Some(libc::ETXTBSY) && std::time::Instant::now() < until =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => break,
        }
    }
    dst
}

/// Point a bed's policy at a broker socket inside the bed and rewrite it.
/// The socket's directory is created by the daemon (root, 0755).
pub fn use_broker_socket(bed: &mut Bed) -> PathBuf {
    let socket = bed.path().join("sock").join("berth.sock");
    crate::common::set(
        &mut bed.policy,
        "broker.socket",
        socket.display().to_string(),
    );
    bed.write_policy();
    socket
}

/// `berth --policy P daemon`, run as root. Killed (SIGTERM, then SIGKILL)
/// when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Start the broker for `bed` (whose policy names `socket`, see
    /// [`use_broker_socket`]) and wait until it accepts connections.
    #[track_caller]
    pub fn start(bed: &Bed, socket: &Path) -> Daemon {
        let log = bed.path().join("daemon.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(berth_bin())
            .arg("--policy")
            .arg(bed.policy_path())
            .arg("daemon")
            .env_clear()
            .env("PATH", crate::common::CALLER_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} daemon: {e}", berth_bin()));
        let mut d = Daemon {
            child: Some(child),
            socket: socket.to_path_buf(),
            log,
        };
        let up = wait_until(Duration::from_secs(10), || {
            if d.exited() {
                return true;
            }
            UnixStream::connect(socket).is_ok()
        });
        assert!(
            up && !d.exited(),
            "the broker did not start listening on {}:\n{}",
            socket.display(),
            d.log_text()
        );
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon").id()
    }

    /// Whether the daemon process has ended.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// Send a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        crate::common::signal(self.pid(), sig);
    }

    /// Wait (at most `timeout`) for the daemon to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut().expect("daemon");
        let s = wait_child(c, timeout);
        if s.is_some() {
            self.child = None;
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                if wait_child(&mut c, Duration::from_secs(10)).is_none() {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
    }
}

/// `berth [--policy F] <sub…> -- <cmd…>` for `job`, run as `user` with the
/// binary `bin` (see [`install_berth`]): the job's environment and cwd.
pub fn user_command(
    job: &Job<'_>,
    user: &TestUser,
    bin: &Path,
    sub: &[&str],
    cmd: &[&str],
) -> Command {
    let mut c = Command::new(bin);
    if let Some(p) = &job.policy_flag {
        c.arg("--policy").arg(p);
    }
    c.args(sub)
        .arg("--")
        .args(cmd)
        .env_clear()
        .envs(&job.env)
        .current_dir(&job.cwd)
        .stdin(Stdio::null());
    user.apply(&mut c);
    c
}

/// Run a command to completion and collect what it did.
pub fn output(mut c: Command) -> Out {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Collect a spawned child's output, killing it after `timeout`.
#[track_caller]
pub fn finish(mut child: Child, timeout: Duration) -> Out {
    if wait_child(&mut child, timeout).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("process {} did not exit within {timeout:?}", child.id());
    }
    let out = child.wait_with_output().expect("wait_with_output");
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A connection made by a process of the user's that stays alive while
/// the connection is used: the broker finds the job from its peer's pid
/// and refuses a peer that is gone (SPEC §11).
pub struct UserStream {
    stream: UnixStream,
    holder: std::process::Child,
}

impl std::ops::Deref for UserStream {
    type Target = UnixStream;
    fn deref(&self) -> &UnixStream {
        &self.stream
    }
}

impl Drop for UserStream {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A connection to the broker whose peer credentials are `user`'s: a child
/// process running as the user connects the test's own socket (SO_PEERCRED
/// is taken at connect) and lives on, holding nothing, until the
/// connection is dropped, while this process can say anything on it.
#[track_caller]
pub fn connect_as(user: &TestUser, socket: &Path) -> UserStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
    let fd: OwnedFd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = UnixAddr::new(socket).expect("socket address");
    let raw = fd.as_raw_fd();
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let ready = ready_w.as_raw_fd();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("3600")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    user.apply(&mut cmd);
    // SAFETY: connect(2) and write(2) on descriptors the child inherited,
    // with an address built before the fork; runs after the uid change.
    unsafe {
        cmd.pre_exec(move || {
            let r = nix::sys::socket::connect(raw, &addr)
                .map(|_| b"1")
                .unwrap_or(b"0");
            let _ = libc::write(ready, r.as_ptr().cast(), 1);
            Ok(())
        });
    }
    let holder = cmd.spawn().expect("spawn the connecting child");
    drop(ready_w);
    let mut b = [0u8; 1];
    let n = nix::unistd::read(ready_r.as_raw_fd(), &mut b).unwrap_or(0);
    assert!(
        n == 1 && b[0] == b'1',
        "connecting to {} as {} failed",
        socket.display(),
        user.name
    );
    UserStream {
        stream: UnixStream::from(fd),
        holder,
    }
}
