//! A progress bar on stderr for `natkit send` / `receive`: drawn only when
//! stderr is a terminal (a log file gets the final summary line alone).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the bar is redrawn.
const REDRAW: Duration = Duration::from_millis(100);
/// Width of the bar in cells.
const WIDTH: usize = 30;

/// Bytes in binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Progress of one transfer.
pub struct Progress {
    verb: &'static str,
    total: u64,
    done: u64,
    /// Bytes that were there before (a resume): counted as done, not in
    /// the rate.
    base: u64,
    start: Instant,
    drawn: Option<Instant>,
    tty: bool,
}

impl Progress {
    /// A transfer of `total` bytes of which `base` were moved before;
    /// `verb` is "sending" or "receiving".
    pub fn resumed(verb: &'static str, total: u64, base: u64) -> Self {
        Progress {
            verb,
            total,
            done: base,
            base,
            start: Instant::now(),
            drawn: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// `n` bytes that were there before (a resume, a file already in
    /// place): done, but not in the rate.
    pub fn skipped(&mut self, n: u64) {
        self.done += n;
        self.base += n;
    }

    /// `n` more bytes moved.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        let due = match self.drawn {
            None => true,
            Some(t) => t.elapsed() >= REDRAW,
        };
        if self.tty && due {
            self.drawn = Some(Instant::now());
            err!("\r{}", self.bar());
        }
    }

    fn rate(&self) -> f64 {
        (self.done - self.base) as f64 / self.start.elapsed().as_secs_f64().max(1e-6)
    }

    /// Time left at the rate so far, as m:ss (h:mm:ss past an hour); "?"
    /// before anything moved.
    fn remaining(&self) -> String {
        let rate = self.rate();
        if self.done == self.base || rate <= 0.0 {
            return "?".into();
        }
        let secs = ((self.total.saturating_sub(self.done)) as f64 / rate).ceil() as u64;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            format!("{h}:{m:02}:{s:02}")
        } else {
            format!("{m}:{s:02}")
        }
    }

    /// The bar as one line (without the carriage return). A stream of
    /// unknown length (`total` u64::MAX) shows bytes and rate only.
    pub fn bar(&self) -> String {
        if self.total == u64::MAX {
            return format!(
                "{} {}, {}/s ",
                self.verb,
                human_bytes(self.done),
                human_bytes(self.rate() as u64)
            );
        }
        let frac = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let filled = (frac * WIDTH as f64).round() as usize;
        format!(
            "{} [{}{}] {:>3.0}% {} / {}, {}/s, {} left ",
            self.verb,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            frac * 100.0,
            human_bytes(self.done),
            human_bytes(self.total),
            human_bytes(self.rate() as u64),
            self.remaining()
        )
    }

    /// Remove the bar before another line is printed.
    pub fn clear(&self) {
        if self.tty && self.drawn.is_some() {
            err!("\r\x1b[2K");
        }
    }

    /// The summary: bytes, time and rate (and what a resume skipped).
    pub fn summary(&self) -> String {
        let t = self.start.elapsed();
        let moved = self.done - self.base;
        let resumed = if self.base > 0 {
            format!(" (resumed: {} bytes were there)", self.base)
        } else {
            String::new()
        };
        format!(
            "{moved} bytes ({}) in {:.2} s, {}/s{resumed}",
            human_bytes(moved),
            t.as_secs_f64(),
            human_bytes(self.rate() as u64)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn the_bar_fills_with_the_transfer() {
        let mut p = Progress::resumed("sending", 1000, 0);
        p.tty = false;
        assert!(p.bar().contains(&format!("[{}]", "-".repeat(WIDTH))));
        p.advance(500);
        let half = format!("[{}{}]", "#".repeat(WIDTH / 2), "-".repeat(WIDTH / 2));
        assert!(p.bar().contains(&half), "{}", p.bar());
        assert!(p.bar().contains(" 50%"), "{}", p.bar());
        p.advance(500);
        assert!(p.bar().contains("100%"), "{}", p.bar());
        assert_eq!(p.done, 1000);
        assert!(p.summary().starts_with("1000 bytes"), "{}", p.summary());
    }

    #[test]
    fn time_left_follows_the_rate_and_a_resume_counts_only_what_moved() {
        let mut p = Progress::resumed("receiving", 10_000, 0);
        p.skipped(4_000);
        p.tty = false;
        assert!(p.bar().contains(" 40%"), "{}", p.bar());
        assert!(p.bar().contains("? left"), "{}", p.bar());
        // 1000 bytes in about 1 s: 5000 left is about 5 s.
        p.start = Instant::now() - Duration::from_secs(1);
        p.advance(1_000);
        let left = p.remaining();
        assert!(["0:05", "0:04", "0:06"].contains(&left.as_str()), "{left}");
        assert!(p.summary().starts_with("1000 bytes"), "{}", p.summary());
        assert!(p.summary().contains("resumed: 4000"), "{}", p.summary());
        p.start = Instant::now() - Duration::from_secs(7200);
        let left = p.remaining();
        assert!(["10:00:00", "10:00:01"].contains(&left.as_str()), "{left}");
    }
}
