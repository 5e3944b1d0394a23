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
    start: Instant,
    drawn: Option<Instant>,
    tty: bool,
}

impl Progress {
    /// A transfer of `total` bytes; `verb` is "sending" or "receiving".
    pub fn new(verb: &'static str, total: u64) -> Self {
        Progress {
            verb,
            total,
            done: 0,
            start: Instant::now(),
            drawn: None,
            tty: std::io::stderr().is_terminal(),
        }
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
            eprint!("\r{}", self.bar());
        }
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-6)
    }

    /// The bar as one line (without the carriage return).
    pub fn bar(&self) -> String {
        let frac = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let filled = (frac * WIDTH as f64).round() as usize;
        format!(
            "{} [{}{}] {:>3.0}% {} / {}, {}/s ",
            self.verb,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            frac * 100.0,
            human_bytes(self.done),
            human_bytes(self.total),
            human_bytes(self.rate() as u64)
        )
    }

    /// Remove the bar before another line is printed.
    pub fn clear(&self) {
        if self.tty && self.drawn.is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    /// The summary: bytes, time and rate.
    pub fn summary(&self) -> String {
        let t = self.start.elapsed();
        format!(
            "{} bytes ({}) in {:.2} s, {}/s",
            self.done,
            human_bytes(self.done),
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
        let mut p = Progress::new("sending", 1000);
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
}
