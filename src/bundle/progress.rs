//! Progress of long work on a terminal (`bundle push`, `bundle create`, a
//! cold `bundle load`), the way `docker pull` shows it: bytes done of the
//! total, the rate, the time left, redrawn in place on stderr. Nothing is
//! drawn when stderr is not a terminal, so batch logs get only the one-line
//! summary the command prints at the end.

use std::io::Write;
use std::time::{Duration, Instant};

/// One progress line: `LABEL  123.4 MiB / 500.0 MiB  210.0 MiB/s  0:02 left`.
pub fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let approx = crate::core::size::approx;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut s = format!("{label}  {}", approx(done));
    if total > 0 {
        s.push_str(&format!(" / {}", approx(total)));
    }
    if rate > 0.0 {
        s.push_str(&format!("  {}/s", approx(rate as u64)));
        if total > done {
            let left = ((total - done) as f64 / rate).ceil() as u64;
            s.push_str(&format!("  {}:{:02} left", left / 60, left % 60));
        }
    }
    s
}

/// ` in 1.2 s (416.0 MiB/s)`: the end of a summary line.
pub fn rate_suffix(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return String::new();
    }
    format!(
        " in {secs:.1} s ({}/s)",
        crate::core::size::approx((bytes as f64 / secs) as u64)
    )
}

/// Draws [`line`] on stderr when it is a terminal.
pub struct Meter {
    label: String,
    started: Instant,
    tty: bool,
    drawn: bool,
}

impl Meter {
    pub fn stderr(label: &str) -> Meter {
        Meter {
            label: label.to_string(),
            started: Instant::now(),
            tty: nix::unistd::isatty(2).unwrap_or(false),
            drawn: false,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if !self.tty {
            return;
        }
        let mut e = std::io::stderr().lock();
        // Clear to the end of the line: a shorter line leaves no tail.
        let _ = write!(
            e,
            "\r{}\x1b[K",
            line(&self.label, done, total, self.started.elapsed())
        );
        let _ = e.flush();
        self.drawn = true;
    }

    /// Erase the progress line before the summary is printed.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            line("pushing x", 100 << 20, 400 << 20, Duration::from_secs(1)),
            "pushing x  100.0 MiB / 400.0 MiB  100.0 MiB/s  0:03 left"
        );
        assert_eq!(line("x", 0, 0, Duration::ZERO), "x  0 B");
        assert_eq!(
            line("x", 10 << 20, 10 << 20, Duration::from_secs(2)),
            "x  10.0 MiB / 10.0 MiB  5.0 MiB/s"
        );
        assert_eq!(
            rate_suffix(1 << 30, Duration::from_secs(2)),
            " in 2.0 s (512.0 MiB/s)"
        );
    }
}
