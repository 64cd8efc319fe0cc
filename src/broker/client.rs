//! The client side: `berth run` as an unprivileged user, and `berth slurm
//! run`. It sends the job's request and its stdin/stdout/stderr, forwards
//! the signals it receives, and exits with the code the daemon reports.

use super::proto::{self, ClientMsg, DaemonMsg, Hello};
use crate::core::error::{Error, Result};
use crate::launch::{wait_signal, FORWARDED};
use nix::sys::signal::SigSet;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub fn launch(socket: &Path, hello: &Hello) -> Result<i32> {
    exchange(socket, hello, [0, 1, 2], &mut |_, _| {})
}

/// Send a request with these three descriptors, forward signals, report
/// the daemon's progress frames, and return the exit code it gives.
pub fn exchange(
    socket: &Path,
    hello: &Hello,
    fds: [std::os::fd::RawFd; 3],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<i32> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        Error::Unavailable(format!(
            "the berth broker at {} is not reachable ({e}); unprivileged jobs start through it: ask your administrator to start it (systemctl start berth), or requeue the job",
            socket.display()
        ))
    })?;
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let _ = set.thread_block();
    let mut tx = stream
        .try_clone()
        .map_err(|e| Error::internal("socket clone", e))?;
    // A hostile RLIMIT_NPROC makes the thread impossible: say so, cleanly
    // (std::thread::spawn would panic).
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Some(sig) = wait_signal(&set, Duration::from_secs(3600)) {
                let msg = ClientMsg::Signal {
                    signal: sig.as_str().to_string(),
                };
                if proto::write_frame(&mut tx, &msg).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| {
            Error::Internal(format!(
                "cannot start the thread that forwards signals to the job ({e}); the process limit (ulimit -u) is too low"
            ))
        })?;
    proto::send_hello(&stream, hello, fds)?;
    let mut rx = &stream;
    loop {
        // The daemon is trusted; an explain answer may be large.
        match proto::read_frame::<DaemonMsg>(&mut rx, proto::MAX_HELLO) {
            Ok(Some(DaemonMsg::Started { container })) => {
                log::info!("job started in container {container}")
            }
            Ok(Some(DaemonMsg::Exit { code })) => return Ok(code),
            Ok(Some(DaemonMsg::Progress { done, total })) => progress(done, total),
            Ok(Some(DaemonMsg::Explained { code, text })) => {
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                return Ok(code);
            }
            Ok(Some(DaemonMsg::Error { code, message })) => {
                eprintln!("berth: {message}");
                return Ok(code);
            }
            Ok(None) => {
                return Err(Error::Unavailable(
                    "the broker closed the connection before the job ended; requeue the job".into(),
                ))
            }
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "lost the broker connection: {e}; requeue the job"
                )))
            }
        }
    }
}
