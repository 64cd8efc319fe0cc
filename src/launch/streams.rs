//! The job's streams between the caller's descriptors and the engine's
//! attach connection (no TTY: the engine multiplexes stdout and stderr in
//! frames of an 8-byte header — stream, 0, 0, 0, big-endian length — and
//! reads stdin raw). Each stream keeps its bytes in order; stdin's EOF is
//! passed on as a half-close, which the engine (StdinOnce) turns into the
//! container's EOF.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Where a stream of the job goes.
pub struct Sink {
    fd: Option<OwnedFd>,
    /// The reader went away (EPIPE): what the job writes further is
    /// dropped, so the job never blocks on a pipe nobody reads (`| head`).
    gone: bool,
}

impl Sink {
    pub fn new(fd: Option<OwnedFd>) -> Sink {
        Sink { fd, gone: false }
    }

    fn write(&mut self, mut buf: &[u8]) {
        let Some(fd) = &self.fd else { return };
        while !buf.is_empty() && !self.gone {
            match nix::unistd::write(fd, buf) {
                Ok(0) => self.gone = true,
                Ok(n) => buf = &buf[n..],
                Err(nix::errno::Errno::EINTR) => {}
                // A non-blocking descriptor of the caller's: wait until it
                // takes more.
                Err(nix::errno::Errno::EAGAIN) => {
                    let mut p = [nix::poll::PollFd::new(
                        fd.as_fd(),
                        nix::poll::PollFlags::POLLOUT,
                    )];
                    let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(1000u16));
                }
                Err(e) => {
                    log::info!(
                        "job output descriptor {}: {e}; dropping the rest",
                        fd.as_raw_fd()
                    );
                    self.gone = true;
                }
            }
        }
    }
}

/// Copy the engine's multiplexed output to `out` and `err` until the
/// engine closes the stream (the container's output is done). Returns the
/// number of bytes passed.
pub fn demux(attach: &mut UnixStream, early: Vec<u8>, out: &mut Sink, err: &mut Sink) -> u64 {
    let mut buf = early;
    let mut chunk = vec![0u8; 256 << 10];
    let mut total = 0u64;
    let mut pos = 0usize;
    loop {
        // Whole frames in the buffer go out first.
        while buf.len() - pos >= 8 {
            let h = &buf[pos..pos + 8];
            let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
            let kind = h[0];
            let avail = buf.len() - pos - 8;
            if avail == 0 {
                break;
            }
            // Pass what is there of the frame now; the rest follows.
            let n = len.min(avail);
            let data = &buf[pos + 8..pos + 8 + n];
            match kind {
                2 => err.write(data),
                _ => out.write(data),
            }
            total += n as u64;
            if n == len {
                pos += 8 + n;
            } else {
                // Keep a header for the remainder of this frame.
                let rest = (len - n) as u32;
                let mut nb = vec![kind, 0, 0, 0];
                nb.extend_from_slice(&rest.to_be_bytes());
                buf = nb;
                pos = 0;
                break;
            }
        }
        if pos > 0 {
            buf.drain(..pos);
            pos = 0;
        }
        match attach.read(&mut chunk) {
            Ok(0) => return total,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return total,
        }
    }
}

/// Copy the caller's stdin to the engine until EOF, then half-close so the
/// job sees its EOF. Stops early when `stop` becomes readable (the job
/// ended: nothing more is wanted from stdin).
pub fn feed(input: Option<OwnedFd>, attach: &mut UnixStream, stop: OwnedFd) {
    let Some(input) = input else {
        let _ = attach.shutdown(std::net::Shutdown::Write);
        return;
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut p = [
            nix::poll::PollFd::new(input.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(stop.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut p, nix::poll::PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if p[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        match nix::unistd::read(input.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if attach.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(_) => break,
        }
    }
    let _ = attach.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![kind, 0, 0, 0];
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn demux_splits_streams_in_order_across_reads() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (or, ow) = nix::unistd::pipe().unwrap();
        let (er, ew) = nix::unistd::pipe().unwrap();
        let mut data = frame(1, b"out1 ");
        data.extend(frame(2, b"err1 "));
        data.extend(frame(1, &[0u8, 255, 10, 13]));
        data.extend(frame(2, b"err2"));
        // The first bytes arrive with the upgrade reply, the rest in
        // pieces that cut headers and bodies.
        let early = data[..3].to_vec();
        let rest = data[3..].to_vec();
        let w = std::thread::spawn(move || {
            for c in rest.chunks(5) {
                b.write_all(c).unwrap();
            }
        });
        let mut out = Sink::new(Some(ow));
        let mut err = Sink::new(Some(ew));
        let n = demux(&mut a, early, &mut out, &mut err);
        w.join().unwrap();
        drop((out, err));
        let read = |fd: OwnedFd| {
            let mut s = Vec::new();
            std::fs::File::from(fd).read_to_end(&mut s).unwrap();
            s
        };
        assert_eq!(read(or), b"out1 \x00\xff\n\r");
        assert_eq!(read(er), b"err1 err2");
        assert_eq!(n, 5 + 5 + 4 + 4);
    }

    #[test]
    fn a_closed_reader_drops_output_without_blocking() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (or, ow) = nix::unistd::pipe().unwrap();
        drop(or);
        let big = vec![b'x'; 1 << 20];
        let w = std::thread::spawn(move || {
            for _ in 0..4 {
                b.write_all(&frame(1, &big)).unwrap();
            }
        });
        let mut out = Sink::new(Some(ow));
        let mut err = Sink::new(None);
        assert_eq!(demux(&mut a, Vec::new(), &mut out, &mut err), 4 << 20);
        w.join().unwrap();
    }
}
